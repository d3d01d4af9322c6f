"""The cache at scale: a killed build is never trusted and resumes; syncs come in batches;
two builders of one cache take turns; the cache object carries no per-image list."""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data import cache as cache_mod
from utils.data import cache_state
from utils.data.cache import CacheError, ImageCache, build_cache, cache_key
from utils.data.images import read_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pngs(tmp_path) -> list[str]:
    """12 small PNGs with distinct pixels."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        p = tmp_path / "src" / f"{i:02d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def _ref(path: str, side: int) -> np.ndarray:
    return cv2.resize(read_image(path), (side, side), interpolation=cv2.INTER_AREA)


KILLER = """
    import os, signal, sys
    from utils.data import cache, cache_state
    cache_state.SYNC_SECONDS = 0.0          # log every finished chunk at once
    paths, folder, kill_after = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
    read, calls = cache.read_image, [0]
    def dying_read(path, *args, **kwargs):
        if calls[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a hard crash
        calls[0] += 1
        return read(path, *args, **kwargs)
    cache.read_image = dying_read
    cache.build_cache(paths, 16, folder, workers=1, chunk_size=2, progress=False)
"""


def test_a_killed_build_is_not_trusted_and_resumes_with_the_missing_chunks(
        tmp_path, pngs, monkeypatch):
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    done = subprocess.run([sys.executable, str(script), ",".join(pngs), str(tmp_path / "c"), "7"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9  # SIGKILL in the middle of chunk 3 (images 6-7)
    folder = tmp_path / "c" / cache_key(pngs, 16)
    assert not (folder / "complete").exists()
    with pytest.raises(CacheError, match="not a complete image cache"):
        ImageCache.open(folder)
    assert cache_state.read_done(folder / "done.log", 6) == {0, 1, 2}
    calls = []
    monkeypatch.setattr(cache_mod, "read_image",
                        lambda p, *a, **k: calls.append(p) or read_image(p, *a, **k))
    resumed = build_cache(pngs, 16, tmp_path / "c", workers=1, chunk_size=2, progress=False)
    assert calls == pngs[6:]  # only chunks 3, 4, 5 decoded again
    for i, p in enumerate(pngs):
        np.testing.assert_array_equal(resumed[i], _ref(p, 16))


def test_a_torn_or_garbled_done_log_counts_only_whole_lines(tmp_path, pngs, monkeypatch):
    folder = tmp_path / "c" / cache_key(pngs, 16)
    monkeypatch.setattr(cache_mod, "read_image", _fail_after(4))
    with pytest.raises(KeyboardInterrupt):
        build_cache(pngs, 16, tmp_path / "c", workers=1, chunk_size=2, progress=False)
    assert (folder / "done.log").read_text() == "0\n1\n"  # committed on the way out
    (folder / "done.log").write_bytes(b"0\n\x00\x00\n9\n7\n1")  # 1 torn, 9 out of range
    assert cache_state.read_done(folder / "done.log", 6) == {0}
    calls = []
    monkeypatch.setattr(cache_mod, "read_image",
                        lambda p, *a, **k: calls.append(p) or read_image(p, *a, **k))
    resumed = build_cache(pngs, 16, tmp_path / "c", workers=1, chunk_size=2, progress=False)
    assert calls == pngs[2:]
    np.testing.assert_array_equal(resumed[3], _ref(pngs[3], 16))


def _fail_after(n: int):
    calls = [0]

    def read(path, *args, **kwargs):
        if calls[0] == n:
            raise KeyboardInterrupt("simulated Ctrl-C")
        calls[0] += 1
        return read_image(path, *args, **kwargs)
    return read


def test_the_arrays_are_synced_per_batch_of_chunks_not_per_chunk(tmp_path, pngs, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(cache_state, "SYNC_SECONDS", 1e9)
    build_cache(pngs, 16, tmp_path / "a", workers=1, chunk_size=2, progress=False)
    assert synced.count("images.npy") == 1 and synced.count("sizes.npy") == 1  # 6 chunks
    synced.clear()
    monkeypatch.setattr(cache_state, "SYNC_SECONDS", 0.0)
    build_cache(pngs, 16, tmp_path / "b", workers=1, chunk_size=2, progress=False)
    assert synced.count("images.npy") == 6  # a sync before every chunk is logged


HOLDER = """
    import sys, time
    from pathlib import Path
    from utils.data.cache_state import build_lock
    folder, flag = Path(sys.argv[1]), Path(sys.argv[2])
    with build_lock(folder):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
        flag.write_text("released")
"""


def test_a_second_builder_waits_for_the_first(tmp_path, pngs, caplog):
    folder = tmp_path / "c" / cache_key(pngs, 16)
    script, flag = tmp_path / "holder.py", tmp_path / "released"
    script.write_text(textwrap.dedent(HOLDER))
    holder = subprocess.Popen([sys.executable, str(script), str(folder), str(flag), "1.5"],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with caplog.at_level(logging.WARNING, logger="utils.data.cache_state"):
        cache = build_cache(pngs, 16, tmp_path / "c", workers=1, progress=False)
    assert flag.exists()  # it could only start once the holder let go
    assert "another process is building" in caplog.text
    assert holder.wait(timeout=30) == 0 and len(cache) == len(pngs)


def test_the_cache_object_holds_no_per_image_list(tmp_path, pngs):
    cache = build_cache(pngs, 16, tmp_path / "c", workers=1, progress=False)
    assert cache.paths == pngs and len(cache) == len(pngs)
    state = pickle.loads(pickle.dumps(cache)).__dict__
    assert not any(isinstance(v, (list, tuple)) for v in state.values())
    assert state["_sizes"].shape == (len(pngs), 2)  # the one per-image array: N×2 int32
