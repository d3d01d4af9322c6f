"""run_all.py's hooks into the cost plan (`utils.study.budget`): `--plan`, the session guard
(`--ignore-session-limit`), `profile=auto` on Kaggle/Colab, and each step's planned seconds
on this machine's device for the index (docs/profiles.md).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .budget import (PLATFORMS, Plan, PlanError, _bytes, auto_profile, detect_platform,
                     device_gpu, format_plan, price_plan, session_problem, DISK_GB)
from .cost import SESSION_HOURS

__all__ = ["choose_profile", "plan_command", "session_guard", "planned_seconds",
           "kernel_threads"]
def _platform_of(args) -> tuple[str | None, str]:
    given = getattr(args, "platform", None)
    return (given, "--platform") if given else detect_platform()


def choose_profile(args, synthetic: bool) -> tuple[str, str]:
    """`--profile`, or auto (none given) with the reason, which prepare() logs."""
    if getattr(args, "profile", None) and args.profile != "auto":
        return args.profile, ""
    return auto_profile(synthetic, *_platform_of(args))


def _pricing(run, args) -> tuple[str, int, Path | None]:
    """(GPU name, processes, data root or None for the published sizes) of `--plan`/the guard:
    --gpu, else the platform's, else this machine's GPU; cpu on demo/smoke."""
    platform, _ = _platform_of(args)
    platform = platform or (run.profile if run.profile in PLATFORMS else None)
    gpu = getattr(args, "gpu", None)
    if gpu:
        count = PLATFORMS[platform][1] if platform and PLATFORMS[platform][0] == gpu.lower() else 1
    elif platform:
        gpu, count = PLATFORMS[platform]
    elif run.profile in ("demo", "smoke"):
        gpu, count = "cpu", 1
    else:
        gpu, count = device_gpu()
        gpu, count = (gpu, count) if gpu and gpu != "cpu" else ("t4", 1)
    small = run.profile in ("demo", "smoke")
    root = run.data_root if (not run.synthetic or small) else None
    return gpu, max(1, count), root


def _price(run, args, steps) -> Plan:
    gpu, count, root = _pricing(run, args)
    return price_plan(steps, run.params, run.notebooks, root, gpu, count,
                      run.reports / "gpu_benchmark.json", _cpu_cache(run), kernel_threads(run))


def kernel_threads(run) -> int:
    """Torch threads each notebook kernel gets (`execute.kernel_env`): the CPUs shared by
    `run.jobs` kernels side by side, unless OMP_NUM_THREADS says otherwise."""
    from ..runtime import usable_cpus

    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() else max(1, usable_cpus() // max(1, run.jobs))


def _cpu_cache(run) -> Path:
    first = next(iter(run.params.values()), {})
    folder = Path(first.get("cache_dir") or Path(__file__).resolve().parents[2] / "data" / "cache")
    return folder / "cpu_rates.json"


def plan_command(run, args) -> int:
    """`run_all.py --plan`: the table, the totals, and a warning when they outlast a session
    of the platform detected or given. 2 on a value the plan cannot price."""
    try:
        plan = _price(run, args, run.steps)
    except PlanError as exc:
        print(f"run_all.py: error: {exc}", file=sys.stderr)
        return 2
    print(format_plan(plan, run.profile))
    platform, evidence = _platform_of(args)
    if not platform and run.profile in PLATFORMS:
        platform, evidence = run.profile, f"--profile {run.profile}"
    if platform in DISK_GB and plan.disk > DISK_GB[platform] * 1e9:
        print(f"WARNING: the run writes {_bytes(plan.disk)}; {platform.capitalize()} keeps "
              f"{DISK_GB[platform]:g} GB of output in /kaggle/working: point --checkpoint-dir "
              f"and CXR_CACHE_DIR outside it (the session's other disk is not saved)")
    if problem := session_problem(plan.seconds, platform):
        print(f"WARNING: {problem} ({evidence}); choose --profile {platform}, fewer steps "
              f"(--only), or -p max_train_images=N / -p epochs=N")
    elif platform:
        print(f"fits one {platform.capitalize()} session ({SESSION_HOURS[platform]:g} h)")
    return 0


def session_guard(run, args) -> int | None:
    """Before a run on Kaggle/Colab (detected or --platform): 2 with the plan's hours when
    the steps that would run outlast one session, unless --ignore-session-limit."""
    platform, evidence = _platform_of(args)
    if not platform or getattr(args, "ignore_session_limit", False):
        return None
    steps = [s for s in run.steps if run.why_run(s, run.fingerprint(s))]
    try:
        plan = _price(run, args, steps)
    except PlanError as exc:
        print(f"run_all.py: note: no session check ({exc})", file=sys.stderr)
        return None
    if problem := session_problem(plan.seconds, platform):
        print(f"run_all.py: error: {problem} ({evidence}; profile {run.profile} on "
              f"{plan.device}). See it step by step with --plan; use --profile {platform}, "
              f"fewer steps (--only) or smaller -p values, or pass --ignore-session-limit to "
              f"run anyway (the run resumes in a later session).", file=sys.stderr)
        return 2
    return None


def planned_seconds(run, steps) -> dict[str, dict[str, Any]]:
    """{step: {"planned_s", "planned_on"}} for the device this run trains on (this machine's
    GPU, or its CPU as `--plan` measured and cached it: nothing is measured here), what the
    index shows beside the duration. Empty when the device is one the plan cannot price (an
    unknown GPU); a `PlanError` when this CPU's figures are not cached yet."""
    gpu, count = device_gpu()
    if not gpu:
        return {}
    root = run.data_root
    plan = price_plan(steps, run.params, run.notebooks, root, gpu, count,
                      run.reports / "gpu_benchmark.json", _cpu_cache(run), kernel_threads(run),
                      measure_cpu=False)
    return {s.step: {"planned_s": round(s.seconds, 1), "planned_on": plan.device}
            for s in plan.steps}
