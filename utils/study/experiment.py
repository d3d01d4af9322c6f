"""One supervised run, end to end: data → model → fit → threshold on val → test → results.

The model notebooks (02-06) call these steps one cell at a time so the story stays
visible; `run_experiment` chains them for scripts and tests. Nothing here plots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..config import RunConfig
from ..fileio import atomic_write_text
from ..runtime import RunContext

__all__ = ["Experiment", "prepare_data", "build_model", "train", "evaluate_and_record",
           "run_experiment"]


@dataclass
class Experiment:
    """Everything one run produced, for the notebook's plots."""

    cfg: RunConfig
    manifest: pd.DataFrame
    loaders: dict[str, Any]
    class_names: list[str]
    model: Any = None
    history: Any = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


def prepare_data(cfg: RunConfig,
                 exclude: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                 manifest: pd.DataFrame | None = None) -> Experiment:
    """Manifest with patient-level splits, and the train/val/test loaders.

    `exclude` drops rows after the splits are drawn (e.g. NIH patients behind another run's
    RSNA test images, `utils.data.overlap`), so the rows that remain keep their split.
    `manifest`: `load_manifest(cfg)` done already (a step's runs share one per source;
    the launcher hands the notebook's to its workers).
    """
    from ..data.dataset import class_names_for, load_manifest, make_loaders
    from ..models.registry import normalisation

    if isinstance(cfg.pretrained, str) and not cfg.allow_random_init:
        from ..models.xrv import require_file  # an absent weights file fails before the data work

        require_file(cfg.pretrained, cfg.model)
    manifest = load_manifest(cfg) if manifest is None else manifest
    if exclude is not None:
        before = dict(zip(manifest["path"], manifest["split"]))
        manifest = exclude(manifest)
        if any(before.get(p) != s for p, s in zip(manifest["path"], manifest["split"])):
            raise ValueError("exclude= may only drop rows: it added rows or changed splits")
    loaders = make_loaders(cfg, manifest, normalisation(cfg.model, cfg.pretrained))
    return Experiment(cfg=cfg, manifest=manifest, loaders=loaders,
                      class_names=class_names_for(cfg))


def build_model(cfg: RunConfig, num_classes: int):
    """The registry model the config names, with its transfer-learning settings."""
    from ..models.registry import create_model

    return create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained,
                        dropout=cfg.dropout, trainable_from=cfg.trainable_from,
                        init_checkpoint=cfg.init_checkpoint, image_size=cfg.image_size,
                        fallback=cfg.allow_random_init)


def train(exp: Experiment, ctx: RunContext, meta: dict | None = None):
    """Fit with the configured loss; checkpoints go to checkpoints/<run name>/.

    With `nproc_per_node > 1` (or `nnodes > 1`) the run trains under torchrun in worker
    processes (`utils.training.launch`), and the best weights come back into `exp.model`;
    `nproc_per_node=0` (auto) not yet resolved by `notebook.setup` is resolved here.
    `meta`: checkpoint fields identifying the data (the launcher passes the notebook's).
    """
    from ..data.dataset import manifest_fingerprint
    from ..training.distributed import resolve_processes
    from ..training.launch import needs_launch, train_distributed
    from ..training.loop import fit
    from ..training.losses import build_loss

    if not exp.cfg.nproc_per_node:
        exp.cfg = resolve_processes(exp.cfg)
    cfg = exp.cfg
    exp.checkpoint = Path(cfg.checkpoint_dir) / cfg.step
    record = getattr(exp.model, "pretrained_weights", None)
    meta = meta or {"class_names": exp.class_names, "synthetic": ctx.synthetic,
                    "data_fingerprint": manifest_fingerprint(exp.manifest),
                    "init_fingerprint": _init_fingerprint(cfg.init_checkpoint),
                    # the weights it started from: a fallback run must not resume as a
                    # pretrained one
                    "pretrained_weights": record,
                    "weights_fingerprint": _weights_fingerprint(record)}
    if needs_launch(cfg):
        exp.history = train_distributed(exp, meta, ctx.synthetic)
        return exp.history
    loss_fn = build_loss(cfg, exp.loaders["train"].dataset.labels)
    exp.history = fit(exp.model, exp.loaders["train"], exp.loaders["val"], cfg,
                      loss_fn=loss_fn, ckpt_dir=exp.checkpoint, device=ctx.device, meta=meta)
    return exp.history


def _weights_fingerprint(record: dict | None) -> str:
    if not record:
        return ""
    loaded = "loaded" if record["loaded"] else "random"
    return f"{record['source']}:{record['sha256'] or loaded}"


def _init_fingerprint(path: str) -> str:
    """Which training run the starting weights came from (its data, best score, epochs):
    a re-trained part A must not be silently skipped by part B's resume. Not the file's
    bytes: evaluation rewrites them (threshold, BN statistics) without re-training."""
    if not path:
        return ""
    from ..training.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:  # a plain state_dict (create_model accepts one): its file facts
        st = Path(path).stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    epochs = (ckpt.get("history") or {}).get("epochs", [])
    return f"{ckpt.get('data_fingerprint', '?')}:{_trained_best_score(ckpt)}:{len(epochs)}"


def _trained_best_score(ckpt: dict[str, Any]) -> Any:
    """best.pt's best score as `fit` measured it (before precise BN re-measured it)."""
    hist = ckpt.get("history") or {}
    monitor = hist.get("monitor", "val_auroc")
    row = next((r for r in hist.get("epochs", []) if r.get("epoch") == hist.get("best_epoch")), {})
    return row.get(f"{monitor}_as_trained", ckpt.get("best_score"))


def evaluate_and_record(exp: Experiment, ctx: RunContext,
                        external: Callable[[Experiment], tuple[list, dict]] | None = None
                        ) -> dict[str, Any]:
    """Reload the best checkpoint, choose the threshold on val, measure test, write JSON.

    `external(exp)` (utils.study.grid) scores the model on other sources' test splits at this
    run's threshold: `(results["external"] rows, {source: Predictions})`, recorded with it.
    """
    from ..evaluation.metrics import evaluate_run
    from ..evaluation.results import build_results, write_predictions, write_results
    from ..models.registry import count_parameters
    from ..training.checkpoint import load_model, update_checkpoint
    from ..training.precise_bn import precise_bn_if_better, record_precise_bn

    cfg = exp.cfg
    best = exp.checkpoint / "best.pt"
    built = getattr(exp.model, "pretrained_weights", None)
    exp.model, ckpt = load_model(best, device=ctx.device)
    # BN statistics recomputed for the best weights where validation says so; the history
    # row then describes the weights best.pt keeps (utils.training.precise_bn)
    bn = precise_bn_if_better(exp.model, exp.loaders, cfg, ctx.device)
    fields = record_precise_bn(exp.history, bn)
    if bn["kept"]:
        fields["model_state"] = exp.model.state_dict()
    exp.evaluation = evaluate_run(exp.model, exp.loaders, cfg, device=ctx.device)
    update_checkpoint(best, threshold=exp.evaluation["threshold"]["value"],
                      threshold_policy=cfg.threshold_policy, threshold_tta=cfg.tta, **fields)
    sizes = exp.manifest.groupby("split").size().to_dict()
    exp.results = build_results(cfg, model_name=cfg.model, n_params=count_parameters(exp.model),
                                data_sizes=sizes, history=exp.history.to_dict(),
                                evaluation=exp.evaluation, environment=ctx.environment,
                                synthetic=ctx.synthetic)
    from ..data.dataset import test_fingerprint

    # what training started from (the checkpoint's record: a resumed run keeps its own)
    exp.results["pretrained"] = ckpt.get("pretrained_weights") or built
    skipped = exp.manifest.attrs.get("skipped", [])
    exp.results["data"]["skipped"] = len(skipped)
    exp.results["data"]["test_fingerprint"] = test_fingerprint(exp.manifest)
    exp.results["data"]["source_version"] = exp.manifest.attrs.get("source_version")
    # how splits grouped images into patients: "patient", "nih_patient" (RSNA via its NIH
    # mapping) or "image" (RSNA without the mapping: films of one person may cross splits)
    exp.results["data"]["grouping"] = exp.manifest.attrs.get("grouping", "patient")
    if "dropped_for_rsna_overlap" in exp.manifest.attrs:  # 02 part A: the leak-free NIH set
        exp.results["data"]["dropped_for_rsna_overlap"] = len(
            exp.manifest.attrs["dropped_for_rsna_overlap"])
    if skipped:  # on_bad_image="skip": the left-out files are listed beside the results
        atomic_write_text(Path(cfg.reports_dir) / "results" / f"{cfg.step}_skipped.txt",
                          "\n".join(map(str, skipped)) + "\n")
    rows, scored = external(exp) if external is not None else ([], {})
    exp.results["external"] = rows
    exp.results["distributed"] = dict(getattr(exp.history, "distributed", None) or
                                      {"world_size": 1, "nnodes": 1, "backend": "none"})
    exp.results["training"].update(_gpu_path_facts(exp.history, cfg, ctx))
    write_results(exp.results, cfg.reports_dir)
    write_predictions(cfg.step, exp.evaluation["predictions"], cfg.reports_dir,
                      dataset=cfg.dataset, external=scored)
    if not cfg.keep_last:  # the run is finished: only a resume needed the optimizer state
        (exp.checkpoint / "last.pt").unlink(missing_ok=True)
    if not cfg.keep_best:  # a run whose weights no later step reads (the demo's disk budget)
        (exp.checkpoint / "best.pt").unlink(missing_ok=True)
        if exp.checkpoint.is_dir() and not any(exp.checkpoint.iterdir()):
            exp.checkpoint.rmdir()
    return exp.results


def _gpu_path_facts(history, cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """`resume` (`{from_epoch, bit_exact, reason}`, None for a fresh run) and
    `cudnn_benchmark` (cuDNN autotuning during training), as `fit` recorded them; a History
    from before these existed gets the policy's answer (`runtime.configure_cudnn`)."""
    import torch

    benchmark = getattr(history, "cudnn_benchmark", None)
    if benchmark is None:
        benchmark = torch.device(ctx.device).type == "cuda" and not cfg.deterministic
    return {"resume": getattr(history, "resume", None), "cudnn_benchmark": bool(benchmark)}


def run_experiment(cfg: RunConfig, ctx: RunContext) -> Experiment:
    """All steps in order (what a model notebook does, without the plots)."""
    exp = prepare_data(cfg)
    exp.model = build_model(cfg, len(exp.class_names))
    train(exp, ctx)
    evaluate_and_record(exp, ctx)
    return exp
