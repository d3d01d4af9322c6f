"""Where a model's CAM points, scored honestly: the candidate layers, the healthy
reference, the untrained copy, the layer × method chosen on validation, and its test scores
with a patient-level CI. `utils.evaluation.gallery` (08) builds its figures and table on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..config import RunConfig

__all__ = ["cam_candidates", "Explained", "explained", "untrained_copy", "CAM_CHOICES",
           "choose_cam_layer", "score_test_split", "cam_explainer", "hit_rate_ci",
           "positives_with_boxes", "boxed_patients", "normal_images",
           "box_mask", "is_flat", "peak_point", "pointing_hit", "cam_iou", "localisation_scores"]


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


def positives_with_boxes(loader, limit: int) -> tuple[torch.Tensor | None, list]:
    items = [loader.dataset[int(i)] for i in _boxed_rows(loader, limit)]
    if not items:
        return None, []
    return torch.stack([it[0] for it in items]), [it[2]["boxes"].tolist() for it in items]


def normal_images(loader, limit: int = 64) -> torch.Tensor | None:
    """Up to `limit` images of the loader's normals (label 0), None without any (or without
    a loader): the healthy reference's films, decoded once for a model and its copy."""
    if loader is None:
        return None
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


def explained(model: torch.nn.Module, normals: torch.Tensor | None, device) -> Explained:
    """`model` with its candidate layers and, from the *validation* `normals`
    (`normal_images`), each layer's mean activation: the reference of the `-ref` CAM
    methods (none without normals)."""
    from .cam import reference_activations

    model = model.to(device)
    layers = cam_candidates(model)
    if normals is None:
        return Explained(model, layers)
    refs = reference_activations(model, layers, normals, reshape=model.info.cam_reshape)
    return Explained(model, layers, refs, len(normals))


def untrained_copy(run_cfg: RunConfig, seed: int = 0) -> torch.nn.Module:
    """The run's architecture with the registry's random initialisation and no pretrained
    weights, in eval mode: the model-randomisation check of Adebayo et al. (2018, "Sanity
    checks for saliency maps"). A CAM that localises as well on this copy shows the image
    (the lesion is what differs most from a healthy film), not what training taught."""
    from ..models.registry import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(run_cfg.model, num_classes=1, pretrained=False,
                             dropout=run_cfg.dropout, image_size=run_cfg.image_size)
    return model.eval()


def boxed_patients(loader, limit: int) -> list[str]:
    """The patient of each image `positives_with_boxes` returns, in the same order."""
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
    from .cam import cam_sweep

    maps = cam_sweep(model.to(device), layers, methods, images, reshape=model.info.cam_reshape,
                     references=references)
    return {key: {**localisation_scores(cams, boxes),
                  "hits": [pointing_hit(c, b) for c, b in zip(cams, boxes)]}
            for key, cams in maps.items()}


# Grad-CAM first (it wins ties), then two variants of it that weight each position by its own
# gradient instead of the map's average one, then Grad-CAM and HiResCAM measured from a healthy
# reference (`utils.evaluation.cam._FromReference`). On the demo's validation positives (`python
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


def choose_cam_layer(cases: Any, device, limit: int = 64,
                     methods: tuple[str, ...] = CAM_CHOICES, trained: Explained | None = None,
                     untrained: Explained | None = None) -> dict[str, Any]:
    """The candidate layer and CAM method whose map peaks inside the boxes most often on the
    *validation* positives, beyond what the same map of the `untrained` copy scores there
    (`untrained_copy`; without one, beyond 0), and the best of the methods without a
    reference (`plain_*`, for comparison). Ties: Grad-CAM, then the deeper layer. The `-ref`
    methods take part when `trained` has references. Grad-CAM of the default layer when val
    has no boxes. Test boxes never take part in the choice. `cases`: anything with `.model`
    and `.val` (the validation DataLoader), e.g. `gallery.Cases`."""
    from .cam import REFERENCE_METHODS

    trained = trained or Explained(cases.model, cam_candidates(cases.model))
    if trained.references is None:
        methods = tuple(m for m in methods if m not in REFERENCE_METHODS)
    images, boxes = (positives_with_boxes(cases.val, limit) if cases.val is not None
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


def score_test_split(trained: Explained, untrained: Explained | None, choice: dict, images,
                     boxes, device) -> dict[str, Any]:
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


def cam_explainer(model: Explained, choice: dict[str, Any]):
    """A `CamExplainer` for the chosen layer and method (with its reference when it has one)."""
    from .cam import REFERENCE_METHODS, CamExplainer

    name, method = choice["layer"], choice["method"]
    reference = model.references[name] if method in REFERENCE_METHODS else None
    reshape = model.model.info.cam_reshape if name == "default" else None
    return CamExplainer(model.model, method=method, target_layer=model.layers[name],
                        reshape=reshape, reference=reference)


# --- where a CAM points, against the boxes ------------------------------------------------
def _boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=float)
    if arr.size and (arr.ndim not in (1, 2) or arr.shape[-1] != 4):
        raise ValueError(f"boxes must be [x, y, w, h] rows, got shape {arr.shape}")
    return arr.reshape(-1, 4)


def box_mask(shape: tuple[int, int], boxes: Any) -> np.ndarray:
    """Boolean `H×W` mask of the union of `[x, y, w, h]` boxes (pixel centres inside)."""
    h, w = shape
    cy, cx = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in _boxes(boxes):
        mask |= (cx >= x) & (cx < x + bw) & (cy >= y) & (cy < y + bh)
    return mask


def is_flat(cam: np.ndarray) -> bool:
    """True for a CAM that points nowhere (constant, or non-finite)."""
    # A constant CAM (all zero when every gradient weight is negative) points nowhere:
    # argmax would pick pixel (0, 0) by convention, a hit only by accident.
    return not np.isfinite(cam).all() or float(cam.max() - cam.min()) <= 1e-8


def peak_point(cam: np.ndarray) -> tuple[int, int]:
    """(row, col) of the CAM's maximum; on a plateau, the maximal pixel nearest its centroid.

    Upsampling a coarse map (pytorch-grad-cam resizes bilinearly) makes flat maxima: a 2×2
    map's peak cell becomes a whole corner square. `argmax` would take that square's first
    pixel, the image's very corner; the middle of the peak is what the map points at.
    """
    cam = np.asarray(cam, dtype=float)
    rows, cols = np.nonzero(cam >= cam.max() - 1e-6)
    if len(rows) == 1:
        return int(rows[0]), int(cols[0])
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def pointing_hit(cam: np.ndarray, boxes: Any) -> bool:
    """True when the CAM's peak (`peak_point`) lies inside any box (a flat CAM is a miss)."""
    cam = np.asarray(cam, dtype=float)
    if is_flat(cam):
        return False
    r, c = peak_point(cam)
    return bool(box_mask(cam.shape, boxes)[r, c])


def cam_iou(cam: np.ndarray, boxes: Any, threshold: float = 0.5) -> float:
    """IoU between `cam >= threshold * max` and the union of the boxes (flat CAM: 0)."""
    cam = np.asarray(cam, dtype=float)
    target = box_mask(cam.shape, boxes)
    if is_flat(cam):
        return 0.0
    active = cam >= threshold * cam.max()
    union = int((active | target).sum())
    return float((active & target).sum() / union) if union else 0.0


def localisation_scores(cams: np.ndarray | Iterable[np.ndarray], boxes_list: Sequence[Any],
                        threshold: float = 0.5) -> dict[str, float]:
    """Pointing-game hit rate and mean IoU over the images that have at least one box.

    `random_hit_rate` is the mean fraction of the image the boxes cover: what a uniformly
    random point would score, so a report can show the hit rate against its baseline.
    With no boxed image the rates are NaN and `n` is 0.

    Example:
        >>> localisation_scores(cams, [m["boxes"] for m in metas])  # doctest: +SKIP
        {'hit_rate': 0.62, 'mean_iou': 0.31, 'n': 40, 'random_hit_rate': 0.12}
    """
    cams = list(cams)
    if len(cams) != len(boxes_list):
        raise ValueError(f"{len(cams)} CAMs but {len(boxes_list)} box lists")
    hits, ious, areas = [], [], []
    for cam, boxes in zip(cams, boxes_list):
        if len(_boxes(boxes)) == 0:
            continue
        cam = np.asarray(cam, dtype=float)
        hits.append(pointing_hit(cam, boxes))
        ious.append(cam_iou(cam, boxes, threshold))
        areas.append(box_mask(cam.shape, boxes).mean())
    if not hits:
        nan = float("nan")
        return {"hit_rate": nan, "mean_iou": nan, "n": 0, "random_hit_rate": nan}
    return {"hit_rate": float(np.mean(hits)), "mean_iou": float(np.mean(ious)),
            "n": len(hits), "random_hit_rate": float(np.mean(areas))}
