"""Grad-CAM gallery: cherry- and lemon-picked test cases per trained model, and how well
each model's CAMs land on the ground-truth boxes. Used by 08_gradcam_gallery."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import RunConfig, make_config
from .notebook import RunContext

__all__ = ["runs_with_checkpoints", "pick_cases", "build_gallery", "localisation_table"]

_GROUPS = ("true positive (confident)", "false negative", "false positive")


def runs_with_checkpoints(reports_dir: str | Path, checkpoint_dir: str | Path) -> pd.DataFrame:
    """Each step's first run (its own dataset, first seed) with a results JSON and a best
    checkpoint; NIH 14-label runs excluded. The other runs of the grid are in 07."""
    from .results import load_results

    runs = load_results(reports_dir)
    if runs.empty:
        return runs
    has_ckpt = runs["step"].map(lambda s: (Path(checkpoint_dir) / s / "best.pt").exists())
    binary = ~runs["step"].str.endswith("_nih")
    first = runs["step"] == runs["plan_step"]  # each step's own dataset and first seed
    return runs[has_ckpt & binary & first].reset_index(drop=True)


def pick_cases(probs: np.ndarray, targets: np.ndarray, threshold: float,
               k: int) -> dict[str, np.ndarray]:
    """Indices of the k most confident TPs, the k worst FNs and the k worst FPs."""
    probs, targets = np.asarray(probs).ravel(), np.asarray(targets).ravel()
    pred = probs >= threshold
    tp = np.flatnonzero(pred & (targets == 1))
    fn = np.flatnonzero(~pred & (targets == 1))
    fp = np.flatnonzero(pred & (targets == 0))
    return {_GROUPS[0]: tp[np.argsort(-probs[tp])][:k],
            _GROUPS[1]: fn[np.argsort(probs[fn])][:k],
            _GROUPS[2]: fp[np.argsort(-probs[fp])][:k]}


def _run_config(ckpt: dict, cfg: RunConfig) -> RunConfig:
    """The trained run's own config, with this notebook's paths and data root."""
    params = dict(ckpt["config"])
    params.update(data_root=cfg.data_root, reports_dir=cfg.reports_dir,
                  checkpoint_dir=cfg.checkpoint_dir, num_workers=cfg.num_workers, cache=cfg.cache)
    return make_config(params, profile=params.get("profile", cfg.profile))


def _to_uint8(image: torch.Tensor, mean: float, std: float) -> np.ndarray:
    return (np.clip(image[0].numpy() * std + mean, 0, 1) * 255).astype(np.uint8)


def build_gallery(step: str, cfg: RunConfig, ctx: RunContext, per_group: int = 4,
                  max_localisation: int = 128) -> dict[str, Any]:
    """Images, CAMs, boxes and titles of a step's picked test cases, plus its CAM-vs-box score.

    Predictions are recomputed on the test split with the best checkpoint, and cases are
    picked at the checkpoint's validation-chosen threshold.
    """
    from .cam import CamExplainer, is_flat, localisation_scores
    from .data.dataset import load_manifest, make_loaders
    from .evaluate import predict
    from .train import load_model

    model, ckpt = load_model(Path(cfg.checkpoint_dir) / step / "best.pt", device=ctx.device)
    run_cfg = _run_config(ckpt, cfg)
    test = make_loaders(run_cfg, load_manifest(run_cfg), run_cfg.model)["test"]
    pred = predict(model, test, device=ctx.device, tta=run_cfg.tta)  # as the threshold saw it
    threshold = float(ckpt.get("threshold", 0.5))
    cases = pick_cases(pred.probs[:, 0], pred.targets[:, 0], threshold, per_group)
    mean, std = float(ckpt["mean"]), float(ckpt["std"])
    out: dict[str, Any] = {"images": [], "titles": [], "boxes": [], "cams": []}
    has_box = test.dataset.manifest["boxes"].map(len).to_numpy() > 0  # no decode needed
    positives = np.flatnonzero((pred.targets[:, 0] == 1) & has_box)[:max_localisation]
    with CamExplainer(model.to(ctx.device)) as cam:
        for group, indices in cases.items():
            for i in indices:
                image, _, meta = test.dataset[int(i)]
                out["images"].append(_to_uint8(image, mean, std))
                out["cams"].append(cam(image.to(ctx.device))[0])
                out["boxes"].append(meta["boxes"].tolist())
                flat = " (flat CAM)" if is_flat(out["cams"][-1]) else ""
                out["titles"].append(f"{group}\np={pred.probs[i, 0]:.2f}{flat}")
        items = [test.dataset[int(i)] for i in positives]
        cams = cam(torch.stack([it[0] for it in items]).to(ctx.device)) if items else []
        scores = localisation_scores(cams, [it[2]["boxes"].tolist() for it in items])
    out["localisation"] = {"step": step, "model": run_cfg.model, "dataset": run_cfg.dataset,
                           "threshold": threshold, **scores}
    return out


def localisation_table(galleries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model: pointing-game hit rate and IoU against the random-point baseline."""
    rows = [g["localisation"] for g in galleries.values()]
    table = pd.DataFrame(rows, columns=["step", "model", "dataset", "n", "hit_rate",
                                        "random_hit_rate", "mean_iou", "threshold"])
    table["hit_rate_vs_random"] = table["hit_rate"] / table["random_hit_rate"]
    return table
