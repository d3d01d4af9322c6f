"""`run_all.py --rehearse`: the `full` profile's plan with only the compute turned down.

A rehearsal runs every step the full study runs, with the full profile's structure: its 3
seeds, every binary source the data has (`datasets=all`), every ablation variant, every
transfer arm, 07's comparison and 08's gallery over all of it. Only the compute shrinks
(`utils.config.PROFILES["rehearsal"]`: full's settings with 32 px images, one epoch of two
batches, 48 images per split, 20 bootstrap resamples, random init, no loader workers) and
the big networks become the CPU stand-ins the smoke profile uses (`plan.py`'s `_small`:
ResNet-18 for ResNet-50, EfficientNet-B0, ViT-mini, Mixer-tiny). So what a GPU run would
find out after hours (a plot that breaks with three seeds, a comparison missing a run), a
rehearsal finds on a laptop in minutes. Its numbers mean nothing: every report names the
profile `rehearsal`, and the reports and checkpoints go to `rehearsal/` sub-folders of the
default ones, so a real run's are never overwritten.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..runtime import usable_cpus
from .plan import UsageError

__all__ = ["PROFILE", "SUBDIR", "apply"]

log = logging.getLogger("run_all")

PROFILE = "rehearsal"             # utils.config.PROFILES["rehearsal"]
SUBDIR = "rehearsal"              # default reports/rehearsal, checkpoints/rehearsal
REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_dirs(args: argparse.Namespace) -> None:
    """Reports and checkpoints left at run_all's defaults (`reports`, `checkpoints`) move to
    their `rehearsal/` sub-folder, so a rehearsal never overwrites a real run's; any other
    folder is used as given."""
    for key, default in (("reports_dir", "reports"), ("checkpoint_dir", "checkpoints")):
        value = getattr(args, key)
        if Path(value).resolve() == (REPO_ROOT / default).resolve():
            setattr(args, key, Path(value) / SUBDIR)


def apply(args: argparse.Namespace) -> None:
    """Turn a parsed `--rehearse` command line into the rehearsal: the `rehearsal` profile
    (another `--profile` is a usage error), the default folders' `rehearsal/` sub-folders,
    and 2 steps side by side unless `--jobs` says otherwise (its small steps spend half
    their time in one-threaded work: kernel start, imports, plots, reports). `-p` still
    overrides any setting, as on every profile."""
    if args.profile not in (None, "auto", PROFILE):
        raise UsageError(f"--rehearse runs the full profile's plan at toy scale (profile "
                         f"{PROFILE}); drop --profile {args.profile}, or run --profile "
                         f"{args.profile} without --rehearse")
    args.profile = PROFILE
    _default_dirs(args)
    if args.jobs is None:
        args.jobs = max(1, min(2, usable_cpus()))
    log.warning("\n%s\n  REHEARSAL: the full profile's plan (3 seeds, every source, every "
                "variant and arm)\n  at toy scale (32 px, 1 epoch of 2 batches, CPU stand-in "
                "networks, random init).\n  Its numbers mean nothing: it shows that the whole "
                "study runs.\n  Reports: %s\n%s", "=" * 78, Path(args.reports_dir).resolve(),
                "=" * 78)
