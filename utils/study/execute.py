"""The execution: a run resolved from the command line (`prepare`), each step skipped when
unchanged or executed with papermill and rendered to HTML (`execute`, `run_step`), steps
side by side when they may (`run_steps`), and the index kept current after each.

The console, the log file and the live line are `utils.study.console`'s; what decides that a
step is unchanged is `utils.study.run_state`'s.
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from ..reports.index import build_rows, summary_table, write_index
from ..reports.step_report import render_notebook_html
from ..runtime import usable_cpus
from ..training.history import PROGRESS_ENV
from .console import (Progress, current_step, fmt_duration, live_line, log_file,
                      logged_kernel_manager)
from .plan import (INJECTED, Step, UsageError, nproc_overrides, parameter_notes, parse_overrides,
                   resolve_params, select_steps, validate)
from . import rehearse as rehearsal
from . import resume as sessions
from .run_state import code_digest, data_facts, fingerprint, load_state, save_state, upstream_facts

__all__ = ["Run", "prepare", "print_plan", "run_step", "run_steps", "execute", "execute_run",
           "resolve_data", "auto_jobs", "kernel_env", "BUNDLE_DEFAULT", "LOG_NAME"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CODE_DIR = REPO_ROOT / "utils"   # its *.py source is part of every fingerprint


BUNDLE_DEFAULT = Path("<reports-dir>/cxr-pneumonia-reports.zip")  # --bundle without a path


LOG_NAME = "run_all.log"     # <reports-dir>/run_all.log: everything that is not the console


PROGRESS_DIR = ".progress"   # <reports-dir>/.progress/<run>.json: utils.training.history's records


log = logging.getLogger("run_all")


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


# --- execution ---------------------------------------------------------------------------
@contextmanager
def kernel_env(jobs: int = 1, progress: Path | None = None) -> Iterator[None]:
    """Environment the kernels inherit: quiet training logs, headless plots, repo importable;
    with `jobs` kernels side by side, each its share of the CPU threads (unless set);
    `progress`: the folder where `fit` writes a record per training run (the live line)."""
    saved = dict(os.environ)
    os.environ.update(CXR_QUIET="1", MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
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
    from ..training.distributed import training_gpus  # torch: imported only when asked

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
    planned: dict[str, dict[str, Any]] = field(default_factory=dict)  # budget.planned_seconds
    session: Any = None   # resume.Session: the --stop-after deadline, how to continue

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
    if getattr(args, "rehearse", False):  # full's plan at toy scale (rehearse.py)
        rehearsal.apply(args)
    steps = select_steps(plan, args.only, args.start)
    data_root, synthetic = resolve_data(args.data_root)
    if synthetic:
        log.warning("\n%s\n  NO REAL DATA FOUND: using the generated SYNTHETIC DEMO set at %s\n"
                    "  Numbers in these reports are NOT clinical results. Pass --data-root, "
                    "set CXR_DATA_ROOT\n  or download: python -m utils.data.download kermany"
                    "\n%s", "=" * 78, data_root, "=" * 78)
    from .budget_hooks import choose_profile

    profile, why = choose_profile(args, synthetic)
    if why:
        log.info("profile %s (auto): %s", profile, why)
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
    run = Run(plan, steps, params, notebooks, reports, profile, data_root, synthetic,
              args.force, args.timeout, jobs, code_digest(CODE_DIR),
              datetime.now().isoformat(sep=" ", timespec="seconds"),
              load_state(reports / ".run_state.json"), data=data_facts(data_root),
              settings=settings)
    sessions.start_session(run, args, CODE_DIR)  # --resume-from, session.json, --stop-after (resume.py)
    return run


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
        if held := sessions.held_back(run):  # the session's time is up: start no more
            log.info("held    %s (the session's time is up)", step.name)
            return held
        log.info("start   %s (%s)", step.name, why)
        run.state[step.name] = {"status": "running", "fingerprint": fp,
                                "started": datetime.now().isoformat(timespec="seconds"),
                                **run.planned.get(step.name, {})}
        save_state(run.state_path, run.state)
        run.outcomes[step.name] = {"status": "running"}
        run.write_index()
    progress.clear_records(step.name)
    progress.begin(step.name)
    started = time.time()
    with current_step(step.name):
        error, detail = execute(step, run.params[step.name], run.notebooks / step.notebook,
                                run.reports, run.timeout, kernel_log=run.log_path)
    outcome = {"status": sessions.step_status(error), "error": error,
               "duration_s": round(time.time() - started, 2)}
    progress.end(step.name, None if error else outcome["duration_s"])
    took = fmt_duration(outcome["duration_s"])
    if outcome["status"] == sessions.INTERRUPTED:
        log.warning("stopped %s in %s at the session's deadline (%s) · %s", step.name, took,
                    error.splitlines()[0], progress.summary())
    elif error:
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


def last_durations(state: dict[str, Any]) -> dict[str, float]:
    """Each step's `duration_s` in its last successful run (.run_state.json)."""
    return {name: float(entry["duration_s"]) for name, entry in state.items()
            if entry.get("status") == "ok" and entry.get("duration_s")}


def _planned(run: Run) -> dict[str, dict[str, Any]]:
    """Each step's planned seconds on this machine (the index shows them beside the
    duration); a plan that cannot be priced only costs the column, never the run."""
    from .budget import PlanError
    from .budget_hooks import planned_seconds

    try:
        return planned_seconds(run, [s for s in run.steps if run.why_run(s, run.fingerprint(s))])
    except PlanError as exc:  # this CPU not measured yet: the column waits for --plan
        logging.getLogger(__name__).info("no planned times for the index: %s", exc)  # log file
        return {}
    except Exception as exc:  # noqa: BLE001 - an estimate; the run goes on without it
        log.warning("no planned times for the index (%s: %s)", type(exc).__name__, exc)
        return {}


def execute_run(run: Run, bundle: Path | None = None, with_weights: bool = False) -> int:
    """Every selected step with the console, the log and the live line; then the summary
    (and the bundle, with each run's best.pt when `with_weights`). Returns 1 when a step
    failed, else 0."""
    run.progress = Progress([s.name for s in run.steps], run.jobs, last_durations(run.state),
                            run.reports / PROGRESS_DIR)
    with log_file(run.log_path):
        log.info("log: %s (each notebook's output; kernel, papermill and nbconvert messages)",
                 run.log_path)
        for note in parameter_notes(run.steps, run.params, run.notebooks):
            log.warning("%s", note)
        run.planned = _planned(run)
        index = run.write_index()
        if run.jobs > 1:
            log.info("%d steps side by side (--jobs %d)", run.jobs, run.jobs)
        with kernel_env(run.jobs, run.progress.folder), sessions.deadline_env(run.session), \
                live_line(run.progress):
            run_steps(run)
        rows = build_rows([s.name for s in run.steps], run.outcomes, run.state, run.reports)
        print(f"\n{summary_table(rows)}\n\nindex: {index}")
        if bundle:
            from ..reports.bundle import BUNDLE_NAME, write_bundle

            target = run.reports / BUNDLE_NAME if bundle == BUNDLE_DEFAULT else bundle
            ckpts = run.settings.get("checkpoints") if with_weights else None
            print(f"bundle: {write_bundle(run.reports, target, ckpts)}")
        print(f"log: {run.log_path}")
        if hint := sessions.resume_hint(run):
            print(hint)
    return sessions.exit_status(run.outcomes)
