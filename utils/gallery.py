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


def _normals(loader, limit: int) -> torch.Tensor | None:
    """Up to `limit` images of the loader's normals (label 0), None without any."""
    rows = np.flatnonzero(loader.dataset.labels[:, 0] == 0)[:limit]
    return torch.stack([loader.dataset[int(i)][0] for i in rows]) if len(rows) else None


@dataclass
class Explained:
    """A model ready for the gallery's CAMs: its candidate layers (`cam_candidates`) and
    their healthy references (the `-ref` methods'; None without validation normals)."""

    model: torch.nn.Module
    layers: dict[str, torch.nn.Module]
    references: dict[str, np.ndarray] | None = None
    reference_n: int = 0            # validation normals averaged into the references


def explained(model: torch.nn.Module, val, device, limit: int = 64) -> Explained:
    """`model` with its candidate layers and, from up to `limit` *validation* normals, each
    layer's mean activation: the reference of the `-ref` CAM methods."""
    from .cam import reference_activations

    model = model.to(device)
    layers = cam_candidates(model)
    normals = _normals(val, limit) if val is not None else None
    if normals is None:
        return Explained(model, layers)
    refs = reference_activations(model, layers, normals, reshape=model.info.cam_reshape)
    return Explained(model, layers, refs, len(normals))


def untrained_copy(run_cfg: RunConfig, seed: int = 0) -> torch.nn.Module:
    """The run's architecture with the registry's random initialisation and no pretrained
    weights, in eval mode: the model-randomisation check of Adebayo et al. (2018, "Sanity
    checks for saliency maps"). A CAM that localises as well on this copy shows the image
    (the lesion is what differs most from a healthy film), not what training taught."""
    from .models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(run_cfg.model, num_classes=1, pretrained=False,
                             dropout=run_cfg.dropout, image_size=run_cfg.image_size)
    return model.eval()


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
           boxes, device, references: dict[str, np.ndarray] | None = None
           ) -> dict[tuple[str, str], dict[str, Any]]:
    """`localisation_scores` plus `hits` (each image's pointing-game outcome) for every
    (layer, method) pair, from one CAM pass (`cam_sweep`). Transformers only have the
    default layer, so the registry's token reshape applies to every layer passed."""
    from .cam import cam_sweep, localisation_scores, pointing_hit

    maps = cam_sweep(model.to(device), layers, methods, images, reshape=model.info.cam_reshape,
                     references=references)
    return {key: {**localisation_scores(cams, boxes),
                  "hits": [pointing_hit(c, b) for c, b in zip(cams, boxes)]}
            for key, cams in maps.items()}


# Grad-CAM first (it wins ties), then two variants of it that weight each position by its own
# gradient instead of the map's average one, then Grad-CAM and HiResCAM measured from a healthy
# reference (`utils.cam._FromReference`). On the demo's validation positives (`python
# run_all.py`: 43 boxed Kermany films, random point 7 %), the study's CNN: plain Grad-CAM at
# best 2 % (its maps peak on the mediastinum), HiResCAM 23 %, Grad-CAM from the reference at
# features.3 74 % (its untrained copy 2 %); ResNet-18 v1: Grad-CAM 30 %, from the reference at
# layer1 100 % (untrained copy 16 %).
CAM_CHOICES = ("gradcam", "hirescam", "layercam", "gradcam-ref", "hirescam-ref")


def _best(gain: dict[tuple[str, str], float], names: list[str],
          methods: tuple[str, ...]) -> tuple[str, str]:
    """The (layer, method) with the highest gain: earlier methods win ties, then the deeper
    layer."""
    best, best_gain = ("default", "gradcam"), -np.inf
    for method in methods:
        for name in reversed(names):  # deepest first: a later layer wins ties
            if gain[(name, method)] > best_gain:
                best, best_gain = (name, method), gain[(name, method)]
    return best


def choose_cam_layer(cases: Cases, device, limit: int = 64,
                     methods: tuple[str, ...] = CAM_CHOICES, trained: Explained | None = None,
                     untrained: Explained | None = None) -> dict[str, Any]:
    """The candidate layer and CAM method whose map peaks inside the boxes most often on the
    *validation* positives, beyond what the same map of the `untrained` copy scores there
    (`untrained_copy`; without one, beyond 0), and the best of the methods without a
    reference (`plain_*`, for comparison). Ties: Grad-CAM, then the deeper layer. The `-ref`
    methods take part when `trained` has references. Grad-CAM of the default layer when val
    has no boxes. Test boxes never take part in the choice."""
    from .cam import REFERENCE_METHODS

    trained = trained or Explained(cases.model, cam_candidates(cases.model))
    if trained.references is None:
        methods = tuple(m for m in methods if m not in REFERENCE_METHODS)
    images, boxes = (_positives_with_boxes(cases.val, limit) if cases.val is not None
                     else (None, []))
    nan = float("nan")
    if images is None:
        return {"layer": "default", "method": "gradcam", "chosen_on": "default (no validation "
                "boxes)", "val_hit_rate": nan, "val_untrained_hit_rate": nan,
                "plain_layer": "default", "plain_method": "gradcam"}
    scores = {k: v["hit_rate"] for k, v in _sweep(trained.model, trained.layers, methods, images,
                                                  boxes, device, trained.references).items()}
    base = ({k: v["hit_rate"] for k, v in _sweep(untrained.model, untrained.layers, methods,
                                                 images, boxes, device,
                                                 untrained.references).items()}
            if untrained is not None else dict.fromkeys(scores, 0.0))
    gain = {k: scores[k] - base[k] for k in scores}
    names = list(trained.layers)
    best = _best(gain, names, methods)
    plain = _best(gain, names, tuple(m for m in methods if m not in REFERENCE_METHODS))
    return {"layer": best[0], "method": best[1], "chosen_on": "val",
            "val_hit_rate": scores[best],
            "val_untrained_hit_rate": base[best] if untrained is not None else nan,
            "plain_layer": plain[0], "plain_method": plain[1]}


def _test_scores(trained: Explained, untrained: Explained | None, choice: dict, images, boxes,
                 device) -> dict[str, Any]:
    """The chosen (layer, method)'s test scores with `hits`, and the hit rates of the same map
    of the untrained copy (`untrained_hit_rate`), of the best method without a reference
    (`plain_hit_rate`) and of Grad-CAM of the default layer (CheXNet's choice)."""
    nan = float("nan")
    if images is None:
        return {"hit_rate": nan, "mean_iou": nan, "n": 0, "random_hit_rate": nan, "hits": [],
                "untrained_hit_rate": nan, "plain_hit_rate": nan, "default_hit_rate": nan}
    chosen = (choice["layer"], choice["method"])
    keys = [chosen, (choice["plain_layer"], choice["plain_method"]), ("default", "gradcam")]
    scores = _sweep_keys(trained, keys, images, boxes, device)
    base = (_sweep_keys(untrained, keys[:1], images, boxes, device)[chosen]["hit_rate"]
            if untrained is not None else nan)
    return {**scores[chosen], "untrained_hit_rate": base,
            "plain_hit_rate": scores[keys[1]]["hit_rate"],
            "default_hit_rate": scores[keys[2]]["hit_rate"]}


def _sweep_keys(model: Explained, keys: list[tuple[str, str]], images, boxes, device) -> dict:
    """`_sweep` over just the (layer, method) pairs in `keys`, in one pass."""
    layers = {name: model.layers[name] for name, _ in keys}
    refs = {n: model.references[n] for n in layers} if model.references else None
    return _sweep(model.model, layers, tuple(dict.fromkeys(m for _, m in keys)), images, boxes,
                  device, refs)


def build_gallery(step: str, cfg: RunConfig, ctx: RunContext, per_group: int = 4,
                  max_localisation: int = 64) -> dict[str, Any]:
    """Images, CAMs, boxes and titles of a step's picked test cases, plus its CAM-vs-box score.

    Predictions are recomputed on the test split with the best checkpoint, and cases are
    picked at the checkpoint's validation-chosen threshold (`load_cases`). The CAM layer and
    method are chosen on validation against an untrained copy (`choose_cam_layer`).
    """
    from .cam import CAM_LABELS, is_flat
    from .occlusion import occlusion_check

    cases = load_cases(step, cfg, ctx, per_group)
    model, run_cfg, pred = cases.model.to(ctx.device), cases.run_cfg, cases.pred
    trained = explained(model, cases.val, ctx.device)
    untrained = explained(untrained_copy(run_cfg, cfg.seed), cases.val, ctx.device)
    choice = choose_cam_layer(cases, ctx.device, trained=trained, untrained=untrained)
    out: dict[str, Any] = {"images": [], "titles": [], "boxes": [], "cams": [],
                           "layer": choice["layer"], "method": CAM_LABELS[choice["method"]]}
    with _explainer(trained, choice) as cam:
        for group, i, image, image_u8, meta in cases.items():
            out["images"].append(image_u8)
            out["cams"].append(cam(image.to(ctx.device))[0])
            out["boxes"].append(meta["boxes"].tolist())
            flat = " (flat CAM)" if is_flat(out["cams"][-1]) else ""
            out["titles"].append(f"{group}\np={pred.probs[i, 0]:.2f}{flat}")
    images, boxes = _positives_with_boxes(cases.test, max_localisation)
    scores = _test_scores(trained, untrained, choice, images, boxes, ctx.device)
    occluded = occlusion_check(model, images, boxes, ctx.device) if images is not None else {}
    hits = scores.pop("hits")
    scores["hit_lo"], scores["hit_hi"] = hit_rate_ci(
        hits, _boxed_patients(cases.test, max_localisation) if hits else [])
    out["localisation"] = {"step": step, "model": run_cfg.model, "dataset": run_cfg.dataset,
                           "threshold": cases.threshold, **scores, **choice,
                           "reference_n": trained.reference_n, **occluded}
    return out


def _explainer(model: Explained, choice: dict[str, Any]):
    """A `CamExplainer` for the chosen layer and method (with its reference when it has one)."""
    from .cam import CamExplainer, REFERENCE_METHODS

    name, method = choice["layer"], choice["method"]
    reference = model.references[name] if method in REFERENCE_METHODS else None
    reshape = model.model.info.cam_reshape if name == "default" else None
    return CamExplainer(model.model, method=method, target_layer=model.layers[name],
                        reshape=reshape, reference=reference)


def localisation_table(galleries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model: pointing-game hit rate (95% CI over patients) and IoU against the
    random-point baseline; `above_random` when the whole CI clears it, `above_untrained`
    when it clears the same map of the untrained copy (`untrained_copy`); then p before and
    after the boxes are replaced by the mirrored lung, and after a control box is
    (`utils.occlusion`)."""
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
    from .fileio import atomic_write_json

    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return atomic_write_json(Path(reports_dir) / "results" / f"{step}.json",
                             {"localisation": rows, "synthetic": bool(synthetic)})
