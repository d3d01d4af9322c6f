"""Grad-CAM gallery: cherry- and lemon-picked test cases per trained model, and how well
each model's CAMs land on the ground-truth boxes. Used by 08_gradcam_gallery."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import RunConfig, make_config
from .notebook import RunContext

__all__ = ["runs_with_checkpoints", "pick_cases", "Cases", "load_cases", "cam_candidates",
           "choose_cam_layer", "CAM_CHOICES", "build_gallery", "localisation_table",
           "hit_rate_ci", "save_localisation"]

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


@dataclass
class Cases:
    """A run's best model, its test split and the test cases the gallery picks from it."""

    model: torch.nn.Module
    ckpt: dict[str, Any]
    run_cfg: RunConfig
    test: Any                       # the test DataLoader (its dataset is indexed below)
    pred: Any                       # utils.evaluate.Predictions on the test split
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
    from .data.dataset import load_manifest, make_loaders
    from .evaluate import predict
    from .train import load_model

    model, ckpt = load_model(Path(cfg.checkpoint_dir) / step / "best.pt", device=ctx.device)
    run_cfg = _run_config(ckpt, cfg)
    loaders = make_loaders(run_cfg, load_manifest(run_cfg), run_cfg.model, splits=("val", "test"))
    test = loaders["test"]
    pred = predict(model, test, device=ctx.device, tta=run_cfg.tta,  # as the threshold saw it
                   amp=run_cfg.amp)
    threshold = float(ckpt.get("threshold", 0.5))
    picked = pick_cases(pred.probs[:, 0], pred.targets[:, 0], threshold, per_group)
    return Cases(model, ckpt, run_cfg, test, pred, threshold, picked, loaders["val"])


def cam_candidates(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The layers Grad-CAM may explain, finest first, ending with the registry's default.

    The default is the last feature map (CheXNet's choice), which at the demo's 64 px is 2×2
    for the CNNs: upsampled, it peaks in a corner. The ends of the earlier stages keep more
    resolution and a smaller receptive field. Transformers keep one token grid throughout,
    so they only have the default.
    """
    default = model.info.cam_layer(model)
    family = model.info.family
    if family == "resnet":
        layers = {n: getattr(model, n)[-1] for n in ("layer1", "layer2", "layer3")}
    elif family == "densenet":
        layers = {f"features.{n}": getattr(model.features, n)
                  for n in ("denseblock1", "denseblock2", "denseblock3")}
    elif family == "cnn":
        layers = {f"features.{i}": block for i, block in enumerate(model.features)}
    elif family == "efficientnet":  # the last block of each resolution (before a stride 2)
        blocks = model._blocks
        stride = [int(np.max(b._block_args.stride)) for b in blocks]  # an int or a list
        layers = {f"_blocks.{i}": blocks[i] for i in range(1, len(blocks) - 1)
                  if stride[i + 1] > 1}
    else:
        layers = {}
    layers = {n: m for n, m in layers.items() if m is not default}
    return {**layers, "default": default}


def _boxed_rows(loader, limit: int) -> np.ndarray:
    dataset = loader.dataset
    has_box = dataset.manifest["boxes"].map(len).to_numpy() > 0  # no decode needed
    return np.flatnonzero((dataset.labels[:, 0] == 1) & has_box)[:limit]


def _positives_with_boxes(loader, limit: int) -> tuple[torch.Tensor | None, list]:
    items = [loader.dataset[int(i)] for i in _boxed_rows(loader, limit)]
    if not items:
        return None, []
    return torch.stack([it[0] for it in items]), [it[2]["boxes"].tolist() for it in items]


def _boxed_patients(loader, limit: int) -> list[str]:
    """The patient of each image `_positives_with_boxes` returns, in the same order."""
    manifest = loader.dataset.manifest
    return manifest["patient_id"].astype(str).to_numpy()[_boxed_rows(loader, limit)].tolist()


def hit_rate_ci(hits: Any, patients: Any, n_boot: int = 1000,
                seed: int = 0) -> tuple[float, float]:
    """95% interval of a pointing-game hit rate, resampling patients (their films together,
    as every CI of the project does); NaNs without cases."""
    from .stats import cluster_index, resample_weights

    hits = np.asarray(hits, dtype=float)
    if hits.size == 0:
        return float("nan"), float("nan")
    index = cluster_index(list(patients), hits.size)
    rates = np.concatenate([W @ hits / W.sum(1) for W in
                            resample_weights(index, n_boot, np.random.default_rng(seed))])
    lo, hi = np.quantile(rates, [0.025, 0.975])
    return float(lo), float(hi)


def _sweep(model, layers: dict[str, torch.nn.Module], methods: tuple[str, ...], images,
           boxes, device) -> dict[tuple[str, str], dict[str, Any]]:
    """`localisation_scores` plus `hits` (each image's pointing-game outcome) for every
    (layer, method) pair, from one CAM pass (`cam_sweep`). Transformers only have the
    default layer, so the registry's token reshape applies to every layer passed."""
    from .cam import cam_sweep, localisation_scores, pointing_hit

    maps = cam_sweep(model.to(device), layers, methods, images, reshape=model.info.cam_reshape)
    return {key: {**localisation_scores(cams, boxes),
                  "hits": [pointing_hit(c, b) for c, b in zip(cams, boxes)]}
            for key, cams in maps.items()}


# Grad-CAM first (it wins ties), then two variants of it that weight each position by its own
# gradient instead of the map's average one. In one demo run (`python run_all.py`), the study's
# CNN: Grad-CAM at its best layer (`features.2`) hits 16 % of the test boxes, HiResCAM at
# `features.3` 41 %, against 8 % for a random point.
CAM_CHOICES = ("gradcam", "hirescam", "layercam")


def choose_cam_layer(cases: Cases, device, limit: int = 32,
                     methods: tuple[str, ...] = CAM_CHOICES) -> dict[str, Any]:
    """The candidate layer and CAM method whose map peaks inside the boxes most often on
    the *validation* positives (ties: Grad-CAM, then the deeper layer); Grad-CAM of the
    default layer when val has no boxes. Test boxes never take part in the choice."""
    candidates = cam_candidates(cases.model)
    images, boxes = (_positives_with_boxes(cases.val, limit) if cases.val is not None
                     else (None, []))
    if images is None:
        return {"layer": "default", "method": "gradcam",
                "chosen_on": "default (no validation boxes)", "val_hit_rate": float("nan")}
    scores = _sweep(cases.model, candidates, methods, images, boxes, device)
    best, best_rate = ("default", "gradcam"), -1.0
    for method in methods:
        for name in reversed(list(candidates)):  # deepest first: a later layer wins ties
            rate = scores[(name, method)]["hit_rate"]
            if rate > best_rate:
                best, best_rate = (name, method), rate
    return {"layer": best[0], "method": best[1], "chosen_on": "val", "val_hit_rate": best_rate}


def _test_scores(model, candidates, choice, images, boxes, device) -> tuple[dict, float]:
    """The chosen (layer, method)'s test scores and Grad-CAM of the default layer's hit rate
    (CheXNet's choice, for comparison), from one pass."""
    nan = float("nan")
    if images is None:
        return ({"hit_rate": nan, "mean_iou": nan, "n": 0, "random_hit_rate": nan,
                 "hits": []}, nan)
    layer, method = choice["layer"], choice["method"]
    layers = {layer: candidates[layer], "default": candidates["default"]}
    scores = _sweep(model, layers, tuple(dict.fromkeys((method, "gradcam"))), images, boxes,
                    device)
    return scores[(layer, method)], scores[("default", "gradcam")]["hit_rate"]


def build_gallery(step: str, cfg: RunConfig, ctx: RunContext, per_group: int = 4,
                  max_localisation: int = 64) -> dict[str, Any]:
    """Images, CAMs, boxes and titles of a step's picked test cases, plus its CAM-vs-box score.

    Predictions are recomputed on the test split with the best checkpoint, and cases are
    picked at the checkpoint's validation-chosen threshold (`load_cases`).
    """
    from .cam import CAM_LABELS, CamExplainer, is_flat
    from .occlusion import occlusion_check

    cases = load_cases(step, cfg, ctx, per_group)
    model, run_cfg, pred = cases.model.to(ctx.device), cases.run_cfg, cases.pred
    choice = choose_cam_layer(cases, ctx.device)
    candidates = cam_candidates(model)
    layer, method = candidates[choice["layer"]], choice["method"]
    reshape = model.info.cam_reshape if choice["layer"] == "default" else None
    out: dict[str, Any] = {"images": [], "titles": [], "boxes": [], "cams": [],
                           "layer": choice["layer"], "method": CAM_LABELS[method]}
    with CamExplainer(model, method=method, target_layer=layer, reshape=reshape) as cam:
        for group, i, image, image_u8, meta in cases.items():
            out["images"].append(image_u8)
            out["cams"].append(cam(image.to(ctx.device))[0])
            out["boxes"].append(meta["boxes"].tolist())
            flat = " (flat CAM)" if is_flat(out["cams"][-1]) else ""
            out["titles"].append(f"{group}\np={pred.probs[i, 0]:.2f}{flat}")
    images, boxes = _positives_with_boxes(cases.test, max_localisation)
    scores, default_rate = _test_scores(model, candidates, choice, images, boxes, ctx.device)
    occluded = occlusion_check(model, images, boxes, ctx.device) if images is not None else {}
    hits = scores.pop("hits")
    scores["hit_lo"], scores["hit_hi"] = hit_rate_ci(
        hits, _boxed_patients(cases.test, max_localisation) if hits else [])
    out["localisation"] = {"step": step, "model": run_cfg.model, "dataset": run_cfg.dataset,
                           "threshold": cases.threshold, **scores, **choice,
                           "default_hit_rate": default_rate, **occluded}
    return out


def localisation_table(galleries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model: pointing-game hit rate (95% CI over patients) and IoU against the
    random-point baseline; `above_random` when the whole CI clears it; then p before and
    after the boxes are replaced by the mirrored lung, and after a control box is
    (`utils.occlusion`)."""
    rows = [g["localisation"] for g in galleries.values()]
    table = pd.DataFrame(rows, columns=["step", "model", "dataset", "n", "layer", "method",
                                        "chosen_on",
                                        "val_hit_rate", "hit_rate", "hit_lo", "hit_hi",
                                        "random_hit_rate", "default_hit_rate", "mean_iou",
                                        "threshold", "occlusion_n", "p_before", "p_mirrored",
                                        "drop_share", "p_control", "control_drop_share"])
    table["hit_rate_vs_random"] = table["hit_rate"] / table["random_hit_rate"]
    table["above_random"] = table["hit_lo"] > table["random_hit_rate"]
    return table


def save_localisation(table: pd.DataFrame, reports_dir: str | Path, step: str,
                      synthetic: bool) -> Path:
    """`<reports_dir>/results/<step>.json`: the table's rows, for the report's opening
    sentences (`narrative.gallery_summary`)."""
    from .fileio import atomic_write_json

    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return atomic_write_json(Path(reports_dir) / "results" / f"{step}.json",
                             {"localisation": rows, "synthetic": bool(synthetic)})
