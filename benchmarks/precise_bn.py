"""Does precise BN (`utils.training.loop.recalibrate_batchnorm`) help after fine-tuning?

`evaluate_and_record` recomputes BatchNorm statistics for the best weights of a run that
trained from random init (measured to help: short runs' cumulative averages mix in early
weights). Whether it also helps a run that *starts* from trained weights (ImageNet, or
another run's checkpoint as in 02_chexnet part B, BN momentum 0.1) is measured here, on
the demo data, without a download: a source model trained from scratch on Kermany, then
fine-tuned from its best checkpoint on RSNA (`init_checkpoint`), as 02 does NIH → RSNA.
Each model is scored on **validation** with and without recalibration (the decision may
not look at test; test AUROC is printed beside it for the record only).

    python -m benchmarks.precise_bn [--models resnet18 densenet121] [--seeds 0 1 2]

Prints one row per (model, seed, stage) and the mean val-AUROC change per stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

__all__ = ["measure", "main"]


def _scores(exp, ctx, recalibrate: bool) -> dict[str, float]:
    from utils.evaluation.metrics import evaluate_run
    from utils.training.checkpoint import load_model
    from utils.training.loop import recalibrate_batchnorm

    model, _ = load_model(exp.checkpoint / "best.pt", device=ctx.device)
    if recalibrate:
        recalibrate_batchnorm(model, exp.loaders["train"])
    ev = evaluate_run(model, exp.loaders, exp.cfg, device=ctx.device)
    val = ev["predictions"]["val"]
    bce = torch.nn.functional.binary_cross_entropy(
        torch.as_tensor(val.probs[:, 0]).clamp(1e-7, 1 - 1e-7), torch.as_tensor(val.targets[:, 0]))
    return {"val_auroc": ev["val"]["auroc"], "val_bce": float(bce), "val_f1": ev["val"]["f1"],
            "test_auroc": ev["test"]["auroc"]}


def _trained(cfg, ctx):
    from utils.study.experiment import build_model, prepare_data, train

    exp = prepare_data(cfg)
    exp.model = build_model(cfg, len(exp.class_names))
    train(exp, ctx)
    return exp


def measure(model: str, seed: int, work: Path, source_epochs: int = 4,
            tune_epochs: int = 2) -> list[dict]:
    """Rows `{model, seed, stage, bn, val_auroc, val_f1, test_auroc}` for the from-scratch
    source run and the run fine-tuned from its best checkpoint."""
    from utils.config import make_config
    from utils.data.demo import ensure_demo
    from utils.runtime import RunContext

    root = ensure_demo(work / "demo")
    ctx = RunContext(device=torch.device("cpu"), data_root=root, synthetic=True,
                     repo_root=work, environment={})
    base = make_config({"model": model, "dataset": "kermany", "data_root": str(root),
                        "seed": seed, "epochs": source_epochs, "pretrained": False,
                        "sampler": "balanced", "augmentation": "basic", "loss": "bce",
                        "scheduler": "cosine", "threshold_policy": "max_f1", "bootstrap": 0,
                        "checkpoint_dir": str(work / "ckpt"), "reports_dir": str(work / "rep"),
                        "cache_dir": str(work / "cache"), "step": f"src_{model}_{seed}"},
                       profile="demo")
    source = _trained(base, ctx)
    tune_cfg = dataclasses.replace(base, dataset="rsna", epochs=tune_epochs,
                                   step=f"tune_{model}_{seed}",
                                   init_checkpoint=str(source.checkpoint / "best.pt"))
    tuned = _trained(tune_cfg, ctx)
    rows = []
    for stage, exp in (("from scratch", source), ("fine-tuned", tuned)):
        for bn in (False, True):
            rows.append({"model": model, "seed": seed, "stage": stage,
                         "bn": "precise" if bn else "as trained", **_scores(exp, ctx, bn)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for seed in args.seeds:
                rows += measure(model, seed, Path(tmp))
    import pandas as pd

    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.4f"))
    wide = table.pivot_table(index=["model", "stage", "seed"], columns="bn",
                             values=["val_auroc", "val_bce", "test_auroc"])
    delta = (wide.xs("precise", axis=1, level=1) - wide.xs("as trained", axis=1, level=1))
    print("\nmean change with precise BN (precise - as trained):")
    print(delta.groupby(level=["model", "stage"]).agg(["mean", "min", "max"])
          .to_string(float_format="%+.4f"))
    return rows


if __name__ == "__main__":
    main()
