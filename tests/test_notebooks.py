"""Every notebook: stored clean and thin, a `parameters` cell of RunConfig names, and an
end-to-end execution of the whole plan in the `smoke` profile through run_all.py."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import nbformat
import pytest

from utils.study import plan as planning
from conftest import MODEL_STEPS, SMOKE_STEPS
from utils.config import PROFILES, RunConfig

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def _code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_all_notebooks_present() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_eda", "01_preprocessing", "02_chexnet", "03_resnet_ablation",
                     "04_efficientnet_b4", "05_vit", "06_mlp_mixer", "07_comparison",
                     "08_gradcam_gallery", "09_transfer"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_names_are_runconfig_fields(path: Path) -> None:
    tagged = [c for c in _code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    names = {t.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    assert names, f"{path.name}: empty parameters cell"
    assert names <= FIELDS, f"{path.name}: not RunConfig fields: {sorted(names - FIELDS)}"
    # papermill reads the cell line by line and gives up on a line with two "=" (its
    # comment's "=" included), warning that the parameter is unknown
    crowded = [line for line in tagged[0].source.splitlines() if line.count("=") > 1]
    assert not crowded, f"{path.name}: papermill cannot parse {crowded}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_parameter_the_plan_passes_is_in_the_parameters_cell(profile: str) -> None:
    """What run_all passes (the injected names, each step's and profile's parameters,
    `--nproc-per-node`) is a notebook's own parameter: papermill warns of the others."""
    plan = planning.default_plan()
    base = {key: "x" for key in planning.INJECTED if key != "step"}
    nproc = planning.nproc_overrides(plan, 2)
    missing = {}
    for step in plan:
        cell = planning.parameters_cell(ROOT / "notebooks" / step.notebook)
        params = planning.resolve_params(step, base, profile, {}, nproc)
        if extra := sorted(set(params) - cell):
            missing[f"{step.name} ({step.notebook})"] = extra
    assert not missing, f"profile {profile}: not in the parameters cell: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_clean_and_thin(path: Path) -> None:
    for cell in _code_cells(path):
        assert not cell.get("outputs"), f"{path.name}: outputs are committed"
        assert cell.get("execution_count") is None, f"{path.name}: execution counts committed"
        tree = ast.parse("\n".join(line for line in cell.source.splitlines()
                                   if not line.lstrip().startswith(("%", "!"))))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{path.name}: define functions/classes in utils, not in notebooks"


@pytest.mark.notebooks
@pytest.mark.slow
def test_run_all_smoke_profile_executes_every_notebook(smoke_run) -> None:
    """Every notebook, on the generated demo data in the smoke profile, through run_all
    (the session's shared run: conftest.smoke_run)."""
    proc, reports, ckpts, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    index = (reports / "index.html").read_text()
    for step in SMOKE_STEPS:
        html = reports / f"{step}.html"
        assert html.exists() and "data:image/png;base64" in html.read_text(), step
        assert f"{step}.html" in index
    for step in MODEL_STEPS:
        results = json.loads((reports / "results" / f"{step}.json").read_text())
        assert results["data"]["synthetic"] is True
        assert results["threshold"]["chosen_on"] == "val"
        assert 0.0 <= results["test"]["accuracy"] <= 1.0
        assert len(results["test"]["auroc_ci"]) == 2
        assert (ckpts / step / "best.pt").exists()
    assert "synthetic" in index.lower()


CHATTER = ("[IPKernelApp]", "Input Notebook", "Output Notebook", "Working directory",
           "Executing notebook", "Passed unknown parameter", "Alternative text")


@pytest.mark.notebooks
@pytest.mark.slow
def test_smoke_run_console_is_one_line_per_step_start_and_end(smoke_run) -> None:
    """STYLE 15 on the real notebooks (the session's shared run): no line from the kernels,
    papermill or nbconvert; one start and one end line per step; the log named at the start
    and at the end holds what the console leaves out."""
    proc, reports, _, _ = smoke_run
    console = proc.stderr + proc.stdout
    lines = console.splitlines()
    assert not [line for line in lines if any(c in line for c in CHATTER)], console[-4000:]
    for step in SMOKE_STEPS:
        assert len([ln for ln in lines if re.match(rf"start +{step} ", ln)]) == 1, step
        assert len([ln for ln in lines if re.match(rf"ok +{step} in ", ln)]) == 1, step
    log_path = reports / "run_all.log"
    assert any(ln.startswith(f"log: {log_path} ") for ln in proc.stderr.splitlines())
    assert proc.stdout.splitlines()[-1] == f"log: {log_path}"
    log_text = log_path.read_text()
    assert all(c in log_text for c in CHATTER[:5])
    assert "Alternative text" not in log_text and "Passed unknown parameter" not in log_text


@pytest.mark.notebooks
@pytest.mark.slow
def test_smoke_reports_give_every_image_its_alt_text(smoke_run) -> None:
    """Every figure carries its caption (or title) as alt text: nbconvert adds none."""
    _, reports, _, _ = smoke_run
    for step in SMOKE_STEPS:
        page = (reports / f"{step}.html").read_text()
        imgs = re.findall(r"<img\b[^>]*>", page)
        assert imgs, step
        bare = [i[:120] for i in imgs if not re.search(r"""\balt=(["'])\s*[^\s"']""", i)]
        assert not bare, f"{step}: images without alt text: {bare}"
        assert "No description has been provided" not in page, step
