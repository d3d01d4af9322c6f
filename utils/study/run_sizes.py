"""What each run of the plan trains on, before it starts: the images per epoch, the
validation and test images, the epochs and image size (`RunCost`), one per run a notebook
makes (`runs_of`). The cost plan (`utils.study.cost`, `budget`) prices them.

- **the data**: each source's train/val/test sizes from its manifest when the data is
  found, else the Kaggle sets' published sizes (`PUBLISHED`), split as the config splits;
  with RSNA and NIH both found (and RSNA's NIH mapping), less the rows the runs' leak guard
  drops after the splits (`utils.data.overlap`);
- **the runs**: one per dataset × seed, 02's NIH part A, 09's transfer arms; each epoch's
  images after the sampler, any cap, and in whole batches (`drop_last`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PUBLISHED", "NIH_TRAIN_VAL_FINDINGS", "RunCost", "split_sizes", "epoch_images",
           "runs_of", "notebook_defaults", "found_sources", "forget_manifests"]

# The Kaggle sets as published: Kermany's official train+val (re-split by patient) and
# test; RSNA's stage-2 training images (no official test: carved by `test_fraction`);
# NIH's train_val_list.txt and test_list.txt.
PUBLISHED: dict[str, dict[str, int]] = {
    "kermany": {"pool": 5216 + 16, "test": 624},
    "rsna": {"pool": 26684, "test": 0},
    "nih": {"pool": 86524, "test": 25596},
}
# NIH ChestX-ray14's finding counts in train_val_list.txt's 86,524 images (Data_Entry_2017
# joined with the list; "No Finding" 50,500): what the capped sampler draws from.
NIH_TRAIN_VAL_FINDINGS = {
    "Atelectasis": 8280, "Cardiomegaly": 1707, "Consolidation": 2852, "Edema": 1378,
    "Effusion": 8659, "Emphysema": 1423, "Fibrosis": 1251, "Hernia": 141,
    "Infiltration": 13782, "Mass": 4034, "Nodule": 4708, "Pleural_Thickening": 2242,
    "Pneumonia": 876, "Pneumothorax": 2637, "No Finding": 50500,
}


# --- data ---------------------------------------------------------------------------------
def split_sizes(cfg, data_root: str | Path | None) -> tuple[dict[str, int], str]:
    """`({"train": n, "val": n, "test": n}, where from)` for `cfg.dataset`: the manifest's
    splits when the source is found under `data_root`, else the published sizes split as
    `assign_splits` would (val and test fractions; an official test split is kept)."""
    if data_root is not None:
        from ..data.discover import find_sources

        if cfg.dataset in find_sources(data_root):
            return _manifest_sizes(cfg, data_root), "found"
    pub = PUBLISHED[cfg.dataset]
    test = pub["test"] or round(pub["pool"] * cfg.test_fraction)
    rest = pub["pool"] - (0 if pub["test"] else test)
    val = round(rest * cfg.val_fraction)
    sizes = {"train": rest - val, "val": val, "test": test}
    if cfg.max_images:
        sizes = {k: min(v, cfg.max_images) for k, v in sizes.items()}
    return _train_capped(sizes, cfg), "published"


def _manifest_sizes(cfg, data_root: str | Path) -> dict[str, int]:
    """Split counts from the source's manifest (no image checks: they read every file),
    less what RSNA ⊂ NIH's leak guard drops from training (`_leak_guarded`)."""
    manifest = _leak_guarded(cfg, data_root, _split_manifest(cfg, data_root))
    counts = manifest["split"].value_counts()
    sizes = {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}
    return _train_capped(sizes, cfg)


def _split_manifest(cfg, data_root: str | Path):
    """A source's manifest with its patient-level splits and `max_images` cap, as
    `load_manifest` draws them; kept per (source, split settings) until the next plan
    (`forget_manifests`)."""
    key = (cfg.dataset, str(data_root), cfg.val_fraction, cfg.test_fraction, cfg.split_seed,
           cfg.max_images)
    if key not in _MANIFESTS:
        from ..data.discover import find_sources
        from ..data.sources import build_manifest
        from ..data.splits import assign_splits, cap_per_split

        folder = find_sources(data_root)[cfg.dataset]
        manifest = assign_splits(build_manifest(cfg.dataset, folder), cfg.val_fraction,
                                 cfg.test_fraction, cfg.split_seed)
        _MANIFESTS[key] = cap_per_split(manifest, cfg.max_images, cfg.split_seed)
    return _MANIFESTS[key]


_MANIFESTS: dict[tuple, Any] = {}


def forget_manifests() -> None:
    """Start a plan from the data as it is now (`budget.price_plan` calls it): the split
    manifests above are kept for one plan, not for the life of the process."""
    _MANIFESTS.clear()


def _leak_guarded(cfg, data_root: str | Path, manifest):
    """The rows a run on RSNA or NIH keeps when the other is found with RSNA's NIH mapping:
    the rows `utils.data.overlap` drops after the splits (NIH training without the patients
    behind RSNA's validation and test films; RSNA training without NIH's test patients'
    films). Measured on the demo: 02's part A drew 224 images an epoch where the plan
    counted 334 without this."""
    from ..data.discover import find_sources
    from ..data.overlap import cross_source_exclusion
    from ..data.rsna import find_rsna_nih_mapping

    other = {"nih": "rsna", "rsna": "nih"}.get(cfg.dataset)
    if other is None or other not in find_sources(data_root) \
            or find_rsna_nih_mapping(data_root) is None:
        return manifest
    peer = _split_manifest(dataclasses.replace(cfg, dataset=other), data_root)
    exclude = cross_source_exclusion(cfg.dataset, {cfg.dataset: manifest, other: peer},
                                     data_root)
    return exclude(manifest) if exclude is not None else manifest


def _train_capped(sizes: dict[str, int], cfg) -> dict[str, int]:
    cap = getattr(cfg, "max_train_images", 0)
    return {**sizes, "train": min(sizes["train"], cap)} if cap else sizes


def epoch_images(cfg, train: int) -> int:
    """Images one training epoch draws: the split, or what the capped sampler keeps (at
    most `sampler_cap` per finding, published NIH counts scaled to this train split), in
    whole batches."""
    if cfg.sampler == "capped" and cfg.dataset == "nih" and cfg.sampler_cap:
        scale = train / PUBLISHED["nih"]["pool"]
        kept = sum(min(cfg.sampler_cap, round(n * scale))
                   for n in NIH_TRAIN_VAL_FINDINGS.values())
        train = min(train, kept)  # an image with two findings is drawn once: an upper bound
    # the training loader drops the last partial batch (`make_loaders`: drop_last)
    return train - train % cfg.batch_size if train > cfg.batch_size else train


# --- runs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunCost:
    """One training run as the plan prices it."""

    step: str
    run: str
    model: str
    dataset: str
    train_images: int          # per epoch
    val_images: int            # per epoch
    test_images: int           # once (own test + the other sources' test splits)
    epochs: int
    image_size: int
    processes: int = 1
    tta: bool = False
    frozen: bool = False       # trainable_from != "all": only the head learns
    sizes_from: str = "found"


def _run(step: str, cfg, data_root, external: int, sizes_cache: dict) -> RunCost:
    key = (cfg.dataset, cfg.max_images, getattr(cfg, "max_train_images", 0), cfg.split_seed,
           cfg.val_fraction, cfg.test_fraction)
    if key not in sizes_cache:
        sizes_cache[key] = split_sizes(cfg, data_root)
    sizes, source = sizes_cache[key]
    return RunCost(step=step, run=cfg.step, model=cfg.model, dataset=cfg.dataset,
                   train_images=epoch_images(cfg, sizes["train"]), val_images=sizes["val"],
                   test_images=sizes["test"] + external, epochs=cfg.epochs,
                   image_size=cfg.image_size, processes=_processes(cfg),
                   tta=cfg.tta, frozen=cfg.trainable_from != "all", sizes_from=source)


def _processes(cfg) -> int:
    """The processes a run trains on: `nproc_per_node=0` (auto) prices one per GPU of this
    machine (`--gpu` names a kind, not a count: say `-p nproc_per_node=2` for Kaggle's 2xT4)."""
    from ..training.distributed import resolve_processes

    return resolve_processes(cfg, say=None).nproc_per_node * cfg.nnodes


def _external_tests(cfg, data_root, sizes_cache: dict, found: list[str]) -> int:
    """Test images of the other binary sources a binary run is also scored on."""
    total = 0
    for other in found:
        if other != cfg.dataset and cfg.task == "binary":
            other_cfg = dataclasses.replace(cfg, dataset=other, datasets="")
            total += _run("", other_cfg, data_root, 0, sizes_cache).test_images
    return total


def runs_of(notebook: str, cfg, data_root: str | Path | None) -> list[RunCost]:
    """Every training run a notebook makes with `cfg` (its step's resolved config)."""
    from ..data import BINARY_SOURCES
    from .runs import run_configs

    cache: dict = {}
    found = found_sources(data_root)
    step = cfg.step
    if notebook.startswith("09_"):
        return _transfer_runs(cfg, data_root, cache)
    if not notebook[:2].isdigit() or int(notebook[:2]) not in range(2, 7):
        return []
    out = []
    if notebook.startswith("02_"):  # part A: 14 NIH findings, one seed, the capped sampler
        nih = dataclasses.replace(cfg, dataset="nih", task="multilabel", datasets="", seeds=1,
                                  step=f"{step}_nih", sampler="capped", trainable_from="all",
                                  epochs=cfg.nih_epochs or cfg.epochs)
        out.append(_run(step, nih, data_root, 0, cache))
    binary = [d for d in BINARY_SOURCES if d in found] if found else list(BINARY_SOURCES)
    for run in run_configs(cfg, data_root, found=binary):
        out.append(_run(step, run, data_root, _external_tests(run, data_root, cache, binary),
                        cache))
    return out


def notebook_defaults(path: str | Path) -> dict[str, Any]:
    """The literal values of a notebook's `parameters` cell (None = the profile's): what
    the step runs with before run_all's parameters override them, as papermill does."""
    import ast

    import nbformat

    cells = [c for c in nbformat.read(str(path), as_version=4).cells
             if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    values: dict[str, Any] = {}
    for node in ast.parse(cells[0].source if cells else "").body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return {k: v for k, v in values.items() if v is not None}


def found_sources(data_root) -> list[str]:
    """The sources found under `data_root` (none for the published sizes)."""
    if data_root is None:
        return []
    from ..data.discover import find_sources

    return list(find_sources(data_root))


def _transfer_runs(cfg, data_root, cache: dict) -> list[RunCost]:
    """09's arms (start × trainable stage), priced whether or not their weights exist."""
    from .transfer_study import stages_for

    starts = [s.strip() for s in cfg.transfer_starts.split(",") if s.strip()]
    out = []
    for start in starts:
        for stage in stages_for(cfg):
            if start == "random" and stage != "all":
                continue
            arm = dataclasses.replace(cfg, step=f"{cfg.step}.{start}.{stage}",
                                      trainable_from=stage)
            out.append(_run(cfg.step, arm, data_root, 0, cache))
    return out
