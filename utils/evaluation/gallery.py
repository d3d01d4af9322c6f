"""Grad-CAM gallery: cherry- and lemon-picked test cases per trained model, and how well
each model's CAMs land on the ground-truth boxes (scored by `utils.evaluation.localisation`). Used by
08_gradcam_gallery."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import RunConfig, make_config
from ..runtime import RunContext

__all__ = ["runs_with_checkpoints", "run_checkpoint", "pick_cases", "Cases", "load_cases", "build_gallery",
           "localisation_table", "save_localisation"]

_GROUPS = ("true positive (confident)", "false negative", "false positive")


def runs_with_checkpoints(reports_dir: str | Path, checkpoint_dir: str | Path) -> pd.DataFrame:
    """Each step's primary run (its own dataset, seed 42, else its lowest seed: results'
    `primary_run`) with a results JSON and a best checkpoint; NIH 14-label runs excluded.
    The other runs of the grid are in 07."""
    from .results import load_results, primary_run

    runs = load_results(reports_dir)
    if runs.empty:
        return runs
    has_ckpt = runs["step"].map(lambda s: (Path(checkpoint_dir) / s / "best.pt").exists())
    binary = ~runs["plan_step"].fillna(runs["step"]).str.endswith("_nih")
    runs = runs[has_ckpt & binary]
    first = {primary_run(step, runs["step"]) for step in runs["plan_step"].dropna().unique()}
    return runs[runs["step"].isin(first)].reset_index(drop=True)


def run_checkpoint(checkpoint_dir: str | Path, step: str) -> Path:
    """`checkpoint_dir/<step>/best.pt`; for a step name with no such folder, its primary
    run's (`results.primary_run`: `05_vit.s1` when the user's seed is 1)."""
    from .results import primary_run

    root = Path(checkpoint_dir)
    if (root / step / "best.pt").exists() or not root.is_dir():
        return root / step / "best.pt"
    names = [p.parent.name for p in root.glob(f"{step}*/best.pt")]
    return root / (primary_run(step, names) or step) / "best.pt"


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


@dataclass
class Cases:
    """A run's best model, its test split and the test cases the gallery picks from it."""

    model: torch.nn.Module
    ckpt: dict[str, Any]
    run_cfg: RunConfig
    test: Any                       # the test DataLoader (its dataset is indexed below)
    pred: Any                       # utils.evaluation.metrics.Predictions on the test split
    threshold: float
    picked: dict[str, np.ndarray]   # group -> dataset indices, as `pick_cases` orders them
    val: Any = None                 # the validation DataLoader (the CAM layer is chosen on it)

    def items(self) -> list[tuple[str, int, torch.Tensor, np.ndarray, dict]]:
        """`(group, index, image tensor, uint8 image, meta)` of every picked case, in order."""
        mean, std = float(self.ckpt["mean"]), float(self.ckpt["std"])
        out = []
        for group, indices in self.picked.items():
            for i in indices:
                image, _, meta = self.test.dataset[int(i)]
                out.append((group, int(i), image, _to_uint8(image, mean, std), meta))
        return out


def load_cases(step: str, cfg: RunConfig, ctx: RunContext, per_group: int = 4) -> Cases:
    """A step's best checkpoint, test predictions recomputed with it, and its picked cases
    (at the checkpoint's validation-chosen threshold): what 08 shows, for any notebook."""
    from ..data.dataset import load_manifest, make_loaders
    from ..models.registry import normalisation
    from ..training.checkpoint import load_model
    from .metrics import predict

    model, ckpt = load_model(run_checkpoint(cfg.checkpoint_dir, step), device=ctx.device)
    run_cfg = _run_config(ckpt, cfg)
    loaders = make_loaders(run_cfg, load_manifest(run_cfg),
                           normalisation(run_cfg.model, run_cfg.pretrained), splits=("val", "test"))
    test = loaders["test"]
    pred = predict(model, test, device=ctx.device, tta=run_cfg.tta,  # as the threshold saw it
                   amp=run_cfg.amp)
    threshold = float(ckpt.get("threshold", 0.5))
    picked = pick_cases(pred.probs[:, 0], pred.targets[:, 0], threshold, per_group)
    return Cases(model, ckpt, run_cfg, test, pred, threshold, picked, loaders["val"])


def build_gallery(step: str, cfg: RunConfig, ctx: RunContext, per_group: int = 4,
                  max_localisation: int = 64) -> dict[str, Any]:
    """Images, CAMs, boxes and titles of a step's picked test cases, plus its CAM-vs-box score.

    Predictions are recomputed on the test split with the best checkpoint, and cases are
    picked at the checkpoint's validation-chosen threshold (`load_cases`). The CAM layer and
    method are chosen on validation against an untrained copy (`choose_cam_layer`).
    """
    from .cam import CAM_LABELS
    from .localisation import (boxed_patients, cam_explainer, choose_cam_layer, explained,
                               hit_rate_ci, is_flat, normal_images, positives_with_boxes,
                               score_test_split, untrained_copy)
    from .occlusion import occlusion_check

    cases = load_cases(step, cfg, ctx, per_group)
    model, run_cfg, pred = cases.model.to(ctx.device), cases.run_cfg, cases.pred
    normals = normal_images(cases.val)
    trained = explained(model, normals, ctx.device)
    untrained = explained(untrained_copy(run_cfg, cfg.seed), normals, ctx.device)
    choice = choose_cam_layer(cases, ctx.device, trained=trained, untrained=untrained)
    out: dict[str, Any] = {"images": [], "titles": [], "boxes": [], "cams": [],
                           "layer": choice["layer"], "method": CAM_LABELS[choice["method"]]}
    with cam_explainer(trained, choice) as cam:
        for group, i, image, image_u8, meta in cases.items():
            out["images"].append(image_u8)
            out["cams"].append(cam(image.to(ctx.device))[0])
            out["boxes"].append(meta["boxes"].tolist())
            flat = " (flat CAM)" if is_flat(out["cams"][-1]) else ""
            out["titles"].append(f"{group}\np={pred.probs[i, 0]:.2f}{flat}")
    images, boxes = positives_with_boxes(cases.test, max_localisation)
    scores = score_test_split(trained, untrained, choice, images, boxes, ctx.device)
    occluded = occlusion_check(model, images, boxes, ctx.device) if images is not None else {}
    hits = scores.pop("hits")
    scores["hit_lo"], scores["hit_hi"] = hit_rate_ci(
        hits, boxed_patients(cases.test, max_localisation) if hits else [])
    out["localisation"] = {"step": step, "model": run_cfg.model, "dataset": run_cfg.dataset,
                           "threshold": cases.threshold, **scores, **choice,
                           "reference_n": trained.reference_n, **occluded}
    return out


def localisation_table(galleries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model: pointing-game hit rate (95% CI over patients) and IoU against the
    random-point baseline; `above_random` when the whole CI clears it, `above_untrained`
    when it clears the same map of the untrained copy (`untrained_copy`); then p before and
    after the boxes are replaced by the mirrored lung, and after a control box is
    (`utils.evaluation.occlusion`)."""
    rows = [g["localisation"] for g in galleries.values()]
    table = pd.DataFrame(rows, columns=["step", "model", "dataset", "n", "layer", "method",
                                        "chosen_on", "val_hit_rate", "val_untrained_hit_rate",
                                        "hit_rate", "hit_lo", "hit_hi", "random_hit_rate",
                                        "untrained_hit_rate", "plain_layer", "plain_method",
                                        "plain_hit_rate", "default_hit_rate", "reference_n",
                                        "mean_iou",
                                        "threshold", "occlusion_n", "p_before", "p_mirrored",
                                        "drop_share", "p_control", "control_drop_share"])
    table["hit_rate_vs_random"] = table["hit_rate"] / table["random_hit_rate"]
    table["above_random"] = table["hit_lo"] > table["random_hit_rate"]
    table["above_untrained"] = table["hit_lo"] > table["untrained_hit_rate"]
    return table


def save_localisation(table: pd.DataFrame, reports_dir: str | Path, step: str,
                      synthetic: bool) -> Path:
    """`<reports_dir>/results/<step>.json`: the table's rows, for the report's opening
    sentences (`narrative.gallery_summary`)."""
    from ..fileio import atomic_write_json

    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return atomic_write_json(Path(reports_dir) / "results" / f"{step}.json",
                             {"localisation": rows, "synthetic": bool(synthetic)})
