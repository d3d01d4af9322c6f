"""Train one run from a config file: the entry point torchrun launches (and a CLI of its own).

    python -m utils.study.train_cli --config run.json [--evaluate]
    torchrun --nproc-per-node 2 -m utils.study.train_cli --config run.json
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint node0:29500 \\
        --rdzv-id myrun -m utils.study.train_cli --config /shared/run.json   # node-rank 1 on node 1

`run.json` is either flat `RunConfig` parameters (`{"model": "resnet18", "epochs": 5,
"profile": "demo"}`), or what `utils.training.launch` writes for a notebook: `{"config": {...},
"meta": {...}, "manifest": "manifest.json"}`. The data and model are built as the notebooks
build them (`utils.study.experiment.prepare_data`, `build_model`, `train`); checkpoints go to
`checkpoints/<run>/`. Rank 0 writes `history.json` beside the config; `--evaluate` also
chooses the threshold on validation and measures test in rank 0, as a notebook does.

Rank 0 prepares the data first (manifest, image checks, caches) while the others wait on a
group of their own bounded by `prepare_timeout` (`distributed.rank0_first`), so a long first
cache build never meets the training group's timeout (NCCL's default: 10 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

__all__ = ["main"]


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"train_cli: --config {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"train_cli: --config {path} is not JSON ({exc})") from None
    return spec if "config" in spec else {"config": spec}


def _experiment(cfg, spec: dict, folder: Path):
    """The notebook's manifest when the launcher wrote it, else the config's own data."""
    import pandas as pd

    from .experiment import prepare_data

    manifest = None
    if spec.get("manifest"):
        manifest = pd.read_json(folder / spec["manifest"], orient="table")
    return prepare_data(cfg, manifest=manifest)


def _run(spec: dict, folder: Path, evaluate: bool) -> None:
    from ..fileio import atomic_write_json
    from ..runtime import seed_everything
    from ..training import distributed
    from .experiment import build_model, evaluate_and_record, train
    from .notebook import setup

    launched = "meta" in spec  # by utils.training.launch: the notebook has printed the banner
    cfg, ctx = setup(spec["config"], verbose=int(os.environ.get("RANK", 0)) == 0 and not launched)
    ctx.synthetic = bool(spec.get("synthetic", ctx.synthetic))
    with distributed.process_group(cfg) as world:
        ctx.device = distributed.device_for(cfg, world)
        # rank 0 builds caches first; the others then only read them
        with distributed.rank0_first(world, cfg.prepare_timeout):
            exp = _experiment(cfg, spec, folder)
        whole = exp.loaders
        exp.loaders = distributed.shard_loaders(whole, cfg, world)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        exp.model = build_model(cfg, len(exp.class_names))
        history = train(exp, ctx, meta=spec.get("meta"))
        if world.main:  # `resume`, `cudnn_benchmark`: until History has them as fields
            atomic_write_json(folder / "history.json", {
                "resume": getattr(history, "resume", None),
                "cudnn_benchmark": getattr(history, "cudnn_benchmark", None),
                **history.to_dict()})
    if evaluate and world.main:
        exp.loaders = whole
        evaluate_and_record(exp, ctx)


@record  # a worker's exception reaches torchrun's failure summary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.study.train_cli",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="run.json (see above)")
    parser.add_argument("--evaluate", action="store_true",
                        help="then choose the threshold on val and measure test (rank 0)")
    args = parser.parse_args(argv)
    path = args.config.resolve()
    _run(_read_spec(path), path.parent, args.evaluate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
