"""Which weights a model started from: the record every checkpoint and results JSON
carries (`{requested, loaded, source, hub, file, sha256, url}`), the file fingerprint, and the
sentence a notebook prints. Imports nothing of the project: `utils.models.weights` (the hubs) and
`utils.models.xrv` (torchxrayvision's files) both build records with it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["PretrainedWeightsError", "sha256_file", "weights_record", "describe_weights"]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but could not be obtained (usually: offline)."""


# --- fingerprints and the record -----------------------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime: a ViT-B file is 330 MB)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def weights_record(source: str, loaded: bool, src: Any = None, *,
                   file: str | Path | None = None, hub: str | None = None,
                   url: str | None = None, **extra: Any) -> dict[str, Any]:
    """The results JSON's `pretrained` block: `{requested, loaded, source, hub, file,
    sha256, url}` (+ `extra`, e.g. the xrv head mapping or the fallback's reason).
    `src`: a `utils.models.weights.HubWeights` (hub, url, cache file), when a hub provided them."""
    if file is None and src is not None and loaded:
        file = src.file if src.file is not None and src.file.is_file() else None
    return {"requested": source != "none", "loaded": bool(loaded), "source": source,
            "hub": src.hub if src is not None else hub,
            "file": str(file) if file is not None else None,
            "sha256": sha256_file(file) if file is not None else None,
            "url": src.url if src is not None else url, **extra}


def describe_weights(record: dict[str, Any] | None) -> str:
    """One sentence for a notebook's model cell: which weights the model started from.

    Example:
        >>> describe_weights({"requested": True, "loaded": False, "source": "imagenet"})
        'Weights: RANDOM initialisation: imagenet weights were requested but could not be loaded (allow_random_init=true), so this is not a pretrained model.'
    """
    if not record:
        return "Weights: not recorded."
    source = record.get("source", "?")
    if not record.get("requested"):
        text = "Weights: random initialisation (pretrained=false)"
    elif not record.get("loaded"):
        text = (f"Weights: RANDOM initialisation: {source} weights were requested but could "
                f"not be loaded (allow_random_init=true), so this is not a pretrained model")
    else:
        label = (f"ImageNet ({record.get('hub')})" if source == "imagenet"
                 else f"torchxrayvision {source.removeprefix('xrv:')}")
        where = (f"file {record['file']} (sha256 {record['sha256'][:12]})" if record.get("file")
                 else "file not found in the hub cache (no fingerprint)")
        text = f"Weights: {label}, {where}"
        text += f"; {record['head']}" if record.get("head") else ""
    if record.get("init_checkpoint"):
        text += f"; then init_checkpoint {record['init_checkpoint']} replaced all but the head"
    return text + "."
