"""run_all's console (utils/study/console.py) and the progress records it reads, which `fit`
writes through utils.training.history's Board when run_all asks for them (CXR_PROGRESS_DIR).

No kernels here: run_all's own console is checked on the fixture notebooks in
test_run_all.py and on the real ones in test_notebooks.py (the session's smoke run)."""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.training.history import PROGRESS_ENV, log_board, open_board
from utils.study.console import (Progress, console_logging, estimate_left, fmt_duration,
                                 live_line, log_file, read_progress, step_of_run,
                                 training_text)


def record(folder: Path, run: str, epoch: int, epochs: int = 10, auroc: float | None = 0.8,
           per_epoch: float | None = 6.0, at: float | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run}.json").write_text(json.dumps({
        "run": run, "epoch": epoch, "epochs": epochs, "val_auroc": auroc,
        "seconds_per_epoch": per_epoch, "time": time.time() if at is None else at}))


# --- the progress record `fit` writes -----------------------------------------------------
def test_fit_writes_a_progress_record_per_run_only_when_asked(tmp_path, monkeypatch):
    from test_train import cfg_for, run

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    run(cfg_for(epochs=1, step="quiet", reports_dir=str(tmp_path / "r")), tmp_path / "c0")
    assert not list(tmp_path.rglob("quiet.json"))  # a notebook opened by hand writes none

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / "progress"))
    _, hist = run(cfg_for(epochs=3, step="05_vit.rsna.s1"), tmp_path / "c1")
    rec = json.loads((tmp_path / "progress" / "05_vit.rsna.s1.json").read_text())
    assert (rec["run"], rec["epoch"], rec["epochs"]) == ("05_vit.rsna.s1", 3, 3)
    assert rec["val_auroc"] == pytest.approx(hist.epochs[-1]["val_auroc"], nan_ok=True)
    assert rec["seconds_per_epoch"] == pytest.approx(hist.train_seconds / 3)
    assert rec["time"] <= time.time()
    assert sorted(p.name for p in (tmp_path / "progress").iterdir()) == ["05_vit.rsna.s1.json"]


def test_board_records_the_start_then_every_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path))
    cfg = SimpleNamespace(tensorboard=False, step="02_chexnet_nih", epochs=4, reports_dir="r")
    board = open_board(cfg, done=1)  # resumed after one epoch
    path = tmp_path / "02_chexnet_nih.json"
    start = json.loads(path.read_text())
    assert (start["epoch"], start["val_auroc"], start["seconds_per_epoch"]) == (1, None, None)
    log_board(board, {"epoch": 2, "val_auroc": 0.75, "seconds": 3.0})
    log_board(board, {"epoch": 3, "val_auroc": float("nan"), "seconds": 5.0})
    board.close()
    rec = json.loads(path.read_text())
    assert (rec["epoch"], rec["val_auroc"], rec["seconds_per_epoch"]) == (3, None, 4.0)
    monkeypatch.delenv(PROGRESS_ENV)
    assert open_board(cfg, 0) is None  # neither TensorBoard nor a record: nothing to do


# --- reading them -------------------------------------------------------------------------
def test_runs_map_to_their_step():
    steps = ["02_chexnet", "03_resnet_ablation_resnet18_scratch",
             "03_resnet_ablation_resnet18_scratch_noreg", "05_vit", "09_transfer"]
    assert step_of_run("05_vit", steps) == "05_vit"
    assert step_of_run("05_vit.kermany.s2", steps) == "05_vit"
    assert step_of_run("02_chexnet_nih", steps) == "02_chexnet"
    assert step_of_run("09_transfer_imagenet_head", steps) == "09_transfer"
    assert step_of_run("03_resnet_ablation_resnet18_scratch_noreg.rsna", steps) \
        == "03_resnet_ablation_resnet18_scratch_noreg"
    assert step_of_run("06_mlp_mixer", steps) is None


def test_read_progress_keeps_each_running_steps_latest_record_of_this_run(tmp_path):
    now = time.time()
    record(tmp_path, "05_vit", 3, at=now - 5)
    record(tmp_path, "05_vit.kermany", 1, at=now - 1)
    record(tmp_path, "06_mlp_mixer", 9, at=now - 100)   # written before this run of 06
    record(tmp_path, "04_efficientnet_b4", 2, at=now)  # not running
    (tmp_path / "02_chexnet.json").write_text("{half a reco")
    got = read_progress(tmp_path, {"05_vit": now - 10, "06_mlp_mixer": now - 50,
                                   "02_chexnet": now - 10})
    assert list(got) == ["05_vit"] and got["05_vit"]["run"] == "05_vit.kermany"
    assert read_progress(tmp_path / "none", {"05_vit": 0.0}) == {}


def test_training_text_and_durations():
    assert fmt_duration(None) == "?" and fmt_duration(42.4) == "0:42"
    assert fmt_duration(725) == "12:05" and fmt_duration(3 * 3600 + 130) == "3:02:10"
    rec = {"run": "05_vit.rsna", "epoch": 3, "epochs": 12, "val_auroc": 0.8123,
           "seconds_per_epoch": 6.0}
    assert training_text(rec) == "05_vit.rsna epoch 3/12, val AUROC 0.812, ~0:54 to its end"
    assert training_text({**rec, "epoch": 0, "val_auroc": None, "seconds_per_epoch": None}) \
        == "05_vit.rsna epoch 0/12"


def test_estimate_left_from_known_durations():
    expected = {"00_eda": 10.0, "05_vit": 100.0, "06_mlp_mixer": 60.0}
    assert estimate_left(["06_mlp_mixer"], {}, expected) == 60.0
    assert estimate_left(["07_comparison"], {}, expected) == 60.0  # never timed: the median
    assert estimate_left([], {"05_vit": 30.0}, expected) == 70.0
    assert estimate_left([], {"05_vit": 130.0}, expected) == 0.0   # overran its last time
    assert estimate_left([], {"05_vit": 130.0}, expected, training_left={"05_vit": 54.0}) == 54.0
    assert estimate_left(["06_mlp_mixer"], {"05_vit": 30.0}, expected, jobs=2) == 65.0
    assert estimate_left(["x"], {}, {}) is None  # nothing known yet
    assert estimate_left([], {"x": 5.0}, {}, training_left={"x": 12.0}) == 12.0
    assert estimate_left([], {"x": 5.0}, {}, training_left={"x": 0.0}) is None


def test_progress_summary_and_live_line(tmp_path):
    progress = Progress(["00_eda", "05_vit", "07_comparison"], 1,
                        {"05_vit": 100.0, "07_comparison": 20.0}, tmp_path)
    progress.end("00_eda", 10.0)
    progress.begin("05_vit")
    record(tmp_path, "05_vit.rsna", 2, epochs=4, per_epoch=5.0)
    line, key = progress.line()
    assert line.startswith("run_all: 1/3 steps done · 0:0")
    # 05_vit's last 100 s less the moment it has run, then 07's 20 s
    assert re.search(r" · about (2:00|1:5\d) left · ", line), line
    assert line.endswith(" · 05_vit.rsna epoch 2/4, val AUROC 0.800, ~0:10 to its end")
    assert key == (("05_vit.rsna", 2),)
    progress.end("05_vit", 80.0)
    assert progress.expected["05_vit"] == 80.0 and progress.line()[1] == ()
    progress.clear_records("05_vit")
    assert not list(tmp_path.glob("*.json"))


def test_off_a_terminal_the_live_line_is_printed_when_training_advances(tmp_path, caplog):
    """In a pipe (a CI log, `!python run_all.py` in a notebook) tqdm draws nothing: the
    line is logged instead, once per new epoch at most every `quiet_every` seconds."""
    progress = Progress(["05_vit"], 1, {}, tmp_path)
    progress.begin("05_vit")
    record(tmp_path, "05_vit", 1, epochs=2)
    with caplog.at_level(logging.INFO, logger="run_all"), \
            live_line(progress, every=0.01, quiet_every=0.0):
        deadline = time.time() + 10
        while "epoch 1/2" not in caplog.text and time.time() < deadline:
            time.sleep(0.02)
        record(tmp_path, "05_vit", 2, epochs=2)
        while "epoch 2/2" not in caplog.text and time.time() < deadline:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "run_all"]
    assert [ln.split(" · ")[-1] for ln in lines] == [
        "05_vit epoch 1/2, val AUROC 0.800, ~0:06 to its end", "05_vit epoch 2/2, val AUROC 0.800"]


def test_the_log_file_takes_every_logger_and_the_console_only_run_all(tmp_path, capsys):
    path = tmp_path / "reports" / "run_all.log"
    with console_logging(), log_file(path):
        logging.getLogger("run_all").info("start   00_eda (never run)")
        logging.getLogger("papermill").info("Input Notebook:  x.ipynb")
        logging.getLogger("papermill").info("Executing Cell 3-----")
        logging.getLogger("traitlets").warning("Alternative text is missing on 1 image(s).")
        logging.getLogger("run_all").error("FAILED  b in 0:01: E\n\x1b[31mTraceback\x1b[39m")
    err = capsys.readouterr().err
    assert err == "start   00_eda (never run)\nFAILED  b in 0:01: E\nTraceback\n"
    text = path.read_text()
    assert "papermill INFO: Input Notebook:  x.ipynb" in text and "Alternative text" in text
    assert "Executing Cell" not in text and "\x1b[" not in text
    with console_logging(verbose=True):  # --verbose: the console shows everything
        logging.getLogger("papermill").info("cell output")
    assert capsys.readouterr().err == "cell output\n"
    logging.getLogger("papermill").warning("after the run")
    assert "after the run" not in path.read_text()  # the handlers are gone again
