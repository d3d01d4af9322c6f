#!/usr/bin/env python
"""Re-execute every notebook in order with papermill and render the HTML reports.

    python run_all.py                        # the whole plan; unchanged steps are skipped
    python run_all.py --profile smoke --only "03_*" -p epochs=2 -p 05_vit.lr=3e-4
    python run_all.py --list                 # the plan, resolved parameters, what would run
    python run_all.py --bundle               # then zip the reports to share (opens offline)
    python run_all.py --merge a.zip b.zip    # a study group's runs into one comparison

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
Exit status: 0 every step ok or unchanged, 1 a step failed, 2 usage error (nothing ran),
3 stopped at the --stop-after deadline (the console prints the command that continues).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.study.console import console_logging
from utils.study.execute import BUNDLE_DEFAULT, LOG_NAME, execute_run, prepare, print_plan
from utils.study.plan import Step, UsageError, default_plan
from utils.study.budget_hooks import plan_command, session_guard
from utils.study.resume import add_session_args
from utils.study.merge import add_merge_args, merge_command

__all__ = ["main", "build_parser"]

ROOT = Path(__file__).resolve().parent


def build_parser(plan: list[Step]) -> argparse.ArgumentParser:
    steps = "Steps: " + ", ".join(s.name for s in plan)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + steps,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="", help="data folder (default: env CXR_DATA_ROOT, "
                   "Kaggle mounts /kaggle/input, else the generated synthetic demo set)")
    p.add_argument("--profile", choices=["demo", "smoke", "kaggle", "colab", "full", "auto"],
                   help="parameter defaults (default auto: demo without real data, on Kaggle "
                   "or Colab their profile (one session), else full; docs/profiles.md)")
    p.add_argument("--plan", action="store_true", help="print each step's runs, images, "
                   "hours on --gpu and disk, the totals, then exit (nothing runs)")
    p.add_argument("--gpu", metavar="NAME", help="the GPU --plan prices: t4, l4, p100, a100, "
                   "h100 or cpu (default: the platform's, else this machine's)")
    p.add_argument("--platform", choices=["kaggle", "colab"], help="the hosted platform whose "
                   "session the plan must fit (default: detected)")
    p.add_argument("--ignore-session-limit", action="store_true", help="run even when the "
                   "plan outlasts one session of the platform")
    p.add_argument("--rehearse", action="store_true", help="the full profile's plan (3 "
                   "seeds, every source, variant and arm) at toy scale on the CPU, in minutes, "
                   "before spending GPU hours; reports go to reports/rehearsal unless "
                   "--reports-dir says otherwise (docs/rehearsal.md)")
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
    add_session_args(p)  # --resume-from, --resume-anyway, --stop-after (docs/sessions.md)
    add_merge_args(p)    # --merge PATH..., --with-weights (docs/study-group.md)
    return p


def main(argv: list[str] | None = None, plan: list[Step] | None = None) -> int:
    """Run the plan (`default_plan()` unless a test passes its own); return the exit status."""
    plan = plan if plan is not None else default_plan()
    try:
        args = build_parser(plan).parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the resume command
    except SystemExit as exc:  # --help (0) or an argparse usage error (2)
        return int(exc.code or 0)
    with console_logging(args.verbose):
        if args.merge:  # other members' runs in, then 07 (and 08) re-rendered: utils/study/merge.py
            return merge_command(args, plan)
        try:
            run = prepare(args, plan)
        except UsageError as exc:
            print(f"run_all.py: error: {exc}", file=sys.stderr)
            return 2
        if args.list:
            print_plan(run)
            return 0
        if args.plan:
            return plan_command(run, args)
        if (refused := session_guard(run, args)) is not None:
            return refused
        return execute_run(run, args.bundle, args.with_weights)



if __name__ == "__main__":
    sys.exit(main())
