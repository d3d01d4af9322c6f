"""utils.evaluation.stats: DeLong reproduces pROC's published roc.test numbers, identical models give
p = 1, the patient-clustered variance agrees with a patient bootstrap, Holm's adjustment
has its properties, and the bootstraps behave (p never 0, CIs widen with seed spread)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from utils.evaluation import stats

FIXTURES = Path(__file__).parent / "fixtures"

# pROC's own expectations (tests/testthat/test-roc.test.R of pROC, roc.test with the
# defaults: DeLong, two-sided, conf.level 0.95) on its aSAH data; AUCs from roc().
PROC = {("wfns", "s100b"): (2.20898359144091, 0.0271757822291882,
                            0.0104061769564846, 0.174214419249478),
        ("wfns", "ndka"): (2.79777591868904, 0.00514557970691098,
                           0.0634011709339876, 0.3600405634833566),
        ("ndka", "s100b"): (-1.39077002573558, 0.164295175223054,
                            -0.2876917446341914, 0.0488706064228094)}


@pytest.fixture(scope="module")
def asah() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "asah.csv", comment="#")


@pytest.mark.parametrize("pair", list(PROC), ids=lambda p: f"{p[0]}-{p[1]}")
def test_delong_reproduces_proc_roc_test_on_asah(asah, pair):
    y = (asah["outcome"] == "Poor").astype(int)
    r = stats.delong_test(y, asah[pair[0]], asah[pair[1]])
    z, p, lo, hi = PROC[pair]
    assert round(r["z"], 3) == round(z, 3) and round(r["p_value"], 3) == round(p, 3)
    assert (round(r["lo"], 3), round(r["hi"], 3)) == (round(lo, 3), round(hi, 3))
    assert r["z"] == pytest.approx(z, rel=1e-9) and r["p_value"] == pytest.approx(p, rel=1e-9)
    aucs = {"wfns": 0.8236789, "s100b": 0.7313686, "ndka": 0.6119580}
    assert r["auc_a"] == pytest.approx(aucs[pair[0]], abs=1e-7)
    assert r["delta"] == pytest.approx(aucs[pair[0]] - aucs[pair[1]], abs=1e-6)


def test_delong_identical_or_both_perfect_scores_give_p_1(asah):
    y = (asah["outcome"] == "Poor").astype(int)
    same = stats.delong_test(y, asah["s100b"], asah["s100b"])
    assert same["p_value"] == 1.0 and same["z"] == 0.0 and same["lo"] == same["hi"] == 0.0
    perfect = stats.delong_test(y, y + 0.1 * asah["ndka"] / 100, 2 * y + asah["s100b"] / 10)
    assert perfect["auc_a"] == perfect["auc_b"] == 1.0 and perfect["p_value"] == 1.0


def test_delong_contrast_over_seeds(asah):
    y = (asah["outcome"] == "Poor").astype(int)
    a, b = asah["wfns"].to_numpy(float), asah["s100b"].to_numpy(float)
    two = stats.delong_test(y, a, b)
    # three identical "seeds" of a against one of b: the same contrast of the same AUROCs
    seeds = stats.delong_contrast(y, np.vstack([a, a, a, b]), [1 / 3] * 3 + [-1])
    assert seeds["delta"] == pytest.approx(two["delta"]) and seeds["se"] == pytest.approx(two["se"])
    wider = stats.delong_contrast(y, np.vstack([a, b]), [1, -1], extra_var=two["se"] ** 2)
    assert wider["se"] == pytest.approx(np.sqrt(2) * two["se"])
    assert wider["p_value"] > two["p_value"]
    with pytest.raises(ValueError, match="contrast weights"):
        stats.delong_contrast(y, np.vstack([a, b]), [1, -1, 0])


def clustered(seed: int, patients: int = 120):
    """Films of one patient share the patient's label and each model's patient effect."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, patients)
    pid = np.repeat(np.arange(patients), sizes)
    y = np.repeat(rng.random(patients) < 0.4, sizes).astype(int)
    va, vb = rng.normal(size=(2, patients)) * 1.5
    noise = 0.3 * rng.normal(size=(2, len(y)))
    return y, y + va[pid] + noise[0], y + vb[pid] + noise[1], pid.astype(str)


def test_clustered_delong_matches_a_patient_bootstrap():
    y, a, b, pid = clustered(0)
    unique = stats.delong_test(y, a, b, groups=[f"img{i}" for i in range(len(y))])
    iid, clus = stats.delong_test(y, a, b), stats.delong_test(y, a, b, groups=pid)
    assert unique["se"] == pytest.approx(iid["se"], rel=1e-12)  # one film per patient = DeLong
    rng = np.random.default_rng(1)
    deltas = np.concatenate([stats.weighted_metrics(y, a, 0.5, W, ["auroc"])["auroc"]
                             - stats.weighted_metrics(y, b, 0.5, W, ["auroc"])["auroc"]
                             for W in stats.resample_weights(stats.cluster_index(pid, len(y)),
                                                             2000, rng)])
    boot_se = np.nanstd(deltas)
    assert clus["se"] == pytest.approx(boot_se, rel=0.15)
    assert iid["se"] < 0.6 * boot_se  # treating films as independent is too narrow here


def test_weighted_metrics_equal_sklearn_sample_weight():
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.4).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1).round(2)  # ties on purpose
    w = rng.integers(0, 3, 200).astype(float)
    got = stats.weighted_metrics(y, p, 0.5, w[None, :])
    pred = p >= 0.5
    assert got["auroc"][0] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w))
    assert got["f1"][0] == pytest.approx(skm.f1_score(y, pred, sample_weight=w))
    assert got["sensitivity"][0] == pytest.approx(skm.recall_score(y, pred, sample_weight=w))
    assert got["specificity"][0] == pytest.approx(
        skm.recall_score(1 - y, ~pred, sample_weight=w))


def test_holm_values_and_properties():
    # statsmodels 0.15.0: multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.2, np.nan, 0.01])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.2, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(rng.integers(1, 9)) ** 3
        adj = stats.holm(p)
        assert (adj >= p - 1e-15).all() and (adj >= 0).all() and (adj <= 1).all()
        order = np.argsort(p)
        assert (np.diff(adj[order]) >= -1e-15).all()  # monotone in p
        perm = rng.permutation(len(p))
        assert stats.holm(p[perm]) == pytest.approx(adj[perm])


def test_bootstrap_p_value_is_never_0_and_1_for_no_difference():
    assert stats.bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(2 / 100)
    assert stats.bootstrap_p_value(np.zeros(50)) == 1.0
    assert 0 < stats.bootstrap_p_value(np.linspace(-0.1, 0.3, 200)) < 1


def scores(seed: int, n: int = 300, signal: float = 1.0, patients: int = 150):
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, patients, n).astype(str)
    y = (rng.random(n) < 0.5).astype(int)
    return y, 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n)))), pid


def test_paired_bootstrap_identical_and_better_model():
    y, p, pid = scores(0)
    same = stats.paired_bootstrap(y, p, 0.5, p, 0.5, pid, n_boot=300)
    assert all(r["delta"] == 0 and r["p_value"] == 1.0 for r in same.values())
    _, strong, _ = scores(0, signal=3.0)
    better = stats.paired_bootstrap(y, strong, 0.5, p, 0.5, pid, n_boot=300)
    for r in better.values():
        assert r["delta"] > 0 and r["lo"] > 0 and 0 < r["p_value"] < 0.05


def seeds(y: np.ndarray, signal: float, rngs: list[int]) -> np.ndarray:
    """S×N scores on the same labels, one row per training seed (its own noise)."""
    return np.vstack([1 / (1 + np.exp(-(signal * (2 * y - 1)
                                       + np.random.default_rng(s).normal(size=len(y)))))
                      for s in rngs])


def test_paired_bootstrap_with_several_seeds_per_arm():
    y, _, pid = scores(0)
    arm, thresholds = seeds(y, 1.0, [1, 2, 3]), [0.5, 0.4, 0.6]
    same = stats.paired_bootstrap(y, arm, thresholds, arm, thresholds, pid, n_boot=400)
    for r in same.values():
        # Δ 0; each arm's seeds are drawn on their own, so the CI has width around 0
        assert r["delta"] == 0 and r["lo"] < 0 < r["hi"] and r["p_value"] > 0.5
    strong, weak = seeds(y, 3.0, [4, 5]), seeds(y, 0.5, [6, 7, 8])
    better = stats.paired_bootstrap(y, strong, [0.5, 0.45], weak, thresholds, pid, n_boot=400)
    # the point Δ is the mean over each arm's seeds, each at its own threshold, by sklearn
    f1 = [np.mean([skm.f1_score(y, p >= t) for p, t in zip(probs, ts)])
          for probs, ts in ((strong, [0.5, 0.45]), (weak, thresholds))]
    assert better["f1"]["delta"] == pytest.approx(f1[0] - f1[1])
    for r in better.values():
        assert r["delta"] > 0 and r["lo"] > 0 and 0 < r["p_value"] < 0.05


def test_hierarchical_ci_contains_the_point_and_widens_with_seed_spread():
    y, base, pid = scores(1, n=400)
    rng = np.random.default_rng(2)
    logit = np.log(base / (1 - base))
    calm = np.vstack([base, base, base])
    # the same test images, three seeds that learned very differently
    spread = np.vstack([1 / (1 + np.exp(-(k * logit + rng.normal(size=len(y)))))
                        for k in (0.3, 1.0, 3.0)])
    one = stats.hierarchical_bootstrap(y, base, 0.5, pid, n_boot=400)
    same = stats.hierarchical_bootstrap(y, calm, [0.5] * 3, pid, n_boot=400)
    wide = stats.hierarchical_bootstrap(y, spread, [0.5] * 3, pid, n_boot=400)
    for r in (one, same, wide):
        for m in ("auroc", "f1", "sensitivity", "specificity"):
            assert r[m]["lo"] <= r[m]["mean"] <= r[m]["hi"]
    assert np.isnan(one["auroc"]["sd"]) and same["auroc"]["sd"] == 0 and wide["auroc"]["sd"] > 0
    width = {k: r["auroc"]["hi"] - r["auroc"]["lo"] for k, r in (("same", same), ("wide", wide))}
    assert width["same"] == pytest.approx(one["auroc"]["hi"] - one["auroc"]["lo"], rel=0.25)
    assert width["wide"] > 1.5 * width["same"]
    assert len(wide["auroc"]["per_seed"]) == 3
