"""Bad input is refused early, by name: unreadable training images and impossible configs.

Training data: a Kermany-layout folder of real images (shared kermany224) with a zero-byte
and a truncated JPEG among them. The policy `on_bad_image` should act at manifest time:
`error` names the offenders, `skip` drops them and lists them in `attrs["skipped"]`
(`utils.data.dataset.check_images`). The later safety nets (the cache build lists every
unreadable file; the dataset names the file) are tested too.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import shared_path
from utils.config import ConfigError, make_config

@pytest.fixture
def kermany_with_bad(tmp_path) -> tuple[Path, list[Path]]:
    """`chest_xray/train/{NORMAL,PNEUMONIA}`: 12 real images each, plus two broken files."""
    real = shared_path("kermany224", "train")
    root = tmp_path / "chest_xray"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "train" / cls).mkdir(parents=True)
        for src in sorted((real / cls).iterdir())[:12]:
            (root / "train" / cls / src.name).symlink_to(src)
    empty = root / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    empty.write_bytes(b"")
    some_jpeg = next((real / "PNEUMONIA").iterdir()).read_bytes()
    truncated = root / "train" / "PNEUMONIA" / "person9999_bacteria_1.jpeg"
    truncated.write_bytes(some_jpeg[: len(some_jpeg) // 2])
    return root, [empty, truncated]


def _cfg(root: Path, policy: str):
    return make_config({"dataset": "kermany", "data_root": str(root), "on_bad_image": policy,
                        "model": "simple_cnn", "cache": False}, profile="smoke")


def test_error_policy_refuses_unreadable_files_naming_them(kermany_with_bad):
    from utils.data.dataset import load_manifest

    root, bad = kermany_with_bad
    with pytest.raises((ValueError, OSError)) as exc:  # BadImageError is a ValueError
        load_manifest(_cfg(root, "error"))
    for path in bad:
        assert path.name in str(exc.value)
    assert "on_bad_image" in str(exc.value)  # and says how to go on anyway


def test_skip_policy_drops_unreadable_files_and_lists_them(kermany_with_bad):
    from utils.data.dataset import load_manifest

    root, bad = kermany_with_bad
    with pytest.warns(UserWarning, match="2"):
        manifest = load_manifest(_cfg(root, "skip"))
    assert len(manifest) == 24
    assert not set(map(str, bad)) & set(manifest["path"])
    assert sorted(manifest.attrs["skipped"]) == sorted(map(str, bad))


def test_cache_build_lists_every_unreadable_file(kermany_with_bad, tmp_path):
    from utils.data.cache import CacheError, build_cache
    from utils.data.kermany import kermany_manifest

    root, bad = kermany_with_bad
    manifest = kermany_manifest(root)  # the source parser checks existence only
    assert set(map(str, bad)) <= set(manifest["path"])
    with pytest.raises(CacheError) as exc:
        build_cache(manifest, 32, tmp_path / "cache", workers=1, progress=False)
    message = str(exc.value)
    assert "2 of 26 images could not be read" in message
    assert all(str(p) in message for p in bad)
    assert not any((tmp_path / "cache").iterdir())  # nothing left that a later run could trust


def test_uncached_loading_names_the_bad_file(kermany_with_bad):
    from utils.data.dataset import CXRDataset
    from utils.data.images import BadImageError
    from utils.data.kermany import kermany_manifest

    root, bad = kermany_with_bad
    manifest = kermany_manifest(root)
    dataset = CXRDataset(manifest, ["Pneumonia"])
    for path in bad:
        with pytest.raises(BadImageError, match=path.name):
            dataset[manifest.index[manifest["path"] == str(path)][0]]


# --- configuration ---------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    ({"epochs": -2}, "epochs=-2 must be >= 1"),
    ({"batch_size": 0}, "batch_size=0 must be >= 1"),
    ({"image_size": 8}, "image_size=8 must be >= 16"),
    ({"model": "vit", "image_size": 200}, "image_size=200 must be a multiple of 16 for vit "
                                          "(16-pixel patches), e.g. 192 or 208"),
    ({"model": "mixer_small", "image_size": 40}, "e.g. 32 or 48"),
    ({"model": "vit_tiny", "image_size": 20}, "e.g. 16 or 32"),
    ({"model": "simple_cnn", "image_size": 16}, "image_size=16 must be >= 32 for simple_cnn"),
    ({"model": "densenet121", "image_size": 24}, "must be >= 32 for densenet121"),
    ({"on_bad_image": "ignore"}, "on_bad_image='ignore' is not one of ['error', 'skip']"),
    ({"val_fraction": -0.1}, "val_fraction=-0.1 must be in [0, 1)"),
])
def test_config_rejects_impossible_values_with_the_allowed_range(params, message):
    with pytest.raises(ConfigError) as exc:
        make_config(params, profile="smoke")
    assert message in str(exc.value)


def test_config_rejects_unknown_keys_and_lists_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        make_config({"epoch": 3, "lr_rate": 0.1}, profile="smoke")
    text = str(exc.value)
    assert "['epoch', 'lr_rate']" in text and "'epochs'" in text and "'lr'" in text


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("model", ["simple_cnn", "densenet121", "vit_tiny", "resnet18"])
def test_sizes_the_config_accepts_are_sizes_the_model_runs(model):
    """validate() agrees with the registry: accepted sizes run, refused sizes would fail."""
    from utils.models.registry import create_model

    for size in (16, 24, 32):
        try:
            make_config({"model": model, "image_size": size}, profile="smoke")
        except ConfigError:
            accepted = False
        else:
            accepted = True
        try:
            net = create_model(model, 1, pretrained=False, image_size=size).eval()
            with torch.no_grad():
                runs = net(torch.zeros(2, 1, size, size)).shape == (2, 1)
        except (RuntimeError, ValueError):
            runs = False
        assert accepted == runs, f"{model} at {size}px: config accepts={accepted}, runs={runs}"
