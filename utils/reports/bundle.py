"""One zip to share: the index, every step's report and whatever they link, working offline;
and what another member needs to merge the runs into their comparison (docs/study-group.md).

    python run_all.py --bundle                      # after the run: reports/cxr-pneumonia-reports.zip
    python run_all.py --bundle out/study.zip --with-weights   # + each run's best.pt (08's gallery)
    python -m utils.reports.bundle --reports reports --out study.zip   # from reports already made

Beside the pages the zip holds `results/` (every results JSON and each run's predictions CSV:
val, test and external rows, what 07_comparison reads), `bundle.json` (the manifest:
`bundle_manifest`) and, with weights, `checkpoints/<run>/best.pt`. `python run_all.py
--merge <zip>` (utils.study.merge) brings the runs into another reports folder.

Unzipped anywhere, `cxr-pneumonia-reports/index.html` opens in a browser with every link
and image resolving: the reports are self-contained (images inline), the bundle takes
every local file a page links (and what those link in turn), and `check_links` (which the
tests run over an unzipped bundle) reports any link that would break.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..fileio import atomic_path, read_json
from .index import MERGED, package_versions  # MERGED: re-exported for merge

__all__ = ["page_links", "check_links", "bundle_files", "write_bundle", "BUNDLE_NAME",
           "BUNDLE_FOLDER", "MANIFEST", "MERGED", "BUNDLE_SCHEMA", "bundle_runs",
           "bundle_manifest", "main"]

BUNDLE_NAME = "cxr-pneumonia-reports.zip"
BUNDLE_FOLDER = "cxr-pneumonia-reports"
MANIFEST = "bundle.json"      # the bundle's manifest, beside index.html
BUNDLE_SCHEMA = 1
_LINK_ATTRS = {"href", "src"}


class _Links(HTMLParser):
    """Collects (tag, attribute, value) of every href/src, and every id/name anchor."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str]] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in _LINK_ATTRS:
                self.links.append((tag, key, value))
            elif key == "id" or (key == "name" and tag == "a"):
                self.anchors.add(value)


def page_links(path: str | Path) -> tuple[list[tuple[str, str, str]], set[str]]:
    """The links and anchors of one HTML page."""
    parser = _Links()
    parser.feed(Path(path).read_text(encoding="utf-8", errors="replace"))
    return parser.links, parser.anchors


def _has_anchor(anchors: set[str], fragment: str) -> bool:
    return not fragment or fragment in anchors or unquote(fragment) in anchors


def check_links(folder: str | Path) -> list[str]:
    """Every link of every HTML page under `folder` that would not resolve offline: a local
    file that is missing or outside the folder, an anchor with no target, an absolute path,
    or a resource (`src`) from the network. Empty list: all good."""
    folder = Path(folder).resolve()
    pages = {p: page_links(p) for p in sorted(folder.rglob("*.html"))}
    problems = []
    for page, (links, anchors) in pages.items():
        where = page.relative_to(folder)
        for tag, attr, value in links:
            url = urlsplit(value)
            if value.startswith("data:") or value.startswith("javascript:"):
                continue
            if url.scheme in ("http", "https", "mailto"):
                if attr == "src":
                    problems.append(f"{where}: <{tag} {attr}={value!r}> loads from the network")
                continue
            if url.scheme or value.startswith("/"):
                problems.append(f"{where}: <{tag} {attr}={value!r}> is an absolute address")
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if folder not in target.parents and target != folder:
                problems.append(f"{where}: {value!r} points outside the reports folder")
            elif not target.is_file():
                problems.append(f"{where}: {value!r} -> missing file {unquote(url.path)}")
            elif url.fragment and target.suffix == ".html":
                target_anchors = pages[target][1] if target in pages else page_links(target)[1]
                if not _has_anchor(target_anchors, url.fragment):
                    problems.append(f"{where}: {value!r} -> no anchor #{url.fragment}")
    return problems


def bundle_files(reports: str | Path) -> list[Path]:
    """index.html, every report, and every local file they link (followed transitively)."""
    reports = Path(reports).resolve()
    todo = [reports / "index.html", *sorted(reports.glob("*.html"))]
    seen: list[Path] = []
    while todo:
        path = todo.pop(0)
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        if path.suffix != ".html":
            continue
        for _, _, value in page_links(path)[0]:
            url = urlsplit(value)
            if url.scheme or not url.path or value.startswith(("/", "data:")):
                continue
            target = (path.parent / unquote(url.path)).resolve()
            if reports in target.parents:
                todo.append(target)
    return seen




def bundle_runs(reports: str | Path) -> dict[str, dict]:
    """Every training run in `reports/results/` (a results JSON with a `test` block):
    name → its results. Step summaries (00_eda, 07_comparison, ...) are not runs."""
    runs = {}
    for path in sorted((Path(reports) / "results").glob("*.json")):
        res = read_json(path)
        if res is not None and "test" in res:
            runs[path.stem] = res
    return runs


def _unique(values: list) -> object:
    """One value when all agree, else the sorted distinct values (a mixed folder)."""
    distinct = sorted({v for v in values if v is not None}, key=str)
    return distinct[0] if len(distinct) == 1 else distinct


def bundle_manifest(reports: str | Path, weights: dict[str, str]) -> dict:
    """`bundle.json`: what a merge needs to know before copying (utils.study.merge): each run
    with its files, seed, split seed, source version, profile and test fingerprint; the
    steps' last status; the package versions; whether weights are included."""

    reports = Path(reports)
    runs, sources, fingerprints = {}, {}, {}
    for name, res in bundle_runs(reports).items():
        data, config = res.get("data") or {}, res.get("config") or {}
        preds = reports / "results" / f"{name}_predictions.csv"
        runs[name] = {"step": res.get("plan_step") or name, "dataset": data.get("dataset"),
                      "seed": res.get("seed"), "split_seed": config.get("split_seed"),
                      "source_version": data.get("source_version"),
                      "profile": config.get("profile"), "schema": res.get("schema", 1),
                      "test_fingerprint": data.get("test_fingerprint"),
                      "results": f"results/{name}.json",
                      "predictions": f"results/{preds.name}" if preds.is_file() else None,
                      "weights": weights.get(name)}
        if data.get("dataset"):
            sources.setdefault(data["dataset"], set()).add(data.get("source_version"))
            fingerprints.setdefault(data["dataset"], set()).add(data.get("test_fingerprint"))
    state = read_json(reports / ".run_state.json") or {}
    state = state.get("steps", state) if isinstance(state.get("steps"), dict) else state
    return {"schema": BUNDLE_SCHEMA, "created": datetime.now(timezone.utc).isoformat(
                timespec="seconds"),
            "runs": runs,
            "steps": {k: {"status": v.get("status"), "finished": v.get("finished")}
                      for k, v in state.items() if isinstance(v, dict)},
            "sources": {k: sorted(v - {None}) for k, v in sources.items()},
            "test_fingerprints": {k: sorted(v - {None}) for k, v in fingerprints.items()},
            "split_seed": _unique([r["split_seed"] for r in runs.values()]),
            "profile": _unique([r["profile"] for r in runs.values()]),
            "package_versions": package_versions(), "with_weights": bool(weights)}


def _data_files(reports: Path) -> list[Path]:
    """Every results JSON and each run's predictions CSV (val, test and external rows)."""
    results = reports / "results"
    return sorted([*results.glob("*.json"), *results.glob("*_predictions.csv")])


def write_bundle(reports: str | Path, zip_path: str | Path,
                 checkpoints: str | Path | None = None) -> Path:
    """Write the zip atomically, every file under `cxr-pneumonia-reports/`: the pages, the
    results and predictions, `bundle.json`, and with `checkpoints` (--with-weights) each
    run's `checkpoints/<run>/best.pt`. Say what is missing when a report has no index (run
    run_all.py first)."""
    reports = Path(reports).resolve()
    if not (reports / "index.html").is_file():
        raise FileNotFoundError(f"{reports / 'index.html'} does not exist: run "
                                f"`python run_all.py` first, or pass --reports-dir")
    files = list(dict.fromkeys([*bundle_files(reports), *_data_files(reports)]))
    weights = {}
    if checkpoints is not None:
        for name in bundle_runs(reports):
            best = Path(checkpoints) / name / "best.pt"
            if best.is_file():
                weights[name] = f"checkpoints/{name}/best.pt"
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    manifest = json.dumps(bundle_manifest(reports, weights), indent=2, sort_keys=True)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                if path.resolve() != zip_path.resolve():  # an older bundle in the folder
                    zf.write(path, f"{BUNDLE_FOLDER}/{path.relative_to(reports).as_posix()}")
            zf.writestr(f"{BUNDLE_FOLDER}/{MANIFEST}", manifest)
            for name, rel in weights.items():  # weights barely compress: stored as they are
                zf.write(Path(checkpoints) / name / "best.pt", f"{BUNDLE_FOLDER}/{rel}",
                         compress_type=zipfile.ZIP_STORED)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Zip reports/index.html, every report and what "
                                "they link, for sharing (opens offline).")
    p.add_argument("--reports", type=Path, default=Path("reports"), help="reports folder")
    p.add_argument("--out", type=Path, default=None, help=f"zip path (default: "
                   f"<reports>/{BUNDLE_NAME})")
    p.add_argument("--with-weights", action="store_true", help="also each run's best.pt "
                   "(for another member's 08 gallery; hundreds of MB)")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint folder for "
                   "--with-weights (default: checkpoints/ beside the reports folder)")
    args = p.parse_args(argv)
    ckpts = (args.checkpoints or args.reports.resolve().parent / "checkpoints") \
        if args.with_weights else None
    out = write_bundle(args.reports, args.out or args.reports / BUNDLE_NAME, ckpts)
    problems = check_links(args.reports)
    for problem in problems:
        print(f"broken link: {problem}", file=sys.stderr)
    print(f"bundle: {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
