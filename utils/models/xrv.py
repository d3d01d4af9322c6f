"""torchxrayvision's chest X-ray weights (`pretrained="xrv:<name>"`), read without the package.

torchxrayvision (Cohen et al., https://github.com/mlmed/torchxrayvision) publishes a
DenseNet-121 per training set (NIH, CheXpert, MIMIC, PadChest, RSNA, all combined) and a
ResNet-50 at 512 px. Its networks are torchvision's layouts with a 1-channel stem and 18
outputs, so the registry's `densenet121`/`chexnet`/`resnet50` take the tensors as they are;
the package itself is not needed (it pulls scikit-image and imageio, and unpickles its files
with `weights_only=False`). Its DenseNet files are whole pickled modules: `read_state` reads
their tensors with `weights_only=True`, the module classes replaced by inert stand-ins, so a
file runs no code. The user downloads a file once (no download here: offline it must be
there), into torch hub's cache beside the ImageNet files, or torchxrayvision's own cache.

Pixels go to the network as torchxrayvision scales them, [-1024, 1024]: mean 0.5, std 1/2048
on [0, 1] pixels. The 18 outputs map to the study's labels by name (binary: Pneumonia's row;
NIH: the 14 findings) to initialise the new head; labels a file was not trained on get a
fresh row.
"""
from __future__ import annotations

import os
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["XrvWeights", "XRV_WEIGHTS", "XRV_MODELS", "XRV_NORM", "PATHOLOGIES",
           "canonical_name", "search_dirs", "find_file", "require_file", "read_state",
           "load_xrv"]

XRV_NORM = (0.5, 1 / 2048)   # [0, 1] pixels -> (p - 0.5) * 2048 = torchxrayvision's [-1024, 1024]
PATHOLOGIES = ("Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema",
               "Emphysema", "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening",
               "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
               "Lung Opacity", "Enlarged Cardiomediastinum")   # xrv.datasets.default_pathologies
_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_D121 = "-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
_CHEX = {"Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia",
         "Cardiomegaly", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"}


@dataclass(frozen=True)
class XrvWeights:
    """One published weights file: its architecture, URL, outputs and training resolution."""
    name: str
    arch: str
    file: str
    trained_on: str
    labels: tuple[str, ...]   # 18 outputs in xrv's order; "" where the file learned nothing
    input_size: int

    @property
    def url(self) -> str:
        return _RELEASE + self.file


def _entry(name: str, arch: str, file: str, trained_on: str, learned: set[str] | None,
           size: int = 224) -> XrvWeights:
    labels = tuple(p if learned is None or p in learned else "" for p in PATHOLOGIES)
    return XrvWeights(name, arch, file, trained_on, labels, size)


# the table of torchxrayvision 1.5.7's `models.model_urls` (same files since v1)
XRV_WEIGHTS: dict[str, XrvWeights] = {w.name: w for w in [
    _entry("densenet121-res224-all", "densenet121",
           "nih-pc-chex-mimic_ch-google-openi-kaggle" + _D121,
           "NIH, PadChest, CheXpert, MIMIC-CXR, Google, OpenI, RSNA", None),
    _entry("densenet121-res224-nih", "densenet121", "nih" + _D121, "NIH ChestX-ray14",
           set(PATHOLOGIES[:14])),
    _entry("densenet121-res224-pc", "densenet121", "pc" + _D121, "PadChest",
           set(PATHOLOGIES[:14]) | {"Fracture"}),
    _entry("densenet121-res224-chex", "densenet121", "chex" + _D121, "CheXpert", _CHEX),
    _entry("densenet121-res224-rsna", "densenet121", "kaggle" + _D121,
           "RSNA Pneumonia Challenge", {"Pneumonia", "Lung Opacity"}),
    _entry("densenet121-res224-mimic_nb", "densenet121", "mimic_nb" + _D121,
           "MIMIC-CXR (NegBio labels)", _CHEX),
    _entry("densenet121-res224-mimic_ch", "densenet121", "mimic_ch" + _D121,
           "MIMIC-CXR (CheXpert labels)", _CHEX),
    _entry("resnet50-res512-all", "resnet50",
           "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
           "PadChest, NIH, RSNA, SIIM, VinDr", None, size=512),
]}
_ALIASES = {"all": "densenet121-res224-all", "nih": "densenet121-res224-nih",
            "pc": "densenet121-res224-pc", "chex": "densenet121-res224-chex",
            "rsna": "densenet121-res224-rsna", "mimic_nb": "densenet121-res224-mimic_nb",
            "mimic_ch": "densenet121-res224-mimic_ch"}   # xrv's own short names
XRV_MODELS = {"densenet121": ("densenet121", "chexnet"), "resnet50": ("resnet50",)}


def canonical_name(name: str) -> str:
    """The full weights name (`all` -> `densenet121-res224-all`), or a ValueError listing them."""
    name = _ALIASES.get(name.strip(), name.strip())
    if name not in XRV_WEIGHTS:
        raise ValueError(f"unknown torchxrayvision weights {name!r}: use xrv:<name> with a "
                         f"name from {sorted(XRV_WEIGHTS)}")
    return name


def search_dirs() -> list[Path]:
    """Where a downloaded file is looked for: torch hub's cache (with the ImageNet files),
    then torchxrayvision's own (`~/.torchxrayvision/models_data`, if the package fetched it)."""
    import torch

    return [Path(torch.hub.get_dir()) / "checkpoints",
            Path(os.path.expanduser("~/.torchxrayvision/models_data"))]


def find_file(w: XrvWeights) -> Path | None:
    return next((d / w.file for d in search_dirs() if (d / w.file).is_file()), None)


def require_file(pretrained: str, model_name: str) -> Path:
    """The file `pretrained="xrv:<name>"` needs for `model_name`, or `PretrainedWeightsError`
    (another architecture; or absent, naming the file, its URL and the folder): called
    before the data work too, so a run fails in seconds."""
    from .provenance import PretrainedWeightsError

    w = XRV_WEIGHTS[canonical_name(pretrained.removeprefix("xrv:"))]
    if model_name not in XRV_MODELS[w.arch]:
        raise PretrainedWeightsError(f"xrv:{w.name} holds {w.arch} weights: use model="
                                     f"{' or '.join(XRV_MODELS[w.arch])}, not {model_name}")
    path = find_file(w)
    if path is None:
        raise PretrainedWeightsError(missing_message(w))
    return path


def missing_message(w: XrvWeights) -> str:
    dirs = search_dirs()
    return (f"pretrained=xrv:{w.name} needs torchxrayvision's weights file {w.file}, not "
            f"found in {dirs[0]} nor {dirs[1]}. Download it once from {w.url} and put it in "
            f"{dirs[0]} (e.g. `mkdir -p {dirs[0]} && cp {w.file} {dirs[0]}/`), or pass "
            f"pretrained=imagenet / pretrained=false")


# --- reading a file without running it ------------------------------------------------

class _Inert:
    """Stands in for a pickled module class: keeps the object's attributes, runs no code."""
    dump_patches = False   # torch's legacy loader compares a container's saved source


def _no_backend(*args: Any) -> None:
    """Stands in for torch < 1.5's `_get_thnn_function_backend` (modules pickled a backend)."""


_STUB_PREFIXES = ("torchxrayvision.", "torch.nn.modules.", "torchvision.models.")
_ALLOWED = {"collections.OrderedDict": "collections:OrderedDict",
            "builtins.set": "builtins:set", "__builtin__.set": "builtins:set",
            "torch._utils._rebuild_tensor_v2": "torch._utils:_rebuild_tensor_v2",
            "torch._utils._rebuild_parameter": "torch._utils:_rebuild_parameter",
            "torch._utils._rebuild_parameter_with_state":
                "torch._utils:_rebuild_parameter_with_state"}


def _resolve(full: str) -> Any:
    """A module class -> `_Inert`; an old backend -> `_no_backend`; the few tensor-building
    callables torch's weights-only loader allows too; anything else is refused."""
    import importlib

    if full.startswith(_STUB_PREFIXES):
        return _Inert
    if full.startswith("torch.nn.backends."):
        return _no_backend
    if full in _ALLOWED:
        module, name = _ALLOWED[full].split(":")
        return getattr(importlib.import_module(module), name)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full} was not allowed")


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _resolve(f"{module}.{name}")


def _inert_pickle_module() -> types.ModuleType:
    """A `pickle_module` for `torch.load` whose unpickler only builds tensors and stand-ins.

    torch's `weights_only=True` cannot read a module pickled in the legacy format (its
    loader refuses the "module" records), and torchxrayvision's DenseNet files are exactly
    that; a restricted `find_class` is the standard way (Python's pickle docs, "Restricting
    Globals") to read them without running anything they name.
    """
    module = types.ModuleType("utils.models.xrv.inert_pickle")
    module.Unpickler = _InertUnpickler
    module.load = lambda f, **kw: _InertUnpickler(f, **kw).load()
    return module


def _is_pickled_module(path: Path) -> bool:
    """Whether the file holds a pickled module (vs a state_dict), read statically."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                head = z.read(names[0])[:1 << 16] if names else b""
    return any(p.encode() in head for p in ("torchxrayvision", "torch.nn.modules"))


def _module_state(obj: Any, prefix: str = "") -> dict[str, Any]:
    """`state_dict()` of an inert module tree: its parameters, persistent buffers, children."""
    d = vars(obj)
    skip = set(d.get("_non_persistent_buffers_set") or ())
    state = {prefix + k: v for k, v in (d.get("_parameters") or {}).items() if v is not None}
    state.update({prefix + k: v for k, v in (d.get("_buffers") or {}).items()
                  if v is not None and k not in skip})
    for k, child in (d.get("_modules") or {}).items():
        if child is not None:
            state.update(_module_state(child, f"{prefix}{k}."))
    return state


def read_state(path: str | Path) -> dict[str, Any]:
    """The tensors of a torchxrayvision file (a pickled module or a state_dict), read so
    that the file runs no code: a state_dict with `weights_only=True`, a pickled module
    with module classes as `_Inert` stand-ins; anything else it names is refused
    (`CheckpointError`)."""
    import torch

    from ..torchio import CheckpointError, read_torch_file, unsafe_file_error

    path, what = Path(path), "torchxrayvision weights file"
    if not _is_pickled_module(path):
        obj = read_torch_file(path, what=what)
    else:
        try:
            with warnings.catch_warnings():  # the saved module sources differ from _Inert's
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=False,  # restricted:
                                 pickle_module=_inert_pickle_module())      # see above
        except pickle.UnpicklingError as exc:
            raise unsafe_file_error(what, path, exc) from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"corrupt or incomplete {what} {path}: download it again "
                                  f"({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, _Inert):
        return _module_state(obj)
    if isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model_state", obj))
        return {k.removeprefix("module."): v for k, v in state.items()}
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model or a state_dict")


# --- into a registry model -----------------------------------------------------------

def load_xrv(model: Any, head: str, model_name: str, name: str,
             num_classes: int) -> dict[str, Any]:
    """Load `xrv:<name>` into a registry model built with random weights; return the
    results JSON's `pretrained` record.

    The backbone must match key for key (`head` excepted); the new head's rows start from
    the xrv classifier's rows of the same labels (`head_labels`), the others stay fresh.

    Raises:
        PretrainedWeightsError: wrong architecture, file absent (naming file, URL, folder),
            or tensors that do not fit.
    """
    from .provenance import PretrainedWeightsError, weights_record

    w = XRV_WEIGHTS[canonical_name(name)]
    path = require_file(w.name, model_name)
    state = {k: v for k, v in read_state(path).items() if k != "op_threshs"}
    backbone = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as err:  # shapes differ: another architecture, or in_chans != 1
        raise PretrainedWeightsError(f"{path} does not fit {model_name} (xrv weights take "
                                     f"1-channel input): {err}") from None
    missing = [k for k in missing if not k.startswith(head + ".")
               and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise PretrainedWeightsError(f"{path} does not fit {model_name}: missing {missing[:5]}, "
                                     f"unexpected {unexpected[:5]}")
    mapped = _init_head(model, head, state, w, num_classes)
    note = (f"head rows {mapped} from the pretrained classifier" if mapped
            else f"new head ({num_classes} outputs, random init)")
    return weights_record(f"xrv:{w.name}", True, file=path, hub="torchxrayvision",
                          url=w.url, head=note, head_labels=mapped, input_size=w.input_size)


def _init_head(model: Any, head: str, state: dict[str, Any], w: XrvWeights,
               num_classes: int) -> list[str]:
    """Copy the classifier rows of the labels both sides name; return those labels."""
    import torch
    from torch import nn

    from ..data.nih import NIH_FINDINGS

    targets = {1: ["Pneumonia"], 14: list(NIH_FINDINGS), 18: list(PATHOLOGIES)}.get(num_classes)
    weight, bias = state.get(f"{head}.weight"), state.get(f"{head}.bias")
    linears = [m for m in getattr(model, head).modules() if isinstance(m, nn.Linear)]
    if not targets or weight is None or bias is None or not linears \
            or linears[-1].in_features != weight.shape[1]:
        return []
    mapped = []
    with torch.no_grad():
        for i, label in enumerate(targets):
            if label in w.labels:
                j = w.labels.index(label)
                linears[-1].weight[i] = weight[j]
                linears[-1].bias[i] = bias[j]
                mapped.append(label)
    return mapped
