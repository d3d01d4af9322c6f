"""Sessions that end: continue a previous session's run (`run_all.py --resume-from DIR`) and
stop before the platform does (`--stop-after HOURS`).

Kaggle and Colab end a session after ~12 hours. Every run writes `<reports>/session.json` at
its start: what it ran (a digest of every `utils/*.py` and notebook, per file), on which data
(per source, a digest of the manifest as it sees the data: file names relative to the
source's folder, sizes, labels, splits; not image bytes, absolute paths, file times or the git
commit), where (data root, `run_state.data_facts`) and its lineage (the sessions it continues).

`--resume-from DIR` finds the previous session's `reports/` and `checkpoints/` in DIR (DIR
itself, or a sub-folder up to two levels down, e.g. /kaggle/input/<name>/cxr-pneumonia/; or
DIR is the reports folder, its checkpoints beside it), refuses with one message when its code
or data differ from this session's (`--resume-anyway` overrides), and copies both into this
run's --reports-dir and --checkpoint-dir, never writing to DIR (it may be read-only). Then
the run continues as any re-run does: completed steps are skipped and the interrupted one
resumes from its `last.pt`.

A new data path (Colab re-downloads; another machine) changes the steps' fingerprints
(`data_root`, `data_facts`); when the manifest digests and the code are the same, the recorded
fingerprints are rebased onto this session (`rebase_state`), so completed steps stay skipped.

`--stop-after HOURS` (default on Kaggle and Colab: their session limit less
`MARGIN_HOURS`) exports a deadline to the kernels (`loop.STOP_ENV`); `fit` stops at the first
epoch end past it with `SessionDeadline` once `last.pt` is written; the step is marked
`interrupted`, no further step starts, and the console prints the command that continues.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from ..fileio import atomic_write_json, read_json
from ..training.loop import STOP_ENV
from .plan import UsageError
from .run_state import fingerprint, load_state, save_state, upstream_facts
from .session_facts import code_files, data_digest, differences

__all__ = ["SESSION_FILE", "MARGIN_HOURS", "INTERRUPTED", "add_session_args", "code_files",
           "data_digest", "differences", "find_previous", "copy_previous", "rebase_state",
           "start_session", "session_start", "Session", "deadline_env", "step_status", "held_back",
           "resume_hint", "exit_status"]

_REPO_ROOT = Path(__file__).resolve().parents[2]   # the git checkout whose commit is recorded

SESSION_FILE = "session.json"   # <reports>/session.json, written at each run's start
MARGIN_HOURS = 0.5              # the default --stop-after on Kaggle/Colab: their limit less this
INTERRUPTED = "interrupted"     # a step stopped at the deadline (run state, index, console)
NOT_STARTED = "not run"         # a step held back once the session's time is up
KAGGLE_INPUT = "/kaggle/input/<name>"
log = logging.getLogger("run_all")


def add_session_args(p) -> None:
    """run_all.py's flags for sessions that end."""
    p.add_argument("--resume-from", type=Path, metavar="DIR", help="continue a previous "
                   "session: DIR holds its reports/ and checkpoints/ (e.g. a Kaggle "
                   "version's output attached as /kaggle/input/<name>); copied into "
                   "--reports-dir/--checkpoint-dir, DIR is never written; with --list, what "
                   "would run (docs/sessions.md)")
    p.add_argument("--resume-anyway", action="store_true", help="resume even though the "
                   "previous session ran other code or data (its completed steps are kept)")
    p.add_argument("--stop-after", type=float, metavar="HOURS", help="stop cleanly at the "
                   "next epoch end once HOURS have passed, print the command that continues "
                   f"(default on Kaggle/Colab: their session limit less {MARGIN_HOURS} h, "
                   "counted from the session's start; 0 = never)")


# --- what a session ran on: session_facts.py ------------------------------------------------
def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


# --- finding and copying the previous session ----------------------------------------------------
def _is_reports(folder: Path) -> bool:
    return (folder / ".run_state.json").is_file() or (folder / SESSION_FILE).is_file()


def find_previous(folder: Path) -> tuple[Path, Path]:
    """(reports, checkpoints) of the run in `folder`: `folder/reports` (checkpoints beside
    it), else the same one or two folder levels down, else `folder` is the reports folder;
    exactly one must match."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--resume-from {folder}: no such folder")
    level, found = [folder], []
    for _ in range(3):
        found = [d / "reports" for d in level if _is_reports(d / "reports")]
        if found:
            break
        level = [c for d in level for c in _subfolders(d)]
    if not found and _is_reports(folder):
        found = [folder]
    if len(found) != 1:
        what = (f"several runs: {', '.join(map(str, found))}; pass the one to continue"
                if found else "no reports/.run_state.json in it or two levels below it")
        raise UsageError(f"--resume-from {folder}: {what}")
    reports = found[0]
    record = read_json(reports / SESSION_FILE) or {}
    ckpts = reports.parent / record.get("checkpoints_rel", "checkpoints")
    return reports, ckpts


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []




def copy_previous(src: Path, dst: Path) -> int:
    """Copy the tree `src` into `dst` (made writable: the source may be read-only); the run
    state and session record last, so an interrupted copy is copied again. Returns files."""
    last = {".run_state.json", SESSION_FILE}
    later, n = [], 0
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.parent == src and path.name in last:
            later.append((path, target))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # contents only: no read-only mode, no DIR writes
            n += 1
    dst.mkdir(parents=True, exist_ok=True)
    for path, target in later:
        shutil.copyfile(path, target)
        n += 1
    return n


def _adopt(src_dir: Path, reports: Path, ckpts: Path, current: dict[str, Any],
           anyway: bool) -> dict[str, Any]:
    """--resume-from: check the previous session against this one, copy it; return its record."""
    src_reports, src_ckpts = find_previous(src_dir)
    record = read_json(src_reports / SESSION_FILE) or {}
    here = read_json(reports / SESSION_FILE) or {}
    if src_reports.resolve() == reports.resolve() or \
            (record.get("id") and record["id"] in [here.get("id"), *here.get("lineage", [])]):
        log.info("resume: %s is already continued in %s", src_reports, reports)
        return here
    if load_state(reports / ".run_state.json"):
        raise UsageError(f"--resume-from {src_dir}: --reports-dir {reports} already holds "
                         f"another run, which the copy would mix with; pass an empty "
                         f"--reports-dir (and --checkpoint-dir) or delete {reports}")
    problems = differences(record, current) if record else [
        f"{src_reports} has no {SESSION_FILE} (written by run_all at each start since "
        f"sessions could be resumed), so its code and data cannot be checked"]
    if problems and not anyway:
        raise UsageError(f"--resume-from {src_dir}: the previous session ran other code or "
                         f"data than this one: {' | '.join(problems)}. Run the same code "
                         f"(pin its commit {record.get('commit') or '?'}: COMMIT in the "
                         f"notebooks' setup cell, docs/sessions.md) on the same data, or pass "
                         f"--resume-anyway to continue regardless (its completed steps are "
                         f"kept)")
    for problem in problems:
        log.warning("resume anyway: %s", problem)
    files = copy_previous(src_reports, reports)
    if src_ckpts.is_dir():
        files += copy_previous(src_ckpts, ckpts)
    log.info("resume: copied %d files of %s into %s%s", files, src_reports, reports,
             f" and {ckpts}" if src_ckpts.is_dir() else f" (no checkpoints at {src_ckpts})")
    return record or {"id": "", "lineage": []}


# --- the run's side: rebase, the session record, the deadline ------------------------------------
def preview_resume(run, src_dir: Path, anyway: bool) -> None:
    """`--list --resume-from DIR`: what would run once DIR is continued, read from DIR
    without copying or writing anything (the listing shows DIR's reports)."""
    src_reports, _ = find_previous(src_dir)
    run.reports, run.state = src_reports, load_state(src_reports / ".run_state.json")
    if record := read_json(src_reports / SESSION_FILE):
        rebase_state(run, record, anyway, save=False)


def rebase_state(run, previous: dict[str, Any], anyway: bool = False, save: bool = True
                 ) -> int:
    """Completed steps of a session with the same code and data but another data path (or
    file times) keep counting as unchanged: a recorded fingerprint that equals the one the
    previous session's code digest, data root and data facts give is replaced by this
    session's. Any other input that changed (a parameter, a notebook) still re-runs. In plan
    order, so a step's upstream facts use the rebased fingerprints. Returns steps rebased."""
    if not previous.get("data_root") or "data_facts" not in previous:
        return 0
    old_code = previous.get("code_digest", run.code) if anyway else run.code
    old_state, n = json.loads(json.dumps(run.state)), 0
    for step in run.plan:
        entry, nb = run.state.get(step.name), run.notebooks / step.notebook
        if not entry or not entry.get("fingerprint") or not nb.exists():
            continue
        params = run.params[step.name]
        old = fingerprint(nb, {**params, "data_root": previous["data_root"]}, old_code,
                          upstream_facts(step.after, old_state, run.reports),
                          previous["data_facts"])
        new = run.fingerprint(step)
        if entry["fingerprint"] == old and old != new:
            entry["fingerprint"], n = new, n + 1
    if n and save:
        save_state(run.state_path, run.state)
    if n:
        log.info("resume: %d completed step(s) rebased onto this session's data path", n)
    return n


@dataclass
class Session:
    """What execute_run needs of the session: its deadline and how to continue it."""

    argv: list[str] = field(default_factory=list)
    deadline: float | None = None
    hours: float | None = None
    platform: str | None = None
    reports: Path | None = None
    checkpoints: Path | None = None


def _platform() -> str | None:
    from .budget import detect_platform  # the one detection (KAGGLE_KERNEL_RUN_TYPE, Colab)

    return detect_platform()[0]


def _stop_hours(given: float | None, platform: str | None) -> float | None:
    if given is not None:
        return given if given > 0 else None
    if platform:
        from .cost import SESSION_HOURS

        return SESSION_HOURS[platform] - MARGIN_HOURS
    return None


def session_start(platform: str | None, now: float) -> float:
    """When the platform's session clock started: on Kaggle and Colab the container's first
    process (psutil), so the setup cell and downloads before run_all count against the
    default --stop-after as they count against the platform's limit. `now` elsewhere, or
    when that start is unreadable, in the future, or older than a whole session."""
    if not platform:
        return now
    try:
        import psutil

        began = psutil.Process(1).create_time()
    except Exception:  # noqa: BLE001 - no /proc, no permission: count from now
        return now
    from .cost import SESSION_HOURS

    return began if 0 <= now - began < SESSION_HOURS[platform] * 3600 else now


def start_session(run, args, code_dir: Path) -> None:
    """prepare()'s hook: --resume-from (check, copy), rebase the completed steps, write
    `<reports>/session.json`, set the deadline. `--list` only looks."""
    started = time.time()
    platform = _platform()
    hours = _stop_hours(getattr(args, "stop_after", None), platform)
    ckpts = Path(run.settings.get("checkpoints") or run.reports.parent / "checkpoints")
    argv = list(getattr(args, "argv", None) or [])
    default = getattr(args, "stop_after", None) is None   # the platform's: its clock
    origin = session_start(platform, started) if default else started
    run.session = Session(argv, origin + hours * 3600 if hours else None, hours, platform,
                          run.reports, ckpts)
    if getattr(args, "list", False) and getattr(args, "resume_from", None):
        return preview_resume(run, Path(args.resume_from), bool(args.resume_anyway))
    if getattr(args, "list", False) or getattr(args, "plan", False):
        return
    anyway = bool(getattr(args, "resume_anyway", False))
    previous = read_json(run.reports / SESSION_FILE) or {}
    current = {"version": 1, "id": uuid.uuid4().hex[:12],
               "started": datetime.now().isoformat(timespec="seconds"),
               "code": code_files(code_dir, run.notebooks), "code_digest": run.code,
               "data_root": str(run.data_root), "data_facts": run.data}
    same_place = previous.get("data_root") == current["data_root"] and json.dumps(
        previous.get("data_facts"), default=str) == json.dumps(run.data, default=str)
    source = getattr(args, "resume_from", None)
    # the manifests cost a second or more: reuse the last digest while the data root is as it was
    current["data"] = previous["data"] if same_place and not source and "data" in previous \
        else data_digest(run.data_root)
    if source:
        previous = _adopt(Path(source), run.reports, ckpts, current, anyway)
        run.state = load_state(run.state_path)
    if previous and run.state and (anyway or not differences(previous, current)):
        rebase_state(run, previous, anyway)
    rel = os.path.relpath(ckpts, run.reports.parent)
    current.update(lineage=[*previous.get("lineage", []), previous["id"]]
                   if previous.get("id") else [], commit=_git_commit(), platform=platform,
                   argv=argv, checkpoints_rel=Path(rel).as_posix())
    run.reports.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.reports / SESSION_FILE, current)
    if hours:
        since = datetime.fromtimestamp(origin).strftime("%H:%M")
        log.info("the run stops at the first epoch end after %s (--stop-after %g h%s)",
                 datetime.fromtimestamp(run.session.deadline).strftime("%H:%M"), hours,
                 f", {platform}'s default, counted from the session's start at {since}"
                 if default else "")


@contextlib.contextmanager
def deadline_env(session: Session | None) -> Iterator[None]:
    """The deadline in the kernels' environment (`loop.STOP_ENV`), while the steps run."""
    saved = os.environ.get(STOP_ENV)
    if session is not None and session.deadline:
        os.environ[STOP_ENV] = f"{session.deadline:.0f}"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(STOP_ENV, None)
        else:
            os.environ[STOP_ENV] = saved


def step_status(error: str) -> str:
    """ok, failed, or interrupted (the notebook stopped with `SessionDeadline`)."""
    if not error:
        return "ok"
    return INTERRUPTED if error.split(":", 1)[0].strip().endswith("SessionDeadline") \
        else "failed"


def held_back(run) -> dict[str, Any] | None:
    """The outcome of a step not started because the session's time is up (the deadline
    passed, or a step was interrupted); None: start it."""
    session = getattr(run, "session", None)
    late = session is not None and session.deadline and time.time() >= session.deadline
    if not late and not any(o.get("status") == INTERRUPTED for o in run.outcomes.values()):
        return None
    return {"status": NOT_STARTED, "error": "", "duration_s": None,
            "note": "held back: the session's time is up"}


def resume_hint(run) -> str:
    """The lines that tell how to continue an interrupted run ("" when nothing is left)."""
    if not any(o.get("status") in (INTERRUPTED, NOT_STARTED) for o in run.outcomes.values()):
        return ""
    session = run.session or Session()
    argv, skip = [], False
    for arg in session.argv:  # this command, without its own --resume-from
        if skip:
            skip = False
        elif arg == "--resume-from":
            skip = True
        elif not arg.startswith("--resume-from="):
            argv.append(arg)
    command = shlex.join(["python", "run_all.py", *argv])
    if session.platform == "kaggle":
        return (f"stopped before Kaggle's session limit. Save this version (its output keeps "
                f"{session.reports} and {session.checkpoints}), attach that output to the next "
                f"session (Add Input > Your Work), then run:\n  {command} --resume-from "
                f"{KAGGLE_INPUT}")
    if session.platform == "colab" and "/content/drive/" not in f"{session.reports}/":
        return (f"stopped before Colab's session limit, but {session.reports} is not on "
                f"Google Drive and goes with the session: copy it and {session.checkpoints} "
                f"to Drive now, then in the next session run:\n  {command} --resume-from "
                f"<that Drive folder>")
    return f"stopped at the session's deadline; to continue, run:\n  {command}"


def exit_status(outcomes: dict[str, dict[str, Any]]) -> int:
    """1 a step failed, 3 stopped at the deadline (continue with the printed command), 0."""
    statuses = {o.get("status") for o in outcomes.values()}
    if "failed" in statuses:
        return 1
    return 3 if statuses & {INTERRUPTED, NOT_STARTED} else 0
