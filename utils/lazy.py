"""Lazy re-exports (PEP 562) for the package facades (`utils`, `utils.models`, ...).

Each facade keeps a table {public name: module} and sets `__getattr__ = lazy_exports(
__name__, _LAZY)`: `import utils` stays light, `from utils import RunConfig` does not drag in
the training stack, and `utils.config` can read `utils.models.weights` without torch.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `package.<table[name]>` on first use of `name`."""
    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(f".{table[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
