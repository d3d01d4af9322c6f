"""01_preprocessing's outputs are what the later steps read: its cells, executed here in one
process on a small demo set, leave the PNG conversion the RSNA manifest then reads and the
per-split caches the model steps' loaders then open without decoding anything again."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_notebook_cells(path: Path, params: dict) -> dict:
    """Execute the notebook's code cells in order in a fresh namespace, with `params`
    injected after the parameters cell (as papermill does)."""
    namespace: dict = {"__name__": "__main__"}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, f"{path.name}:{cell.get('id')}", "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(params)
    return namespace


def test_the_later_steps_read_what_01_made(tmp_path, monkeypatch):
    from utils.config import make_config
    from utils.data import cache as cache_module
    from utils.data.dataset import load_manifest, make_loaders
    from utils.data.demo import make_demo

    demo = make_demo(tmp_path / "demo", seed=0, image_px=32, scale=0.3)
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    _run_notebook_cells(ROOT / "notebooks" / "01_preprocessing.ipynb", {
        "profile": "smoke", "data_root": str(demo), "step": "01_preprocessing",
        "reports_dir": str(tmp_path / "reports"), "checkpoint_dir": str(tmp_path / "ckpt")})
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 6  # kermany and rsna, train/val/test each

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a loader decoded images 01_preprocessing had already cached")

    monkeypatch.setattr(cache_module, "_run_chunks", no_rebuild)
    for dataset, model in (("kermany", "resnet18"), ("rsna", "simple_cnn")):
        cfg = make_config({"dataset": dataset, "data_root": str(demo), "model": model,
                           "cache": True, "step": f"later_{dataset}"}, "smoke")
        manifest = load_manifest(cfg)
        if dataset == "rsna":
            assert all(p.endswith(".png") for p in manifest["path"])
            assert manifest.attrs["images"].startswith("PNGs converted by 01_preprocessing")
        loaders = make_loaders(cfg, manifest, cfg.model)
        next(iter(loaders["train"]))
        assert {Path(dl.dataset.cache.folder).name for dl in loaders.values()} <= set(built)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == built
