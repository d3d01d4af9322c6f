"""Sessions that end (utils/study/resume.py): `run_all.py --resume-from DIR` continues a
previous session's run from a read-only copy of its folders; `--stop-after` stops at an
epoch end, marks the step interrupted and prints the command that continues; a previous
session with other code or data is refused by name unless `--resume-anyway`.

The training step is a notebook written here: `fit` (the real loop, last.pt, SessionDeadline)
on tests/helpers_train.py's tiny blobs, 2 epochs, so each run is a kernel start and seconds.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import nbformat
import pytest

from run_all import main
from utils.data.demo import make_demo
from utils.study import execute, resume
from utils.study.plan import Step
from utils.training.loop import STOP_ENV

FIXTURES = Path(__file__).parent / "fixtures"
NO_DATA = FIXTURES / "no-data"   # run_all's data root when the data is not the point

TRAIN_SOURCE = '''\
import json, pathlib, sys
import torch
sys.path.insert(0, {tests!r})
from helpers_train import Blobs, tiny_config, train_tiny
from utils.evaluation.metrics import binary_metrics
cfg = tiny_config(epochs=epochs)
model, hist = train_tiny(cfg, pathlib.Path(checkpoint_dir) / step)
model.eval()
test = Blobs(32, cfg.image_size, seed=2)
with torch.no_grad():
    prob = torch.sigmoid(model(test.images)).view(-1).numpy()
metrics = binary_metrics(test.labels.numpy(), prob)
results = {{"step": step, "test": {{"auroc": float(metrics["auroc"])}},
           "weights": float(sum(p.double().sum() for p in model.state_dict().values())),
           "resume": hist.resume}}
out = pathlib.Path(reports_dir) / "results" / f"{{step}}.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(results))
'''


def _notebooks(tmp: Path) -> Path:
    """tmp/nb: train.ipynb (the tiny fit) and ok.ipynb (a step after it)."""
    folder = tmp / "nb"
    folder.mkdir(exist_ok=True)
    params = nbformat.v4.new_code_cell('profile = "auto"\nstep = ""\nepochs = 2\n'
                                       'data_root = ""\nreports_dir = "reports"\n'
                                       'checkpoint_dir = "checkpoints"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Fixture: a tiny training step"), params,
        nbformat.v4.new_code_cell(TRAIN_SOURCE.format(tests=str(Path(__file__).parent)))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, folder / "train.ipynb")
    shutil.copy(FIXTURES / "ok.ipynb", folder / "ok.ipynb")
    return folder


PLAN = [Step("train", "train.ipynb"), Step("after", "ok.ipynb", after=("train",))]


def _freeze(mp: pytest.MonkeyPatch, tmp: Path, data: Path = NO_DATA) -> None:
    """A private code dir (colleagues edit utils/ meanwhile) and the given data root."""
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "lib.py").write_text("x = 1\n")
    mp.setattr(execute, "CODE_DIR", code)
    mp.setattr(execute, "resolve_data", lambda value: (data, True))
    mp.delenv(STOP_ENV, raising=False)
    mp.setenv("OMP_NUM_THREADS", "1")  # the kernels: one thread each, same numbers each run
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG"):
        mp.delenv(var, raising=False)


def _cli(tmp: Path, out: str, *extra: str) -> list[str]:
    return ["--notebooks-dir", str(tmp / "nb"), "--reports-dir", str(tmp / out / "reports"),
            "--checkpoint-dir", str(tmp / out / "checkpoints"), "--profile", "smoke",
            "--jobs", "1", *extra]


def _state(reports: Path) -> dict:
    return json.loads((reports / ".run_state.json").read_text())["steps"]


def _results(reports: Path) -> dict:
    return json.loads((reports / "results" / "train.json").read_text())


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# --- (a) + (b): stop at the deadline, resume from a read-only copy, same numbers -----------------
def test_stop_at_deadline_then_resume_from_read_only_copy_ends_as_uninterrupted(
        tmp_path, monkeypatch, capsys):
    _notebooks(tmp_path)
    _freeze(monkeypatch, tmp_path)
    assert main(_cli(tmp_path, "full"), plan=PLAN[:1]) == 0
    whole = _results(tmp_path / "full" / "reports")
    assert whole["resume"] is None
    # --list --resume-from: what would run after the resume, reading the folder only
    before = _snapshot(tmp_path / "full")
    assert main(_cli(tmp_path, "peek", "--list", "--resume-from", str(tmp_path / "full")),
                plan=PLAN) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^  train\s+skip \(unchanged\)", listing, re.M), listing
    assert re.search(r"^  after\s+run ", listing, re.M), listing
    assert _snapshot(tmp_path / "full") == before and not (tmp_path / "peek").exists()

    # the deadline has passed (run_all exports it; set here so the step starts first)
    monkeypatch.setenv(STOP_ENV, "1")
    capsys.readouterr()
    assert main(_cli(tmp_path, "cut"), plan=PLAN) == 3
    out = capsys.readouterr()
    cut = tmp_path / "cut"
    st = _state(cut / "reports")
    assert st["train"]["status"] == "interrupted" and "SessionDeadline" in st["train"]["error"]
    assert "after" not in st  # held back: no further step started
    assert not (cut / "reports" / "results" / "train.json").exists()
    ckpt = __import__("torch").load(cut / "checkpoints" / "train" / "last.pt",
                                    weights_only=False)
    assert ckpt["epoch"] == 1  # stopped at the first epoch end
    index = (cut / "reports" / "index.html").read_text()
    assert 'class="interrupted"' in index and "held back" in index
    command = f"python run_all.py {' '.join(_cli(tmp_path, 'cut'))}"
    assert command in out.out, out.out  # the exact command that continues
    monkeypatch.delenv(STOP_ENV)

    # the next session: the output attached read-only, one folder level down
    attached = tmp_path / "input" / "prev-version"
    shutil.copytree(cut, attached / "cxr-pneumonia")
    for p in [attached, *attached.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(attached)
    try:
        assert main(_cli(tmp_path, "next", "--resume-from", str(attached)), plan=PLAN) == 0
        assert _snapshot(attached) == before  # nothing written to DIR
    finally:
        for p in [attached, *attached.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    resumed = _results(tmp_path / "next" / "reports")
    assert resumed["resume"]["from_epoch"] == 1  # continued from last.pt, not from scratch
    assert resumed["test"] == whole["test"] and resumed["weights"] == whole["weights"]
    st = _state(tmp_path / "next" / "reports")
    assert st["train"]["status"] == st["after"]["status"] == "ok"
    session = json.loads((tmp_path / "next" / "reports" / resume.SESSION_FILE).read_text())
    first = json.loads((cut / "reports" / resume.SESSION_FILE).read_text())
    assert session["lineage"][-1] == first["id"]

    # the same command again in the same session continues here, it does not copy again
    assert main(_cli(tmp_path, "next", "--resume-from", str(attached)), plan=PLAN) == 0
    assert _state(tmp_path / "next" / "reports") == st  # both skipped, unchanged


def test_stop_after_sets_the_deadline_and_the_platform_default(tmp_path, monkeypatch, capsys):
    _notebooks(tmp_path)
    _freeze(monkeypatch, tmp_path)
    # --stop-after long gone: nothing starts, the command that continues is printed
    assert main(_cli(tmp_path, "a", "--stop-after", "1e-9"), plan=PLAN) == 3
    out = capsys.readouterr().out
    assert "held back" in (tmp_path / "a" / "reports" / "index.html").read_text()
    assert "not run" in out and "to continue, run:" in out
    assert not (tmp_path / "a" / "reports" / ".run_state.json").exists() or \
        not _state(tmp_path / "a" / "reports")

    args = execute.argparse.Namespace(stop_after=2.0, argv=[], list=True)
    assert resume._stop_hours(2.0, None) == 2.0 and resume._stop_hours(0, "kaggle") is None
    assert resume._stop_hours(None, None) is None
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert resume._stop_hours(None, resume._platform()) == 12.0 - resume.MARGIN_HOURS

    class _Run:  # what start_session reads with --list
        settings, reports, session = {}, tmp_path, None
    run = _Run()
    now = time.time()
    resume.start_session(run, args, tmp_path)  # --list: returns before reading the code
    assert abs(run.session.deadline - (now + 7200)) < 60 and run.session.platform == "kaggle"
    # the platform's default counts from the session's start (the container's first process)
    monkeypatch.setattr("psutil.Process.create_time", lambda self: now - 3600)
    resume.start_session(run, execute.argparse.Namespace(stop_after=None, argv=[], list=True),
                         tmp_path)
    assert abs(run.session.deadline - (now - 3600 + 11.5 * 3600)) < 60
    assert resume.session_start("kaggle", now + 13 * 3600) == now + 13 * 3600  # too old
    assert resume.session_start(None, now) == now
    with resume.deadline_env(run.session):
        assert float(os.environ[STOP_ENV]) == pytest.approx(run.session.deadline, abs=1)
    assert STOP_ENV not in os.environ
    run.outcomes = {"train": {"status": "interrupted"}}
    run.session.argv = ["--profile", "smoke", "--resume-from", "/kaggle/input/old"]
    hint = resume.resume_hint(run)
    assert "python run_all.py --profile smoke --resume-from /kaggle/input/<name>" in hint
    assert "/kaggle/input/old" not in hint


# --- (c) refusing other code or data, by name; the same data elsewhere is the same ---------------
def test_code_files_name_what_differs(tmp_path):
    code, nbs = tmp_path / "utils", tmp_path / "notebooks"
    (code / "training").mkdir(parents=True)
    nbs.mkdir()
    (code / "training" / "loop.py").write_text("a = 1\n")
    (code / "config.py").write_text("b = 1\n")
    (nbs / "05_vit.ipynb").write_text("{}")
    old = {"code": resume.code_files(code, nbs)}
    assert resume.differences(old, {"code": resume.code_files(code, nbs)}) == []
    (code / "training" / "loop.py").write_text("a = 2\n")
    (nbs / "05_vit.ipynb").write_text('{"x": 1}')
    found = resume.differences(old, {"code": resume.code_files(code, nbs)})
    assert len(found) == 1 and "utils/training/loop.py" in found[0]
    assert "notebooks/05_vit.ipynb" in found[0] and "utils/config.py" not in found[0]


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """The demo set twice: generated, and copied to another absolute path."""
    first = make_demo(tmp_path_factory.mktemp("demo_a") / "data", seed=0, image_px=32,
                      scale=0.05)
    second = tmp_path_factory.mktemp("demo_b") / "elsewhere" / "data"
    shutil.copytree(first, second)  # new file times too
    return first, second


def test_data_digest_sees_labels_not_paths(demo_pair, tmp_path):
    first, second = demo_pair
    a, b = resume.data_digest(first), resume.data_digest(second)
    assert set(a) == {"kermany", "nih", "rsna"} and all("error" not in v for v in a.values())
    assert resume.differences({"data": a}, {"data": b}) == []
    flipped = tmp_path / "data"
    shutil.copytree(first, flipped)
    csv = next((flipped / "nih").glob("Data_Entry*.csv"))
    lines = csv.read_text().splitlines()
    row = next(i for i, ln in enumerate(lines) if ",No Finding," in ln)
    lines[row] = lines[row].replace(",No Finding,", ",Pneumonia,")
    csv.write_text("\n".join(lines) + "\n")
    found = resume.differences({"data": a}, {"data": resume.data_digest(flipped)})
    assert len(found) == 1 and found[0].startswith("data: nih: other labels"), found


def test_resume_from_refuses_other_code_and_accepts_the_same_data_elsewhere(
        demo_pair, tmp_path, monkeypatch, capsys):
    first, second = demo_pair
    _notebooks(tmp_path)
    plan = [Step("after", "ok.ipynb")]
    _freeze(monkeypatch, tmp_path, first)
    assert main(_cli(tmp_path, "prev"), plan=plan) == 0
    done = _state(tmp_path / "prev" / "reports")["after"]

    # the same data at another absolute path: accepted, the completed step stays skipped
    _freeze(monkeypatch, tmp_path, second)
    assert main(_cli(tmp_path, "moved", "--resume-from", str(tmp_path / "prev")),
                plan=plan) == 0
    assert _state(tmp_path / "moved" / "reports")["after"]["finished"] == done["finished"]
    assert "skipped-unchanged" in capsys.readouterr().out

    # other code: refused with one message naming the file and the override
    (tmp_path / "code" / "lib.py").write_text("x = 2\n")
    capsys.readouterr()
    assert main(_cli(tmp_path, "other", "--resume-from", str(tmp_path / "prev")),
                plan=plan) == 2
    err = capsys.readouterr().err
    assert "code differs in utils: changed utils/lib.py" in err and "--resume-anyway" in err
    assert not (tmp_path / "other" / "reports" / ".run_state.json").exists()
    assert main(_cli(tmp_path, "other", "--resume-from", str(tmp_path / "prev"),
                     "--resume-anyway"), plan=plan) == 0
    assert _state(tmp_path / "other" / "reports")["after"]["finished"] == done["finished"]


# --- the setup cell records the commit and can pin one -------------------------------------------
def test_pin_commit_checks_out_a_hosted_clone_and_records_it(tmp_path, monkeypatch, capsys):
    from utils import hosted

    repo = tmp_path / "cxr-pneumonia"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    __import__("subprocess").run([*git[:3], "init", "-q"], check=True)
    shas = []
    for text in ("one", "two"):
        (repo / "f.txt").write_text(text)
        __import__("subprocess").run([*git, "add", "f.txt"], check=True)
        __import__("subprocess").run([*git, "commit", "-q", "-m", text], check=True)
        shas.append(hosted._git(repo, "rev-parse", "HEAD"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hosted, "_forget_utils", lambda: None)  # keep this process's modules
    assert hosted.pin_commit(repo, "", hosted=True) == shas[1]  # no pin: recorded as it is
    assert (tmp_path / hosted.COMMIT_FILE).read_text().strip() == shas[1]
    assert f'COMMIT = "{shas[1]}"' in capsys.readouterr().out
    assert hosted.pin_commit(repo, shas[0], hosted=False) == shas[1]  # a local checkout: kept
    assert (repo / "f.txt").read_text() == "two"
    assert hosted.pin_commit(repo, shas[0], hosted=True) == shas[0]
    assert (repo / "f.txt").read_text() == "one"
    assert (tmp_path / hosted.COMMIT_FILE).read_text().strip() == shas[0]
    with pytest.raises(SystemExit, match="full 40-character hash"):
        hosted.pin_commit(repo, "0" * 40, hosted=True)
