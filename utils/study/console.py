"""run_all's console, its log file and its live line (STYLE 15: a console for the person).

The console (stderr) shows run_all's own lines: a step's start and end, with the run's
progress (steps done, time elapsed, an estimate of what is left), a failed step's error in
full, and, while steps run, one live line with the epoch and validation AUROC of each run
training now (read from the records `utils.training.history.Board` writes under `CXR_PROGRESS_DIR`).
Everything else goes to one log file per run: every notebook's output and papermill's
banner (the `papermill` logger), nbconvert's warnings (`traitlets`), Python warnings, and
the kernels' own stderr (`logged_kernel_manager`).
"""
from __future__ import annotations

import json
import logging
import re
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..evaluation.results import parse_run_name

__all__ = ["logged_kernel_manager", "current_step", "console_logging", "log_file",
           "fmt_duration", "estimate_left", "step_of_run", "read_progress", "training_text",
           "Progress", "live_line"]

log = logging.getLogger("run_all")   # the console's lines (and the log's)


def logged_kernel_manager(log_path: Path) -> type:
    """A kernel manager whose kernels write their stdout and stderr (`[IPKernelApp] WARNING
    | Kernel is running over TCP...`, `KeyboardInterrupt caught in kernel`) to `log_path`
    instead of inheriting run_all's console. papermill cannot pass Popen's arguments, but
    nbclient takes the manager's class (`kernel_manager_class`)."""
    from jupyter_client import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log_path, "ab") as sink:  # the kernel keeps its own copy of the fd
                kw.setdefault("stdout", sink)
                kw.setdefault("stderr", sink)
                await super().start_kernel(**kw)

    return LoggedKernelManager


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CURRENT = threading.local()   # the step a thread is running: its log lines name it


@contextmanager
def current_step(name: str) -> Iterator[None]:
    """Log records of this thread (papermill's, for the notebook it runs) name `name`."""
    _CURRENT.step = name
    try:
        yield
    finally:
        _CURRENT.step = "-"


def fmt_duration(seconds: float | None) -> str:
    """`0:42`, `12:05`, `3:02:10`; `?` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _LogContext(logging.Filter):
    """Names the step whose thread logged a record (side by side, notebooks' outputs
    interleave in the log) and drops papermill's per-cell start/end markers."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.step = getattr(_CURRENT, "step", "-")
        return not (record.name.startswith("papermill") and record.getMessage().startswith(
            ("Executing Cell", "Ending Cell")))


class _Plain(logging.Formatter):
    """Without terminal colour codes (IPython's tracebacks carry them): for the log, and
    for a console that is not a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class _Console(logging.Handler):
    """The person's console (stderr): each record as a line above the live line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own contract: never raise from emit
            self.handleError(record)


@contextmanager
def console_logging(verbose: bool = False) -> Iterator[None]:
    """run_all's own messages on the console; with `verbose`, every logger's (cell output,
    papermill, nbconvert) too. Undone on exit (tests call `main` many times)."""
    handler = _Console()
    colour = sys.stderr.isatty()
    handler.setFormatter(logging.Formatter("%(message)s") if colour else _Plain("%(message)s"))
    handler.addFilter(_LogContext())
    target = logging.getLogger() if verbose else log
    saved = log.level, target.level
    target.addHandler(handler)
    log.setLevel(logging.INFO)
    target.setLevel(logging.INFO)
    try:
        yield
    finally:
        target.removeHandler(handler)
        log.setLevel(saved[0])
        target.setLevel(saved[1])


@contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Every logger (papermill's banner and cell output, nbconvert's warnings, run_all's
    lines) and Python's warnings into `path`, new each run; the kernels append their own
    stderr (`logged_kernel_manager`), so the file is opened for appending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(_Plain("%(asctime)s %(step)s %(name)s %(levelname)s: %(message)s"))
    handler.addFilter(_LogContext())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def estimate_left(pending: list[str], running: dict[str, float], expected: dict[str, float],
                  jobs: int = 1, training_left: dict[str, float] | None = None
                  ) -> float | None:
    """Seconds until the run ends, roughly; None when nothing is known yet.

    Each pending step takes its `expected` seconds (its last duration, in this run or in
    .run_state.json; a step never timed counts as the median of those known); a running
    step its expected seconds less those it has run (`running`), but at least what its
    current training run says is left (`training_left`); the total is shared among `jobs`
    slots. A small replaceable function: a cost plan can take its place.
    """
    known = [v for v in expected.values() if v]
    default = statistics.median(known) if known else None
    training_left = training_left or {}
    total = 0.0
    for step in pending:
        guess = expected.get(step) or default
        if guess is None:
            return None
        total += guess
    for step, elapsed in running.items():
        guess = expected.get(step) or default
        if guess is None and not training_left.get(step):
            return None  # a training run's last epoch says nothing of the step's end
        total += max((guess or 0.0) - elapsed, training_left.get(step, 0.0))
    return total / max(1, min(jobs, len(pending) + len(running)))


def step_of_run(run_name: str, steps: Iterable[str]) -> str | None:
    """The step (among `steps`) a training run belongs to: `05_vit.rsna.s1` -> `05_vit`;
    runs named after their step (`02_chexnet_nih`, `09_transfer_imagenet_head`) go to the
    longest step name they start with."""
    base, steps = parse_run_name(run_name)[0], list(steps)
    if base in steps:
        return base
    return max((s for s in steps if base.startswith(f"{s}_")), key=len, default=None)


def read_progress(folder: Path, started: dict[str, float]) -> dict[str, dict[str, Any]]:
    """The latest record (utils.training.history.Board) of each running step (`started`: its wall
    clock start), written since it started; unreadable records are skipped."""
    latest: dict[str, dict[str, Any]] = {}
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        step = step_of_run(str(record.get("run", path.stem)), started)
        if step and record.get("time", 0) >= started[step] and \
                record.get("time", 0) >= latest.get(step, {}).get("time", 0):
            latest[step] = record
    return latest


def training_text(record: dict[str, Any]) -> str:
    """`05_vit.rsna epoch 3/12, val AUROC 0.812, ~0:54 to its end`."""
    auroc = record.get("val_auroc")
    text = f"{record.get('run')} epoch {record.get('epoch')}/{record.get('epochs')}"
    if auroc is not None:
        text += f", val AUROC {auroc:.3f}"
    if left := _training_left(record):
        text += f", ~{fmt_duration(left)} to its end"
    return text


def _training_left(record: dict[str, Any]) -> float:
    per_epoch = record.get("seconds_per_epoch") or 0.0
    return max(0, int(record.get("epochs", 0)) - int(record.get("epoch", 0))) * per_epoch


@dataclass
class Progress:
    """What the console says of the whole run: steps done of the total, time elapsed and
    left (`estimate_left`), and the training runs of the steps running now."""

    steps: list[str]
    jobs: int
    expected: dict[str, float]        # seconds per step: the last ok run's, then this run's
    folder: Path | None = None        # <reports>/.progress (utils.training.history's records)
    started: float = field(default_factory=time.time)
    done: set[str] = field(default_factory=set)
    running: dict[str, float] = field(default_factory=dict)  # step -> its start (wall clock)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, step: str) -> None:
        with self.lock:
            self.running[step] = time.time()

    def end(self, step: str, seconds: float | None = None) -> None:
        with self.lock:
            self.running.pop(step, None)
            self.done.add(step)
            if seconds:
                self.expected[step] = seconds

    def summary(self, records: dict[str, dict[str, Any]] | None = None) -> str:
        """`1/17 steps done · 0:42 elapsed · about 1:02:10 left`; `records`: the running
        steps' training records (`read_progress`), read here when not given."""
        with self.lock:
            now, started, done = time.time(), dict(self.running), len(self.done)
        if records is None:
            records = read_progress(self.folder, started) if self.folder else {}
        running = {s: now - t for s, t in started.items()}
        pending = [s for s in self.steps if s not in self.done and s not in running]
        text = f"{done}/{len(self.steps)} steps done · {fmt_duration(now - self.started)} elapsed"
        if pending or running:
            left = estimate_left(pending, running, self.expected, self.jobs,
                                 {s: _training_left(r) for s, r in records.items()})
            text += f" · about {fmt_duration(left)} left" if left is not None else ""
        return text

    def line(self) -> tuple[str, tuple]:
        """The live line, and a key that changes when a training run reports an epoch."""
        with self.lock:
            started = dict(self.running)
        records = read_progress(self.folder, started) if self.folder else {}
        parts = [training_text(records[s]) if s in records else
                 f"{s} running {fmt_duration(time.time() - t)}" for s, t in started.items()]
        key = tuple(sorted((str(r.get("run")), r.get("epoch")) for r in records.values()))
        return " · ".join([f"run_all: {self.summary(records)}", *parts]), key

    def clear_records(self, step: str) -> None:
        """An earlier run's records of `step` (a killed run leaves its last one)."""
        for path in self.folder.glob("*.json") if self.folder and self.folder.is_dir() else []:
            if step_of_run(path.stem, [step]) == step:
                path.unlink(missing_ok=True)


@contextmanager
def live_line(progress: Progress, every: float = 1.0, quiet_every: float = 60.0
              ) -> Iterator[None]:
    """While the steps run: on a terminal, one line under the step lines, redrawn every
    `every` s (tqdm); elsewhere (a pipe, a CI log, `!python run_all.py` in a notebook)
    the same line printed when a training run reports a new epoch, at most every
    `quiet_every` s."""
    from tqdm import tqdm

    bar = tqdm(total=len(progress.steps), bar_format="{desc}", disable=None, file=sys.stderr,
               leave=False, dynamic_ncols=True)
    stop = threading.Event()

    def refresh() -> None:
        printed, seen = 0.0, ()
        while not stop.wait(every):
            text, key = progress.line()
            if not bar.disable:
                bar.set_description_str(text, refresh=True)
            elif key and key != seen and time.time() - printed >= quiet_every:
                log.info("%s", text)
                printed, seen = time.time(), key

    thread = threading.Thread(target=refresh, name="run_all-live-line", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
