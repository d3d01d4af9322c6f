"""The README is the front door and docs/ holds the depth (issue 26): nothing the old
README explained was dropped in the move (every one of its headings is a heading in the
README or a page of docs/), and every relative link of the README and docs/ resolves,
anchors included (GitHub's heading slugs)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "benchmarks" / "README.md"]

# the README's headings before the move to docs/ (commit 871d1ed)
OLD_HEADINGS = [
    "Quick start (two commands)", "Getting the real data", "run_all.py", "The reports",
    "Profiles", "What the demo shows", "Recipe benchmark (real Kermany images)",
    "Several GPUs or machines (torchrun + DDP)", "Honest evaluation", "The notebooks",
    "Using a trained model on new images", "Performance",
    "Notebooks in Colab, Kaggle or Jupyter", "Pretrained weights (and offline notebooks)",
    "Chest X-ray weights (torchxrayvision)", "Layout",
]


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a link or '#' there is code)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def headings(path: Path) -> list[str]:
    return [m.group(2).strip() for m in re.finditer(r"^(#{1,6})\s+(.*)$", _prose(
        path.read_text(encoding="utf-8")), re.M)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text(encoding="utf-8")))


def test_slug_follows_github() -> None:
    assert slug("Several GPUs or machines (torchrun + DDP)") == \
        "several-gpus-or-machines-torchrun--ddp"
    assert slug("run_all.py") == "run_allpy"


def test_every_old_readme_heading_survives_in_readme_or_docs() -> None:
    found = {h for page in PAGES for h in headings(page)}
    assert [h for h in OLD_HEADINGS if h not in found] == []


def test_every_relative_link_resolves_with_its_anchor() -> None:
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in map(slug, headings(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 280, "move depth to docs/ and link it"
    assert not [line for line in lines if "FILL_" in line]
