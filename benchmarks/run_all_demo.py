"""Wall time of the whole demo: `run_all.py --profile demo --force`, step by step.

    python -m benchmarks.run_all_demo [--profile demo] [--reports-dir DIR] [--data-root DIR]
                                      [--budget 600] [--keep] [-- EXTRA RUN_ALL ARGS]

A first-time user's run, in a scratch folder so the repo's reports/ and checkpoints/ are
never touched: the synthetic demo set is generated there (`ensure_demo`, timed as its own
row; skipped with `--data-root`), the training caches are built there (`CXR_CACHE_DIR`),
and `run_all.py` writes its reports (default `<scratch>/reports`, or `--reports-dir`) and
checkpoints there. Per-step durations come from the run's state file
(`<reports>/.run_state.json`, `utils.study.run_state.load_state`); the total is measured around
the whole command. The last line is exactly `ratio: X.XX` = total seconds / `--budget`
(600 s: the demo should finish within 10 minutes on a 2-core CPU, so ratio <= 1 is the goal).
On a CPU shared with other jobs, `OMP_WAIT_POLICY=PASSIVE` (inherited by the kernels) or
`--threads 1` avoids OpenMP spin-wait stalls that made the demo 2-3x slower there.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run_all_demo.py` works too
    sys.path.insert(0, str(ROOT))

__all__ = ["run_demo", "step_rows", "print_report", "main"]

BUDGET_S = 600.0


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def step_rows(state_file: Path) -> list[dict]:
    """One row per step recorded in the state file, in run order (status, seconds, error).

    The file's keys are sorted by name; `started` (ISO time) restores the run order."""
    from utils.study.run_state import load_state

    if not state_file.exists():
        raise FileNotFoundError(f"{state_file} was not written: run_all.py ran no step "
                                f"(see its log beside it)")
    return [{"step": name, "status": entry.get("status", "?"),
             "seconds": entry.get("duration_s"), "error": entry.get("error", "")}
            for name, entry in sorted(load_state(state_file).items(),
                                      key=lambda kv: (kv[1].get("started", ""), kv[0]))]


def run_demo(work: Path, *, profile: str = "demo", reports: Path | None = None,
             data_root: Path | None = None, extra: list[str] | None = None,
             run_all: Path = ROOT / "run_all.py", threads: int = 0) -> dict:
    """Run `run_all.py --force` with every output under `work`; return the timings.

    Args:
        work: scratch folder (demo data, caches, checkpoints, default reports, the log).
        reports: where run_all writes reports (default `work/reports`); never the repo's.
        data_root: an existing data set; default: generate the demo set in `work/demo`.
        extra: more run_all arguments (e.g. `["--only", "00_eda"]`).
        run_all: the script to run (tests pass a stand-in).
        threads: `OMP_NUM_THREADS` for the kernels; 0 = inherit.
    Example:
        >>> timing = run_demo(Path("/tmp/cxr-demo-bench"))  # doctest: +SKIP
        >>> timing["total"], timing["steps"][0]
    """
    reports = (reports or work / "reports").resolve()
    if reports == (ROOT / "reports").resolve():
        raise ValueError(f"--reports-dir {reports} is the repo's reports/: pick a scratch "
                         f"folder (the benchmark re-runs every step with --force)")
    work.mkdir(parents=True, exist_ok=True)
    timing: dict = {"load_before": _load(), "generate": 0.0, "log": work / "run_all.log"}
    if data_root is None:
        from utils.data.demo import ensure_demo

        start = time.perf_counter()
        data_root = ensure_demo(work / "demo")
        timing["generate"] = time.perf_counter() - start
    env = {**os.environ, "CXR_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(run_all), "--profile", profile, "--force",
           "--reports-dir", str(reports), "--checkpoint-dir", str(work / "checkpoints"),
           "--data-root", str(data_root), *(extra or [])]
    start = time.perf_counter()
    with open(timing["log"], "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    timing.update(run_all=time.perf_counter() - start, returncode=rc, cmd=cmd,
                  load_after=_load(), steps=step_rows(reports / ".run_state.json"))
    timing["total"] = timing["generate"] + timing["run_all"]
    return timing


def print_report(timing: dict, budget: float = BUDGET_S) -> float:
    """The per-step table, the totals and the `ratio:` line; returns the ratio."""
    total = timing["total"]
    print(f"{'step':<42} {'status':<10} {'seconds':>8} {'share':>6}")
    if timing["generate"]:
        print(f"{'(demo data: ensure_demo)':<42} {'ok':<10} {timing['generate']:>8.1f} "
              f"{timing['generate'] / total:>6.1%}")
    for row in timing["steps"]:
        sec = row["seconds"]
        shown = f"{sec:>8.1f} {sec / total:>6.1%}" if sec is not None else f"{'':>8} {'':>6}"
        print(f"{row['step']:<42} {row['status']:<10} {shown}  {row['error'][:60]}")
    steps_sum = sum(r["seconds"] or 0.0 for r in timing["steps"])
    print(f"sum of steps {steps_sum:.1f} s; run_all.py wall {timing['run_all']:.1f} s "
          f"(start-up, index writes: {timing['run_all'] - steps_sum:.1f} s); total "
          f"{total:.1f} s = {total / 60:.1f} min; run_all exit status {timing['returncode']}")
    print(f"load average before {timing['load_before']}, after {timing['load_after']} "
          f"({os.cpu_count()} CPUs)" + (f"; log: {timing['log']}" if timing["log"] else ""))
    print(f"goal: the demo within {budget:.0f} s on a 2-core CPU, i.e. ratio <= 1")
    ratio = total / budget
    print(f"ratio: {ratio:.2f}")
    return ratio


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo", choices=["demo", "smoke", "full"])
    parser.add_argument("--reports-dir", type=Path, help="keep the reports here "
                        "(default: inside the scratch folder, deleted at the end)")
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a new "
                        "temporary one, deleted at the end unless --keep)")
    parser.add_argument("--data-root", type=Path, help="use this data set instead of "
                        "generating a fresh demo set")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds; ratio = total / budget")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the "
                        "notebook kernels (0 = inherit)")
    parser.add_argument("--run-all", type=Path, default=ROOT / "run_all.py", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("extra", nargs="*", help="after --: more run_all.py arguments")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cxr-demo-bench-"))
    print(f"run_all.py --profile {args.profile} --force into {work} "
          f"(load average {_load()}, {os.cpu_count()} CPUs); this takes minutes", flush=True)
    timing = None
    try:
        timing = run_demo(work, profile=args.profile, reports=args.reports_dir,
                          data_root=args.data_root, extra=args.extra, run_all=args.run_all,
                          threads=args.threads)
    finally:  # a failed run keeps its scratch folder: the log says why
        keep = args.keep or args.work_dir or timing is None or timing["returncode"] != 0
        if keep:
            print(f"scratch folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            timing["log"] = None
    return print_report(timing, args.budget)


if __name__ == "__main__":
    main()
