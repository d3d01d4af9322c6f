"""Notebooks that open anywhere: the repository URL, the Colab badges, the setup cell, and
what a hosted runtime (Colab, Kaggle) must install.

`REPO_URL` below is the one place the repository's address is written. A fork changes it
here and runs `python -m utils.hosted --write`, which rewrites from it the "Open in Colab"
badge of every notebook, the README's badge block and the setup cell (identical in every
notebook; `tests/test_hosted.py` checks all of them against this module).

The setup cell must work before `utils` can be imported, so it is short and self-contained:
it finds the project above the working directory, clones it in Colab/Kaggle
(`CXR_REPO_URL` overrides the URL), stops with one message anywhere else, then calls
`prepare_runtime`, which installs only the requirements the runtime lacks and never
torch/torchvision over the hosted CUDA build. Stdlib only: it runs before anything is
installed. Kaggle's data under /kaggle/input is found by `utils.data.discover` as anywhere.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

__all__ = ["REPO_URL", "BRANCH", "colab_url", "badge_markdown", "strip_badge", "SETUP_SOURCE",
           "is_hosted", "missing_requirements", "prepare_runtime", "pin_commit", "COMMIT_FILE",
           "main"]

REPO_URL = "https://github.com/cxr-pneumonia/cxr-pneumonia"   # a fork: change it here only
BRANCH = "main"
ROOT = Path(__file__).resolve().parents[1]
NEVER_INSTALL = ("torch", "torchvision")        # Colab/Kaggle ship their own CUDA builds
TEST_ONLY = ("pytest", "playwright")            # not needed to run a notebook
# a requirement that another distribution already provides (two cv2 builds break each other)
PROVIDED_BY = {"opencv-python-headless": ("opencv-python", "opencv-contrib-python",
                                          "opencv-contrib-python-headless")}
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*\n?", re.M)
README_START, README_END = "<!-- colab-badges:start -->", "<!-- colab-badges:end -->"
COMMIT_FILE = "cxr_commit.txt"   # in the hosted working folder: the commit the setup installed

_SETUP_TEMPLATE = '''\
# Setup (the same in every notebook): find the project; in Colab or Kaggle clone it first.
import os, subprocess, sys
from pathlib import Path

COMMIT = ""  # "" = the newest; a hash (cxr_commit.txt, session.json) runs exactly that code
REPO = os.environ.get("CXR_REPO_URL", "{repo_url}")
HOSTED = "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ
ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents, Path.cwd() / "cxr-pneumonia"]
             if (p / "utils" / "hosted.py").exists()), None)
if ROOT is None and HOSTED:
    ROOT = Path.cwd() / "cxr-pneumonia"
    if subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, str(ROOT)]).returncode:
        raise SystemExit(f"git clone {{REPO}} failed: turn the notebook's internet on "
                         "(Kaggle: Settings > Internet) or set CXR_REPO_URL to a reachable copy.")
if ROOT is None:
    __import__("warnings").filterwarnings("ignore", "To exit")  # IPython's aside on SystemExit
    raise SystemExit("This notebook needs the cxr-pneumonia project around it (its utils "
                     f"package). Get it with: git clone {{REPO}}; cd cxr-pneumonia; "
                     "pip install -r requirements.txt; then open notebooks/ from there "
                     "(or open this notebook in Colab with the badge above).")
sys.path.insert(0, str(ROOT))
from utils.hosted import prepare_runtime
prepare_runtime(ROOT, hosted=HOSTED, commit=COMMIT)
'''
SETUP_SOURCE = _SETUP_TEMPLATE.format(repo_url=REPO_URL).rstrip("\n")


def _repo_path(url: str = REPO_URL) -> str:
    """`owner/name` of a GitHub URL (the part Colab's address takes)."""
    match = re.match(r"https://github\.com/([^/]+/[^/.]+)(?:\.git)?/?$", url)
    if not match:
        raise ValueError(f"REPO_URL {url!r} is not https://github.com/<owner>/<name>: Colab "
                         f"opens notebooks from GitHub; fix it in utils/hosted.py")
    return match.group(1)


def colab_url(notebook: str, url: str = REPO_URL) -> str:
    """Colab's address of `notebooks/<notebook>` on the repository's default branch."""
    name = Path(notebook).name
    return f"https://colab.research.google.com/github/{_repo_path(url)}/blob/{BRANCH}/notebooks/{name}"


def badge_markdown(notebook: str, url: str = REPO_URL) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, url)})"


def strip_badge(markdown: str) -> str:
    """The markdown without its Colab badge line (an HTML report loads no external image)."""
    return _BADGE_LINE.sub("", markdown)


def is_hosted() -> bool:
    return "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: str | Path,
                         installed: Callable[[str], str | None] = _installed) -> list[str]:
    """The pinned requirements (`name==version`) whose distribution is absent, minus
    torch/torchvision (never replaced) and test-only tools. Present at another version
    counts as present: upgrading a hosted runtime's numpy or pandas breaks its own stack."""
    missing = []
    for line in Path(requirements).read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        name = re.split(r"[=<>!~\[ ;]", spec, maxsplit=1)[0].lower()
        if not name or name in NEVER_INSTALL or name in TEST_ONLY:
            continue
        if installed(name) is None and not any(installed(p) for p in PROVIDED_BY.get(name, ())):
            missing.append(spec)
    return missing


def _git(root: Path, *args: str) -> str:
    """git's output in `root`, "" when git or the repository is missing or it fails."""
    try:  # Popen, not run: tests replace subprocess.run to watch pip
        with subprocess.Popen(["git", "-C", str(root), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as proc:
            out = proc.communicate()[0]
    except OSError:
        return ""
    return out.strip() if proc.returncode == 0 else ""


def _forget_utils() -> None:
    """Drop the `utils` modules imported from the code before a checkout: the notebook's
    next imports read the pinned commit's files."""
    for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
        del sys.modules[name]


def pin_commit(root: str | Path, commit: str = "", hosted: bool = True) -> str:
    """Check out `commit` (the setup cell's COMMIT) in a hosted clone, so a group's members
    and a resumed session run the same code; a local checkout is the developer's and is only
    warned about. Hosted, print the commit the code is at and write it to `COMMIT_FILE` in
    the working folder (Kaggle keeps it in the version's output). Returns it ("" no git)."""
    root, commit = Path(root), commit.strip()
    head = _git(root, "rev-parse", "HEAD")
    if commit and not head.startswith(commit):
        if not hosted:
            print(f"COMMIT = {commit!r} but {root} is at {head[:12] or '(no git)'}: this "
                  f"checkout is left as it is (git checkout {commit} to run that code)")
            return head
        _git(root, "fetch", "-q", "--depth", "1", "origin", commit)  # a --depth 1 clone
        _git(root, "checkout", "-q", commit)
        if not _git(root, "rev-parse", "HEAD").startswith(commit):
            raise SystemExit(f"COMMIT = {commit!r}: not found in "
                             f"{os.environ.get('CXR_REPO_URL', REPO_URL)}; give the full "
                             f"40-character hash from {COMMIT_FILE} or reports/session.json")
        _forget_utils()
        head = _git(root, "rev-parse", "HEAD")
    if hosted and head:
        print(f"code: commit {head} (to run exactly this code elsewhere, set "
              f'COMMIT = "{head}" in the setup cell)')
        (Path.cwd() / COMMIT_FILE).write_text(head + "\n", encoding="utf-8")
    return head


def prepare_runtime(root: str | Path = ROOT, hosted: bool | None = None,
                    commit: str = "") -> None:
    """Check out the setup cell's `commit` (`pin_commit`) and record the one installed, then
    install what a hosted runtime lacks (pip, with torch/torchvision held at their installed
    builds); elsewhere only name what is missing. Returns nothing, so the setup cell shows
    no value."""
    hosted = is_hosted() if hosted is None else hosted
    pin_commit(root, commit, hosted)
    missing = missing_requirements(Path(root) / "requirements.txt")
    if not missing:
        return
    if not hosted:
        print(f"missing packages: {', '.join(missing)}; install them with "
              f"pip install -r {Path(root) / 'requirements.txt'}")
        return
    held = [f"{n}=={v}" for n in NEVER_INSTALL if (v := _installed(n))]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(held) + "\n")
    print(f"installing what this runtime lacks: {', '.join(missing)} (keeping "
          f"{', '.join(held) or 'no torch'})")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing,
                           "-c", constraints.name])
    os.unlink(constraints.name)
    if done.returncode:
        raise SystemExit(f"pip could not install {', '.join(missing)}: turn the notebook's "
                         "internet on (Kaggle: Settings > Internet) and run this cell again.")


# --- keeping the notebooks and the README in line with REPO_URL ------------------------------
def _expected_title(source: str, notebook: str) -> str:
    """The title cell with exactly one badge, right under its first heading line."""
    lines = strip_badge(source).splitlines()
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("#")), 0)
    rest = lines[at:]
    while rest and not rest[0].strip():
        rest.pop(0)
    return "\n".join([*lines[:at], badge_markdown(notebook), "", *rest])


def readme_block(notebooks: list[Path]) -> str:
    rows = "\n".join(f"- `{p.name}` {badge_markdown(p.name)}" for p in notebooks)
    return f"{README_START}\n{rows}\n{README_END}"


def sync(write: bool, root: Path = ROOT) -> list[str]:
    """Compare (or rewrite) every notebook's badge and setup cell and the README's block."""
    import nbformat

    stale = []
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        title = next(c for c in nb.cells if c.cell_type == "markdown")
        setup = next(c for c in nb.cells if c.cell_type == "code")
        want = _expected_title(title.source, path.name)
        if (title.source, setup.source) != (want, SETUP_SOURCE):
            stale.append(str(path.relative_to(root)))
            title.source, setup.source = want, SETUP_SOURCE
            if write:
                nbformat.write(nb, path)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if block.search(text) is None or block.search(text).group(0) != readme_block(notebooks):
        stale.append("README.md")
        if write and block.search(text):
            readme.write_text(block.sub(lambda _: readme_block(notebooks), text), encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write (or check) the Colab badges and the setup "
                                "cell of every notebook, and the README's badges, from REPO_URL.")
    p.add_argument("--write", action="store_true", help="rewrite what differs")
    args = p.parse_args(argv)
    stale = sync(args.write)
    verb = "rewrote" if args.write else "out of date (run python -m utils.hosted --write)"
    print(f"{verb}: {', '.join(stale)}" if stale else "badges and setup cells match REPO_URL")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
