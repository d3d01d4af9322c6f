"""benchmarks.nih_scale and benchmarks.gpu, on a few hundred rows and tiny sizes.

No timing assertions (the machine is shared): the layout is the Kaggle one, the measured
pipeline reads it, memory sampling counts children, the GPU script's parts run on a CPU
and say what they skip.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import gpu, gpu_parts, nih_layout, nih_scale
from conftest import shared_path
from utils.data.images import check_image, read_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def entries() -> pd.DataFrame:
    return nih_layout.read_entries(shared_path("nih", "Data_Entry_2017_v2020.csv.gz")).head(300)


def test_layout_is_the_kaggle_one_with_a_patient_level_test_list(tmp_path, entries):
    bbox = pd.read_csv(shared_path("nih", "BBox_List_2017.csv.gz"))
    root = nih_layout.write_layout(entries, tmp_path / "nih", bbox=bbox, workers=2)
    files = sorted((root / "images_001" / "images").iterdir())
    assert [f.name for f in files] == sorted(entries["Image Index"])
    check_image(files[0])
    assert read_image(files[0]).shape == (64, 64)
    test = (root / "test_list.txt").read_text().split()
    train_val = (root / "train_val_list.txt").read_text().split()
    assert sorted(test + train_val) == sorted(entries["Image Index"]) and 0 < len(test) < 150
    pid = dict(zip(entries["Image Index"], entries["Patient ID"]))
    assert not {pid[n] for n in test} & {pid[n] for n in train_val}
    boxes = pd.read_csv(root / "BBox_List_2017.csv")
    assert set(boxes["Image Index"]) <= set(entries["Image Index"])


def test_measure_runs_the_training_manifest_path_and_the_cache(tmp_path, entries):
    root = nih_layout.write_layout(entries, tmp_path / "nih", workers=1)
    row = nih_scale.measure(root, 32, tmp_path / "cache", workers=1)
    assert row["rows"] == 300 and row["cache_img_per_s"] > 0 and row["cpu_s"] > 0
    test = len((root / "test_list.txt").read_text().split())
    assert row["split"]["test"] == test and set(row["split"]) == {"train", "val", "test"}
    assert {"nih_manifest", "assign_splits", "check_images", "fingerprints"} <= set(row["parts"])
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one cache, of every row


HOG = """
    import subprocess, sys
    child = "import time; b = b'x' * (150 << 20); print('ready', flush=True); time.sleep(2)"
    subprocess.run([sys.executable, "-c", child])
"""


def test_tree_memory_counts_the_children():
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOG)], stdout=subprocess.PIPE)
    with nih_scale.TreeMemory(proc.pid, interval=0.02) as memory:
        proc.communicate(timeout=60)
    assert memory.peak_rss >= 150 << 20  # held by the grandchild, not the process watched
    assert not memory.pss_known or memory.peak_pss >= 150 << 20


def test_scaling_is_seconds_per_row_largest_over_smallest():
    rows = [{"rows": 100, "manifest_s": 1.0, "cache_s": 1.0},
            {"rows": 1000, "manifest_s": 15.0, "cache_s": 15.0}]
    assert nih_scale.scaling(rows) == pytest.approx(1.5)


@pytest.mark.slow
def test_nih_scale_end_to_end_on_a_few_hundred_rows(tmp_path, capsys):
    shared_path("nih", "Data_Entry_2017_v2020.csv.gz")
    result = nih_scale.main(["--sizes", "200", "--image-size", "16", "--workers", "1",
                             "--work-dir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert re.search(r"^\s+rows manifest_s cache_img_per_s peak_rss_mb", out, re.M)
    assert re.search(r"^\s+200\s+\d+\.\d\d\s+\d+\s+\d+", out, re.M)
    assert out.strip().splitlines()[-1] == f"scaling: {result:.2f}"
    assert not list((tmp_path / "w").iterdir())  # layouts and caches removed


def test_nih_scale_without_the_label_file_skips(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXR_SHARED_DATA", str(tmp_path))
    assert nih_scale.main([]) is None
    assert "skipped" in capsys.readouterr().out


def test_gpu_without_cuda_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    assert gpu.NO_CUDA in capsys.readouterr().out


def test_gpu_that_torch_cannot_use_is_one_message_and_status_1(capsys, monkeypatch):
    from utils import runtime

    monkeypatch.setattr(runtime, "cuda_problem", lambda: "torch is built for CUDA 13.0 ...")
    assert gpu.main([]) == 1
    assert "torch is built for CUDA 13.0" in capsys.readouterr().out


def test_gpu_parts_on_cpu():
    """fit's own step in each mode (on the CPU fit trains in fp32: AMP is CUDA-only)."""
    cpu = torch.device("cpu")
    rows = [gpu_parts.train_rate("simple_cnn", mode, 32, 2, 1, 1, cpu) for mode in gpu_parts.MODES]
    assert [r["mode"] for r in rows] == ["fp32", "amp", "amp+channels_last"]
    assert [r["dtype"] for r in rows] == ["float32"] * 3 and gpu_parts.fit_mode(cpu) == "fp32"
    assert all(r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 and r["error"] is None
               for r in rows)
    sampler = gpu_parts.GpuSampler(cpu)
    with sampler:
        pass
    assert sampler.summary() == "utilisation unavailable (no GPU)"


def test_a_model_row_that_fails_says_why_and_the_next_one_runs(monkeypatch):
    cpu = torch.device("cpu")
    failed = gpu_parts.train_rate("no_such_model", gpu_parts.MODES[0], 32, 2, 1, 1, cpu)
    assert failed["error"].startswith("KeyError") and failed["train_images_per_s"] is None
    assert gpu_parts.train_rate("simple_cnn", gpu_parts.MODES[0], 32, 2, 1, 1, cpu)["error"] is None


BLOCKER = """
    import sys
    BLOCKED = {"albumentations", "pydicom", "papermill", "efficientnet_pytorch",
               "pytorch_grad_cam", "cv2"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    sys.argv = ["gpu", "--cpu-smoke", "--models", "efficientnet_b4,simple_cnn",
                "--data", sys.argv[1], "--out", sys.argv[2]]
    from benchmarks import gpu
    sys.exit(gpu.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_gpu_cpu_smoke_without_the_packages_a_gpu_machine_lacks(tmp_path):
    """Parts 1 and 3 need torch only; the rest says which module it missed; a model whose
    package is missing fails in its own rows."""
    script = tmp_path / "blocked.py"
    script.write_text(textwrap.dedent(BLOCKER))
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "nodata"), str(out)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    text = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^efficientnet_b4\s+fp32\s+failed: needs the missing module "
                     r"'efficientnet_pytorch'", text, re.M)
    assert re.search(r"^simple_cnn\s+amp\+channels_last\s+float32\s+\d", text, re.M)
    assert "3. cached input pipeline" in text and "missing module 'cv2'" in text
    assert re.search(r"simple_cnn fp32 from 'fixed on-device batches", text)
    assert "skipped: --cpu-smoke" in text and "benchmarks.gpu: done" in text
    report = json.loads(out.read_text())
    assert report["schema"] == 1 and report["device"]["name"].startswith("CPU smoke")
    rows = {(r["model"], r["mode"]): r for r in report["models"]}
    assert rows[("efficientnet_b4", "fp32")]["train_images_per_s"] is None
    assert rows[("simple_cnn", "fp32")]["error"] is None
    assert "cv2" in report["errors"]["pipeline"] and report["epoch"]["images_per_s"] > 0


def test_gpu_cpu_smoke_with_every_package(tmp_path, capsys):
    data = gpu._smoke_data(tmp_path / "d")
    out = tmp_path / "bench.json"
    assert gpu.main(["--cpu-smoke", "--models", "simple_cnn", "--data", str(data),
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"cache \+ albumentations strong \(training\)\s+\d+\.\d images/s", text)
    assert re.search(r"cache uint8 \+ GPU augment \(torch only\)\s+\d+\.\d images/s", text)
    assert re.search(r"same, uint8 batches normalised on the GPU\s+\d+\.\d images/s", text)
    assert re.search(r"simple_cnn fp32 from .*images/s.*unavailable", text)
    assert "host syncs per training step (fit's step, simple_cnn, fp32): 0.0" in text
    report = json.loads(out.read_text())
    assert set(report) >= {"schema", "created", "command", "device", "models", "pipeline",
                           "epoch", "run_all"}
    assert report["command"].startswith("python -m benchmarks.gpu --cpu-smoke")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report["created"])
    assert {r["mode"] for r in report["models"]} == {
        "fp32", "amp", "amp+channels_last", "amp+channels_last+deterministic"}
    assert report["checks"]["host_syncs_per_step"] == 0
    assert [p["error"] for p in report["pipeline"]] == [None, None, None]
    assert report["skipped"]["run_all"] == "--cpu-smoke" and "errors" not in report
    # the file's contract with the plan: run_all.py --plan prices from these figures
    from utils.study import cost
    rates = cost.rates_for("simple_cnn", 224, cost.GPUS["t4"], cost.load_figures(out))
    row = next(r for r in report["models"] if r["mode"] == "amp+channels_last")
    assert rates.source.startswith("measured on CPU smoke") and rates.train == pytest.approx(
        row["train_images_per_s"] * (row["image_size"] / 224) ** 2)


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    """OpenCV without libGL raises ImportError (not ModuleNotFoundError)."""
    def no_libgl(*args, **kwargs):
        raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(gpu_parts, "build_input_cache", no_libgl)
    out = tmp_path / "bench.json"
    assert gpu.main(["--cpu-smoke", "--models", "simple_cnn", "--data",
                     str(gpu._smoke_data(tmp_path / "d")), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "failed: ImportError: libGL.so.1: cannot open shared object file" in text
    part4 = text.split("== 4.")[1]
    assert "fixed on-device batches" in part4 and "== 5." in part4
    report = json.loads(out.read_text())
    assert report["errors"] == {"pipeline": "ImportError: libGL.so.1: cannot open shared "
                                             "object file: No such file or directory"}
    assert report["models"] and report["epoch"]["error"] is None


def test_the_real_run_is_one_seed_and_needs_data(tmp_path, capsys, monkeypatch):
    import argparse

    seen = []
    monkeypatch.setattr(gpu.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setattr(gpu.importlib.util, "find_spec", lambda name: object())
    args = argparse.Namespace(data=tmp_path, skip_run_all=False, cpu_smoke=False)
    report = gpu.new_report(torch.device("cpu"), "test")
    gpu._real_run(args, tmp_path, float("inf"), report)
    assert " ".join(seen[0]).count("-p seeds=1") == 1 and report["run_all"]["returncode"] == 0
    args.data = tmp_path / "absent"
    gpu._real_run(args, tmp_path, float("inf"), report)
    assert f"skipped: --data {args.data} is not a folder" in capsys.readouterr().out
    assert len(seen) == 1


def test_uint8_batches_normalised_after_the_transfer_equal_the_float32_items(tmp_path):
    """benchmarks.input_pipeline --transfer compares like with like: the uint8 items,
    normalised per batch after `.to(device)`, are the float32 items (no augmentation)."""
    from benchmarks.input_pipeline import normalise_after_transfer, uint8_dataset
    from utils.data.dataset import CXRDataset
    from utils.data.transforms import build_transform

    files = gpu_parts.find_images(gpu._smoke_data(tmp_path / "d"), 0)
    manifest = gpu._manifest(files)
    floats = CXRDataset(manifest, ["Pneumonia"], build_transform("none", 32, 0.449, 0.226))
    raw = uint8_dataset(manifest, None, 1, "none", 32)
    batch = torch.stack([raw[i][0] for i in range(len(raw))])
    assert batch.dtype == torch.uint8
    expected = torch.stack([floats[i][0] for i in range(len(floats))])
    torch.testing.assert_close(normalise_after_transfer(0.449, 0.226)(batch), expected,
                               atol=1e-5, rtol=1e-5)
