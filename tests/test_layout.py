"""utils/ is grouped by concern and its imports run one way, down the layers:

    study -> reports -> evaluation -> training -> config -> models -> data -> basics

(`config` validates a run's knobs against the source and model registries, so it sits above
them and below everything that reads a config.) Every import counts, lazy ones inside
functions included: a lazy import is still an arrow. `utils/__init__.py` is the package's
facade (lazy re-exports) and is left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UTILS = ROOT / "utils"
LAYERS = ("basics", "data", "models", "config", "training", "evaluation", "reports", "study")
BASICS = {"utils.runtime", "utils.fileio", "utils.torchio", "utils.hosted", "utils.lazy"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    if module in BASICS:
        return "basics"
    if module == "utils.config":
        return "config"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module} belongs to no group: put it in one of "
                         f"{', '.join(f'utils/{g}/' for g in LAYERS[1:] if g != 'config')} "
                         f"(or make it a basic)")


def _imports(path: Path, module: str) -> set[str]:
    """Every utils module `path` imports (relative imports resolved; `from x import y`
    counts `x.y` when y is a module)."""
    is_pkg = path.name == "__init__.py"
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("utils"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("utils"))
    return found


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in UTILS.rglob("*.py") if p != UTILS / "__init__.py"}


def test_every_module_sits_in_a_group() -> None:
    for module in _modules():
        assert _group(module) in LAYERS


def test_no_import_runs_up_the_layers() -> None:
    modules = _modules()
    upward = []
    for module, path in sorted(modules.items()):
        mine = LAYERS.index(_group(module))
        for target in sorted(_imports(path, module) & set(modules)):
            theirs = LAYERS.index(_group(target))
            if theirs > mine:
                upward.append(f"{module} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs]})")
    assert not upward, ("imports that run up the layers " + " -> ".join(reversed(LAYERS))
                        + ":\n  " + "\n  ".join(upward)
                        + "\nmove the helper both need into the lower group")


def test_the_layer_check_sees_an_upward_import(tmp_path) -> None:
    """The walk itself: a lazy import of a study module inside a data function is found."""
    fake = tmp_path / "utils" / "data" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..study.grid import StepGrid\n    return StepGrid\n")
    found = _imports(fake, "utils.data.fake")
    assert "utils.study.grid" in found
    assert LAYERS.index(_group("utils.study.grid")) > LAYERS.index(_group("utils.data.fake"))
