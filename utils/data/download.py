"""Download the Kaggle data sets into the layout the source parsers expect.

    python -m utils.data.download kermany|rsna|nih-sample|nih [--dest data/kaggle]

`import kaggle` authenticates at import time and raises without credentials, so credentials
are looked for first and the package is imported only when they exist. Without them, or
when the download fails, the command prints what to do (token, competition rules, manual
download links, where to unzip) and exits with code 2. Archives are unpacked in a hidden
staging folder and renamed into place at the end, so a half download is never picked up.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["SOURCES", "KaggleSource", "find_credentials", "download", "main"]

EXIT_HELP = 2


@dataclass(frozen=True)
class KaggleSource:
    slug: str
    competition: bool
    folder: str          # where it lands under --dest
    in_zip: str          # folder inside the archive that becomes `folder` ("" = the archive root)
    marker: str          # a path under `folder` that proves this source is there
    page: str            # manual download page
    note: str = ""


SOURCES: dict[str, KaggleSource] = {
    "kermany": KaggleSource(
        "paultimothymooney/chest-xray-pneumonia", False, "chest_xray", "chest_xray", "train",
        "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia",
        "about 2 GB; its duplicate chest_xray/chest_xray and __MACOSX folders are "
        "ignored by the parser"),
    "rsna": KaggleSource(
        "rsna-pneumonia-detection-challenge", True, "rsna-pneumonia-detection-challenge", "",
        "stage_2_train_labels.csv",
        "https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge/data",
        "about 4 GB of DICOMs; needs the competition rules accepted"),
    "nih-sample": KaggleSource(
        "nih-chest-xrays/sample", False, "nih", "", "sample_labels.csv",
        "https://www.kaggle.com/datasets/nih-chest-xrays/sample",
        "5,606 images (5% sample): sample/images/*.png + sample_labels.csv"),
    "nih": KaggleSource(
        "nih-chest-xrays/data", False, "nih", "", "Data_Entry_2017.csv",
        "https://www.kaggle.com/datasets/nih-chest-xrays/data",
        "about 45 GB (112,120 images) and as much again while unpacking"),
}


def _credential_files() -> list[Path]:
    """Where the kaggle package looks for kaggle.json (its own lookup order)."""
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    files = [home / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        files.insert(0, Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json")
    return files


def find_credentials() -> str | None:
    """Where usable Kaggle credentials are, or None (without importing `kaggle`)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    for path in _credential_files():
        if path.is_file():
            try:
                token = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"{path} is not a valid kaggle.json ({err})") from None
            if not {"username", "key"} <= set(token):
                raise ValueError(f"{path} lacks 'username' or 'key'")
            return str(path)
    return None


def help_text(name: str, dest: Path) -> str:
    """What to do by hand: the token, the RSNA rules, manual links, where to unzip."""
    cfg = "~/.config/kaggle"
    looked = ", ".join(str(p) for p in _credential_files())
    lines = [
        "How to get the data:",
        "  1. Sign in at https://www.kaggle.com → Settings → API → 'Create New Token';",
        "     your browser downloads kaggle.json.",
        f"  2. mkdir -p {cfg} && mv ~/Downloads/kaggle.json {cfg}/ && chmod 600 {cfg}/kaggle.json",
        "     (or export KAGGLE_USERNAME=<user> KAGGLE_KEY=<key>; checked: " + looked + ")",
        "  3. RSNA only: accept the competition rules ('Join Competition') at",
        "     https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge/rules",
        f"  4. python -m utils.data.download {name} --dest {dest}",
        "Or download by hand and unzip so that these folders exist:",
    ]
    for key, s in SOURCES.items():
        mark = "*" if key == name else " "
        inner = f" (the archive's {s.in_zip}/)" if s.in_zip else ""
        lines += [f" {mark} {key:<10} {s.page}", f"{'':14}→ {dest / s.folder}{inner}",
                  f"{'':14}  ({s.note})"]
    lines.append(f"Then: python run_all.py --data-root {dest}")
    return "\n".join(lines)


def download(name: str, dest: Path) -> Path:
    """Download and unpack one source under `dest`; returns its folder. Needs credentials."""
    src = SOURCES[name]
    import kaggle  # noqa: PLC0415 - authenticates on import: only after the credential check

    staging = dest / f".download-{name}"
    staging.mkdir(parents=True, exist_ok=True)   # kept on failure: kaggle resumes the zip
    if src.competition:
        kaggle.api.competition_download_files(src.slug, path=str(staging), quiet=False)
    else:
        kaggle.api.dataset_download_files(src.slug, path=str(staging), quiet=False, unzip=False)
    return _unpack(staging, dest / src.folder, src)


def _unpack(staging: Path, target: Path, src: KaggleSource) -> Path:
    """Extract every archive in `staging`, then rename the result onto `target`.

    Renames are atomic: the parsers see all of a source or none of it. When `target`
    already holds another source (nih-sample and nih share nih/), entries move one by one
    with the marker (the labels CSV the parser starts from) last.
    """
    archives = sorted(staging.glob("*.zip"))
    if not archives:
        raise FileNotFoundError(f"no .zip archive arrived in {staging}")
    unpacked = staging / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    for archive in archives:
        print(f"unpacking {archive.name} ...", flush=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)    # zipfile strips absolute and '..' member paths
    content = unpacked / src.in_zip if src.in_zip else unpacked
    if not (content / src.marker).exists():
        raise FileNotFoundError(f"the archive has no {src.in_zip or '.'}/{src.marker}: unzip "
                                f"it by hand (see the help) or report the new layout")
    if not target.exists():
        os.replace(content, target)
    else:
        entries = sorted(content.iterdir(), key=lambda p: p.name == src.marker)
        clash = [p.name for p in entries if (target / p.name).exists()]
        if clash:
            raise FileExistsError(f"{target} already holds {clash[:3]}: move them away first")
        for entry in entries:
            os.replace(entry, target / entry.name)
    shutil.rmtree(staging)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.data.download",
                                     description="Download a Kaggle chest X-ray data set.")
    parser.add_argument("name", choices=list(SOURCES))
    parser.add_argument("--dest", type=Path, default=Path("data/kaggle"),
                        help="root folder to pass to run_all.py --data-root (default %(default)s)")
    args = parser.parse_args(argv)
    src = SOURCES[args.name]
    if (args.dest / src.folder / src.marker).exists():
        print(f"{args.name}: already present in {args.dest / src.folder} "
              f"(delete it to download again)")
        return 0
    try:
        where = find_credentials()
        problem = "Kaggle API credentials not found"
    except ValueError as err:
        where, problem = None, f"unusable Kaggle credentials: {err}"
    if where is None:
        print(f"{problem}: cannot download {args.name!r}.\n" + help_text(args.name, args.dest),
              file=sys.stderr)
        return EXIT_HELP
    print(f"{args.name}: downloading {src.slug} with credentials from {where}")
    try:
        folder = download(args.name, args.dest)
    except Exception as err:  # noqa: BLE001 - network/HTTP/zip errors all get the same help
        print(f"download of {args.name!r} failed: {type(err).__name__}: {err}\n"
              "(403 Forbidden on RSNA: accept the competition rules; 401: renew the token; "
              "a network error: check the connection, or download by hand)\n"
              + help_text(args.name, args.dest), file=sys.stderr)
        return EXIT_HELP
    print(f"{args.name}: ready in {folder}\nThen: python run_all.py --data-root {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
