"""run_all.py's memory between runs: the state file and the fingerprints that decide which
steps are unchanged.

`reports/.run_state.json` records, per step, its status, timings and the fingerprint it ran
with. A step is skipped when its new fingerprint (notebook bytes, parameters, the `utils/`
source, what the steps it reads left behind, what the data root holds) equals the one of its
last successful run: so an interrupted `python run_all.py` continues where it stopped, and a
changed notebook, parameter, library file or dataset re-runs exactly what it affects.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json

__all__ = ["load_state", "save_state", "code_digest", "data_facts", "fingerprint",
           "upstream_facts", "PATH_PARAMS"]
log = logging.getLogger(__name__)


def load_state(path: str | Path) -> dict[str, dict]:
    """Per-step state of earlier runs; an unreadable file is a lost cache: warn, re-run all."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
        if not isinstance(steps, dict):
            raise ValueError("'steps' is not an object")
        return steps
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s): every step will run", path, exc)
        return {}


def save_state(path: str | Path, steps: dict[str, dict]) -> Path:
    return atomic_write_json(path, {"version": 1, "steps": steps})


# --- fingerprints: a step is skipped when its fingerprint equals its last successful run's --
PATH_PARAMS = ("reports_dir", "checkpoint_dir")   # where outputs go does not change them


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_digest(code_dir: str | Path) -> str:
    """One hash of every `*.py` under `code_dir` (path and bytes): a library change re-runs."""
    code_dir = Path(code_dir)
    h = hashlib.sha256()
    for path in sorted(code_dir.rglob("*.py")):
        h.update(path.relative_to(code_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def upstream_facts(after: tuple[str, ...], state: dict[str, dict],
                   reports: Path) -> dict[str, list]:
    """What the steps a step reads left behind: state fingerprint, status, results hash."""
    facts = {}
    for name in after:
        res, entry = reports / "results" / f"{name}.json", state.get(name, {})
        facts[name] = [entry.get("fingerprint"), entry.get("status"),
                       _sha(res.read_bytes()) if res.exists() else None]
    return facts


def data_facts(root: str | Path) -> list:
    """What the data root holds, cheaply: every source `find_sources` sees, and the files
    directly in it and in the root (name, size, mtime), i.e. the label CSVs and RSNA's NIH
    mapping. Adding a dataset, the mapping, or the full NIH labels where the sample was
    changes it; image folders are not walked (tens of thousands of files), and folders a
    run writes into the data root (DICOM→PNG) are not files, so they do not count.
    """
    from ..data.discover import find_sources

    root = Path(root)
    facts = []
    for name, folder in [*sorted(find_sources(root).items()), ("root", root)]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        files = [[e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in entries
                 if e.is_file()]
        facts.append([name, str(folder), files])
    from ..data.overlap import find_rsna_nih_mapping  # may sit in a folder of its own

    mapping = find_rsna_nih_mapping(root)
    if mapping is not None:
        st = mapping.stat()
        facts.append(["rsna_nih_mapping", str(mapping), [[mapping.name, st.st_size,
                                                          st.st_mtime_ns]]])
    return facts


def fingerprint(notebook: Path, params: dict[str, Any], code: str,
                upstream: dict[str, list], data: list | None = None) -> str:
    """sha256 of the notebook's bytes, its parameters (minus output folders; `data_root`
    kept), the code digest, `upstream_facts` and `data_facts` (when given).

    Example:
        >>> fp = fingerprint(Path("notebooks/05_vit.ipynb"), {"epochs": 2},
        ...                  code_digest("utils"), {})  # doctest: +SKIP
    """
    kept = {k: v for k, v in params.items() if k not in PATH_PARAMS}
    if "pretrained" in kept:  # -p pretrained=imagenet is -p pretrained=true (utils.models.weights)
        from ..models.weights import canonical_pretrained

        try:
            kept["pretrained"] = canonical_pretrained(kept["pretrained"])
        except ValueError:
            pass  # make_config reports it
    parts = [_sha(Path(notebook).read_bytes()), json.dumps(kept, sort_keys=True, default=str),
             code, json.dumps(upstream, sort_keys=True)]
    if data is not None:
        parts.append(json.dumps(data, sort_keys=True, default=str))
    return _sha("\n".join(parts).encode())
