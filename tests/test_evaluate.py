"""Metrics equal scikit-learn, thresholds have known answers and never see test labels,
bootstrap CIs behave, calibration of calibrated data is ~0, predictions keep their metas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from torch import nn
from torch.utils.data import DataLoader, Dataset

import utils.evaluation.metrics as ev
from utils.training.scores import summary_scores
from utils.config import make_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy(n: int, seed: int = 0, prevalence: float = 0.6):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1).round(2)  # ties on purpose
    return y, p


def test_binary_metrics_equal_sklearn():
    y, p = noisy(300)
    m = ev.binary_metrics(y, p, 0.45)
    pred = p >= 0.45
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]] and m["n"] == 300 and m["n_pos"] == y.sum()
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["precision"] == skm.precision_score(y, pred)
    assert m["recall"] == m["sensitivity"] == skm.recall_score(y, pred)
    assert m["specificity"] == tn / (tn + fp)
    assert m["f1"] == skm.f1_score(y, pred)
    assert m["auroc"] == skm.roc_auc_score(y, p)
    assert m["auprc"] == skm.average_precision_score(y, p)


def test_single_class_gives_nan_not_crash():
    m = ev.binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], 0.5)
    assert math.isnan(m["auroc"]) and math.isnan(m["specificity"]) and m["recall"] == 2 / 3
    assert math.isnan(summary_scores(np.ones((3, 1)), np.full((3, 1), 0.3))["auroc"])


def test_summary_and_multilabel_skip_undefined_classes():
    y, p = noisy(200)
    Y = np.stack([y, np.zeros_like(y), 1 - y], 1)
    P = np.stack([p, p, 1 - p], 1)
    s = summary_scores(Y, P)
    assert s["auroc"] == pytest.approx(skm.roc_auc_score(y, p))  # class 1 has no positives
    assert s["f1"] == pytest.approx(skm.f1_score(Y, P >= 0.5, average="macro", zero_division=0))
    ml = ev.multilabel_metrics(Y, P, ["A", "B", "C"])
    assert [r["finding"] for r in ml["per_finding"]] == ["A", "B", "C"]
    assert math.isnan(ml["per_finding"][1]["auroc"])
    assert ml["per_finding"][2]["auprc"] == skm.average_precision_score(1 - y, 1 - p)
    assert ml["macro_auroc"] == pytest.approx(skm.roc_auc_score(y, p))


# 2 positives, 20 negatives: F1 prefers the strict 0.9 (one clean hit); Youden's J prefers
# 0.3 (both hits for 3/20 false alarms); 0.5 is neither.
Y_T = np.r_[1, 1, np.zeros(20)]
P_T = np.r_[0.9, 0.3, 0.5, 0.45, 0.4, np.full(17, 0.1)]


@pytest.mark.parametrize("policy,kwargs,expected", [
    ("fixed", {"value": 0.42}, 0.42),
    ("max_f1", {}, 0.9),
    ("youden", {}, 0.3),
    ("sensitivity", {"target_sensitivity": 0.9}, 0.3),
    ("sensitivity", {"target_sensitivity": 0.5}, 0.9),
])
def test_threshold_policies_known_answers(policy, kwargs, expected):
    t = ev.choose_threshold(Y_T, P_T, policy, **kwargs)
    assert t["value"] == pytest.approx(expected) and t["policy"] == policy
    assert t["chosen_on"] == "val" and t["fallback"] == ""
    if policy == "sensitivity":
        assert t["val_sensitivity"] >= kwargs["target_sensitivity"]


def test_threshold_single_class_validation_falls_back_loudly():
    with pytest.warns(UserWarning, match="single class"):
        t = ev.choose_threshold(np.ones(5), np.linspace(0, 1, 5), "max_f1", value=0.6)
    assert t["value"] == 0.6 and "single class" in t["fallback"]
    with pytest.raises(ValueError, match="not one of"):
        ev.choose_threshold(Y_T, P_T, "best")


def test_bootstrap_vectorised_scores_equal_sklearn_with_weights():
    y, p = noisy(150, seed=3)
    W = np.random.default_rng(1).integers(0, 3, size=(4, 150)).astype(float)
    s = ev._weighted_scores(y.astype(float), p, W, 0.5)
    for r, w in enumerate(W):
        assert s["auroc"][r] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w))
        assert s["auprc"][r] == pytest.approx(skm.average_precision_score(y, p, sample_weight=w))
        assert s["f1"][r] == pytest.approx(skm.f1_score(y, p >= 0.5, sample_weight=w))
        assert s["specificity"][r] == pytest.approx(
            skm.recall_score(1 - y, p < 0.5, sample_weight=w))


def test_bootstrap_ci_contains_estimate_and_narrows():
    # its speed is measured, not asserted: python -m benchmarks.bootstrap
    y, p = noisy(600)
    ci = ev.bootstrap_ci(y, p, 0.5, n_boot=1000, seed=0)
    point = ev.binary_metrics(y, p, 0.5)
    for name, (lo, hi) in ci.items():
        assert lo <= point[name] <= hi and lo < hi, name
    assert ci == ev.bootstrap_ci(y, p, 0.5, n_boot=1000, seed=0)  # seeded
    y_s, p_s = noisy(60)
    small = ev.bootstrap_ci(y_s, p_s, 0.5, n_boot=300)
    width = {k: hi - lo for k, (lo, hi) in ci.items()}
    assert all(small[k][1] - small[k][0] > width[k] for k in width)


def test_bootstrap_skips_single_class_resamples_for_auroc():
    y = np.r_[1, np.zeros(9)]
    ci = ev.bootstrap_ci(y, np.linspace(0, 1, 10), 0.5, n_boot=200)
    assert all(0 <= v <= 1 for v in ci["auroc"])  # ~35% of resamples lack the positive


def test_calibration_ece():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = rng.random(200_000) < p             # perfectly calibrated
    cal = ev.calibration(y, p, n_bins=10)
    assert cal["ece"] < 0.01 and sum(cal["bin_count"]) == 200_000
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    assert np.allclose(cal["bin_accuracy"], prob_true) and np.allclose(cal["bin_confidence"], prob_pred)
    over = ev.calibration(y, p ** 3)         # over-confident negatives: far from the diagonal
    assert over["ece"] > 0.2
    sparse = ev.calibration([0, 1], [0.05, 0.95])
    assert sparse["bin_count"][1] == 0 and math.isnan(sparse["bin_accuracy"][1])
    assert sparse["ece"] == pytest.approx(0.05)


class Items(Dataset):
    def __init__(self, images, targets, class_names=("Pneumonia",)):
        self.images, self.targets, self.class_names = images, targets, list(class_names)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i], {"path": f"/x/{i}.png", "patient_id": f"p{i // 2}",
                                                 "index": 100 + i}


def collate(batch):
    images, targets, metas = zip(*batch)
    return torch.stack(images), torch.stack(targets), list(metas)


class Bright(nn.Module):
    """Logit = scaled mean of the left half: not flip-invariant, so TTA changes outputs."""

    def __init__(self, k: int = 1):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(1.0, 2.0, k))

    def forward(self, x):
        return x[..., : x.shape[-1] // 2].mean((1, 2, 3))[:, None] * self.w


def make_split(n: int, seed: int, k: int = 1, names=("Pneumonia",)):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, k, generator=g) < 0.5).float()
    x = torch.randn(n, 1, 8, 8, generator=g) + 0.8 * y[:, :1].view(-1, 1, 1, 1)
    return Items(x, y, names)


def loader(ds):
    return DataLoader(ds, batch_size=5, collate_fn=collate)


def test_predict_keeps_metas_and_tta_averages_views():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    ds, model = make_split(12, 0), Bright()
    pr = ev.predict(model, loader(ds), device="cpu")
    assert pr.probs.shape == (12, 1) and len(pr) == 12 and pr.class_names == ["Pneumonia"]
    assert list(pr.indices) == list(range(100, 112)) and pr.paths[3] == "/x/3.png"
    assert pr.patient_ids[3] == "p1" and np.array_equal(pr.targets, ds.targets.numpy())
    assert np.allclose(pr.probs, torch.sigmoid(model(ds.images)).detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="fill="):  # no .info: the black value is unknown
        ev.predict(model, loader(ds), device="cpu", tta=True)
    tta = ev.predict(model, loader(ds), device="cpu", tta=True, fill=-2.0)
    x = ds.images
    views = [x, x.flip(-1)] + [tvf.rotate(x + 2.0, a, interpolation=InterpolationMode.BILINEAR)
                               - 2.0 for a in (5.0, -5.0)]
    expected = torch.stack([torch.sigmoid(model(v)) for v in views]).mean(0).detach().numpy()
    assert np.allclose(tta.probs, expected, atol=1e-6) and not np.allclose(tta.probs, pr.probs)


def test_tta_rotations_fill_with_normalised_black():
    """Training rotates uint8 images filling 0 (black) and then normalises; TTA rotates the
    normalised tensor, so its fill must be (0 - mean) / std, not 0 (the mean grey)."""
    from types import SimpleNamespace

    model = Bright()
    model.info = SimpleNamespace(mean=0.449, std=0.226)
    black = torch.full((4, 1, 16, 16), -0.449 / 0.226)  # an all-black film, normalised
    assert ev.black_value(model) == pytest.approx(-0.449 / 0.226)
    plain = ev.tta_probabilities(model, black)
    tta = ev.tta_probabilities(model, black, tta=True)  # rotating black adds only black
    torch.testing.assert_close(tta, plain)


def test_evaluation_autocast_follows_cfg_amp(monkeypatch):
    seen = []
    real = ev.autocast
    monkeypatch.setattr(ev, "autocast", lambda device, enabled=True: seen.append(enabled)
                        or real(device, enabled))
    loaders = {"val": loader(make_split(20, 1)), "test": loader(make_split(20, 2))}
    ev.evaluate_run(Bright(), loaders, cfg(amp=False, bootstrap=0), device="cpu")
    assert seen and not any(seen)
    seen.clear()
    ev.evaluate_run(Bright(), loaders, cfg(bootstrap=0), device="cpu")
    assert seen and all(seen)


def cfg(**kw):
    return make_config({"threshold_policy": "max_f1", "bootstrap": 50, "device": "cpu",
                        "seed": 1, **kw}, profile="full")


def test_evaluate_run_binary():
    loaders = {"val": loader(make_split(40, 1)), "test": loader(make_split(40, 2))}
    out = ev.evaluate_run(Bright(), loaders, cfg(), device="cpu")
    assert out["threshold"]["chosen_on"] == "val" and out["target"] == "Pneumonia"
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "auroc", "auprc"):
        lo, hi = out["test"][f"{name}_ci"]
        assert lo <= out["test"][name] <= hi
    assert out["test"]["n"] == 40 and out["per_finding"] is None
    assert set(out["predictions"]) == {"val", "test"} and "ece" in out["calibration"]
    assert out["val"]["threshold"] == out["threshold"]["value"]


def test_threshold_never_sees_test_labels(monkeypatch):
    val, test = make_split(40, 1), make_split(40, 2)
    shuffled = Items(test.images, 1 - test.targets)  # every test label flipped
    seen = []
    real = ev.choose_threshold

    def spy(y_val, p_val, policy, **kw):
        seen.append((np.array(y_val), np.array(p_val)))
        return real(y_val, p_val, policy, **kw)

    monkeypatch.setattr(ev, "choose_threshold", spy)
    a = ev.evaluate_run(Bright(), {"val": loader(val), "test": loader(test)}, cfg(), device="cpu")
    b = ev.evaluate_run(Bright(), {"val": loader(val), "test": loader(shuffled)}, cfg(),
                        device="cpu")
    assert a["threshold"] == b["threshold"] and a["test"]["auroc"] != b["test"]["auroc"]
    p_val = ev.predict(Bright(), loader(val), device="cpu").probs[:, 0]
    assert len(seen) == 2
    for y_seen, p_seen in seen:
        assert np.array_equal(y_seen, val.targets[:, 0].numpy()) and np.allclose(p_seen, p_val)


def test_evaluate_run_multilabel_uses_pneumonia_column():
    names = ["Atelectasis", "Pneumonia", "Effusion"]
    loaders = {s: loader(make_split(30, seed, k=3, names=names)) for s, seed in
               (("val", 3), ("test", 4))}
    out = ev.evaluate_run(Bright(3), loaders, cfg(bootstrap=0, threshold_policy="youden"),
                          device="cpu")
    assert out["target"] == "Pneumonia" and out["class_names"] == names
    assert [r["finding"] for r in out["per_finding"]["per_finding"]] == names
    test = out["predictions"]["test"]
    assert out["test"]["auroc"] == pytest.approx(skm.roc_auc_score(test.targets[:, 1],
                                                                   test.probs[:, 1]))
    assert all(math.isnan(v) for v in out["test"]["auroc_ci"])  # bootstrap=0: no CI


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_dtype_ignores_emulated_bf16(monkeypatch, native, expected):
    """A T4/V100 (bf16 only emulated) gets fp16 + a GradScaler, not slow emulated bf16."""
    from utils.evaluation.metrics import amp_dtype

    calls = []

    def supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return True if including_emulation else native  # torch's default would say yes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert amp_dtype() == expected and calls == [False]


def test_bootstrap_by_patient_resamples_whole_patients():
    y, p = noisy(200, seed=5)
    # each "patient" holds 5 identical films: 40 independent units, not 200
    y5, p5 = np.repeat(y[:40], 5), np.repeat(p[:40], 5)
    patients = np.repeat([f"p{i}" for i in range(40)], 5)
    by_image = ev.bootstrap_ci(y5, p5, 0.5, n_boot=1000, seed=0)
    by_patient = ev.bootstrap_ci(y5, p5, 0.5, n_boot=1000, seed=0, groups=patients)
    single = ev.bootstrap_ci(y[:40], p[:40], 0.5, n_boot=1000, seed=0)
    width = lambda ci: ci["auroc"][1] - ci["auroc"][0]  # noqa: E731
    assert width(by_patient) > 1.6 * width(by_image)       # copies do not add information
    assert width(by_patient) == pytest.approx(width(single), rel=0.25)
    # one film per patient, or ids unknown: the same draws as resampling images
    assert ev.bootstrap_ci(y, p, 0.5, n_boot=200, groups=[f"q{i}" for i in range(200)]) == \
        ev.bootstrap_ci(y, p, 0.5, n_boot=200) == ev.bootstrap_ci(y, p, 0.5, n_boot=200,
                                                                  groups=[""] * 200)
    with pytest.raises(ValueError, match="group ids"):
        ev.bootstrap_ci(y, p, 0.5, groups=["a"] * 3)
