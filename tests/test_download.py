"""Kaggle download CLI: without credentials it explains what to do (exit 2) and never imports
`kaggle`; with a (faked) API it unpacks into the layout the parsers read, atomically."""
from __future__ import annotations

import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from utils.data import download as dl


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(home)
    return env


def test_no_credentials_prints_what_to_do_and_exits_2(tmp_path):
    dest = tmp_path / "kaggle"
    result = subprocess.run([sys.executable, "-m", "utils.data.download", "rsna",
                             "--dest", str(dest)], cwd=ROOT, env=_clean_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    text = result.stdout + result.stderr
    for needed in ["credentials not found", "Create New Token", "chmod 600",
                   "~/.config/kaggle", "KAGGLE_USERNAME",
                   "rsna-pneumonia-detection-challenge/rules",
                   "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia",
                   "https://www.kaggle.com/datasets/nih-chest-xrays/data",
                   str(dest / "rsna-pneumonia-detection-challenge"),
                   f"run_all.py --data-root {dest}"]:
        assert needed in text, f"missing {needed!r} in:\n{text}"
    assert "Traceback" not in text
    assert not dest.exists()


def test_credentials_are_found_where_kaggle_looks(tmp_path, monkeypatch):
    for key, value in _clean_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("KAGGLE_") or k == "XDG_CONFIG_HOME"]:
        monkeypatch.delenv(key)
    assert dl.find_credentials() is None
    token = tmp_path / ".config" / "kaggle" / "kaggle.json"
    token.parent.mkdir(parents=True)
    token.write_text('{"username": "me", "key": "abc"}')
    assert dl.find_credentials() == str(token)
    token.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid kaggle.json"):
        dl.find_credentials()
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "abc")
    assert "KAGGLE_USERNAME" in dl.find_credentials()


def _fake_kaggle(monkeypatch, files: dict[str, bytes] | None, zip_name: str = "x.zip"):
    """Install a stand-in `kaggle` module whose API writes `files` as a zip (or fails)."""
    calls = []

    def fetch(slug, path, **kwargs):
        calls.append(slug)
        if files is None:
            raise ConnectionError("Name or service not known")
        with zipfile.ZipFile(Path(path) / zip_name, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)

    api = types.SimpleNamespace(dataset_download_files=fetch, competition_download_files=fetch)
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=api))
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "abc")
    return calls


def test_kermany_lands_in_chest_xray(tmp_path, monkeypatch, capsys):
    calls = _fake_kaggle(monkeypatch, {"chest_xray/train/NORMAL/IM-0001-0001.jpeg": b"x",
                                       "chest_xray/test/PNEUMONIA/person1_virus_1.jpeg": b"y"})
    assert dl.main(["kermany", "--dest", str(tmp_path)]) == 0
    assert calls == ["paultimothymooney/chest-xray-pneumonia"]
    assert (tmp_path / "chest_xray/train/NORMAL/IM-0001-0001.jpeg").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chest_xray"]   # staging removed
    assert "--data-root" in capsys.readouterr().out
    assert dl.main(["kermany", "--dest", str(tmp_path)]) == 0   # present: no second download
    assert calls == ["paultimothymooney/chest-xray-pneumonia"]


def test_rsna_competition_and_nih_share_folder(tmp_path, monkeypatch):
    calls = _fake_kaggle(monkeypatch, {"stage_2_train_labels.csv": b"patientId,x,y,width,"
                                       b"height,Target\n", "stage_2_train_images/a.dcm": b""})
    assert dl.main(["rsna", "--dest", str(tmp_path)]) == 0
    assert calls == ["rsna-pneumonia-detection-challenge"]
    assert (tmp_path / "rsna-pneumonia-detection-challenge/stage_2_train_labels.csv").is_file()
    _fake_kaggle(monkeypatch, {"sample_labels.csv": b"", "sample/images/00000013_005.png": b""})
    assert dl.main(["nih-sample", "--dest", str(tmp_path)]) == 0
    _fake_kaggle(monkeypatch, {"Data_Entry_2017.csv": b"", "images_001/images/x.png": b""})
    assert dl.main(["nih", "--dest", str(tmp_path)]) == 0      # moved in beside the sample
    assert {p.name for p in (tmp_path / "nih").iterdir()} == {
        "sample_labels.csv", "sample", "Data_Entry_2017.csv", "images_001"}


def test_network_failure_prints_help_and_keeps_nothing_half_done(tmp_path, monkeypatch, capsys):
    _fake_kaggle(monkeypatch, None)
    assert dl.main(["kermany", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ConnectionError" in err and "Create New Token" in err
    assert not (tmp_path / "chest_xray").exists()


def test_unexpected_archive_layout_is_an_error(tmp_path, monkeypatch, capsys):
    _fake_kaggle(monkeypatch, {"images/x.jpeg": b""})
    assert dl.main(["kermany", "--dest", str(tmp_path)]) == 2
    assert "chest_xray/train" in capsys.readouterr().err
    assert not (tmp_path / "chest_xray").exists()
