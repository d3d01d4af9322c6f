"""The reports as a reader opens them: headless Chromium (Debian's `chromium`, driven by
playwright with `executable_path`) over the reports of the session's smoke run
(conftest.smoke_run, shared with test_notebooks.py), and over its bundle unzipped into an
empty folder. No page may raise a script error, log a console error, fail a request or ask
the network for anything; every href/src must resolve. Screenshots of the index and of
07_comparison go to `ci-logs/browser/` (or `$CXR_CI_LOGS/browser/`), named at the end of
the pytest run.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import CI_LOGS, SMOKE_STEPS
from utils.reports.bundle import BUNDLE_FOLDER, check_links

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root in a closed network: no sandbox, no background connections, a fresh profile
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = "Chromium not found: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:  # playwright's own temp profile: a fresh user-data-dir
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def visit(browser, path: Path, actions=None) -> list[str]:
    """Open `path`, run `actions(page)`, return every error the page produced."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
    page.on("console", lambda msg: errors.append(f"console {msg.text}")
            if msg.type == "error" else None)
    page.on("requestfailed", lambda req: errors.append(f"failed request {req.url}"))
    page.on("request", lambda req: errors.append(f"network request {req.url}")
            if not req.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(path.resolve().as_uri(), wait_until="load")
    if actions:
        actions(page)
    context.close()
    return [f"{path.name}: {e}" for e in errors]


def screenshot(page, name: str) -> None:
    out = CI_LOGS / "browser"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / name), full_page=True)
    print(f"screenshot: {out / name}")


def check_index(page) -> None:
    """The headline is there, and a header click sorts the steps table."""
    assert page.locator("#headline").count() == 1
    assert page.locator("#headline ~ div svg").count() >= 1  # a CI plot per test set
    table = page.locator("#steps + table")
    table.locator("th", has_text="duration").click()
    times = [float(v) for v in table.locator("tbody td:nth-child(3)").evaluate_all(
        "cells => cells.map(c => c.getAttribute('data-v')).filter(v => v)")]
    assert times == sorted(times) and len(times) >= 5, times
    screenshot(page, "index.png")


def check_comparison(page) -> None:
    """Code is folded until the switch shows all of it; then screenshot."""
    folded = page.locator("details.cxr-code")
    assert folded.count() > 3
    assert folded.evaluate_all("ds => ds.filter(d => d.open).length") == 0
    page.locator("#cxr-toggle-code").click()
    assert folded.evaluate_all("ds => ds.every(d => d.open)")
    page.locator("#cxr-toggle-code").click()
    screenshot(page, "07_comparison.png")


def test_reports_load_in_chromium_without_errors(smoke_run, browser) -> None:
    proc, reports, _, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pages = sorted(reports.glob("*.html"))
    assert {p.stem for p in pages} == {"index", *SMOKE_STEPS}
    assert check_links(reports) == []
    actions = {"index": check_index, "07_comparison": check_comparison}
    errors = [e for p in pages for e in visit(browser, p, actions.get(p.stem))]
    assert errors == []


def test_bundle_unzipped_into_an_empty_folder_opens_offline(smoke_run, browser,
                                                            tmp_path) -> None:
    proc, reports, _, bundle = smoke_run
    assert proc.returncode == 0 and bundle.is_file(), proc.stdout[-2000:]
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(tmp_path)
    folder = tmp_path / BUNDLE_FOLDER
    assert sorted(p.name for p in folder.glob("*.html")) == \
        sorted(p.name for p in reports.glob("*.html"))
    assert check_links(folder) == []
    assert visit(browser, folder / "index.html") == []
    assert visit(browser, folder / "07_comparison.html") == []
