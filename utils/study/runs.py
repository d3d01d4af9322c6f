"""A step's runs: one training per (dataset × seed), named so results and checkpoints sort.

The study compares architectures on common ground: every model trained and tested on the
same split of each source, several seeds each. A run_all step (`05_vit`) therefore trains
several runs. A run on the step's own dataset with the default seed (42) keeps the step's
name, so `checkpoints/05_vit/best.pt` and `reports/results/05_vit.json` mean what they meant;
the others add the dataset and the seed's VALUE (not its index), so one member's seed 43 and
another's seed 1 are two runs of one step that can be merged into one folder:

    05_vit            rsna (the step's own dataset), seed 42
    05_vit.kermany    kermany, seed 42
    05_vit.s43        rsna, seed 43 (the second of `seeds=2`: cfg.seed + 1)
    05_vit.kermany.s43
    05_vit.s1         rsna, seed 1 (`-p seed=1`)

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
            seed = cfg.seed + k
            runs.append(dataclasses.replace(cfg, dataset=dataset, seed=seed,
                                            step=run_name(cfg.step, dataset, home, seed)))
    return runs
