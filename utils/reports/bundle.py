"""One zip to share: the index, every step's report and whatever they link, working offline.

    python run_all.py --bundle                      # after the run: reports/cxr-pneumonia-reports.zip
    python run_all.py --bundle out/study.zip
    python -m utils.reports.bundle --reports reports --out study.zip   # from reports already made

Unzipped anywhere, `cxr-pneumonia-reports/index.html` opens in a browser with every link
and image resolving: the reports are self-contained (images inline), the bundle takes
every local file a page links (and what those link in turn), and `check_links` (which the
tests run over an unzipped bundle) reports any link that would break.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..fileio import atomic_path

__all__ = ["page_links", "check_links", "bundle_files", "write_bundle", "BUNDLE_NAME",
           "BUNDLE_FOLDER", "main"]

BUNDLE_NAME = "cxr-pneumonia-reports.zip"
BUNDLE_FOLDER = "cxr-pneumonia-reports"
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


def write_bundle(reports: str | Path, zip_path: str | Path) -> Path:
    """Write the zip atomically, every file under `cxr-pneumonia-reports/`; say what is in
    it when a report is missing its index (run run_all.py first)."""
    reports = Path(reports).resolve()
    if not (reports / "index.html").is_file():
        raise FileNotFoundError(f"{reports / 'index.html'} does not exist: run "
                                f"`python run_all.py` first, or pass --reports-dir")
    files = bundle_files(reports)
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, f"{BUNDLE_FOLDER}/{path.relative_to(reports).as_posix()}")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Zip reports/index.html, every report and what "
                                "they link, for sharing (opens offline).")
    p.add_argument("--reports", type=Path, default=Path("reports"), help="reports folder")
    p.add_argument("--out", type=Path, default=None, help=f"zip path (default: "
                   f"<reports>/{BUNDLE_NAME})")
    args = p.parse_args(argv)
    out = write_bundle(args.reports, args.out or args.reports / BUNDLE_NAME)
    problems = check_links(args.reports)
    for problem in problems:
        print(f"broken link: {problem}", file=sys.stderr)
    print(f"bundle: {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
