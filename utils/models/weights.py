"""Where pretrained weights come from: the hub caches, the network probe, offline handling,
and the record of which file a model started from (path + sha256) for its results JSON.

`pretrained` names a source: `True`/`"imagenet"` (torchvision, timm or efficientnet-pytorch
ImageNet weights, from their caches or downloaded once), `False`/`"none"` (random init), or
`"xrv:<weights>"` (torchxrayvision's chest X-ray weights, `utils.models.xrv`). Each hub keeps its
file in its own cache, so a file placed there by hand (an offline Kaggle notebook) loads
without the network:

| hub | where the file goes |
|---|---|
| torchvision, efficientnet-pytorch, torchxrayvision | `$TORCH_HOME/hub/checkpoints/<file>` (`torch.hub.get_dir()`) |
| timm | the huggingface cache, `$HF_HUB_CACHE/models--timm--<arch>.<tag>/snapshots/...` |

Nothing here imports torch at module level: `utils.config` canonicalises `pretrained` with it.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from .provenance import PretrainedWeightsError, describe_weights, sha256_file, weights_record

__all__ = ["PretrainedWeightsError", "HubUnavailable", "HubWeights", "canonical_pretrained",
           "source_name", "hub_reachable", "hf_offline_if_unreachable", "locate", "from_hub",
           "torch_hub_file", "sha256_file", "weights_record", "describe_weights"]


@dataclass(frozen=True)
class HubWeights:
    """One hub's weights for one architecture: where they come from and where they live.

    `file` is the cache path the hub reads (None for timm until the file is cached: the
    huggingface cache names snapshots by commit); `where` says where to put it by hand.
    """
    hub: str
    arch: str
    url: str
    file: Path | None
    where: str


class HubUnavailable(PretrainedWeightsError):
    """A hub could not provide its file (offline and not cached); carries what to fetch."""

    def __init__(self, src: HubWeights, cause: BaseException):
        super().__init__(f"{src.hub} weights for {src.arch} unavailable: {cause}")
        self.src, self.cause = src, cause


# --- the `pretrained` value ----------------------------------------------------------

_TRUE, _FALSE = ("true", "imagenet", "yes", "1"), ("false", "none", "no", "0", "")


def canonical_pretrained(value: Any) -> bool | str:
    """`True` for ImageNet, `False` for none, else `"xrv:<full weights name>"`.

    One spelling per source, so `RESUME_KEYS`, run_all's fingerprints and the results JSON
    see `-p pretrained=imagenet` and `-p pretrained=true` as the same run.

    Raises:
        ValueError: a string that names no source (the message lists the valid ones).
    """
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"pretrained={value!r} must be a bool or a string")
    text = value.strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    if text.lower().startswith("xrv:"):
        from .xrv import canonical_name

        return "xrv:" + canonical_name(text[4:])
    from .xrv import XRV_WEIGHTS

    raise ValueError(f"pretrained={value!r} is not a weights source: use true/imagenet, "
                     f"false/none, or xrv:<name> with a name from {sorted(XRV_WEIGHTS)}")


def source_name(pretrained: Any) -> str:
    """`"imagenet"`, `"none"` or `"xrv:<name>"`: the source as the records spell it."""
    value = canonical_pretrained(pretrained)
    return value if isinstance(value, str) else ("imagenet" if value else "none")


# --- the network ---------------------------------------------------------------------

def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """Quick TCP probe; behind a proxy we cannot tell, so assume reachable."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def hf_offline_if_unreachable() -> Iterator[None]:
    """Offline, huggingface_hub retries 5 times with back-off (~50 s) before failing; in
    offline mode it fails at once, or loads weights already in its cache."""
    from huggingface_hub import constants
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or not hub_reachable(constants.ENDPOINT)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


# --- where each hub keeps its file ---------------------------------------------------

def torch_hub_file(url: str) -> Path:
    """The file `torch.hub.load_state_dict_from_url(url)` reads: `<hub dir>/checkpoints/`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _timm_weights(arch: str) -> HubWeights:
    import timm
    from huggingface_hub import constants

    cfg = timm.models.get_pretrained_cfg(arch)
    if not cfg.hf_hub_id:  # an older timm entry with a plain URL: torch hub's cache
        file = torch_hub_file(cfg.url)
        return HubWeights("timm", arch, cfg.url, file, str(file.parent))
    return HubWeights("timm", arch, f"https://huggingface.co/{cfg.hf_hub_id}",
                      _timm_cached_file(cfg.hf_hub_id, cfg.hf_hub_filename),
                      f"the huggingface cache {constants.HF_HUB_CACHE} (on a machine online: "
                      f"`hf download {cfg.hf_hub_id} model.safetensors`, then copy the "
                      f"models--{cfg.hf_hub_id.replace('/', '--')} folder there)")


def _timm_cached_file(repo: str, filename: str | None) -> Path | None:
    """The file timm loads from the huggingface cache: safetensors first, as timm does."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for name in ("model.safetensors", filename or "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def locate(hub: str, arch: str) -> HubWeights:
    """Where `hub`'s ImageNet weights for `arch` come from and where they are cached."""
    if hub == "torchvision":
        import torchvision

        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    elif hub == "efficientnet-pytorch":
        from efficientnet_pytorch.utils import url_map

        url = url_map[arch]
    elif hub == "timm":
        return _timm_weights(arch)
    else:
        raise ValueError(f"unknown weights hub {hub!r}")
    file = torch_hub_file(url)
    return HubWeights(hub, arch, url, file, str(file.parent))


@contextmanager
def from_hub(hub: str, arch: str) -> Iterator[HubWeights]:
    """Load `hub`'s weights for `arch` inside this block; a network or cache failure
    becomes `HubUnavailable` naming the file, its URL and where to put it.

    Example:
        >>> with from_hub("torchvision", "resnet18") as src:  # doctest: +SKIP
        ...     model = torchvision.models.resnet18(weights="DEFAULT")
        >>> model.pretrained_weights = weights_record("imagenet", True, src)  # doctest: +SKIP
    """
    src = locate(hub, arch)
    try:
        with hf_offline_if_unreachable() if hub == "timm" else nullcontext():
            yield src
    except OSError as err:  # URLError, socket errors, huggingface_hub's offline errors
        raise HubUnavailable(src, err) from None


def unavailable_message(name: str, err: BaseException) -> str:
    """The one message for pretrained weights that could not be had, and the three fixes."""
    head = (f"could not download pretrained weights for {name} (offline?): pass "
            f"pretrained=False (-p pretrained=false) or set allow_random_init=True "
            f"(-p allow_random_init=true) to fall back to random weights, or ")
    if isinstance(err, HubUnavailable):
        src = err.src
        what = src.file.name if src.file is not None else src.arch
        return (f"{head}place the {src.hub} file {what} in {src.where} (download it once "
                f"from {src.url}). Cause: {type(err.cause).__name__}: {err.cause}")
    return (f"{head}place the weights in the torch/huggingface cache. "
            f"Cause: {type(err).__name__}: {err}")
