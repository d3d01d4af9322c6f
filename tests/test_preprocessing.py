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
    import torch

    from utils.config import make_config
    from utils.data import cache as cache_module
    from utils.data.dataset import make_loaders
    from utils.models import normalisation
    from utils.data.demo import make_demo
    from utils.study.grid import StepGrid
    from utils.runtime import RunContext

    demo = make_demo(tmp_path / "demo", seed=0, image_px=32, scale=0.3)
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    _run_notebook_cells(ROOT / "notebooks" / "01_preprocessing.ipynb", {
        "profile": "smoke", "data_root": str(demo), "step": "01_preprocessing",
        "reports_dir": str(tmp_path / "reports"), "checkpoint_dir": str(tmp_path / "ckpt")})
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 9  # 3 sources × 3 splits (RSNA, NIH train/val: after the exclusions)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a loader decoded images 01_preprocessing had already cached")

    monkeypatch.setattr(cache_module, "_run_chunks", no_rebuild)
    cfg = make_config({"dataset": "kermany", "datasets": "all", "data_root": str(demo),
                       "model": "simple_cnn", "cache": True, "step": "later"}, "smoke")
    ctx = RunContext(device=torch.device("cpu"), data_root=demo, synthetic=True,
                     repo_root=ROOT, environment={})
    grid = StepGrid(cfg, ctx)  # what a model step trains and scores with
    assert {r.dataset for r in grid.runs} == {"kermany", "rsna", "nih"}
    opened = set()
    for run in grid.runs:
        exp = grid.prepare(run)
        if run.dataset == "rsna":
            assert all(p.endswith(".png") for p in exp.manifest["path"])
            assert exp.manifest.attrs["images"].startswith("PNGs converted by 01_preprocessing")
        next(iter(exp.loaders["train"]))
        opened |= {Path(dl.dataset.cache.folder).name for dl in exp.loaders.values()}
        for other in grid.external_sources:  # the external test splits too
            test = make_loaders(run, grid.manifest(other), normalisation(run.model, run.pretrained),
                                splits=("test",))
            opened.add(Path(test["test"].dataset.cache.folder).name)
    assert opened == set(built) and sorted(p.name for p in (tmp_path / "cache").iterdir()) == built
