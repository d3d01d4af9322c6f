"""What a run_all session ran on, comparable across machines and sessions (`resume.py`
records it in `<reports>/session.json` and refuses to continue a session whose code or data
differ): a hash per code file, and per data source a digest of its manifest as the notebooks
see it (file names relative to the source's folder, sizes, labels, splits). Not image bytes
(a re-download reads the same), absolute paths, file times or the git commit.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["code_files", "data_digest", "differences"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_files(code_dir: Path, notebooks: Path) -> dict[str, str]:
    """sha256 (16 hex) of every `*.py` under `code_dir` and `*.ipynb` in `notebooks`, keyed
    `utils/<path>` and `notebooks/<name>`: which file differs can be named."""
    files = {f"utils/{p.relative_to(code_dir).as_posix()}": _sha(p.read_bytes())[:16]
             for p in sorted(Path(code_dir).rglob("*.py")) if "__pycache__" not in p.parts}
    files.update({f"notebooks/{p.name}": _sha(p.read_bytes())[:16]
                  for p in sorted(Path(notebooks).glob("*.ipynb"))})
    return files


def _manifest(name: str, folder: Path):
    """The source's manifest as its notebooks build it, quietly; RSNA from its DICOMs (the
    PNGs 01_preprocessing adds later are the same images)."""
    from ..data.sources import get_source

    source = get_source(name)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "rsna":
            from ..data.rsna import DICOM_DIR, rsna_manifest

            with contextlib.suppress(FileNotFoundError):
                return rsna_manifest(folder, image_dir=DICOM_DIR, on_bad_image="skip")
        return source.manifest(folder, on_bad_image="skip")


def _summary(manifest, folder: Path) -> dict[str, Any]:
    """Digests of a manifest's files, sizes, labels (every label-like column: label, the
    findings, boxes, patient grouping) and splits, rows ordered by relative file name."""
    rows = sorted(manifest.to_dict("records"), key=lambda r: os.path.relpath(r["path"], folder))
    names = [Path(os.path.relpath(r["path"], folder)).as_posix() for r in rows]
    sizes = [os.path.getsize(r["path"]) if os.path.exists(r["path"]) else -1 for r in rows]
    other = sorted(set(manifest.columns) - {"path", "split", "synthetic", "source"})
    labels = [[str(r[c]) for c in other] for r in rows]
    splits = [str(r.get("split", "")) for r in rows]

    def digest(values: list) -> str:
        return _sha(json.dumps(values).encode())[:16]

    def counts(values: list) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in values:
            out[str(v)] = out.get(str(v), 0) + 1
        return dict(sorted(out.items()))

    return {"files": len(rows), "names": digest(names), "sizes": digest(sizes),
            "labels": digest(labels), "splits": digest(splits), "bytes": sum(sizes),
            "label counts": counts(r.get("label", "") for r in rows),
            "split counts": counts(splits)}


def data_digest(root: str | Path) -> dict[str, dict[str, Any]]:
    """Per source `find_sources` sees under `root`: `_summary` of its manifest. The same
    data re-downloaded to another path gives the same digest."""
    from ..data.discover import find_sources

    out: dict[str, dict[str, Any]] = {}
    for name, folder in sorted(find_sources(Path(root)).items()):
        try:
            out[name] = _summary(_manifest(name, Path(folder)), Path(folder))
        except Exception as exc:  # noqa: BLE001 - an unreadable source is a fact to compare
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two sessions' code and data, one sentence each ([] = same)."""
    found = []
    a, b = old.get("code") or {}, new.get("code") or {}
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    added, gone = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
    if changed or added or gone:
        groups = sorted({k.rsplit("/", 1)[0] for k in (*changed, *added, *gone)})
        parts = [f"{what} {_few(names)}" for what, names in
                 (("changed", changed), ("only here", added), ("only there", gone)) if names]
        found.append(f"code differs in {', '.join(groups)}: {'; '.join(parts)}")
    da, db = old.get("data") or {}, new.get("data") or {}
    for name in sorted(da.keys() | db.keys()):
        if name not in db:
            found.append(f"data: source {name} was there ({da[name].get('files')} files), "
                         f"it is not here")
        elif name not in da:
            found.append(f"data: source {name} is here ({db[name].get('files')} files), "
                         f"it was not there")
        elif what := _data_change(da[name], db[name]):
            found.append(f"data: {name}: {what}")
    return found


def _few(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _data_change(a: dict[str, Any], b: dict[str, Any]) -> str:
    if "error" in a or "error" in b:
        return "" if a == b else f"there: {a.get('error', 'read')}; here: {b.get('error', 'read')}"
    said = []
    if a["files"] != b["files"] or a["names"] != b["names"]:
        said.append(f"other files ({a['files']} there, {b['files']} here)")
    elif a["sizes"] != b["sizes"]:
        said.append(f"same file names, other sizes ({a['bytes']} bytes there, {b['bytes']} here)")
    if a["labels"] != b["labels"]:
        said.append(f"other labels (label counts {a['label counts']} there, "
                    f"{b['label counts']} here)")
    if a["splits"] != b["splits"]:
        said.append(f"other splits ({a['split counts']} there, {b['split counts']} here)")
    return "; ".join(said)
