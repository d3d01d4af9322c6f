"""utils.data.sources: every registered source is found, built and split the same way; a new
dataset is one registration; and utils/ imports no module that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from utils.data import sources
from utils.data.discover import find_sources
from utils.data.kermany import MANIFEST_COLUMNS
from utils.data.sources import build_manifest, get_source, list_sources, register_source
from utils.data.splits import assign_splits, check_no_patient_leak


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from utils.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.3)


def test_the_built_in_sources_are_registered():
    assert list_sources() == ["kermany", "rsna", "nih"]
    assert list_sources(multilabel=True) == ["nih"]
    assert all(get_source(n).download.startswith("python -m utils.data.download")
               for n in list_sources())
    with pytest.raises(KeyError, match="no source 'mimic' is registered.*kermany"):
        get_source("mimic")


@pytest.mark.parametrize("name", list_sources())
def test_every_registered_source_builds_a_contract_manifest(demo_root, name):
    found = find_sources(demo_root)
    if name not in found:
        pytest.skip(f"the demo set has no {name} layout (utils/data/demo.py)")
    manifest = build_manifest(name, found[name])
    assert list(manifest.columns[:len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert (manifest["source"] == name).all() and manifest["synthetic"].all()
    assert manifest.attrs["grouping"] in ("patient", "nih_patient", "image")
    assert set(manifest["label"]) == {0, 1}
    out = assign_splits(manifest, 0.15, 0.15, seed=42)
    check_no_patient_leak(out)
    assert set(out["split"]) == {"train", "val", "test"}


# --- a new source is one registration -------------------------------------------------------

def _toy_manifest(folder: Path, *, on_bad_image: str = "error") -> pd.DataFrame:
    table = pd.read_csv(folder / "toy_labels.csv")
    return pd.DataFrame({
        "path": [str(folder / f) for f in table["file"]], "patient_id": table["patient"],
        "split": "", "label": table["label"], "boxes": [[] for _ in table.index],
        "width": 0, "height": 0, "source": "toy", "synthetic": False})


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))  # undone afterwards
    register_source("toy", detect=lambda folder, names: "toy_labels.csv" in names,
                    manifest=_toy_manifest, download="ask the toy maker",
                    skip_dirs={"pictures"})
    folder = tmp_path / "data" / "toy-set"
    (folder / "pictures").mkdir(parents=True)
    rows = []
    for i in range(40):
        name = f"pictures/{i:03d}.png"
        cv2.imwrite(str(folder / name), np.full((24, 24), 40 + 4 * i, np.uint8))
        rows.append((name, f"p{i // 2}", int(i % 4 == 0 or i % 4 == 1)))
    pd.DataFrame(rows, columns=["file", "patient", "label"]).to_csv(
        folder / "toy_labels.csv", index=False)
    return tmp_path / "data"


def test_a_new_source_needs_only_its_registration(toy):
    from utils.config import make_config
    from utils.data.dataset import load_manifest
    from utils.data.discover import not_found

    assert find_sources(toy) == {"toy": toy / "toy-set"}
    cfg = make_config({"dataset": "toy", "data_root": str(toy), "max_images": 0}, "smoke")
    manifest = load_manifest(cfg)
    assert len(manifest) == 40 and manifest.attrs["source"] == "toy"
    check_no_patient_leak(manifest)
    assert "ask the toy maker" in str(not_found(toy.parent / "elsewhere", "toy"))
    assert "toy" in make_config({"datasets": "toy,kermany"}, "smoke").dataset_list()


# --- no circles ---------------------------------------------------------------------------

def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = module.split(".")
            base = ".".join(parts[:len(parts) - node.level]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            out |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)]
                    if t in known}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
    return out - {module}


def test_no_import_circles_in_utils():
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
             for p in (ROOT / "utils").rglob("*.py") if p.name != "__init__.py"}
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
