"""Precise BN after training: recompute BatchNorm statistics for the best weights, keep them
only when validation says they are better, and make the record describe the weights kept.

Why a per-run check rather than a rule. Measured on the demo data with
`python -m benchmarks.precise_bn` (resnet18 and densenet121, seeds 0-2: a source model
trained from scratch on Kermany for 4 epochs, then fine-tuned from its best.pt on RSNA for
2 epochs, as 02_chexnet does NIH → RSNA), the change in validation AUROC from
recalibrating, mean [min, max] over the seeds:

| | from scratch | fine-tuned from a checkpoint |
|---|---|---|
| resnet18 | +0.006 [-0.012, +0.029] | +0.011 [+0.000, +0.022] |
| densenet121 | +0.025 [-0.026, +0.083] | +0.019 [-0.153, +0.116] |

and validation BCE fell on average in all four cells (row by row: -0.60, -0.38; -0.08,
-0.76). It helps on average, after fine-tuning too (plausibly: a short fine-tune's moving
averages, momentum 0.1, still carry the starting weights' statistics), but not in every
run: each run therefore measures both on its own validation split and keeps the better; test
is never looked at. A partly frozen backbone (`trainable_from` a stage) keeps the statistics
it trained with.

Better by the validation *loss*, not by `cfg.monitor`. BatchNorm statistics shift every
logit, so what they get wrong is calibration, which a rank metric cannot see: on the demo
(`python run_all.py`, seed 42) the hand-written ResNet-18 without regularisation had
validation AUROC 0.995 as trained and 0.988 recalibrated, so an AUROC rule kept the trained
statistics, whose validation BCE was 3.00 (0.11 recalibrated): at its fixed 0.5 threshold
the test sensitivity was 0.42. The loss, a proper scoring rule, sees both ranking and
calibration.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..runtime import autocast
from .history import HIGHER_IS_BETTER
from .scores import summary_scores

__all__ = ["validation_scores", "precise_bn_if_better", "record_precise_bn"]


def validation_scores(model: nn.Module, loader, loss_fn: nn.Module, device=None, *,
                      amp: bool = True) -> dict[str, float]:
    """`val_loss`, `val_auroc`, `val_f1` (at 0.5) of `model` as it is now, as `fit` records
    them each epoch (one pass, no TTA; equal to fit's up to float rounding)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    logits, targets = [], []
    with torch.inference_mode(), autocast(device, amp):
        for images, target, _ in loader:
            logits.append(model(images.to(device, non_blocking=True)).float())
            targets.append(target.to(device, non_blocking=True))
    if not logits:
        raise ValueError("the validation loader yielded no batches: the val split is empty")
    out, target = torch.cat(logits), torch.cat(targets)
    with torch.inference_mode():  # mean-reduced losses: fit's batch-weighted mean
        loss = loss_fn.to(device)(out, target).item()
    scores = summary_scores(target.cpu().numpy(), torch.sigmoid(out).cpu().numpy(), 0.5)
    return {"val_loss": loss, "val_auroc": scores["auroc"], "val_f1": scores["f1"]}


def _better(new: float, old: float, monitor: str) -> bool:
    """Strictly better on `monitor` (lower for val_loss); NaN is never better."""
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if HIGHER_IS_BETTER[monitor] else new < old


def precise_bn_if_better(model: nn.Module, loaders: dict, cfg, device=None,
                         loss_fn: nn.Module | None = None) -> dict[str, Any]:
    """Recalibrate BN over 20 training batches (`loop.recalibrate_batchnorm`) and keep it
    only if the validation loss falls; otherwise the weights are put back.

    Returns `{"tried", "kept", "before", "after"}` (scores from `validation_scores`, with
    `loss_fn`, default the run's `build_loss`); a model without BN or with a frozen part
    (`trainable_from` not `all`) is not tried.
    """
    from .loop import recalibrate_batchnorm
    from .losses import build_loss

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if cfg.trainable_from != "all" or not has_bn:
        return {"tried": False, "kept": False, "before": None, "after": None}
    if loss_fn is None:
        loss_fn = build_loss(cfg, loaders["train"].dataset.labels)
    def score() -> dict[str, float]:
        return validation_scores(model, loaders["val"], loss_fn, device, amp=cfg.amp)

    before = score()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    recalibrate_batchnorm(model, loaders["train"], device=device)
    after = score()
    kept = _better(after["val_loss"], before["val_loss"], "val_loss")  # see the docstring
    if not kept:
        model.load_state_dict(saved)
    model.eval()
    return {"tried": True, "kept": kept, "before": before, "after": after}


def record_precise_bn(history, outcome: dict[str, Any]) -> dict[str, Any]:
    """Write the outcome into the best epoch's history row; return best.pt's new fields.

    Kept: the row's `val_*` and `best_score` become the recalibrated weights' (what best.pt
    now holds), fit's values stay as `<name>_as_trained` (from the first recalibration when
    evaluation runs again). Not kept: the row keeps its values (best.pt's weights did not
    change) and the rejected scores go in `<name>_precise_bn`. `precise_bn` says which.
    """
    if not outcome["tried"]:
        return {}
    row = next(r for r in history.epochs if r["epoch"] == history.best_epoch)
    row["precise_bn"] = outcome["kept"]
    for name, value in outcome["after"].items():
        if outcome["kept"]:
            row.setdefault(f"{name}_as_trained", row[name])
            row[name] = value
        else:
            row[f"{name}_precise_bn"] = value
    history.best_score = row[history.monitor]
    return {"history": history.to_dict(), "best_score": history.best_score}
