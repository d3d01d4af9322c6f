"""`run_all.py --merge PATH ...`: a study group's runs gathered into one comparison.

Each member runs part of the plan (some steps, or some seeds) and shares a bundle
(`run_all.py --bundle [--with-weights]`, utils.reports.bundle). Merging brings every run of
each PATH (a bundle zip, an unzipped bundle, or another member's reports/ folder with its
checkpoints/ beside it) into this folder's reports/results/ (and checkpoints/ where weights
came), then re-renders 07_comparison (and 08_gradcam_gallery when weights came) and the
index through the normal run_all machinery. docs/study-group.md is the user's guide.

Safety: a zip is checked (readable, no entry outside its folder: zip-slip) and extracted to
a temporary folder first; every run of a PATH is checked (results schema, predictions
present) before any file is copied; each file is written atomically, the results JSON last,
so a run is either whole or absent. A local run of the same name is never replaced unless
`--force`: identical is a no-op (merging one bundle twice changes nothing), different is
reported by name. Which runs came from which PATH: reports/merged.json (shown on the index).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ..evaluation.results import RESULTS_SCHEMA
from ..fileio import atomic_path, atomic_write_bytes, atomic_write_json, read_json
from ..reports.bundle import MANIFEST, MERGED
from .plan import Step, UsageError

__all__ = ["MergeError", "Incoming", "Outcome", "open_source", "incoming_runs", "merge_paths",
           "add_merge_args", "merge_command", "RERENDER"]

log = logging.getLogger("run_all")

RERENDER = ("07_comparison", "08_gradcam_gallery")  # 08 only when weights came


class MergeError(Exception):
    """One PATH cannot be merged: the message names the file and what is wrong."""


@dataclass
class Incoming:
    """One run of a PATH: its files there."""

    name: str
    results: Path
    predictions: Path
    weights: Path | None = None


@dataclass
class Outcome:
    """What a merge did, per run name and per PATH."""

    merged: dict[str, str] = field(default_factory=dict)      # run -> PATH it came from
    unchanged: dict[str, str] = field(default_factory=dict)   # identical to the local run
    conflicts: dict[str, str] = field(default_factory=dict)   # differs, local one kept
    errors: dict[str, str] = field(default_factory=dict)      # PATH -> why it was refused
    weights: list[str] = field(default_factory=list)          # runs whose best.pt came
    pages: list[str] = field(default_factory=list)            # step reports and summaries


# --- reading a PATH ------------------------------------------------------------------------
def _unsafe(name: str) -> bool:
    """A zip entry that would land outside the extraction folder (zip-slip)."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    return posix.startswith("/") or ".." in parts or (bool(parts) and ":" in parts[0])


def _extract(zip_path: Path, dest: Path) -> None:
    """Check the zip whole, then extract it into `dest` (raises MergeError)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if bad := [i.filename for i in zf.infolist() if _unsafe(i.filename)]:
                raise MergeError(f"{zip_path}: entry {bad[0]!r} points outside the bundle "
                                 f"(absolute path or '..'): refused (zip-slip); nothing copied")
            if corrupt := zf.testzip():
                raise MergeError(f"{zip_path}: entry {corrupt!r} is corrupt (CRC mismatch): "
                                 f"the zip is damaged; copy it again")
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise MergeError(f"{zip_path}: not a readable zip ({type(exc).__name__}: {exc}); is it "
                         f"truncated (an interrupted download or copy)? Copy it again") from exc


def _bundle_root(folder: Path) -> Path | None:
    """The folder holding bundle.json or results/: `folder` itself or one level down (a zip
    holds everything under cxr-pneumonia-reports/)."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / MANIFEST).is_file() or (candidate / "results").is_dir():
            return candidate
    return None


def open_source(path: Path, scratch: Path) -> tuple[Path, Path | None, dict]:
    """(folder with results/, checkpoint folder or None, bundle manifest or {}) of one PATH;
    a zip is extracted into `scratch` first. Raises MergeError naming what is wrong."""
    if not path.exists():
        raise MergeError(f"{path}: no such file or folder")
    origin = path
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise MergeError(f"{path}: not a bundle (not a zip file, or a truncated one: "
                             f"make it with `run_all.py --bundle`, or copy it again)")
        _extract(path, scratch)
        path = scratch
    root = _bundle_root(path)
    if root is None:
        raise MergeError(f"{origin}: not a bundle or reports folder (no {MANIFEST} and no "
                         f"results/ folder in it)")
    manifest: dict = {}
    if (root / MANIFEST).is_file():
        try:
            manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MergeError(f"{origin}: unreadable {MANIFEST} ({exc})") from exc
    ckpts = next((c for c in (root / "checkpoints", root.parent / "checkpoints")
                  if c.is_dir()), None)
    return root, ckpts, manifest if isinstance(manifest, dict) else {}


def incoming_runs(root: Path, ckpts: Path | None, manifest: dict,
                  label: str = "") -> list[Incoming]:
    """Every run of a PATH, each checked before anything is copied (MergeError: the first
    fault, naming its file as `<label>: results/<run>.json`). Step summaries (00_eda,
    07_comparison, ...) are not runs."""
    runs = []
    for file in sorted((root / "results").glob("*.json")):
        path = Path(f"{label or root}: results/{file.name}")  # how messages name it
        try:
            res = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MergeError(f"{path}: unreadable results JSON ({exc})") from exc
        if not isinstance(res, dict) or "test" not in res:
            continue
        schema = res.get("schema", 1)
        if not isinstance(schema, int) or schema < RESULTS_SCHEMA:
            raise MergeError(f"{path}: results schema {schema}, older than this version's "
                             f"{RESULTS_SCHEMA} (its run names count seeds by index, "
                             f"`05_vit.s1` = second seed): re-run its steps with this "
                             f"version and bundle again")
        if res.get("step") != file.stem:
            raise MergeError(f"{path}: names run {res.get('step')!r}, not {file.stem!r}")
        preds = file.with_name(f"{file.stem}_predictions.csv")
        if not preds.is_file():
            raise MergeError(f"{path}: its predictions results/{preds.name} are missing from "
                             f"the bundle (07 cannot compare the run without them)")
        best = ckpts / file.stem / "best.pt" if ckpts else None
        runs.append(Incoming(file.stem, file, preds, best if best and best.is_file() else None))
    if missing := sorted(set(manifest.get("runs") or {}) - {r.name for r in runs}):
        raise MergeError(f"{label or root}: {MANIFEST} lists run {missing[0]!r} but the bundle "
                         f"has no results/{missing[0]}.json")
    if not runs:
        raise MergeError(f"{label or root}: no runs in it (no results/*.json with test "
                         f"metrics)")
    return runs


# --- copying -------------------------------------------------------------------------------
def _same_results(a: Path, b: Path) -> bool:
    try:
        return json.loads(a.read_text(encoding="utf-8")) == json.loads(b.read_text("utf-8"))
    except (OSError, ValueError):
        return False


def _same_bytes(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size \
        and a.read_bytes() == b.read_bytes()


def _copy(src: Path, dest: Path) -> None:
    """Atomic copy (a crash leaves the old file or none, never half a file)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _merge_run(run: Incoming, results: Path, ckpts: Path, force: bool) -> str:
    """"merged", "unchanged" or "conflict" for one run; the results JSON is written last."""
    local, local_preds = results / f"{run.name}.json", results / f"{run.name}_predictions.csv"
    if local.exists():
        same = _same_results(run.results, local) and _same_bytes(run.predictions, local_preds)
        if same and (run.weights is None or (ckpts / run.name / "best.pt").exists()):
            return "unchanged"
        if not same and not force:
            return "conflict"
    if run.weights is not None:
        _copy(run.weights, ckpts / run.name / "best.pt")
    _copy(run.predictions, local_preds)
    atomic_write_bytes(local, run.results.read_bytes())
    return "merged"


def _merge_pages(root: Path, reports: Path, force: bool) -> list[str]:
    """The steps' own reports (`<step>.html`) and step summaries (results JSON without test
    metrics: 00_eda, 09_transfer) of a PATH that this folder lacks (or all that differ, with
    `force`), so a step another member ran opens from the index; 07, 08 and the index are
    re-rendered here, never copied. Returns the names copied."""
    copied = []
    pages = [(f, reports / f.name) for f in sorted(root.glob("*.html"))]
    summaries = [(f, reports / "results" / f.name) for f in sorted(root.glob("results/*.json"))
                 if "test" not in (read_json(f) or {})]
    for src, dest in pages + summaries:
        if src.stem in ("index", *RERENDER) or not src.is_file():
            continue
        if not dest.exists() or (force and not _same_bytes(src, dest)):
            _copy(src, dest)
            copied.append(src.name)
    return copied




def _record(reports: Path, runs: dict[str, dict[str, Any]], pages: dict[str, dict] | None = None
            ) -> None:
    """Add the merged runs' (and pages') provenance to reports/merged.json (the index shows
    it, and marks the steps they belong to as merged)."""
    path = reports / MERGED
    merged = read_json(path) or {}
    merged.setdefault("runs", {}).update(runs)
    if pages:
        merged.setdefault("pages", {}).update(pages)
    atomic_write_json(path, merged)


def merge_paths(paths: list[Path], reports: Path, ckpts: Path, force: bool = False) -> Outcome:
    """Merge every PATH in order; one that cannot be merged is reported (Outcome.errors)
    and the others still merge (runs already merged stay)."""
    out = Outcome()
    results = reports / "results"
    results.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with tempfile.TemporaryDirectory(prefix=".merge-", dir=reports) as scratch:
            try:
                root, src_ckpts, manifest = open_source(Path(path), Path(scratch))
                runs = incoming_runs(root, src_ckpts, manifest, str(path))
            except MergeError as exc:
                out.errors[str(path)] = str(exc)
                continue
            provenance: dict[str, dict[str, Any]] = {}
            when = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for run in runs:
                verdict = _merge_run(run, results, ckpts, force)
                {"merged": out.merged, "unchanged": out.unchanged,
                 "conflict": out.conflicts}[verdict][run.name] = str(path)
                if verdict == "merged":
                    out.weights += [run.name] if run.weights is not None else []
                    provenance[run.name] = {
                        "source": Path(path).name, "path": str(Path(path).resolve()),
                        "bundle_created": manifest.get("created"),
                        "merged": when, "weights": run.weights is not None}
            pages = {name: {"source": Path(path).name, "merged": when}
                     for name in _merge_pages(root, reports, force)}
            out.pages += list(pages)
            if provenance or pages:
                _record(reports, provenance, pages)
    return out


# --- run_all.py ----------------------------------------------------------------------------
def add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--merge", nargs="+", type=Path, metavar="PATH",
                   help="bring other members' runs (bundle zips, unzipped bundles or reports/ "
                   "folders) into this reports folder, then re-render 07_comparison, the index "
                   "and, when weights came, 08_gradcam_gallery (docs/study-group.md); a "
                   "same-named local run that differs is kept unless --force")
    p.add_argument("--with-weights", action="store_true",
                   help="with --bundle: also each run's best.pt (for 08's gallery elsewhere)")


def _report(out: Outcome) -> None:
    for path, why in out.errors.items():
        log.error("merge: refused %s", why)
    by_path: dict[str, list[str]] = {}
    for run, path in out.merged.items():
        by_path.setdefault(path, []).append(run)
    for path, runs in by_path.items():
        log.info("merge: %d run(s) from %s: %s", len(runs), path, ", ".join(sorted(runs)))
    if out.pages:
        log.info("merge: %d step page(s) and summaries this folder lacked: %s",
                 len(out.pages), ", ".join(out.pages))
    if out.unchanged:
        log.info("merge: %d run(s) already here, identical (nothing to do): %s",
                 len(out.unchanged), ", ".join(sorted(out.unchanged)))
    for run, path in sorted(out.conflicts.items()):
        log.warning("merge: %s from %s differs from the local run of that name: kept the "
                    "local one (--force replaces it)", run, path)


def merge_command(args: argparse.Namespace, plan: list[Step]) -> int:
    """`--merge`: merge, report, then 07 (and 08 when weights came) through run_all's
    normal machinery, with the index. 0: all merged; 1: a PATH refused, a conflict kept,
    or a step failed; 2: usage error."""
    from .execute import execute_run, prepare

    reports, ckpts = args.reports_dir.resolve(), args.checkpoint_dir.resolve()
    reports.mkdir(parents=True, exist_ok=True)
    out = merge_paths(list(args.merge), reports, ckpts, args.force)
    _report(out)
    trouble = bool(out.errors or out.conflicts)
    if not out.merged and not out.pages:  # pages alone: the index must link them
        log.info("merge: nothing new merged; nothing re-rendered")
        return int(trouble)
    names = {s.name for s in plan}
    args.only = [s for s in RERENDER[:2 if out.weights else 1] if s in names]
    if not args.only:
        log.error("merge: the plan has no %s step to re-render", RERENDER[0])
        return 1
    args.force, args.start, args.list = True, None, False
    try:
        run = prepare(args, plan)
    except UsageError as exc:
        log.error("run_all.py: error: %s", exc)
        return 2
    status = execute_run(run, args.bundle, args.with_weights)
    return status or int(trouble)
