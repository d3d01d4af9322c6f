"""The source registry: one `register_source(...)` call per dataset, as `models.py` does for
architectures.

A source module (`kermany.py`, `rsna.py`, `nih.py`) says, in one place at its end, how its
layout is recognised (`detect`), how its manifest is built (`manifest`), which of its
folders discovery never needs to enter, how to download it and what it can learn. The
package (`utils/data/__init__.py`) imports the built-in source modules, so the registry is
complete before anyone asks it; discovery (`discover.find_sources`), `dataset.load_manifest`,
`eda.load_source`, the config's `dataset` choices and the tests all read it from here.

Adding a dataset: write `utils/data/<name>.py` ending in `register_source("<name>", ...)` and
import it in `utils/data/__init__.py`.

This module imports nothing of the package, so every other module may import it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

__all__ = ["Source", "register_source", "get_source", "list_sources", "registered_sources",
           "build_manifest", "UnknownSourceError"]

Detect = Callable[[Path, "set[str]"], bool]
Manifest = Callable[..., pd.DataFrame]


class UnknownSourceError(KeyError):
    """A dataset name no source module registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    """What the rest of the project needs to know about one dataset.

    Attributes:
        name: the `dataset` value (`-p dataset=<name>`).
        detect: `detect(folder, entry_names) -> bool`: is `folder` the root of this layout?
            Called for every folder discovery visits, so it should look at `entry_names`
            (the folder's listing) and stat as little as possible.
        manifest: `manifest(folder, *, on_bad_image="error") -> DataFrame` with the
            manifest contract's columns (docs/ARCHITECTURE.md) for the folder `detect` found.
        download: the command that fetches it (said when it is missing).
        skip_dirs: folder names of this layout discovery never descends into (image
            folders with thousands of files).
        binary: its `label` column is pneumonia (it can train the binary task).
        multilabel: it has finding columns for `task="multilabel"`.
    """

    name: str
    detect: Detect
    manifest: Manifest
    download: str = ""
    skip_dirs: frozenset[str] = frozenset()
    binary: bool = True
    multilabel: bool = False


_REGISTRY: dict[str, Source] = {}


def register_source(name: str, *, detect: Detect, manifest: Manifest, download: str = "",
                    skip_dirs: Iterable[str] = (), binary: bool = True,
                    multilabel: bool = False) -> Source:
    """Add a source to the registry (once per name; a module re-import replaces it).

    Example:
        >>> register_source("mine", detect=lambda folder, names: "mine.csv" in names,
        ...                 manifest=my_manifest)  # doctest: +SKIP
    """
    if not name or not name.isidentifier():
        raise ValueError(f"source name {name!r} must be a non-empty identifier (it is a "
                         f"`dataset` value and part of run names)")
    source = Source(name, detect, manifest, download, frozenset(skip_dirs), binary, multilabel)
    _REGISTRY[name] = source
    return source


def get_source(name: str) -> Source:
    """The registered source called `name`, or an error listing the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSourceError(f"no source {name!r} is registered (registered: "
                                 f"{list_sources()}); a new dataset registers itself with "
                                 f"utils.data.sources.register_source") from None


def list_sources(*, binary: bool | None = None, multilabel: bool | None = None) -> list[str]:
    """Registered source names, in registration order, optionally filtered by task."""
    return [s.name for s in _REGISTRY.values()
            if (binary is None or s.binary == binary)
            and (multilabel is None or s.multilabel == multilabel)]


def registered_sources() -> list[Source]:
    """Every registered `Source`, in registration order."""
    return list(_REGISTRY.values())


def build_manifest(name: str, folder: str | os.PathLike, *,
                   on_bad_image: str = "error") -> pd.DataFrame:
    """The manifest of source `name` found at `folder` (what `detect` recognised)."""
    return get_source(name).manifest(Path(folder), on_bad_image=on_bad_image)

