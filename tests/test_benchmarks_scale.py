"""benchmarks.nih_scale and benchmarks.gpu, on a few hundred rows and tiny sizes.

No timing assertions (the machine is shared): the layout is the Kaggle one, the measured
pipeline reads it, memory sampling counts children, the GPU script's parts run on a CPU
and say what they skip.
"""
from __future__ import annotations

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


def test_gpu_parts_on_cpu():
    cpu = torch.device("cpu")
    rows = [gpu_parts.train_rate("simple_cnn", mode, 32, 2, 1, 1, cpu) for mode in gpu_parts.MODES]
    assert [r["mode"] for r in rows] == ["fp32", "amp", "amp+channels_last"]
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16", "bfloat16"]
    assert all(r["images_per_s"] > 0 for r in rows)
    sampler = gpu_parts.GpuSampler(cpu)
    with sampler:
        pass
    assert sampler.summary() == "utilisation unavailable (no GPU)"


BLOCKER = """
    import sys
    BLOCKED = {"albumentations", "pydicom", "papermill", "efficientnet_pytorch",
               "pytorch_grad_cam", "cv2"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    sys.argv = ["gpu", "--cpu-smoke", "--models", "simple_cnn", "--data", sys.argv[1]]
    from benchmarks import gpu
    sys.exit(gpu.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_gpu_cpu_smoke_without_the_packages_a_gpu_machine_lacks(tmp_path):
    """Parts 1 and 3 need torch only; the rest says which module it missed."""
    script = tmp_path / "blocked.py"
    script.write_text(textwrap.dedent(BLOCKER))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "nodata")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^simple_cnn\s+amp\+channels_last\s+bfloat16\s+\d", out, re.M)
    assert "2. cached input pipeline" in out and "missing module 'cv2'" in out
    assert re.search(r"simple_cnn AMP \+ channels_last from 'fixed on-device batches", out)
    assert "skipped with --cpu-smoke" in out and "benchmarks.gpu: done" in out


def test_gpu_cpu_smoke_with_every_package(tmp_path, capsys):
    data = gpu._smoke_data(tmp_path / "d")
    assert gpu.main(["--cpu-smoke", "--models", "simple_cnn", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cache \+ albumentations strong \(training\)\s+\d+\.\d images/s", out)
    assert re.search(r"cache uint8 \+ GPU augment \(torch only\)\s+\d+\.\d images/s", out)
    assert re.search(r"simple_cnn AMP \+ channels_last from .*images/s.*unavailable", out)
