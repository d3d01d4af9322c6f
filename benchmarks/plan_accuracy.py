"""How close the cost plan comes: its `cpu` estimate of each training step of a finished run
against the time that step took.

    python -m benchmarks.plan_accuracy --reports-dir DIR [the run's own run_all flags]

DIR holds a finished run (`python run_all.py --reports-dir DIR`, demo or smoke). The plan is
rebuilt with run_all's own flags (`--profile`, `-p`, `--data-root`: pass the ones the run was
made with), the CPU's training and inference throughput is measured now, briefly, per
architecture (`utils.study.cost.measure_cpu_rates`, nothing cached), and each step's planned
seconds (`utils.study.budget.price_plan`, every epoch counted) is set beside its
`duration_s` in DIR/.run_state.json. Printed as a Markdown table; ratio = measured / planned
(> 1: the plan is optimistic). A demo run with `--jobs 2` ran two steps at a time on the
CPU while the throughputs are measured alone: expect ratios above 1 there; early stopping
pushes them below.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["rows", "markdown", "main"]


def rows(run, plan) -> list[dict]:
    """One row per priced training step with a successful duration in the run's state."""
    out = []
    for step in plan.steps:
        entry = run.state.get(step.step, {})
        if not step.runs or entry.get("status") != "ok" or not entry.get("duration_s"):
            continue
        measured = float(entry["duration_s"])
        out.append({"step": step.step, "runs": len(step.runs),
                    "image_epochs": step.image_epochs, "planned_s": step.seconds,
                    "measured_s": measured, "ratio": measured / step.seconds})
    return out


def markdown(table: list[dict], header: str) -> str:
    lines = [header, "", "| step | runs | image-epochs | planned (s) | measured (s) | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['runs']} | {r['image_epochs']:,} | {r['planned_s']:.0f} | "
              f"{r['measured_s']:.0f} | {r['ratio']:.2f} |" for r in table]
    if table:
        planned = sum(r["planned_s"] for r in table)
        measured = sum(r["measured_s"] for r in table)
        lines.append(f"| **all** | {sum(r['runs'] for r in table)} | "
                     f"{sum(r['image_epochs'] for r in table):,} | {planned:.0f} | "
                     f"{measured:.0f} | {measured / planned:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from run_all import build_parser
    from utils.study.budget import price_plan
    from utils.study.budget_hooks import kernel_threads
    from utils.study.execute import prepare
    from utils.study.plan import UsageError, default_plan

    plan = default_plan()
    args = build_parser(plan).parse_args(argv)
    try:
        run = prepare(args, plan)
    except UsageError as exc:
        print(f"plan_accuracy: error: {exc}", file=sys.stderr)
        return 2
    if not run.state:
        print(f"plan_accuracy: error: {run.state_path} has no steps: run "
              f"`python run_all.py --reports-dir {run.reports}` first", file=sys.stderr)
        return 2
    steps = [s for s in run.steps if run.state.get(s.name, {}).get("status") == "ok"]
    threads = kernel_threads(run)
    priced = price_plan(steps, run.params, run.notebooks, run.data_root, "cpu", 1,
                        cpu_cache=None, cpu_threads=threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    header = (f"plan vs measured: profile {run.profile}, {run.reports}, {os.cpu_count()} CPUs, "
              f"--jobs {run.jobs}, measured with {threads} torch thread(s) per model "
              f"(load {load} when measuring)")
    print(markdown(rows(run, priced), header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
