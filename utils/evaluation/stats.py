"""Paired tests and seed-aware confidence intervals for comparing models on one test set.

Every function takes plain arrays (numpy/scipy only, no torch), so the comparison notebook
and `utils.evaluation.comparison` use them without the training stack.

- `delong_test` / `delong_contrast`: DeLong et al. (1988) for correlated AUROCs (the same
  cases scored by several models), with Sun & Xu's (2014) midrank computation. With
  `groups` (patient ids) the variance is Obuchowski's (1997) clustered form: a patient's
  films are not independent cases; with one image per patient it *is* DeLong's variance.
  Written here rather than taken from MLstatkit (the maintained package with a DeLong
  test, 0.1.91): its `Delong_test` matches pROC on the aSAH example, but when the
  variance of the difference is zero (identical score vectors, or two perfect models, as
  on the demo data) it falls back to a bootstrap that reports p = 0 where the difference
  is exactly 0, it has no CI of the difference in its API, and no clustering.
- `paired_bootstrap`: Δ F1 / sensitivity / specificity at each model's own threshold,
  resampling whole patients (one draw shared by both models: that is the pairing).
- `hierarchical_bootstrap`: a model's metric over its seeds with a 95% CI that carries
  both test sampling and seed variation (see its docstring).
- `holm`: Holm's step-down adjustment (5 lines; statsmodels' `multipletests` does the same
  but brings ~70 MB and four packages for it).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["delong_test", "delong_contrast", "paired_bootstrap", "hierarchical_bootstrap",
           "bootstrap_p_value", "holm", "cluster_index", "resample_weights",
           "weighted_metrics", "THRESHOLD_METRICS"]

THRESHOLD_METRICS = ("f1", "sensitivity", "specificity")


def cluster_index(groups: Sequence[Any] | None, n: int) -> np.ndarray:
    """Cluster number per image: its patient, or itself when no (or an empty) id is known."""
    if groups is None or len(groups) == 0:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids (patients) for {n} predictions")
    first: dict[str, int] = {}  # numbered by first appearance: unique ids give arange(n)
    return np.array([first.setdefault(str(g) or f"\0image{i}", len(first))
                     for i, g in enumerate(groups)])


# --- DeLong -------------------------------------------------------------------------------

def _placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """AUROCs (k,) and DeLong's placement values of k score rows (Sun & Xu's midranks).

    `v10[k, i]`: the share of negatives that positive i outranks (ties count half);
    `v01[k, j]`: the share of positives that outrank negative j.
    """
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    tz = rankdata(scores, axis=1)
    tx, ty = rankdata(scores[:, pos], axis=1), rankdata(scores[:, neg], axis=1)
    aucs = (tz[:, pos].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return aucs, (tz[:, pos] - tx) / n, 1.0 - (tz[:, neg] - ty) / m


def _delong_cov(y: np.ndarray, scores: np.ndarray, groups: Sequence[Any] | None):
    """AUROCs and their k×k covariance; clustered (Obuchowski 1997) by `groups`.

    Per cluster c, A = Σ v10 − m_c·θ and B = Σ v01 − n_c·θ; then
    Cov = I10/(I10−1)·AAᵀ/M² + I01/(I01−1)·BBᵀ/N² + I/(I−1)·(ABᵀ+BAᵀ)/(M·N).
    With one image per cluster the cross term vanishes and this is DeLong's S10/M + S01/N.
    """
    aucs, v10, v01 = _placements(y, scores)
    idx = cluster_index(groups, len(y))
    n_clusters = int(idx.max()) + 1
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())

    def centred(values: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, int]:
        count = np.bincount(members, minlength=n_clusters)
        sums = np.stack([np.bincount(members, weights=v, minlength=n_clusters) for v in values])
        return sums - count[None, :] * aucs[:, None], int((count > 0).sum())

    A, i10 = centred(v10, idx[pos])
    B, i01 = centred(v01, idx[neg])
    if i10 < 2 or i01 < 2:
        raise ValueError(f"DeLong needs at least 2 patients with positives and 2 with "
                         f"negatives; got {i10} and {i01}")
    cross = A @ B.T
    cov = (i10 / (i10 - 1) * (A @ A.T) / m**2 + i01 / (i01 - 1) * (B @ B.T) / n**2
           + n_clusters / (n_clusters - 1) * (cross + cross.T) / (m * n))
    return aucs, cov


def _check_binary(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=float).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} scores")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        raise ValueError("DeLong needs 0/1 labels with both classes present")
    return y.astype(int)


def _z_test(delta: float, var: float, alpha: float) -> dict[str, float]:
    """Normal-theory z, two-sided p and CI; zero variance with zero Δ is p = 1 (as pROC)."""
    se = math.sqrt(max(var, 0.0))
    if se <= 1e-12 * max(1.0, abs(delta)):
        z = 0.0 if abs(delta) <= 1e-12 else math.copysign(math.inf, delta)
        return {"delta": delta, "lo": delta, "hi": delta, "se": 0.0, "z": z,
                "p_value": 1.0 if z == 0 else 0.0}
    z = delta / se
    half = float(norm.ppf(1 - alpha / 2)) * se
    return {"delta": delta, "lo": delta - half, "hi": delta + half, "se": se, "z": z,
            "p_value": float(min(1.0, 2 * norm.sf(abs(z))))}


def delong_contrast(y: Any, scores: Any, contrast: Any, groups: Sequence[Any] | None = None,
                    alpha: float = 0.05, extra_var: float = 0.0) -> dict[str, Any]:
    """DeLong's test of `contrast · AUROCs` = 0 for k score rows on the same cases.

    Args:
        scores: k×N, every row one model's scores on the same N images.
        contrast: k weights, e.g. `[1/3]*3 + [-1/2]*2`: mean AUROC of 3 seeds of model a
            minus that of 2 seeds of model b (DeLong 1988 tests any such contrast).
        groups: patient id per image (clustered variance); None: images are independent.
        extra_var: variance added to the test-sampling one (e.g. between-seed variance).
    Returns:
        `delta`, its `lo`/`hi` (1 − alpha CI), `se`, `z`, two-sided `p_value`, `aucs`.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    contrast = np.asarray(contrast, dtype=float).reshape(-1)
    if contrast.shape[0] != scores.shape[0]:
        raise ValueError(f"{contrast.shape[0]} contrast weights for {scores.shape[0]} score rows")
    y = _check_binary(y, scores.shape[1])
    aucs, cov = _delong_cov(y, scores, groups)
    out = _z_test(float(contrast @ aucs), float(contrast @ cov @ contrast) + extra_var, alpha)
    return {**out, "aucs": aucs.tolist()}


def delong_test(y: Any, score_a: Any, score_b: Any, groups: Sequence[Any] | None = None,
                alpha: float = 0.05) -> dict[str, Any]:
    """DeLong's paired test of AUROC(a) − AUROC(b) on the same cases.

    Example (pROC's aSAH data, `roc.test(roc(outcome, wfns), roc(outcome, s100b))`):
        >>> r = delong_test(poor, wfns, s100b)  # doctest: +SKIP
        >>> round(r["z"], 3), round(r["p_value"], 4)   # pROC: Z = 2.209, p = 0.0272
        (2.209, 0.0272)
    """
    out = delong_contrast(y, np.vstack([np.ravel(score_a), np.ravel(score_b)]), [1.0, -1.0],
                          groups, alpha)
    out["auc_a"], out["auc_b"] = out["aucs"]
    return out


# --- bootstrap over patients ----------------------------------------------------------------

def resample_weights(index: np.ndarray, n_boot: int, rng: np.random.Generator,
                     max_cells: int = 4_000_000) -> Iterator[np.ndarray]:
    """Chunks of R×N image weights: each row draws the clusters (patients) with replacement
    and gives each image its patient's draw count (as `evaluate.bootstrap_ci` does)."""
    g, n = int(index.max()) + 1, len(index)
    chunk = max(1, max_cells // max(n, 1))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        draws = rng.integers(0, g, size=(rows, g)) + g * np.arange(rows)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * g).reshape(rows, g)
        yield counts[:, index].astype(float)


def _weighted_auroc(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AUROC for each row of weights (trapezoid over distinct scores, ties as sklearn)."""
    order = np.argsort(-p, kind="mergesort")
    last = np.r_[np.flatnonzero(np.diff(p[order])), len(p) - 1]
    tps = np.cumsum(W[:, order] * y[order], axis=1)[:, last]
    fps = np.cumsum(W[:, order] * (1 - y[order]), axis=1)[:, last]
    pos, neg = tps[:, -1:], fps[:, -1:]
    zero = np.zeros((len(W), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.trapezoid(np.hstack([zero, tps / pos]), np.hstack([zero, fps / neg]), axis=1)
    return np.where((pos[:, 0] > 0) & (neg[:, 0] > 0), auc, np.nan)


def weighted_metrics(y: Any, p: Any, threshold: float, W: np.ndarray,
                     metrics: Sequence[str] = ("auroc", *THRESHOLD_METRICS)
                     ) -> dict[str, np.ndarray]:
    """`metrics` for each row of sample weights `W` (R×N), as sklearn's `sample_weight`."""
    y, p = np.asarray(y, dtype=float).reshape(-1), np.asarray(p, dtype=float).reshape(-1)
    pred = p >= threshold
    tp, fp = W @ (y * pred), W @ ((1 - y) * pred)
    fn, tn = W @ (y * ~pred), W @ ((1 - y) * ~pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
               "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
               "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)}
    if "auroc" in metrics:
        out["auroc"] = _weighted_auroc(y, p, W)
    return {m: out[m] for m in metrics}


def _per_seed(y: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], W: np.ndarray,
              metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """R×S arrays: each seed's metrics under each row of weights."""
    cols = [weighted_metrics(y, p, t, W, metrics) for p, t in zip(probs, thresholds)]
    return {m: np.stack([c[m] for c in cols], axis=1) for m in metrics}


def _seed_mean(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, the mean over S seeds drawn with replacement from the S seeds (S = 1: itself)."""
    if values.shape[1] == 1:
        return values[:, 0]
    draws = rng.integers(0, values.shape[1], size=values.shape)
    return np.take_along_axis(values, draws, axis=1).mean(axis=1)


def _quantiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _inputs(y: Any, probs: Any, thresholds: Any) -> tuple[np.ndarray, np.ndarray, list]:
    probs = np.atleast_2d(np.asarray(probs, dtype=float))
    thresholds = list(np.broadcast_to(np.asarray(thresholds, dtype=float), len(probs)))
    y = np.asarray(y, dtype=float).reshape(-1)
    if probs.shape[1] != len(y):
        raise ValueError(f"scores have {probs.shape[1]} columns for {len(y)} labels")
    return y, probs, thresholds


def hierarchical_bootstrap(y: Any, probs: Any, thresholds: Any,
                           groups: Sequence[Any] | None = None, n_boot: int = 1000,
                           seed: int = 0, alpha: float = 0.05,
                           metrics: Sequence[str] = ("auroc", *THRESHOLD_METRICS)
                           ) -> dict[str, dict[str, Any]]:
    """Mean over seeds of each metric, with a CI for both test sampling and seed variation.

    One model trained with S seeds, every seed scored on the same N test images (`probs`
    S×N, each seed at its own validation threshold). Each of `n_boot` resamples draws the
    test patients with replacement (all of a patient's images together) and, within that
    resample, S seeds with replacement from the S; the statistic is the mean of the drawn
    seeds' metrics on the resampled images. The percentile interval of those means is the
    CI (a two-level, "hierarchical" bootstrap). With one seed it is the patient bootstrap
    of `evaluate.bootstrap_ci`; the more the seeds disagree, the wider it gets.
    Returns:
        metric → `mean`, `sd` (over seeds; NaN for one seed), `lo`, `hi`, `per_seed`.
    """
    y, probs, thresholds = _inputs(y, probs, thresholds)
    point = _per_seed(y, probs, thresholds, np.ones((1, len(y))), metrics)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    if n_boot > 0:
        for W in resample_weights(cluster_index(groups, len(y)), n_boot, rng):
            for m, values in _per_seed(y, probs, thresholds, W, metrics).items():
                boot[m].append(_seed_mean(values, rng))
    out = {}
    for m in metrics:
        per_seed = point[m][0]
        lo, hi = _quantiles(np.concatenate(boot[m]), alpha) if boot[m] else (math.nan,) * 2
        out[m] = {"mean": float(np.mean(per_seed)), "lo": lo, "hi": hi,
                  "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan,
                  "per_seed": [float(v) for v in per_seed]}
    return out


def bootstrap_p_value(deltas: Any) -> float:
    """Two-sided p of Δ = 0 from a bootstrap distribution of Δ: twice the smaller tail
    beyond 0, each counted as (k + 1)/(R + 1) so that R resamples never give p = 0 (the
    smallest is 2/(R + 1)); the p at which the percentile CI starts to exclude 0."""
    d = np.asarray(deltas, dtype=float)
    d = d[~np.isnan(d)]
    if not len(d):
        return math.nan
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))


def paired_bootstrap(y: Any, probs_a: Any, thresholds_a: Any, probs_b: Any, thresholds_b: Any,
                     groups: Sequence[Any] | None = None, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05, metrics: Sequence[str] = THRESHOLD_METRICS
                     ) -> dict[str, dict[str, float]]:
    """Δ = metric(a) − metric(b) on the same test images, each at its own threshold(s).

    Both models see the same patient resample (the pairing: a hard patient is hard for
    both); with several seeds (`probs_*` S×N), each model's seeds are also resampled
    within every patient resample, as in `hierarchical_bootstrap`.
    Returns:
        metric → `delta`, `lo`, `hi` (percentile CI), `p_value` (`bootstrap_p_value`).
    """
    y, pa, ta = _inputs(y, probs_a, thresholds_a)
    _, pb, tb = _inputs(y, probs_b, thresholds_b)
    ones = np.ones((1, len(y)))
    point_a, point_b = (_per_seed(y, p, t, ones, metrics) for p, t in ((pa, ta), (pb, tb)))
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for W in resample_weights(cluster_index(groups, len(y)), n_boot, rng) if n_boot > 0 else ():
        ma, mb = _per_seed(y, pa, ta, W, metrics), _per_seed(y, pb, tb, W, metrics)
        for m in metrics:
            deltas[m].append(_seed_mean(ma[m], rng) - _seed_mean(mb[m], rng))
    out = {}
    for m in metrics:
        d = np.concatenate(deltas[m]) if deltas[m] else np.array([])
        lo, hi = _quantiles(d, alpha) if len(d) else (math.nan, math.nan)
        out[m] = {"delta": float(point_a[m].mean() - point_b[m].mean()), "lo": lo, "hi": hi,
                  "p_value": bootstrap_p_value(d)}
    return out


def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted): the k-th
    smallest of m is multiplied by m − k + 1, kept monotone, capped at 1."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="mergesort")]
    adjusted = np.full(p.shape, np.nan)
    steps = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted
