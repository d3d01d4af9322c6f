"""The speed benchmarks run end to end on tiny settings and end with one `ratio:` line.

No timing assertions: this machine is shared; only that the code paths work, that fit's
train-phase figure leaves validation out, and that run_all_demo reads a run's state file.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
import time

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks import run_all_demo, train_step
from utils.data.dataset import collate

RATIO = re.compile(r"^ratio: \d+\.\d\d$")


# tiny tensors; also restores the thread count that `train_step --threads 1` sets
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_train_step_main_prints_table_and_ratio(capsys):
    ratio = train_step.main(["--model", "simple_cnn", "--image-size", "32", "--batch-size", "2",
                             "--steps", "2", "--repeats", "2", "--warmup", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert RATIO.match(last_line(out)), out
    assert ratio > 0 and f"ratio: {ratio:.2f}" == last_line(out)
    assert "plain PyTorch loop (fp32)" in out and "fit (fp32, channels_last off)" in out
    if not torch.cuda.is_available():
        assert "no GPU" in out  # the AMP comparison says it did not run


def test_compare_rows_are_medians_of_interleaved_trials():
    rows = train_step.compare("simple_cnn", 32, 2, 2, 3, torch.device("cpu"), warmup=1)
    assert [r["loop"] for r in rows] == ["plain PyTorch loop (fp32)",
                                         "fit (fp32, channels_last off)"]
    for r in rows:
        assert len(r["rates"]) == 3 and r["images"] == 4  # 2 steps x batch 2, per trial
        assert r["rate"] == sorted(r["rates"])[1]


def test_amp_speedup_code_path_runs_on_cpu():
    (row,) = train_step.amp_speedup(("simple_cnn",), 32, 2, 1, 1, torch.device("cpu"), warmup=1)
    assert row["loop"] == "fit (AMP + channels_last)" and row["speedup"] > 0
    assert row["speedup"] == pytest.approx(row["rate"] / row["plain_rate"])


class SlowVal(train_step.RandomImages):
    def __getitem__(self, i: int):
        time.sleep(0.15)
        return super().__getitem__(i)


def test_fit_images_per_second_leaves_validation_out():
    """The fit figure is train images / train seconds: a slow val loader must not lower it."""
    loader = train_step.make_loader(4, 32, 2, torch.device("cpu"))
    val = DataLoader(SlowVal(2, 32), batch_size=2, collate_fn=collate)
    torch.manual_seed(0)
    from utils.models.registry import create_model

    model = create_model("simple_cnn", 1, pretrained=False)
    t = train_step.fit_loop(model, loader, val, 2, torch.device("cpu"))
    assert t["images"] == 4
    assert t["val_seconds"] >= 0.3  # two sleeping items
    assert t["seconds"] + t["val_seconds"] <= t["wall"] + 1e-6


FAKE_RUN_ALL = """
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    reports = Path(args[args.index("--reports-dir") + 1])
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "argv.json").write_text(json.dumps({"argv": args,
                                                   "cache": os.environ.get("CXR_CACHE_DIR"),
                                                   "python": sys.executable}))
    steps = {"00_eda": {"status": "ok", "duration_s": 1.5, "started": "2026-01-01T10:00:09"},
             "02_chexnet": {"status": "failed", "duration_s": 2.5, "error": "ValueError: x",
                            "started": "2026-01-01T10:00:01"}}
    (reports / ".run_state.json").write_text(json.dumps({"version": 1, "steps": steps}))
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


@pytest.fixture
def fake_run_all(tmp_path):
    script = tmp_path / "fake_run_all.py"
    script.write_text(textwrap.dedent(FAKE_RUN_ALL))
    (tmp_path / "data").mkdir()
    return script


def test_run_all_demo_reads_state_and_prints_ratio(tmp_path, fake_run_all, capsys):
    work, reports = tmp_path / "work", tmp_path / "kept-reports"
    ratio = run_all_demo.main(["--run-all", str(fake_run_all), "--data-root",
                               str(tmp_path / "data"), "--work-dir", str(work),
                               "--reports-dir", str(reports), "--budget", "10",
                               "--", "--only", "00_eda"])
    out = capsys.readouterr().out
    assert RATIO.match(last_line(out)), out
    assert re.search(r"^00_eda\s+ok\s+1\.5", out, re.M)
    assert re.search(r"^02_chexnet\s+failed\s+2\.5 .*ValueError: x", out, re.M)
    assert out.index("02_chexnet") < out.index("00_eda")  # run order (started), not name order
    assert "sum of steps 4.0 s" in out and "ensure_demo" not in out  # --data-root given
    sent = json.loads((reports / "argv.json").read_text())
    argv = sent["argv"]
    assert argv[:3] == ["--profile", "demo", "--force"] and argv[-2:] == ["--only", "00_eda"]
    assert argv[argv.index("--checkpoint-dir") + 1] == str(work / "checkpoints")
    assert sent["cache"] == str(work / "cache")
    assert sent["python"] == sys.executable  # the project's interpreter, not PATH's
    assert 0 < ratio < 10  # total (seconds of a tiny subprocess) / 10 s


def test_run_all_demo_failure_keeps_scratch_folder(tmp_path, fake_run_all, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT", "1")
    monkeypatch.setattr(run_all_demo.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "s"))
    run_all_demo.main(["--run-all", str(fake_run_all), "--data-root", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert f"scratch folder kept: {tmp_path / 's'}" in out and "exit status 1" in out
    assert (tmp_path / "s" / "run_all.log").exists()


def test_run_all_demo_success_removes_scratch_folder(tmp_path, fake_run_all, capsys, monkeypatch):
    monkeypatch.setattr(run_all_demo.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "s"))
    run_all_demo.main(["--run-all", str(fake_run_all), "--data-root", str(tmp_path / "data")])
    assert not (tmp_path / "s").exists()
    assert "scratch folder kept" not in capsys.readouterr().out


def test_run_all_demo_refuses_the_repo_reports(tmp_path):
    with pytest.raises(ValueError, match="repo's reports"):
        run_all_demo.run_demo(tmp_path, reports=run_all_demo.ROOT / "reports",
                              data_root=tmp_path)


def test_missing_state_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ran no step"):
        run_all_demo.step_rows(tmp_path / ".run_state.json")

