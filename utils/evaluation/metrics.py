"""Predictions, metrics, a threshold chosen on validation, bootstrap CIs and calibration.

The threshold is chosen on the validation split only (`choose_threshold` never receives
test labels) and then applied unchanged to the test split, so test numbers stay honest.
Metric definitions are scikit-learn's; `bootstrap_ci` re-expresses them with resampling
*weights* so that 1,000 resamples are a handful of matrix products instead of a loop.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn import metrics as skm

from ..runtime import amp_dtype, autocast, pick_device  # noqa: F401 (re-exported)
from ..training.scores import as_columns, safe_metric
from .stats import cluster_index, resample_weights

__all__ = ["Predictions", "predict", "tta_probabilities", "black_value", "amp_dtype",
           "autocast", "binary_metrics", "multilabel_metrics",
           "choose_threshold", "bootstrap_ci", "calibration", "evaluate_run",
           "THRESHOLD_POLICIES"]

THRESHOLD_POLICIES = ("fixed", "max_f1", "youden", "sensitivity")
_TTA_ANGLES = (5.0, -5.0)  # degrees; small enough to keep the anatomy where it was


@dataclass
class Predictions:
    """Model outputs on one split, aligned row for row with its dataset."""

    probs: np.ndarray                  # N×K sigmoid probabilities
    targets: np.ndarray                # N×K 0/1 labels
    paths: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.probs)


def black_value(model: torch.nn.Module) -> float:
    """A black pixel after the model's normalisation, `(0 - mean) / std`: what training's
    rotations fill the corners with (they rotate uint8 images, fill 0, then normalise)."""
    info = getattr(model, "info", None)
    if info is None or getattr(info, "mean", None) is None:
        raise ValueError(f"{type(model).__name__} has no `.info.mean/std` (registry models "
                         f"do): pass fill= (the normalised value of a black pixel) for TTA")
    return -float(info.mean) / float(info.std)


def _tta_views(images: torch.Tensor, fill: float) -> list[torch.Tensor]:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    # rotate (x - fill) with zero padding, then add fill back: exactly a rotation of the
    # [0, 1] pixels with black corners, normalised afterwards (torchvision's own `fill=`
    # blends the fill into bilinear edge pixels: a rotated black image would not stay black)
    views = [images, images.flip(-1)]
    views += [tvf.rotate(images - fill, a, interpolation=InterpolationMode.BILINEAR) + fill
              for a in _TTA_ANGLES]
    return views


def tta_probabilities(model: torch.nn.Module, images: torch.Tensor, tta: bool = False, *,
                      amp: bool = True, fill: float | None = None) -> torch.Tensor:
    """Sigmoid probabilities (B×K, on the images' device) of one batch; with `tta`, their
    mean over identity, horizontal flip and ±5° rotations (rotated on the device, corners
    filled with `fill`, default `black_value(model)`). `amp`: autocast on CUDA, as the
    run's `cfg.amp` says (training and validation used the same)."""
    if tta:
        views = _tta_views(images, black_value(model) if fill is None else fill)
    else:
        views = [images]
    with torch.inference_mode(), autocast(images.device, amp):
        return torch.stack([torch.sigmoid(model(v).float()) for v in views]).mean(0)


def predict(model: torch.nn.Module, loader, device: torch.device | str | None = None,
            tta: bool = False, *, amp: bool = True, fill: float | None = None) -> Predictions:
    """Sigmoid probabilities for every item of `loader` (batches of `(image, target, meta)`).

    Args:
        device: defaults to the device the model's parameters are on.
        tta: average probabilities over identity, horizontal flip and ±5° rotations.
        amp: mixed precision on CUDA (pass the run's `cfg.amp`).
        fill: TTA's corner value; default a black pixel (`black_value(model)`).
    Example:
        >>> preds = predict(model, loaders["test"], tta=True)  # doctest: +SKIP
        >>> preds.probs.shape   # (N, K)
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    model.eval().to(device)
    probs, targets, metas = [], [], []
    for images, target, meta in loader:
        # probabilities stay on the device until the end: no host sync per batch
        probs.append(tta_probabilities(model, images.to(device, non_blocking=True), tta,
                                       amp=amp, fill=fill))
        targets.append(target)
        metas.extend(meta)
    if not probs:
        raise ValueError("predict() got an empty loader: the split has no images")
    indices = np.array([m.get("index", i) for i, m in enumerate(metas)], dtype=int)
    return Predictions(probs=torch.cat(probs).float().cpu().numpy(),
                       targets=torch.cat(targets).float().numpy(),
                       paths=[str(m.get("path", "")) for m in metas],
                       patient_ids=[str(m.get("patient_id", "")) for m in metas],
                       indices=indices,
                       class_names=list(getattr(loader.dataset, "class_names", []) or []))


def _flat(y: Any) -> np.ndarray:
    return np.asarray(y, dtype=float).reshape(-1)


def binary_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Threshold and ranking metrics of one binary column (`y_prob >= threshold` is positive).

    Example:
        >>> binary_metrics([0, 1, 1], [0.2, 0.6, 0.4], 0.5)["recall"]
        0.5
    """
    y, p = _flat(y_true).astype(int), _flat(y_prob)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel().tolist()
    recall = skm.recall_score(y, pred, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(recall), "sensitivity": float(recall),
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "auroc": safe_metric(skm.roc_auc_score, y, p),
        "auprc": safe_metric(skm.average_precision_score, y, p),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": float(threshold), "n": int(len(y)), "n_pos": int(y.sum()),
    }


def multilabel_metrics(Y: Any, P: Any, class_names: list[str]) -> dict[str, Any]:
    """Per-finding AUROC/AUPRC (NIH's 14 findings) and their macro means over defined ones."""
    Y, P = as_columns(Y, P)
    rows = [{"finding": name, "auroc": safe_metric(skm.roc_auc_score, Y[:, k], P[:, k]),
             "auprc": safe_metric(skm.average_precision_score, Y[:, k], P[:, k]),
             "n_pos": int(Y[:, k].sum()), "n": int(len(Y))}
            for k, name in enumerate(class_names)]
    macro = {m: [r[m] for r in rows if not math.isnan(r[m])] for m in ("auroc", "auprc")}
    return {"per_finding": rows,
            **{f"macro_{m}": float(np.mean(v)) if v else math.nan for m, v in macro.items()}}


def choose_threshold(y_val: Any, p_val: Any, policy: str, *, value: float = 0.5,
                     target_sensitivity: float = 0.9) -> dict[str, Any]:
    """The operating threshold, chosen on validation arrays only.

    Policies: `fixed` (= `value`), `max_f1` (best F1 along the precision-recall curve),
    `youden` (max TPR − FPR on the ROC curve), `sensitivity` (the highest threshold whose
    sensitivity reaches `target_sensitivity`). A single-class validation set cannot rank,
    so the data-driven policies then fall back to `value` with a warning and say so in
    the returned `fallback`.
    Example:
        >>> choose_threshold(y_val, p_val, "youden")["value"]  # doctest: +SKIP
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"threshold policy {policy!r} is not one of {THRESHOLD_POLICIES}")
    y, p = _flat(y_val).astype(int), _flat(p_val)
    fallback = ""
    if policy != "fixed" and len(np.unique(y)) < 2:
        fallback = f"validation has a single class; used the fixed value {value}"
        warnings.warn(f"choose_threshold({policy!r}): {fallback}", stacklevel=2)
    if policy == "fixed" or fallback:
        thr = value
    elif policy == "max_f1":
        prec, rec, thrs = skm.precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * prec * rec / (prec + rec))[:-1]
        thr = thrs[int(np.argmax(f1))]
    else:
        fpr, tpr, thrs = skm.roc_curve(y, p, drop_intermediate=False)
        i = int(np.argmax(tpr - fpr)) if policy == "youden" else \
            int(np.argmax(tpr >= target_sensitivity - 1e-12))
        thr = min(float(thrs[i]), 1.0)  # sklearn's first threshold is +inf
    at = binary_metrics(y, p, thr)
    return {"value": float(thr), "policy": policy, "chosen_on": "val", "fallback": fallback,
            "target_sensitivity": target_sensitivity if policy == "sensitivity" else None,
            "val_f1": at["f1"], "val_sensitivity": at["sensitivity"],
            "val_specificity": at["specificity"],
            "val_youden": at["sensitivity"] + at["specificity"] - 1}


def _weighted_scores(y: np.ndarray, p: np.ndarray, W: np.ndarray,
                     threshold: float) -> dict[str, np.ndarray]:
    """Every scalar metric for each row of sample weights `W` (R×N), as sklearn defines
    them with `sample_weight`: a bootstrap resample is a row of multiplicities."""
    pred = p >= threshold
    tp, fp = W @ (y * pred), W @ ((1 - y) * pred)
    fn, tn = W @ (y * ~pred), W @ ((1 - y) * ~pred)
    order = np.argsort(-p, kind="mergesort")
    last = np.r_[np.flatnonzero(np.diff(p[order])), len(p) - 1]  # one point per distinct score
    tps = np.cumsum(W[:, order] * y[order], axis=1)[:, last]
    fps = np.cumsum(W[:, order] * (1 - y[order]), axis=1)[:, last]
    zero = np.zeros((len(W), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        pos, neg = tps[:, -1:], fps[:, -1:]
        tpr, fpr = np.hstack([zero, tps / pos]), np.hstack([zero, fps / neg])
        auroc = np.trapezoid(tpr, fpr, axis=1)
        precision_curve = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        auprc = np.sum(np.diff(tpr, axis=1) * precision_curve, axis=1)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        return {"accuracy": (tp + tn) / W.sum(1), "precision": precision,
                "recall": recall, "sensitivity": recall,
                "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
                "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
                "auroc": np.where((pos[:, 0] > 0) & (neg[:, 0] > 0), auroc, np.nan),
                "auprc": np.where(pos[:, 0] > 0, auprc, np.nan)}


def bootstrap_ci(y: Any, p: Any, threshold: float, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05,
                 groups: Sequence[Any] | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs for every scalar of `binary_metrics`.

    With `groups` (one patient id per image) whole patients are resampled, each image
    weighted by its patient's draw count: films of one patient are correlated, so
    resampling images alone gives intervals that are too narrow. Without groups (or for
    empty ids) images are resampled. Resamples with a single class have no AUROC/AUPRC and
    are left out of those two.
    Example:
        >>> bootstrap_ci(y_test, p_test, 0.5, groups=pred.patient_ids)["auroc"]  # doctest: +SKIP
        (0.91, 0.95)
    """
    y, p = _flat(y), _flat(p)
    n = len(y)
    if n == 0 or n_boot <= 0:
        raise ValueError(f"bootstrap_ci needs data and n_boot > 0 (got n={n}, n_boot={n_boot})")
    rng = np.random.default_rng(seed)
    parts = [_weighted_scores(y, p, W, threshold)  # W: R×N patient draw counts, in chunks
             for W in resample_weights(cluster_index(groups, n), n_boot, rng)]
    out = {}
    for name in parts[0]:
        values = np.concatenate([part[name] for part in parts])
        values = values[~np.isnan(values)]
        out[name] = (tuple(float(q) for q in np.quantile(values, [alpha / 2, 1 - alpha / 2]))
                     if len(values) else (math.nan, math.nan))
    return out


def calibration(y: Any, p: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability bins (sklearn's uniform binning) and the expected calibration error.

    Empty bins have NaN confidence/accuracy and count 0; ECE weights bins by their counts.
    """
    y, p = _flat(y), _flat(p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], p)  # exactly sklearn.calibration_curve's binning
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, weights=p, minlength=n_bins) / count
        acc = np.bincount(bins, weights=y, minlength=n_bins) / count
    ece = float(np.nansum(count * np.abs(acc - conf)) / max(count.sum(), 1))
    return {"ece": ece, "bin_confidence": conf.tolist(), "bin_accuracy": acc.tolist(),
            "bin_count": count.tolist(), "bin_edges": edges.tolist(), "n_bins": n_bins}


def _target_column(class_names: list[str], n_columns: int) -> int:
    if n_columns == 1:
        return 0
    if "Pneumonia" in class_names:
        return class_names.index("Pneumonia")
    raise ValueError(f"multilabel evaluation needs a 'Pneumonia' column for the binary "
                     f"metrics; class names are {class_names}")


def evaluate_run(model: torch.nn.Module, loaders: dict, cfg, device=None) -> dict[str, Any]:
    """Predict val and test, choose the threshold on val, measure test with bootstrap CIs.

    Multilabel (NIH): every finding gets AUROC/AUPRC in `per_finding`; the threshold and
    the binary-style metrics (accuracy, F1, CIs, calibration) use the Pneumonia column.
    `predictions` holds the raw val/test `Predictions` for plots; results.py keeps it out
    of the JSON.
    Example:
        >>> ev = evaluate_run(model, loaders, cfg)  # doctest: +SKIP
        >>> ev["test"]["auroc"], ev["test"]["auroc_ci"], ev["threshold"]["value"]
    """
    device = torch.device(device) if device is not None else pick_device(cfg.device)
    missing = {"val", "test"} - set(loaders)
    if missing:
        raise KeyError(f"evaluate_run needs loaders for 'val' and 'test'; missing {sorted(missing)}")
    preds = {split: predict(model, loaders[split], device, tta=cfg.tta, amp=cfg.amp)
             for split in ("val", "test")}
    K = preds["test"].probs.shape[1]
    names = preds["test"].class_names or (["Pneumonia"] if K == 1 else
                                          [f"class_{k}" for k in range(K)])
    for pr in preds.values():
        pr.class_names = names
    col = _target_column(names, K)
    (yv, pv), (yt, pt) = [(preds[s].targets[:, col], preds[s].probs[:, col])
                          for s in ("val", "test")]
    threshold = choose_threshold(yv, pv, cfg.threshold_policy, value=cfg.threshold,
                                 target_sensitivity=cfg.target_sensitivity)
    test = binary_metrics(yt, pt, threshold["value"])
    cis = bootstrap_ci(yt, pt, threshold["value"], n_boot=cfg.bootstrap, seed=cfg.seed,
                       groups=preds["test"].patient_ids) if cfg.bootstrap > 0 else {}
    for name in ("accuracy", "precision", "recall", "sensitivity", "specificity", "f1",
                 "auroc", "auprc"):
        test[f"{name}_ci"] = list(cis.get(name, (math.nan, math.nan)))
    return {"threshold": threshold, "test": test, "val": binary_metrics(yv, pv, threshold["value"]),
            "calibration": calibration(yt, pt),
            "per_finding": multilabel_metrics(preds["test"].targets, preds["test"].probs,
                                              names) if K > 1 else None,
            "class_names": names, "target": names[col], "tta": cfg.tta,
            "bootstrap": cfg.bootstrap, "predictions": preds,
            "bootstrap_unit": "patient" if any(preds["test"].patient_ids) else "image"}
