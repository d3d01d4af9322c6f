#!/usr/bin/env python
"""Re-execute every notebook in order with papermill and render the HTML reports.

    python run_all.py                        # the whole plan; unchanged steps are skipped
    python run_all.py --profile smoke --only "03_*" -p epochs=2 -p 05_vit.lr=3e-4
    python run_all.py --list                 # the plan, resolved parameters, what would run
    python run_all.py --bundle               # then zip the reports to share (opens offline)

Each step runs notebooks/<notebook> into reports/<step>.ipynb and reports/<step>.html;
reports/index.html links them all with the headline numbers of reports/results/<step>.json.
A step is skipped when its fingerprint (notebook bytes, parameters, utils/ source, the state
and results of the steps it reads, the datasets and label/mapping files in the data root)
equals that of its last successful run and its report exists, so a re-run after an
interruption continues where it stopped.
The console shows a line as each step starts and ends, and one live line: steps done, time
elapsed and left, the epoch and validation AUROC of the runs training now. Everything else
(each notebook's output, the kernels', papermill's and nbconvert's messages) goes to
<reports-dir>/run_all.log, new each run; a failed step's error is shown whole.
Exit status: 0 every step ok or unchanged, 1 a step failed, 2 usage error (nothing ran).
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from utils.config import ConfigError, RunConfig, make_config, parse_value
from utils.history import PROGRESS_ENV
from utils.recipes import ABLATION_VARIANTS as _RECIPES
from utils.report_index import build_rows, summary_table, write_index
from utils.runtime import usable_cpus
from utils.run_state import (code_digest, data_facts, fingerprint, load_state, save_state,
                             upstream_facts)
from utils.run_console import (Progress, console_logging, current_step, fmt_duration, live_line,
                               log_file, logged_kernel_manager)
from utils.step_report import render_notebook_html

__all__ = ["Step", "ABLATION_VARIANTS", "MODEL_STEPS", "default_plan", "parse_value",
           "parse_overrides", "select_steps", "resolve_params", "nproc_overrides",
           "parameters_cell", "parameter_notes", "main"]

ROOT = Path(__file__).resolve().parent
CODE_DIR = ROOT / "utils"   # its *.py source is part of every fingerprint
INJECTED = ("profile", "data_root", "step", "reports_dir", "checkpoint_dir")
FIELDS = sorted(RunConfig.__dataclass_fields__)
BUNDLE_DEFAULT = Path("<reports-dir>/cxr-pneumonia-reports.zip")  # --bundle without a path
LOG_NAME = "run_all.log"     # <reports-dir>/run_all.log: everything that is not the console
PROGRESS_DIR = ".progress"   # <reports-dir>/.progress/<run>.json: utils.history's records
log = logging.getLogger("run_all")


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
_SMALL = ("demo", "smoke")   # CPU-sized profiles get small stand-ins of the big networks
# Common ground (issue 11): each architecture of the study trains on every source found;
# the ablation's intermediate variants (v1-v3, no-regularisation) stay on their own dataset.
_COMMON = {"datasets": "all"}
_COMMON_VARIANTS = ("cnn", "resnet18_scratch", "final")
# The demo's budget (10 minutes on 2 CPU cores) holds about 18 training runs: the ResNet
# (`final`), ViT and Mixer train on Kermany and RSNA, CheXNet on RSNA and EfficientNet on
# Kermany (their own datasets), the study's CNN and the hand-written ResNet on Kermany; so
# CNNs and transformers meet on both test sets, and NIH's Pneumonia test split still scores
# every run as external data. `-p datasets=all` runs the full grid on the demo too (the
# 29-run plan took 16 minutes in all).
_DEMO_GRID = {"datasets": "kermany,rsna"}
# Slow starters from random init (EfficientNet-B0, the 4-block ViT and Mixer): more, smaller
# steps and no early stopping on the demo's few epochs (with patience 3 the Mixer trained on
# Kermany stopped early at test AUROC 0.70; without it, 8 epochs: 0.80-0.87 in two runs,
# 12 epochs: 0.86)
_DEMO_SLOW = {"batch_size": 16, "early_stopping": 0, **_DEMO_GRID}
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
                 profile_params=_small("efficientnet_b0",
                                       {"epochs": 4, **_DEMO_SLOW, "datasets": ""}),
                 needs=(_PREP,)),
            # from scratch on a few hundred images the tiny ViT needs more epochs than the
            # CNNs (demo Kermany, test AUROC: 0.69 after 10 epochs at 3e-4, 0.96 after 12 at
            # 1e-3 with a 1-epoch warm-up); each epoch takes ~2 s
            Step("05_vit", "05_vit.ipynb", dict(_COMMON),
                 profile_params=_small("vit_mini", {"epochs": 12, **_DEMO_SLOW}),
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
            Step("09_transfer", "09_transfer.ipynb", profile_params={"demo": {"epochs": 2}},
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


def build_parser(plan: list[Step]) -> argparse.ArgumentParser:
    steps = "Steps: " + ", ".join(s.name for s in plan)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + steps,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="", help="data folder (default: env CXR_DATA_ROOT, "
                   "Kaggle mounts /kaggle/input, else the generated synthetic demo set)")
    p.add_argument("--profile", choices=["demo", "smoke", "full"],
                   help="parameter defaults (default: full with real data, demo otherwise)")
    p.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="override a RunConfig field for every step, or STEP.KEY=VALUE for one "
                   "step (STEP may be a pattern); repeatable; true/false, int, float or text")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these steps (exact "
                   "names or shell patterns such as '03_*')")
    p.add_argument("--from", dest="start", metavar="NAME", help="start at this step")
    p.add_argument("--list", action="store_true", help="print the plan with resolved "
                   "parameters and whether each step would run, then exit")
    p.add_argument("--force", action="store_true", help="re-run steps even if unchanged")
    p.add_argument("--reports-dir", type=Path, default=ROOT / "reports",
                   help="HTML, executed notebooks, results/, index.html (default: reports)")
    p.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints",
                   help="model checkpoints (default: checkpoints)")
    p.add_argument("--notebooks-dir", type=Path, default=ROOT / "notebooks",
                   help="where the plan's notebooks are (default: notebooks)")
    p.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="train each model step on N processes with torchrun (one per GPU, or "
                   "CPU processes with gloo); 0 = auto, every visible GPU (the notebooks' "
                   "default); -p STEP.nproc_per_node=N for one step")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="notebooks side by side, each with its share of the CPU threads "
                   "(default: 2 on the demo profile, else 1); steps still wait for those they "
                   "read")
    p.add_argument("--verbose", action="store_true", help="also stream every notebook's "
                   "output and the libraries' messages to the console (they always go to "
                   f"<reports-dir>/{LOG_NAME})")
    p.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                   help="limit per notebook cell (default: none)")
    p.add_argument("--bundle", nargs="?", type=Path, const=BUNDLE_DEFAULT, metavar="ZIP",
                   help="after the run, zip the index, every report and what they link "
                   "(opens offline; default path: <reports-dir>/cxr-pneumonia-reports.zip)")
    return p


# --- data, parameters, validation ----------------------------------------------------------
def resolve_data(value: str) -> tuple[Path, bool]:
    """(root, synthetic) from `utils.data.discover`; imported lazily, it may build the demo."""
    try:
        from utils.data.demo import ensure_demo
        from utils.data.discover import resolve_data_root
    except ImportError as exc:
        raise UsageError(f"cannot import utils/data/discover.py ({exc})") from exc
    demo_log = logging.getLogger("utils.data.demo")
    level = demo_log.level
    demo_log.setLevel(logging.WARNING)  # prepare()'s banner says "synthetic", once
    try:
        root, synthetic = resolve_data_root(value, announce=False, fallback=ensure_demo)
    except Exception as exc:  # noqa: BLE001 - any failure to find data is a setup error
        raise UsageError(f"data root {value or '(auto)'}: {type(exc).__name__}: {exc}") from exc
    finally:
        demo_log.setLevel(level)
    return Path(root).resolve(), bool(synthetic)  # the kernels run in notebooks/


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
    would warn once per notebook (its warning goes to the log); `utils.notebook.setup(
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
    from utils.recipes import recipe_for  # the notebooks' own merge: recipe < parameters

    try:
        make_config({**recipe_for(params.get("variant", "")), **params}, params["profile"])
    except (ConfigError, ValueError) as exc:
        raise UsageError(f"step {step.name}: {exc}") from exc


# --- execution ---------------------------------------------------------------------------
@contextmanager
def kernel_env(jobs: int = 1, progress: Path | None = None) -> Iterator[None]:
    """Environment the kernels inherit: quiet training logs, headless plots, repo importable;
    with `jobs` kernels side by side, each its share of the CPU threads (unless set);
    `progress`: the folder where `fit` writes a record per training run (the live line)."""
    saved = dict(os.environ)
    os.environ.update(CXR_QUIET="1", MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if progress is not None:
        os.environ[PROGRESS_ENV] = str(progress)
    if jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // jobs)))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def auto_jobs(profile: str, nproc_per_node: int | None, steps: int = 2) -> int:
    """Steps side by side by default: 2 on the demo (its small steps spend half their time
    in one-threaded work: kernel start, imports, plots, reports; measured: 2 ablation steps
    in 45 s side by side, 65 s one after the other), 1 on real data (one GPU, big steps) and
    with torchrun (its processes take the cores), and for a single step (all the threads)."""
    if profile != "demo" or nproc_per_node or _several_gpus():
        return 1  # several GPUs: each model step's torchrun takes them all
    return min(2, usable_cpus(), steps)


def _several_gpus() -> bool:
    """More than one CUDA GPU visible: auto `nproc_per_node` launches torchrun on them."""
    from utils.distributed import training_gpus  # torch: imported only when asked

    return training_gpus("auto") > 1


def execute(step: Step, params: dict[str, Any], notebook: Path, reports: Path,
            timeout: int | None, kernel_log: Path | None = None) -> tuple[str, str]:
    """Run one notebook; return ("", "") on success, else (`ename: evalue`, the error in
    full: the failing cell's traceback; a timeout's or dead kernel's message, which names
    the cell; Python's traceback for anything else, such as a failed render).

    Cell output goes to the `papermill` logger (run_all's log). papermill saves after every
    cell, so it writes to a hidden partial file that is moved onto reports/<step>.ipynb
    only once it stops (a killed run leaves no trusted report)."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    partial, final = reports / f".{step.name}.partial.ipynb", reports / f"{step.name}.ipynb"
    error = detail = ""
    extra = {"kernel_manager_class": logged_kernel_manager(kernel_log)} if kernel_log else {}
    try:
        pm.execute_notebook(str(notebook), str(partial), parameters=params,
                            cwd=str(notebook.parent), kernel_name="python3",
                            log_output=True, progress_bar=False,
                            execution_timeout=timeout, **extra)
    except pm.PapermillExecutionError as exc:
        error, detail = f"{exc.ename}: {exc.evalue}", "\n".join(exc.traceback)
    except (CellTimeoutError, DeadKernelError) as exc:  # the step's fault, not the code's
        error = detail = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any other failure: this step failed, go on
        error, detail = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    html = reports / f"{step.name}.html"
    if partial.exists():
        os.replace(partial, final)
        try:
            render_notebook_html(final, html)
        except Exception as exc:  # noqa: BLE001 - the run's numbers are fine; say so
            if not error:
                error = f"report rendering failed: {type(exc).__name__}: {exc}"
                detail = traceback.format_exc()
    else:  # nothing executed: do not leave an older run's report looking current
        final.unlink(missing_ok=True)
        html.unlink(missing_ok=True)
    return error, detail


# --- the run -----------------------------------------------------------------------------
@dataclass
class Run:
    """Everything resolved before the first step: what runs, with what, where."""

    plan: list[Step]
    steps: list[Step]
    params: dict[str, dict[str, Any]]
    notebooks: Path
    reports: Path
    profile: str
    data_root: Path
    synthetic: bool
    force: bool
    timeout: int | None
    jobs: int = 1
    code: str = ""
    started: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: list = field(default_factory=list)   # data_facts: a new dataset or mapping re-runs
    settings: dict[str, Any] = field(default_factory=dict)  # shown on the index
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # state, index
    progress: Progress | None = None   # the console's view of the run (`execute_run`)

    @property
    def log_path(self) -> Path:
        return self.reports / LOG_NAME

    @property
    def state_path(self) -> Path:
        return self.reports / ".run_state.json"

    def write_index(self) -> Path:
        ckpts = self.settings.get("checkpoints")
        rows = build_rows([s.name for s in self.plan], self.outcomes, self.state, self.reports,
                          Path(ckpts) if ckpts else None)
        return write_index(self.reports / "index.html", rows, run_date=self.started,
                           profile=self.profile, data_root=str(self.data_root),
                           synthetic=self.synthetic, settings=self.settings)

    def fingerprint(self, step: Step) -> str:
        return fingerprint(self.notebooks / step.notebook, self.params[step.name], self.code,
                           upstream_facts(step.after, self.state, self.reports), self.data)

    def why_run(self, step: Step, fp: str) -> str:
        """Why the step must run ("" = unchanged: same fingerprint, ok, report present)."""
        entry = self.state.get(step.name)
        if self.force:
            return "forced"
        if not entry:
            return "never run"
        if entry.get("status") != "ok":
            return f"last run {entry.get('status')}"
        if entry.get("fingerprint") != fp:
            return "changed"
        return "" if (self.reports / f"{step.name}.html").exists() else "report missing"


def prepare(args: argparse.Namespace, plan: list[Step]) -> Run:
    """Check the whole command line and every step's config; raise UsageError on any fault."""
    names = {s.name for s in plan}
    if dangling := sorted({d for s in plan for d in s.after} - names):
        raise UsageError(f"the plan names unknown dependencies {dangling}")
    global_, per_step = parse_overrides(args.params, plan)
    for name, extra in nproc_overrides(plan, args.nproc_per_node).items():
        per_step[name] = {**extra, **per_step.get(name, {})}  # -p STEP.nproc_per_node wins
    steps = select_steps(plan, args.only, args.start)
    data_root, synthetic = resolve_data(args.data_root)
    if synthetic:
        log.warning("\n%s\n  NO REAL DATA FOUND: using the generated SYNTHETIC DEMO set at %s\n"
                    "  Numbers in these reports are NOT clinical results. Pass --data-root, "
                    "set CXR_DATA_ROOT\n  or download: python -m utils.data.download kermany"
                    "\n%s", "=" * 78, data_root, "=" * 78)
    profile = args.profile or ("demo" if synthetic else "full")
    reports, checkpoints = args.reports_dir.resolve(), args.checkpoint_dir.resolve()
    base = {"profile": profile, "data_root": str(data_root), "reports_dir": str(reports),
            "checkpoint_dir": str(checkpoints)}
    params = {s.name: resolve_params(s, base, profile, global_, per_step) for s in plan}
    for step in steps:
        validate(step, params[step.name])
    notebooks = args.notebooks_dir.resolve()
    missing = [str(notebooks / s.notebook) for s in steps if not (notebooks / s.notebook).exists()]
    if missing and not args.list:
        raise UsageError(f"notebook(s) not found: {', '.join(missing)} (check --notebooks-dir)")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more")
    jobs = args.jobs or auto_jobs(profile, args.nproc_per_node, len(steps))
    settings = {"profile": profile, "data root": data_root, "synthetic demo data": synthetic,
                "jobs": jobs,
                "steps selected": " ".join(s.name for s in steps), "-p": " ".join(args.params),
                "checkpoints": checkpoints, "force": args.force}
    return Run(plan, steps, params, notebooks, reports, profile, data_root, synthetic,
               args.force, args.timeout, jobs, code_digest(CODE_DIR),
               datetime.now().isoformat(sep=" ", timespec="seconds"),
               load_state(reports / ".run_state.json"), data=data_facts(data_root),
               settings=settings)


def print_plan(run: Run) -> None:
    """`--list`: each selected step, why it would (not) run, and its own parameters."""
    print(f"profile={run.profile} data_root={run.data_root}"
          f"{' (SYNTHETIC demo)' if run.synthetic else ''} reports={run.reports}")
    will_run: set[str] = set()
    for step in run.steps:
        if not (run.notebooks / step.notebook).exists():
            verdict = "MISSING notebook"
        elif why := run.why_run(step, run.fingerprint(step)):
            verdict = f"run ({why})"
        elif up := [a for a in step.after if a in will_run]:
            verdict = f"may run (reads {up[0]}{' ...' if len(up) > 1 else ''})"
        else:
            verdict = "skip (unchanged)"
        if not verdict.startswith("skip"):
            will_run.add(step.name)
        shown = {k: v for k, v in run.params[step.name].items() if k not in INJECTED}
        print(f"  {step.name:<40} {verdict:<24} {step.notebook:<26} "
              + " ".join(f"{k}={v!r}" for k, v in shown.items()))


def run_step(run: Run, step: Step) -> dict[str, Any]:
    """Skip or execute one step; record it in the state file at start and end; one console
    line as it starts and one as it ends (a failure's with its error in full). Steps side
    by side share `run`: its state, outcomes and index change under `run.lock`."""
    progress = run.progress or Progress([s.name for s in run.steps], run.jobs, {})
    with run.lock:
        fp = run.fingerprint(step)
        why = run.why_run(step, fp)
        if not why:
            progress.end(step.name)
            log.info("skip    %s (unchanged) · %s", step.name, progress.summary())
            return {"status": "skipped-unchanged",
                    "duration_s": run.state[step.name].get("duration_s")}
        log.info("start   %s (%s)", step.name, why)
        run.state[step.name] = {"status": "running", "fingerprint": fp,
                                "started": datetime.now().isoformat(timespec="seconds")}
        save_state(run.state_path, run.state)
        run.outcomes[step.name] = {"status": "running"}
        run.write_index()
    progress.clear_records(step.name)
    progress.begin(step.name)
    started = time.time()
    with current_step(step.name):
        error, detail = execute(step, run.params[step.name], run.notebooks / step.notebook,
                                run.reports, run.timeout, kernel_log=run.log_path)
    outcome = {"status": "failed" if error else "ok", "error": error,
               "duration_s": round(time.time() - started, 2)}
    progress.end(step.name, None if error else outcome["duration_s"])
    took = fmt_duration(outcome["duration_s"])
    if error:
        log.error("FAILED  %s in %s: %s · %s\n%s\n(its report: %s; the cells' output: %s)",
                  step.name, took, error.splitlines()[0], progress.summary(), detail.rstrip(),
                  run.reports / f"{step.name}.html", run.log_path)
    else:
        log.info("ok      %s in %s · %s", step.name, took, progress.summary())
    with run.lock:
        run.state[step.name].update(outcome,
                                    finished=datetime.now().isoformat(timespec="seconds"))
        save_state(run.state_path, run.state)
    return outcome


def _ready(step: Step, done: set[str], selected: set[str]) -> bool:
    """Every step it reads or needs that runs in this call has finished (ok or not)."""
    return all(d in done for d in (*step.after, *step.needs) if d in selected)


def run_steps(run: Run) -> None:
    """Every selected step: in plan order, one at a time, or `run.jobs` side by side, each
    starting once the steps it reads or needs have finished (the next ready one in plan
    order first)."""
    def finish(step: Step, outcome: dict[str, Any]) -> None:
        with run.lock:
            run.outcomes[step.name] = outcome
            run.write_index()

    if run.jobs <= 1:
        for step in run.steps:
            finish(step, run_step(run, step))
        return
    pending, selected, done = list(run.steps), {s.name for s in run.steps}, set()
    with ThreadPoolExecutor(max_workers=run.jobs) as pool:
        running: dict[Any, Step] = {}
        while pending or running:
            for step in [s for s in pending if _ready(s, done, selected)]:
                if len(running) >= run.jobs:
                    break
                pending.remove(step)
                running[pool.submit(run_step, run, step)] = step
            if not running:  # a dependency cycle in a hand-made plan: run the rest in order
                step = pending.pop(0)
                running[pool.submit(run_step, run, step)] = step
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                step = running.pop(future)
                done.add(step.name)
                finish(step, future.result())


def main(argv: list[str] | None = None, plan: list[Step] | None = None) -> int:
    """Run the plan (`default_plan()` unless a test passes its own); return the exit status."""
    plan = plan if plan is not None else default_plan()
    try:
        args = build_parser(plan).parse_args(argv)
    except SystemExit as exc:  # --help (0) or an argparse usage error (2)
        return int(exc.code or 0)
    with console_logging(args.verbose):
        try:
            run = prepare(args, plan)
        except UsageError as exc:
            print(f"run_all.py: error: {exc}", file=sys.stderr)
            return 2
        if args.list:
            print_plan(run)
            return 0
        return execute_run(run, args.bundle)


def last_durations(state: dict[str, Any]) -> dict[str, float]:
    """Each step's `duration_s` in its last successful run (.run_state.json)."""
    return {name: float(entry["duration_s"]) for name, entry in state.items()
            if entry.get("status") == "ok" and entry.get("duration_s")}


def execute_run(run: Run, bundle: Path | None = None) -> int:
    """Every selected step with the console, the log and the live line; then the summary
    (and the bundle). Returns 1 when a step failed, else 0."""
    run.progress = Progress([s.name for s in run.steps], run.jobs, last_durations(run.state),
                            run.reports / PROGRESS_DIR)
    with log_file(run.log_path):
        log.info("log: %s (each notebook's output; kernel, papermill and nbconvert messages)",
                 run.log_path)
        for note in parameter_notes(run.steps, run.params, run.notebooks):
            log.warning("%s", note)
        index = run.write_index()
        if run.jobs > 1:
            log.info("%d steps side by side (--jobs %d)", run.jobs, run.jobs)
        with kernel_env(run.jobs, run.progress.folder), live_line(run.progress):
            run_steps(run)
        rows = build_rows([s.name for s in run.steps], run.outcomes, run.state, run.reports)
        print(f"\n{summary_table(rows)}\n\nindex: {index}")
        if bundle:
            from utils.bundle import BUNDLE_NAME, write_bundle

            target = run.reports / BUNDLE_NAME if bundle == BUNDLE_DEFAULT else bundle
            print(f"bundle: {write_bundle(run.reports, target)}")
        print(f"log: {run.log_path}")
    return 1 if any(o["status"] == "failed" for o in run.outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
