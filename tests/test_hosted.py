"""Notebooks that open anywhere (utils/hosted.py): one setup cell, byte-identical in every
notebook; Colab badges built from the one REPO_URL; installs that never touch torch; a
notebook alone outside the repository stops with one message; in a hosted runtime it
clones the project and imports it."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from utils import hosted
from utils.hosted import REPO_URL, SETUP_SOURCE, colab_url, missing_requirements

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_cells(path: Path) -> tuple[str, str]:
    cells = nbformat.read(path, as_version=4).cells
    return (next(c.source for c in cells if c.cell_type == "markdown"),
            next(c.source for c in cells if c.cell_type == "code"))


def test_setup_cell_is_byte_identical_in_every_notebook() -> None:
    cells = {p.name: first_cells(p)[1] for p in NOTEBOOKS}
    assert len(NOTEBOOKS) >= 9 and set(cells.values()) == {SETUP_SOURCE}, \
        [n for n, c in cells.items() if c != SETUP_SOURCE]
    assert f'"CXR_REPO_URL", "{REPO_URL}"' in SETUP_SOURCE
    assert len(SETUP_SOURCE.splitlines()) <= 25  # short: the logic lives in utils.hosted


def test_badges_and_setup_cells_agree_with_repo_url() -> None:
    assert hosted.sync(write=False) == []  # python -m utils.hosted --write fixes a mismatch
    for path in NOTEBOOKS:
        assert hosted.badge_markdown(path.name) in first_cells(path)[0].splitlines()[1]
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", readme))
    assert links and links <= {colab_url(p.name) for p in NOTEBOOKS}
    assert {colab_url(p.name) for p in NOTEBOOKS} <= links
    assert colab_url("05_vit.ipynb").endswith("/cxr-pneumonia/cxr-pneumonia/blob/main/"
                                              "notebooks/05_vit.ipynb")


def test_missing_requirements_never_include_torch(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\ntorch==2.14.1\ntorchvision==0.29.1\npandas==3.1.1\n"
                   "opencv-python-headless==5.0.0.93\nkaggle==1.7.4.5  # api\npytest==9.2.0\n")
    colab = {"pandas": "2.2.2", "opencv-python": "4.10.0"}  # no torch at all: still not ours
    assert missing_requirements(req, colab.get) == ["kaggle==1.7.4.5"]


def test_prepare_runtime_installs_only_what_is_missing_holding_torch(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    (tmp_path / "requirements.txt").write_text("torch==2.14.1\ntimm==1.0.31\nnope-pkg==1.0\n")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, Path(cmd[cmd.index("-c") + 1]).read_text()))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(hosted.subprocess, "run", fake_run)
    hosted.prepare_runtime(tmp_path, hosted=True)
    (cmd, constraints), = calls
    assert cmd[cmd.index("install"):cmd.index("-c")] == ["install", "-q", "nope-pkg==1.0"]
    assert re.search(r"^torch==\S+$", constraints, re.M)  # the runtime's build stays
    hosted.prepare_runtime(tmp_path, hosted=False)  # a local venv: only says what to do
    assert len(calls) == 1 and "pip install -r" in capsys.readouterr().out
    monkeypatch.setattr(hosted.subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(SystemExit, match="could not install nope-pkg==1.0"):
        hosted.prepare_runtime(tmp_path, hosted=True)


def execute(nb: nbformat.NotebookNode, cwd: Path):
    """Run a notebook like Jupyter's "run all" in `cwd` (the kernel inherits os.environ);
    return (the error that stopped it or None, the executed notebook)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        return exc, nb
    return None, nb


@pytest.mark.slow
def test_notebook_alone_outside_the_repo_stops_with_one_message(tmp_path: Path) -> None:
    alone = tmp_path / "downloads"
    alone.mkdir()
    shutil.copy(ROOT / "notebooks" / "05_vit.ipynb", alone)
    error, nb = execute(nbformat.read(alone / "05_vit.ipynb", as_version=4), alone)
    assert error is not None and error.ename == "SystemExit"
    assert f"git clone {REPO_URL}" in error.evalue and "Colab" in error.evalue
    setup = next(c for c in nb.cells if c.cell_type == "code")
    (out,) = setup.outputs
    assert "File " not in "".join(out["traceback"]) and len(out["traceback"]) <= 2
    assert "ModuleNotFoundError" not in str(nb.cells)
    later = [c for c in nb.cells if c.cell_type == "code" and c is not setup]
    assert all(not c.outputs for c in later)  # stopped there, nothing ran after it


@pytest.mark.slow
def test_hosted_runtime_clones_the_project_and_imports_it(tmp_path: Path, monkeypatch) -> None:
    """Kaggle/Colab: no project around the notebook; the setup cell clones CXR_REPO_URL
    (here this repository, committed HEAD) into ./cxr-pneumonia and imports utils from it."""
    work = tmp_path / "working"
    work.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP_SOURCE),
                nbformat.v4.new_code_cell("import utils.hosted\nprint(utils.hosted.__file__)")]
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("CXR_REPO_URL", ROOT.as_uri())
    error, nb = execute(nb, work)
    assert error is None, error
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert printed.strip() == str(work / "cxr-pneumonia" / "utils" / "hosted.py")
