"""The pre-resized uint8 cache: exact pixels, keys that change, resume, bad files, workers."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from conftest import shared_path
from utils.data import cache as cache_mod
from utils.data.cache import CacheError, ImageCache, build_cache, cache_key
from utils.data.images import read_image


def _ref(path: str | Path, side: int, draft: bool = True) -> np.ndarray:
    """What the cache must store: the reader's output resized to side×side with INTER_AREA.

    With draft, JPEGs at least twice the side are read with a max_side that keeps their
    shorter side >= side (PIL decodes them at reduced scale).
    """
    max_side = None
    if draft and str(path).lower().endswith((".jpg", ".jpeg")):
        with Image.open(path) as im:
            w, h = im.size
        if min(h, w) >= 2 * side:
            max_side = math.ceil(side * max(h, w) / min(h, w))
    return cv2.resize(read_image(path, max_side=max_side), (side, side),
                      interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def kermany_files() -> list[Path]:
    root = shared_path("kermany224", "train")
    return sorted((root / "NORMAL").glob("*.jpeg"))[:6] + sorted(
        (root / "PNEUMONIA").glob("*.jpeg"))[:6]


@pytest.fixture(scope="module")
def fullres_files() -> list[Path]:
    """The smallest full-resolution file of each (format, PIL mode): RGB, L, RGBA, P."""
    best: dict[tuple, Path] = {}
    for p in sorted(shared_path("fullres", "images").iterdir(), key=lambda p: p.stat().st_size):
        with Image.open(p) as im:
            best.setdefault((im.format, im.mode), p)
    return list(best.values())


@pytest.fixture
def copies(tmp_path, kermany_files) -> list[Path]:
    """Writable copies, for tests that touch, corrupt or count files."""
    src = tmp_path / "src"
    src.mkdir()
    return [Path(shutil.copy(p, src / p.name)) for p in kermany_files]


class _Counter:
    """read_image stand-in that counts calls and can fail after `fail_after` of them."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, path, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return read_image(path, *args, **kwargs)


@pytest.mark.parametrize("draft", [True, False])
def test_round_trip_equals_reader_plus_inter_area(tmp_path, fullres_files, draft):
    cache = build_cache(fullres_files, 96, tmp_path / "c", draft=draft, workers=1,
                        progress=False)
    assert len(cache) == len(fullres_files) and cache.size == 96
    for i, p in enumerate(fullres_files):
        img = cache[i]
        assert img.dtype == np.uint8 and img.shape == (96, 96)
        np.testing.assert_array_equal(img, _ref(p, 96, draft), err_msg=str(p))
        with Image.open(p) as im:  # the original size even when decoded at reduced scale
            assert cache.original_size(i) == (im.height, im.width)
    assert cache.paths == [str(p) for p in fullres_files]
    reopened = ImageCache.open(cache.folder)
    np.testing.assert_array_equal(reopened[-1], cache[len(cache) - 1])
    with pytest.raises(IndexError):
        cache[len(cache)]


def test_parallel_build_equals_serial_and_accepts_a_manifest(tmp_path, fullres_files):
    import pandas as pd

    manifest = pd.DataFrame({"path": [str(p) for p in fullres_files]})
    serial = build_cache(manifest, 64, tmp_path / "a", workers=1, chunk_size=2, progress=False)
    parallel = build_cache(manifest, 64, tmp_path / "b", workers=2, chunk_size=2, progress=False)
    assert serial.key == parallel.key
    for i in range(len(serial)):
        np.testing.assert_array_equal(serial[i], parallel[i])


def _eval_tensor(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """Eval transform = resize only (INTER_AREA), then normalise to a 1×H×W float tensor."""
    tf = A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA),
                    A.Normalize(mean=0.5, std=0.25, max_pixel_value=255.0), ToTensorV2()])
    return tf(image=img)["image"]


def test_cached_eval_tensors_match_uncached(tmp_path, fullres_files):
    exact = build_cache(fullres_files, 224, tmp_path / "c", draft=False, workers=1,
                        progress=False)
    drafted = build_cache(fullres_files, 224, tmp_path / "c", workers=1, progress=False)
    margin = build_cache(fullres_files, 224, tmp_path / "c", margin=256 / 224, workers=1,
                         progress=False)
    assert margin.size == 256 and len({exact.key, drafted.key, margin.key}) == 3
    for i, p in enumerate(fullres_files):
        uncached = _eval_tensor(read_image(p))  # decode the full image, resize to 224
        assert torch.equal(_eval_tensor(exact[i]), uncached), p   # cache side == output side
        # stated tolerances, in 0..255 pixel units of mean absolute difference:
        # a JPEG decoded at reduced scale < 2.5 (max 1.94 over the 65 fullres JPEGs);
        # a 256 cache resized again to 224 < 2
        for cached, tol in ((drafted, 2.5), (margin, 2.0)):
            diff = (_eval_tensor(cached[i]) - uncached).abs().mean().item() * 0.25 * 255
            assert diff < tol, f"{p}: mean abs diff {diff:.2f}/255 (tolerance {tol})"
        if p.suffix.lower() == ".png":  # only JPEGs are ever decoded at reduced scale
            assert torch.equal(_eval_tensor(drafted[i]), uncached), p


def test_changed_files_or_size_give_a_new_key_and_a_rebuild(tmp_path, copies, monkeypatch):
    counter = _Counter()
    monkeypatch.setattr(cache_mod, "read_image", counter)
    first = build_cache(copies, 32, tmp_path / "c", workers=1, progress=False)
    assert counter.calls == len(copies)
    again = build_cache(copies, 32, tmp_path / "c", workers=1, progress=False)
    assert again.key == first.key and counter.calls == len(copies)  # reused: no decode

    fewer = build_cache(copies[1:], 32, tmp_path / "c", workers=1, progress=False)
    bigger = build_cache(copies, 48, tmp_path / "c", workers=1, progress=False)
    os.utime(copies[0], ns=(1, 1))                                   # same name, new mtime
    touched = build_cache(copies, 32, tmp_path / "c", workers=1, progress=False)
    keys = {first.key, fewer.key, bigger.key, touched.key}
    assert len(keys) == 4 and len(list((tmp_path / "c").iterdir())) == 4
    assert counter.calls == len(copies) * 3 + len(copies) - 1
    assert bigger[0].shape == (48, 48) and len(fewer) == len(copies) - 1
    forced = build_cache(copies, 32, tmp_path / "c", workers=1, progress=False, force=True)
    assert forced.key == touched.key and counter.calls == len(copies) * 4 + len(copies) - 1


def test_interrupted_build_resumes_with_only_the_missing_chunks(tmp_path, copies, monkeypatch):
    chunk, done_chunks = 4, 2
    monkeypatch.setattr(cache_mod, "read_image", _Counter(fail_after=chunk * done_chunks + 1))
    with pytest.raises(KeyboardInterrupt):
        build_cache(copies, 32, tmp_path / "c", workers=1, chunk_size=chunk, progress=False)
    folder = tmp_path / "c" / cache_key([str(p) for p in copies], 32)
    assert not (folder / "complete").exists()
    with pytest.raises(CacheError, match="not a complete image cache"):
        ImageCache.open(folder)

    counter = _Counter()
    monkeypatch.setattr(cache_mod, "read_image", counter)
    resumed = build_cache(copies, 32, tmp_path / "c", workers=1, chunk_size=chunk, progress=False)
    assert counter.calls == len(copies) - chunk * done_chunks
    for i, p in enumerate(copies):
        np.testing.assert_array_equal(resumed[i], _ref(p, 32))


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_fail_the_build_naming_them(tmp_path, copies, workers):
    (copies[2].parent / "broken.jpeg").write_bytes(copies[2].read_bytes()[:200])  # truncated
    (copies[2].parent / "notanimage.png").write_bytes(b"this is not a png")
    files = copies + [copies[2].parent / "broken.jpeg", copies[2].parent / "notanimage.png"]
    with pytest.raises(CacheError) as err:
        build_cache(files, 32, tmp_path / "c", workers=workers, chunk_size=4, progress=False)
    msg = str(err.value)
    assert "2 of 14 images" in msg and "broken.jpeg" in msg and "notanimage.png" in msg
    assert not list((tmp_path / "c").iterdir())  # no cache with holes is left behind


def test_rejects_missing_files_and_small_margin(tmp_path, copies):
    with pytest.raises(CacheError, match="do not exist"):
        build_cache(copies + [tmp_path / "gone.png"], 32, tmp_path / "c", progress=False)
    with pytest.raises(CacheError, match="margin"):
        build_cache(copies, 32, tmp_path / "c", margin=0.9, progress=False)


class _CacheDataset(torch.utils.data.Dataset):
    def __init__(self, cache: ImageCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.cache[i]), os.getpid()


def test_cache_in_a_dataloader_with_two_workers(tmp_path, kermany_files):
    cache = build_cache(kermany_files, 64, tmp_path / "c", workers=1, progress=False)
    cache[0]  # opened in the parent: the workers must not inherit/pickle the array
    loader = torch.utils.data.DataLoader(_CacheDataset(cache), batch_size=3, num_workers=2)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    pids = {int(p) for b in batches for p in b[1]}
    assert len(pids) == 2 and os.getpid() not in pids
    for i, p in enumerate(kermany_files):
        np.testing.assert_array_equal(images[i].numpy(), _ref(p, 64))


def test_benchmark_study_tree_and_batched_augment(tmp_path):
    """The input_pipeline benchmark's untimed parts; its GPU augmentation runs on CPU too."""
    from benchmarks.input_pipeline import fullres_manifest, gpu_augment, study_dataset

    shared_path("fullres")
    manifest = fullres_manifest(shared_path()).groupby("label").head(2)   # 2 of each class
    study = study_dataset(manifest, tmp_path / "tree", repeats=3)
    assert len(study) == 12 and study.class_to_idx == {"NORMAL": 0, "PNEUMONIA": 1}
    assert sorted(t for _, t in study.samples) == [0] * 6 + [1] * 6

    torch.manual_seed(0)
    batch = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    batch[..., :16] = 255                                      # left half bright
    out = gpu_augment(batch, 32, mean=0.5, std=0.25)
    assert out.shape == (16, 1, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -2 - 1e-5 and out.max() <= 2 + 1e-5   # (0 - .5)/.25 .. (1 - .5)/.25
    # rotations of at most 20 degrees keep (16, 4) and (16, 27) on their side of the edge,
    # so exactly one of them is bright: the left one unless the image was flipped
    left, right = out[:, 0, 16, 4] > 1.5, out[:, 0, 16, 27] > 1.5
    assert torch.equal(left, ~right)
    assert 0 < int(left.sum()) < 16                            # flips drawn per image


def test_benchmark_ratio_with_the_cache_build_counted():
    from benchmarks.input_pipeline import ratio_with_build

    # 10 img/s vs 100 img/s over 100 files: the study takes 10 s an epoch, the cache 1 s + 9 s
    assert ratio_with_build(10, 100, build_s=9, files=100, epochs=1) == pytest.approx(1.0)
    assert ratio_with_build(10, 100, build_s=9, files=100, epochs=20) == pytest.approx(200 / 29)
    assert ratio_with_build(10, 100, build_s=0, files=100, epochs=3) == pytest.approx(10)
