"""Manifest-time image checks run in worker processes, in chunks, and keep manifest order."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.data import checks, images


@pytest.fixture
def files(tmp_path) -> tuple[list[str], list[int]]:
    """20 small PNGs; rows 3, 9 and 17 are broken (empty, truncated, not an image)."""
    paths = []
    for i in range(20):
        p = tmp_path / f"img{i:02d}.png"
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(p)
        paths.append(str(p))
    Path(paths[3]).write_bytes(b"")
    Path(paths[9]).write_bytes(Path(paths[8]).read_bytes()[:30])
    Path(paths[17]).write_bytes(b"<html>not found</html>")
    return paths, [3, 9, 17]


def _record_pids(monkeypatch, tmp_path: Path) -> Path:
    """Make every check_image call append its process id to a file (forked workers too)."""
    log = tmp_path / "pids.txt"
    real = images.check_image

    def recording(path):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(path)

    monkeypatch.setattr(images, "check_image", recording)
    return log


def test_large_manifests_are_checked_in_worker_processes(files, tmp_path, monkeypatch):
    paths, bad = files
    log = _record_pids(monkeypatch, tmp_path)
    monkeypatch.setattr(checks, "MIN_PARALLEL", 0)
    found = checks.find_bad_images(paths, workers=2, chunk_size=4)
    assert [i for i, _ in found] == bad  # in manifest order, whichever worker finished first
    pids = {int(x) for x in log.read_text().split()}
    assert len(log.read_text().split()) == len(paths) and os.getpid() not in pids
    assert found == checks.find_bad_images(paths, workers=1, chunk_size=4)
    assert "empty" in found[0][1] and "truncated" in found[1][1]


def test_small_manifests_are_checked_in_this_process(files, tmp_path, monkeypatch):
    paths, bad = files
    log = _record_pids(monkeypatch, tmp_path)
    assert [i for i, _ in checks.find_bad_images(paths, workers=2)] == bad
    assert {int(x) for x in log.read_text().split()} == {os.getpid()}


def test_check_images_policies_and_the_old_import_path(files, monkeypatch):
    from utils.data.dataset import check_images  # where it used to live

    assert check_images is checks.check_images
    paths, bad = files
    monkeypatch.setattr(checks, "MIN_PARALLEL", 0)
    manifest = pd.DataFrame({"path": paths, "label": 0}, index=range(100, 120))
    manifest.attrs["skipped"] = ["missing.png"]
    with pytest.raises(images.BadImageError, match="3 of 20 images") as err:
        check_images(manifest, "error", workers=2)
    assert all(Path(paths[i]).name in str(err.value) for i in bad)
    with pytest.warns(UserWarning, match="skipping 3 unreadable"):
        kept = check_images(manifest, "skip", workers=2)
    assert len(kept) == 17 and not set(kept["path"]) & {paths[i] for i in bad}
    assert kept.attrs["skipped"] == ["missing.png"] + [paths[i] for i in bad]
    assert len(kept.attrs["skipped_reasons"]) == 3
    good = manifest.drop(index=[100 + i for i in bad])
    assert check_images(good, "error", workers=2) is good
    with pytest.raises(ValueError, match="on_bad_image='warn'"):
        check_images(good, "warn")
