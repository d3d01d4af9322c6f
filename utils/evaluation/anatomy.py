"""What is particular to each architecture of the study, read off its trained checkpoint.

04, 05 and 06 train and evaluate alike (`utils.study.experiment`); their "Architecture" sections
call this module for what differs inside the network:

- EfficientNet-B4: compound scaling (B0…B7's width/depth/resolution coefficients from
  efficientnet-pytorch's own table), B4's stages as the checkpoint holds them beside B0's,
  and the study's 1792 → 512 head.
- ViT: the patch grid, the patch-embedding filters (their principal components, as in
  Dosovitskiy et al. 2021, fig. 7), position-embedding similarity, and attention rollout
  (Abnar & Zuidema 2020) on the test cases the 08 gallery shows.
- MLP-Mixer: the first token-mixing MLP's hidden units as maps over the patch grid.
- Every model: parameters, throughput and accuracy side by side, from the results JSON.

Maps come back as float arrays (`utils.reports.plots.image_grid` shows them; `cams=` wants [0, 1]).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = ["best_model", "Picked", "picked_cases", "compound_scaling", "efficientnet_stages",
           "efficientnet_head", "patch_grid_boxes", "patch_embedding_components",
           "position_similarity", "recorded_attention", "rollout", "attention_rollout",
           "token_mixing_maps", "side_by_side"]


def best_model(cfg, ctx) -> tuple[nn.Module, dict[str, Any]]:
    """The step's best checkpoint (`checkpoints/<step>/best.pt`, else its primary run's:
    `gallery.run_checkpoint`) as a model in eval mode."""
    from ..training.checkpoint import load_model
    from .gallery import run_checkpoint

    return load_model(run_checkpoint(cfg.checkpoint_dir, cfg.step), device=ctx.device)


@dataclass
class Picked:
    """The 08 gallery's test cases of one run, ready for a model and for `image_grid`."""

    model: nn.Module
    tensors: torch.Tensor      # N×1×H×W, normalised as the model saw them
    images: list[np.ndarray]   # H×W uint8, for display
    titles: list[str]
    dataset: str


def picked_cases(step: str, cfg, ctx, per_group: int = 4) -> Picked:
    """The confident TPs, worst FNs and worst FPs that 08 shows for `step` (its best.pt,
    its validation-chosen threshold): the same images, so maps can be set side by side.
    With no such case the first test image stands in (never an empty figure)."""
    from .gallery import load_cases

    cases = load_cases(step, cfg, ctx, per_group)
    items = cases.items()
    titles = [f"{group}\np={cases.pred.probs[i, 0]:.2f}" for group, i, *_ in items]
    if not items:  # no TP, FN or FP at that threshold (tiny smoke sets): the first image
        cases.picked = {"first test image": np.array([0])}
        items = cases.items()
        titles = [f"first test image\np={cases.pred.probs[0, 0]:.2f}"]
    tensors = torch.stack([it[2] for it in items]).to(ctx.device)
    return Picked(cases.model, tensors, [it[3] for it in items], titles, cases.run_cfg.dataset)


# --- EfficientNet ---------------------------------------------------------------------

def compound_scaling() -> pd.DataFrame:
    """B0…B7 as efficientnet-pytorch defines them: width, depth and resolution coefficients.

    Compound scaling grows all three with one φ (depth α^φ, width β^φ, resolution γ^φ,
    with α·β²·γ² ≈ 2), so the cost d·w²·r² roughly doubles per step of φ: `flops_vs_b0`
    is that product (resolution relative to B0's 224) and `phi` its log2.
    """
    from efficientnet_pytorch.utils import efficientnet_params

    rows = []
    for k in range(8):
        width, depth, res, dropout = efficientnet_params(f"efficientnet-b{k}")
        flops = depth * width ** 2 * (res / 224) ** 2
        rows.append({"variant": f"B{k}", "width": width, "depth": depth, "resolution": res,
                     "dropout": dropout, "flops_vs_b0": round(flops, 2),
                     "phi": round(math.log2(flops), 2)})
    return pd.DataFrame(rows).set_index("variant")


def _variant(global_params) -> str:
    from efficientnet_pytorch.utils import efficientnet_params

    for k in range(8):
        width, depth, *_ = efficientnet_params(f"efficientnet-b{k}")
        if (width, depth) == (global_params.width_coefficient, global_params.depth_coefficient):
            return f"B{k}"
    return "this model"


def efficientnet_stages(model: nn.Module) -> pd.DataFrame:
    """The model's stages (channels, layers) as its blocks hold them, beside B0's.

    B0's column is the library's base network rounded with B0's coefficients; the model's
    column is read off its `_blocks` (and checked against its own coefficients), so the
    table shows what the checkpoint is, not what the paper says.
    """
    from efficientnet_pytorch.utils import get_model_params, round_filters, round_repeats

    ours, b0 = model._global_params, get_model_params("efficientnet-b0", None)[1]
    name, blocks = _variant(ours), iter(model._blocks)
    rows = [{"stage": "stem", "operator": "conv 3×3", "stride": 2,
             "B0 channels": round_filters(32, b0), "B0 layers": 1,
             f"{name} channels": model._conv_stem.out_channels, f"{name} layers": 1}]
    for k, args in enumerate(model._blocks_args, start=1):
        stage = [next(blocks) for _ in range(round_repeats(args.num_repeat, ours))]
        width = stage[-1]._project_conv.out_channels
        if width != round_filters(args.output_filters, ours):
            raise ValueError(f"stage {k}: {width} channels, but {name}'s coefficients give "
                             f"{round_filters(args.output_filters, ours)}")
        rows.append({"stage": k, "operator": f"MBConv{args.expand_ratio} "
                     f"{args.kernel_size}×{args.kernel_size}", "stride": args.stride[0],
                     "B0 channels": round_filters(args.output_filters, b0),
                     "B0 layers": round_repeats(args.num_repeat, b0),
                     f"{name} channels": width, f"{name} layers": len(stage)})
    rows.append({"stage": "head", "operator": "conv 1×1", "stride": 1,
                 "B0 channels": round_filters(1280, b0), "B0 layers": 1,
                 f"{name} channels": model._conv_head.out_channels, f"{name} layers": 1})
    return pd.DataFrame(rows).set_index("stage")


def efficientnet_head(model: nn.Module) -> pd.DataFrame:
    """The classifier after global pooling, layer by layer (the study's 1792 → 512 → K)."""
    rows = [{"layer": "global average pool", "in": model._conv_head.out_channels,
             "out": model._conv_head.out_channels, "params": 0}]
    for layer in model._fc:
        n_in = getattr(layer, "in_features", rows[-1]["out"])
        label = type(layer).__name__ + (f" p={layer.p}" if isinstance(layer, nn.Dropout) else "")
        rows.append({"layer": label, "in": n_in,
                     "out": getattr(layer, "out_features", n_in),
                     "params": sum(p.numel() for p in layer.parameters())})
    return pd.DataFrame(rows)


# --- ViT and Mixer: patches -------------------------------------------------------------

def _patch_embed(model: nn.Module) -> nn.Module:
    embed = getattr(model, "patch_embed", None)                        # timm's ViT
    embed = embed if embed is not None else getattr(model, "stem", None)  # timm's Mixer
    if embed is None or not hasattr(embed, "proj"):
        raise ValueError(f"{type(model).__name__} has no timm patch embedding "
                         f"(`patch_embed`/`stem` with `.proj`): not a ViT or MLP-Mixer")
    return embed


def patch_grid_boxes(model: nn.Module) -> list[list[float]]:
    """`[x, y, w, h]` of every patch the model cuts its input into (row-major)."""
    embed = _patch_embed(model)
    (gh, gw), (ph, pw) = embed.grid_size, embed.patch_size
    return [[c * pw, r * ph, pw, ph] for r in range(gh) for c in range(gw)]


def patch_embedding_components(model: nn.Module, count: int = 16
                               ) -> tuple[list[np.ndarray], np.ndarray]:
    """Principal components of the patch-embedding filters (each `p×p`) and the fraction
    of the filters' variance each explains: what the linear patch projection looks for."""
    weight = _patch_embed(model).proj.weight.detach().float().cpu()  # D×C×p×p
    flat = weight.flatten(1) - weight.flatten(1).mean(0)
    _, s, vt = torch.linalg.svd(flat, full_matrices=False)
    count = min(count, len(s))
    shape = weight.shape[1:] if weight.shape[1] > 1 else weight.shape[2:]
    comps = [vt[k].reshape(shape).numpy() for k in range(count)]
    return comps, (s[:count] ** 2 / (s ** 2).sum()).numpy()


def position_similarity(model: nn.Module, count: int = 16
                        ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Cosine similarity of one patch's position embedding to every patch's, as `h×w`
    maps, for up to `count` patches spread over the grid (their `(row, col)` returned)."""
    if getattr(model, "pos_embed", None) is None:
        raise ValueError(f"{type(model).__name__} has no position embedding (MLP-Mixer has "
                         f"none: its token-mixing MLPs are tied to positions instead)")
    gh, gw = _patch_embed(model).grid_size
    pos = model.pos_embed.detach().float().cpu()[0]
    pos = pos[pos.shape[0] - gh * gw:]                    # drop the class token's position
    sim = nn.functional.cosine_similarity(pos[:, None], pos[None], dim=-1)
    step = max(1, math.ceil(math.sqrt(gh * gw / count)))
    cells = [(r, c) for r in range(0, gh, step) for c in range(0, gw, step)][:count]
    return [sim[r * gw + c].reshape(gh, gw).numpy() for r, c in cells], cells


# --- ViT: attention rollout -------------------------------------------------------------

@contextmanager
def recorded_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every block's attention probabilities (`B×heads×T×T`) of the forwards run
    inside the block.

    timm computes attention with fused scaled-dot-product kernels that never materialise
    the probabilities; inside the block each `Attention` takes its explicit path instead
    (`softmax(q·kᵀ·scale)` then `attn_drop`, the same function), and the input of its
    `attn_drop` is recorded. Hooks and the fused setting are restored on exit.
    """
    attns = [block.attn for block in getattr(model, "blocks", [])]
    if not attns or not all(hasattr(a, "fused_attn") and hasattr(a, "attn_drop")
                            for a in attns):
        raise ValueError(f"{type(model).__name__} has no timm attention blocks "
                         f"(`blocks[i].attn` with `fused_attn`, `attn_drop`): not a timm ViT")
    records: list[torch.Tensor] = []
    fused = [a.fused_attn for a in attns]
    hooks = [a.attn_drop.register_forward_hook(
        lambda module, inputs, output: records.append(inputs[0].detach())) for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        yield records
    finally:
        for hook in hooks:
            hook.remove()
        for a, was in zip(attns, fused):
            a.fused_attn = was


def rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): `B×T×T`, how much each token's output draws
    on each input token across all layers.

    Per layer the heads are averaged and the residual connection is accounted for as
    `residual·I + (1 − residual)·A` (the paper's 0.5/0.5), rows renormalised; the layers'
    matrices are multiplied from the first to the last. Every row sums to 1.
    """
    if not attentions:
        raise ValueError("rollout needs at least one layer's attention")
    first = attentions[0]
    eye = torch.eye(first.shape[-1], dtype=torch.float64, device=first.device)
    result = eye.expand(first.shape[0], -1, -1)
    for attention in attentions:
        a = residual * eye + (1 - residual) * attention.double().mean(1)
        result = (a / a.sum(-1, keepdim=True)) @ result
    return result.float()


def attention_rollout(model: nn.Module, images: torch.Tensor,
                      residual: float = 0.5) -> np.ndarray:
    """The class token's rollout over the patches, `N×h×w`, each scaled to [0, 1]: where
    the ViT's prediction draws its information from (attention only, no gradients). A ViT
    that pools all tokens instead (`vit_mini`, no class token) predicts from their mean, so
    its rollout is the mean of the tokens' rows."""
    gh, gw = _patch_embed(model).grid_size
    model.eval()
    with recorded_attention(model) as records, torch.no_grad():
        model(images)
    flow = rollout(records, residual)
    pooled = flow[:, 0] if getattr(model, "num_prefix_tokens", 1) else flow.mean(1)
    cls_row = pooled[:, -gh * gw:].reshape(-1, gh, gw)
    lo = cls_row.amin((1, 2), keepdim=True)
    span = (cls_row.amax((1, 2), keepdim=True) - lo).clamp_min(1e-12)
    return ((cls_row - lo) / span).cpu().numpy()


# --- MLP-Mixer ------------------------------------------------------------------------

def token_mixing_maps(model: nn.Module, block: int = 0, count: int = 16) -> list[np.ndarray]:
    """The first `count` hidden units of block `block`'s token-mixing MLP: each unit's
    weights over the N patches (a row of `mlp_tokens.fc1`), as an `h×w` map. Mixing across
    positions is learned per position, where a CNN shares one small kernel everywhere."""
    gh, gw = _patch_embed(model).grid_size
    mlp = getattr(model.blocks[block], "mlp_tokens", None)
    if mlp is None:
        raise ValueError(f"{type(model).__name__}.blocks[{block}] has no `mlp_tokens`: "
                         f"not a timm MLP-Mixer")
    weight = mlp.fc1.weight.detach().float().cpu()  # hidden × N
    return [row.reshape(gh, gw).numpy() for row in weight[:count]]


# --- all models -------------------------------------------------------------------------

def side_by_side(reports_dir: str | Path, step: str) -> pd.DataFrame:
    """Every binary run scored on the same test images as `step` (same dataset and test
    fingerprint): parameters, training throughput and test AUROC/F1, seeds averaged, fewest
    parameters first. `this` marks `step`'s own row."""
    from .results import load_results, primary_run

    runs = load_results(reports_dir)
    mine = runs[runs["step"] == (primary_run(step, runs["step"]) or step)]
    if mine.empty:
        raise FileNotFoundError(f"no results for {step!r} in {reports_dir}/results: run the "
                                f"step's training and evaluation first")
    same = runs["dataset"] == mine["dataset"].iloc[0]
    fingerprint = mine["test_fingerprint"].iloc[0]
    if isinstance(fingerprint, str) and fingerprint:
        same &= runs["test_fingerprint"] == fingerprint
    runs = runs[same & ~runs["plan_step"].fillna(runs["step"]).str.endswith("_nih")].copy()
    runs["plan_step"] = runs["plan_step"].fillna(runs["step"])
    table = runs.groupby(["plan_step", "model"], as_index=False).agg(
        seeds=("step", "size"), params_m=("params", lambda p: p.iloc[0] / 1e6),
        images_per_second=("images_per_second", "mean"), auroc=("auroc", "mean"),
        auroc_lo=("auroc_lo", "min"), auroc_hi=("auroc_hi", "max"), f1=("f1", "mean"))
    table["this"] = table["plan_step"] == mine["plan_step"].fillna(step).iloc[0]
    return table.sort_values("params_m").reset_index(drop=True)
