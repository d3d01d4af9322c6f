"""Family-wise error of 07's paired tests under the null, by how the reference is chosen.

    python -m benchmarks.reference_fwer [--models 5] [--images 300] [--reps 1000] [--seed 0]

K models with the *same* true AUROC score the same test images (and the same validation
images); their scores share each case's difficulty, so they are correlated as real models
are. Each repetition tests one reference against the K − 1 others with 07's AUROC test
(`comparison._auroc_comparison`: DeLong on the contrast) and Holm over the K − 1, and counts
a false alarm when any Holm-adjusted p < 0.05. The reference is chosen three ways:

- `test`: the best test AUROC (07 before issue 25): the family is picked after looking;
- `validation`: the best validation AUROC (`comparison._reference`, what 07 does now);
- `fixed`: model 0, chosen before any data.

A rule that controls the error keeps the rate at or under α; the `validation` rule uses no
test label, so it should match `fixed`. The table gives each rate with its Monte Carlo
standard error; the last line is `ratio: X.XX` = the `test` rule's rate / the `validation`
rule's (how much picking on test inflates it).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/reference_fwer.py` works too
    sys.path.insert(0, str(ROOT))

from utils.evaluation import comparison, stats  # noqa: E402 - after the path fix above

__all__ = ["simulate", "main"]

RULES = ("test", "validation", "fixed")
SIGNAL, SHARED = 1.0, 1.0  # true AUROC about 0.70 for every model; case difficulty shared


def _split(rng: np.random.Generator, models: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and K×N scores: signal·y + the case's difficulty + each model's own noise."""
    y = (rng.random(n) < 0.5).astype(int)
    case = SHARED * rng.normal(size=n)
    return y, SIGNAL * y + case + rng.normal(size=(models, n))


def _groups(y: np.ndarray, scores: np.ndarray, val: list[float]) -> list[comparison.Group]:
    return [comparison.Group(dataset="sim", step=f"m{k}", model=f"m{k}", label=f"m{k}",
                             runs=pd.DataFrame(), y=y, groups=[str(i) for i in range(len(y))],
                             probs=s[None], val_aurocs=[v]) for k, (s, v) in
            enumerate(zip(scores, val))]


def _false_alarm(ref: comparison.Group, groups: list[comparison.Group], alpha: float) -> bool:
    p = [comparison._auroc_comparison(ref, g, alpha)["p_value"] for g in groups if g is not ref]
    return bool((stats.holm(p) < alpha).any())


def simulate(models: int, images: int, reps: int, seed: int = 0,
             alpha: float = 0.05) -> dict[str, float]:
    """Share of repetitions with at least one Holm-adjusted p < alpha, per rule."""
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(RULES, 0)
    for _ in range(reps):
        yv, sv = _split(rng, models, images)
        y, s = _split(rng, models, images)
        val = stats.delong_contrast(yv, sv, np.zeros(models))["aucs"]
        groups = _groups(y, s, val)
        test = stats.delong_contrast(y, s, np.zeros(models))["aucs"]
        refs = {"test": groups[int(np.argmax(test))],
                "validation": comparison._reference(groups)[0], "fixed": groups[0]}
        for rule, ref in refs.items():
            hits[rule] += _false_alarm(ref, groups, alpha)
    return {rule: hits[rule] / reps for rule in RULES}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = simulate(args.models, args.images, args.reps, args.seed)
    print(f"{args.models} models of equal true AUROC, {args.images} test and {args.images} "
          f"validation images, {args.reps} repetitions; Holm over {args.models - 1} tests")
    print("| reference chosen on | P(any p_adj < 0.05) | Monte Carlo se |\n|---|---|---|")
    for rule, rate in rates.items():
        print(f"| {rule} | {rate:.3f} | {math.sqrt(rate * (1 - rate) / args.reps):.3f} |")
    ratio = rates["test"] / rates["validation"] if rates["validation"] else math.inf
    print(f"ratio: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
