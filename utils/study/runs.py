"""A step's runs: one training per (dataset × seed), named so results and checkpoints sort.

The study compares architectures on common ground: every model trained and tested on the
same split of each source, several seeds each. A run_all step (`05_vit`) therefore trains
several runs. The first run, on the step's own dataset with the first seed, keeps the step's
name, so `checkpoints/05_vit/best.pt` and `reports/results/05_vit.json` mean what they meant;
the others add the dataset and the seed index:

    05_vit            rsna (the step's own dataset), seed index 0
    05_vit.kermany    kermany, seed index 0
    05_vit.s1         rsna, seed index 1 (seed = cfg.seed + 1)
    05_vit.kermany.s1

Patient splits use `split_seed`, not the training seed, so every seed of every model is
tested on the same images (`results["data"]["test_fingerprint"]` says so).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..data import BINARY_SOURCES
from ..evaluation.results import run_name

__all__ = ["datasets_for", "run_configs"]


def datasets_for(cfg: RunConfig, data_root: str | Path | None,
                 found: list[str] | None = None) -> list[str]:
    """The datasets a step trains on: its own first (when among them), then the others.

    `""` is the step's own `dataset` alone; `"all"` every binary pneumonia source found under
    the data root (a step whose own source is absent trains on the others); a source named
    explicitly but absent is an error naming what was found (no silent shrinking).
    `found`: the sources to assume instead of looking under `data_root` (the cost plan
    prices a run on data not downloaded yet).
    """
    from ..data.discover import find_sources, not_found

    wanted = cfg.dataset_list()
    if wanted == [cfg.dataset]:
        return wanted  # load_manifest reports a missing source itself
    if cfg.task == "multilabel":
        raise ConfigError("task='multilabel' trains on NIH alone; leave datasets empty")
    found = found if found is not None else find_sources(data_root)
    if wanted == ["all"]:
        wanted = [d for d in BINARY_SOURCES if d in found]
    if missing := [d for d in wanted if d not in found]:
        raise not_found(Path(data_root), missing[0])
    return sorted(dict.fromkeys(wanted), key=lambda d: d != cfg.dataset)


def run_configs(cfg: RunConfig, data_root: str | Path | None,
                found: list[str] | None = None) -> list[RunConfig]:
    """One config per (dataset, seed): `step` = the run's name, `seed` = cfg.seed + k."""
    home = cfg.dataset
    runs = []
    for dataset in datasets_for(cfg, data_root, found):
        for k in range(cfg.seeds):
            runs.append(dataclasses.replace(cfg, dataset=dataset, seed=cfg.seed + k,
                                            step=run_name(cfg.step, dataset, home, k)))
    return runs
