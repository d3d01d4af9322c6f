"""benchmarks.device_prep: the wheel list, the device command and the data subset, with no
network and no download (the installed metadata of this venv only)."""
from __future__ import annotations

from importlib import metadata

import pytest

from benchmarks import device_prep as dp


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return dp.wheel_set(dp.runtime_roots())[0]


def test_wheel_set_leaves_out_what_the_device_has(pins):
    assert not set(pins) & dp.DEVICE_HAS
    assert not [n for n in pins if n in ("torch", "triton") or n.startswith(("nvidia-", "cuda-"))]
    assert not set(pins) & {"pytest", "playwright", "kaggle", "python-gdcm"}  # NOT_NEEDED


def test_wheel_set_has_the_missing_packages_and_their_needs(pins):
    for name in ("albumentations", "pydicom", "papermill", "grad-cam", "efficientnet-pytorch",
                 "nbconvert", "ipykernel"):
        assert name in pins, name
    # transitive, not on the device image: albumentations -> albucore, pydantic;
    # papermill/nbclient -> jupyter-client; nbconvert -> bleach[css] -> tinycss2 (an extra)
    for name in ("albucore", "pydantic", "jupyter-client", "tinycss2"):
        assert name not in dp.DEVICE_HAS and name in pins, name


def test_versions_are_the_installed_ones(pins):
    for name, version in pins.items():
        assert version == metadata.version(name), name


def test_markers_are_read_for_python_312_on_linux():
    dist = metadata.distribution("papermill")  # aiohttp; python_version == "3.12"
    assert "aiohttp" in {r.name for r in dp.requires(dist, set())}
    assert not [n for n in dp.wheel_set(["ipykernel"])[0] if n == "appnope"]  # Darwin only


def test_device_command_fits_and_names_the_carried_folders():
    command = dp.device_command()
    assert len(command) <= dp.MAX_COMMAND
    assert dp.CARRY == [".whl", ".bench_data"]
    assert "--target /tmp/site .whl/*.whl" in command
    assert "--data .bench_data/kermany224" in command
    assert "--out $OUT/gpu_benchmark.json" in command
    assert dp.BUDGET_S + 60 <= dp.TIMEOUT_S <= 600


def test_has_wheel_matches_normalised_names(tmp_path):
    (tmp_path / "efficientnet_pytorch-0.7.1-py3-none-any.whl").touch()
    assert dp.has_wheel(tmp_path, "efficientnet-pytorch", "0.7.1")
    assert not dp.has_wheel(tmp_path, "efficientnet-pytorch", "0.7.0")


def test_copy_subset_keeps_the_layout_and_n_per_class(tmp_path):
    src, dst = tmp_path / "kermany224", tmp_path / "out" / "kermany224"
    counts = {("train", "NORMAL"): 5, ("train", "PNEUMONIA"): 3, ("test", "NORMAL"): 4}
    for (split, label), n in counts.items():
        (src / split / label).mkdir(parents=True)
        for i in range(n):
            (src / split / label / f"img{i}.jpeg").write_bytes(bytes([i]))
        (src / split / label / "notes.txt").write_text("not an image")
    (dst / "stale").mkdir(parents=True)  # an earlier copy is replaced, not added to
    assert dp.copy_subset(src, dst, 2) == 6
    got = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    assert got == {"train/NORMAL/img0.jpeg", "train/NORMAL/img2.jpeg",
                   "train/PNEUMONIA/img0.jpeg", "train/PNEUMONIA/img1.jpeg",
                   "test/NORMAL/img0.jpeg", "test/NORMAL/img2.jpeg"}
    assert dp.copy_subset(src, dst, 4) == 4 + 3 + 4  # a class with fewer gives all it has


def test_check_sizes_fails_over_the_limit(capsys):
    assert dp.check_sizes({"a": 10, "b": 20}, limit=100) == 30
    with pytest.raises(SystemExit, match="over"):
        dp.check_sizes({"a": 60, "b": 50}, limit=100)


def test_dry_run_downloads_and_copies_nothing(monkeypatch, capsys):
    def refuse(*a, **k):
        raise AssertionError("--dry-run must not fetch or copy")

    monkeypatch.setattr(dp, "download", refuse)
    monkeypatch.setattr(dp, "copy_subset", refuse)
    assert dp.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"albumentations=={metadata.version('albumentations')}" in out
    assert dp.device_command() in out


def test_prune_keeps_one_version_of_each(tmp_path):
    for name in ("pydicom-3.0.2-py3-none-any.whl", "pydicom-3.0.1-py3-none-any.whl",
                 "ttach-0.0.3-py3-none-any.whl"):
        (tmp_path / name).touch()
    assert dp.prune(tmp_path, {"pydicom": "3.0.2"}) == ["pydicom-3.0.1-py3-none-any.whl",
                                                        "ttach-0.0.3-py3-none-any.whl"]
    assert [p.name for p in tmp_path.iterdir()] == ["pydicom-3.0.2-py3-none-any.whl"]
