"""The torch Dataset every notebook trains on, the manifest it is built from, and loaders.

One contract for all sources (ARCHITECTURE.md): item `(image 1×H×W float, target float[K],
meta)`, where `meta["boxes"]` are `x, y, w, h` in the *transformed* image's pixels, moved by
albumentations together with the image. Boxes live in the manifest in the pixel frame of
`width`×`height` (the original image); they are scaled to whatever is actually read (the
file, or the pre-resized cache) before the transform sees them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .checks import check_images  # noqa: F401 - re-exported: it was defined here
from .discover import find_sources, is_synthetic, not_found, resolve_data_root
from .nih import NIH_FINDINGS
from .sources import build_manifest
from .splits import SPLITS, assign_splits, cap_per_split, cap_train, check_no_patient_leak

__all__ = ["CXRDataset", "collate", "class_names_for", "load_manifest", "make_loaders",
           "split_rows", "build_split_caches", "manifest_fingerprint", "test_fingerprint",
           "BINARY_CLASSES"]

BINARY_CLASSES = ["Pneumonia"]
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _has_bbox_params(transform: Callable | None) -> bool:
    return "bboxes" in getattr(transform, "processors", {})


def _to_image_tensor(image: Any) -> torch.Tensor:
    """What the transform returned (tensor or array, with or without channel) → 1×H×W float."""
    if isinstance(image, np.ndarray):
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image = torch.from_numpy(np.ascontiguousarray(image)).float() / scale
        if image.ndim == 3:  # H×W×C from a transform without ToTensorV2
            image = image.permute(2, 0, 1)
    return image.unsqueeze(0) if image.ndim == 2 else image.float()


def _clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip xywh boxes to the image; drop boxes left with no area (albumentations rejects them)."""
    x0 = np.clip(boxes[:, 0], 0, width)
    y0 = np.clip(boxes[:, 1], 0, height)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    out = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.float32)
    return out[(out[:, 2] > 0) & (out[:, 3] > 0)]


class CXRDataset(Dataset):
    """Rows of a manifest as `(image, target, meta)` items (see the module docstring).

    Args:
        manifest: rows to serve, in order (`path`, `patient_id`, `label`, `boxes`, ...).
        class_names: `["Pneumonia"]` (binary: the `label` column) or finding columns.
        transform: an albumentations Compose from `utils.data.transforms.build_transform`; it
            must carry `bbox_params` when any row has boxes. None: image/255, no resize.
        cache: an `ImageCache` built on exactly these rows (row i → cache[i]).
    Example:
        >>> ds = CXRDataset(manifest[manifest.split == "val"], ["Pneumonia"])  # doctest: +SKIP
        >>> image, target, meta = ds[0]                                         # doctest: +SKIP
    """

    def __init__(self, manifest: pd.DataFrame, class_names: Sequence[str],
                 transform: Callable | None = None, cache: Any = None):
        self.manifest = manifest.reset_index(drop=True)
        self.class_names = list(class_names)
        self.transform, self.cache = transform, cache
        self.paths = self.manifest["path"].astype(str).tolist()
        self.patient_ids = self.manifest["patient_id"].astype(str).tolist()
        self._targets = self._build_targets()
        boxes = self.manifest["boxes"] if "boxes" in self.manifest else [[]] * len(self.paths)
        self._boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
        frame = [self.manifest.get(c, pd.Series(0, index=self.manifest.index)) for c in
                 ("height", "width")]
        self._frames = np.stack([f.fillna(0).to_numpy(int) for f in frame], axis=1)
        self._check(cache, transform)

    def _build_targets(self) -> np.ndarray:
        if self.class_names == BINARY_CLASSES:
            return self.manifest[["label"]].to_numpy(np.float32)
        missing = [c for c in self.class_names if c not in self.manifest.columns]
        if missing:
            raise ValueError(f"class_names {missing} are not manifest columns (columns: "
                             f"{list(self.manifest.columns)}); multilabel needs dataset='nih'")
        return self.manifest[self.class_names].to_numpy(np.float32)

    def _check(self, cache: Any, transform: Callable | None) -> None:
        if cache is not None and list(getattr(cache, "paths", self.paths)) != self.paths:
            raise ValueError(f"the cache ({cache!r}) was built for other rows than this "
                             f"manifest ({len(self.paths)} rows): build_cache(these rows)")
        if transform is not None and not _has_bbox_params(transform) and \
                any(len(b) for b in self._boxes):
            raise ValueError("rows have boxes but the transform has no bbox_params, so the "
                             "boxes could not follow the image: use build_transform(..., "
                             "boxes=True), or clear the manifest's boxes column")

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[i]
        from .images import read_image  # lazy: keeps `import utils.data.dataset` light

        return read_image(self.paths[i])

    def _boxes_for(self, i: int, height: int, width: int) -> np.ndarray:
        """Row i's boxes scaled from their frame (manifest size, else the file's) to H×W."""
        boxes = self._boxes[i]
        if not len(boxes):
            return boxes
        fh, fw = self._frames[i]
        if not (fh and fw):  # unknown frame: the boxes are in the file's own pixels
            fh, fw = self.cache.original_size(i) if self.cache is not None else (height, width)
        scale = np.array([width / fw, height / fh, width / fw, height / fh], np.float32)
        return _clip_boxes(boxes * scale, width, height)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        image = self._read(i)
        boxes = self._boxes_for(i, *image.shape[:2])
        if self.transform is None:
            tensor = _to_image_tensor(image)
        elif _has_bbox_params(self.transform):
            out = self.transform(image=image, bboxes=boxes, labels=list(range(len(boxes))))
            tensor, boxes = _to_image_tensor(out["image"]), out["bboxes"]
        else:
            tensor = _to_image_tensor(self.transform(image=image)["image"])
        meta = {"path": self.paths[i], "patient_id": self.patient_ids[i], "index": i,
                "boxes": torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)}
        return tensor, torch.from_numpy(self._targets[i].copy()), meta

    @property
    def labels(self) -> np.ndarray:
        """N×K float32 targets, aligned with the rows (for samplers, pos_weight, metrics)."""
        return self._targets

    @property
    def class_counts(self) -> dict[str, int]:
        """Positive images per class."""
        return {n: int(c) for n, c in zip(self.class_names, self._targets.sum(axis=0))}

    def __repr__(self) -> str:
        m = self.manifest
        source = ",".join(sorted(m["source"].astype(str).unique())) if "source" in m else "?"
        synthetic = bool(m["synthetic"].any()) if "synthetic" in m else False
        kind = "SYNTHETIC demo data" if synthetic else "real data"
        lines = [f"CXRDataset(source={source}, {kind}, {len(m)} images, "
                 f"{m['patient_id'].nunique()} patients, "
                 f"transform={'none' if self.transform is None else 'yes'}, "
                 f"cache={'no' if self.cache is None else 'yes'})"]
        if "split" in m:
            for split, rows in m.groupby(m["split"].replace("", "unsplit"), sort=True):
                lines.append(f"  {split:<8} {len(rows):>7} images {rows['patient_id'].nunique():>7}"
                             f" patients")
        for name, count in self.class_counts.items():
            lines.append(f"  {name:<19} {count:>7} positive ({count / max(len(m), 1):.1%})")
        return "\n".join(lines)


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Stack images and targets; keep metas (boxes differ in count) as a list of dicts."""
    images, targets, metas = zip(*batch)
    return torch.stack(images), torch.stack(targets), list(metas)


def class_names_for(cfg) -> list[str]:
    """`["Pneumonia"]` for the binary task, the 14 `NIH_FINDINGS` for multilabel."""
    return list(NIH_FINDINGS) if cfg.task == "multilabel" else list(BINARY_CLASSES)


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of which files, labels and splits a run trains and validates on.

    Stored in checkpoints so a resume notices new data under the same root (e.g. the full
    NIH set downloaded where the sample was), which the config alone cannot show. Paths count
    relative to the source folder: the same data at another path (a new Kaggle or Colab
    session's mount, `--resume-from` on another machine) is the same data.
    """
    columns = [c for c in ("path", "split", "label", *NIH_FINDINGS) if c in manifest.columns]
    rows = manifest[manifest["split"].isin(["train", "val"])] if "split" in manifest else manifest
    rows = rows[columns].copy()
    base = manifest.attrs.get("source_dir", "")
    if base and "path" in rows:
        rows["path"] = [os.path.relpath(p, base) for p in rows["path"].astype(str)]
    rows = rows.sort_values(columns[:1]) if columns else rows
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def test_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of the test split: its files (relative to the source folder, so the same
    set on another machine matches) and binary labels. Only runs whose test fingerprints are
    equal were measured on the same images, so only they are ranked together. A source's
    own image ids stand for the files where it has them (RSNA's `image_id`: its DICOMs and
    01_preprocessing's PNGs of them are the same images)."""
    return _rows_fingerprint(manifest[manifest["split"] == "test"],
                             manifest.attrs.get("source_dir", ""))


def source_version(source: pd.DataFrame, base: str | Path = "") -> str:
    """A short hash of a whole source as found (every file and label, before splitting and
    capping): two runs with equal test fingerprints but different source versions read
    different copies of the data (a merged run from another machine is listed apart)."""
    return _rows_fingerprint(source, str(base))


def _rows_fingerprint(rows: pd.DataFrame, base: str) -> str:
    names = rows["image_id"].astype(str).tolist() if "image_id" in rows else \
        [os.path.relpath(p, base) if base else p for p in rows["path"].astype(str)]
    keyed = sorted(zip(names, rows["label"].astype(int).tolist()))
    return hashlib.sha256(repr(keyed).encode()).hexdigest()[:16]


def load_manifest(cfg) -> pd.DataFrame:
    """The run's manifest: source rows, patient-level splits, `max_images` per split, then
    `max_train_images` on the training split only (the GPU-sized profiles' cap: the
    validation and test rows, and so the test fingerprint, stay those of an uncapped run).

    Sets `attrs["synthetic"]`, `attrs["source"]`, `attrs["data_root"]`, and keeps the
    source's own (`grouping`: how patients were grouped, `skipped`, ...). Without data
    (`data_root` "" and none found) it uses the generated demo set, as the notebooks do.
    Example:
        >>> manifest = load_manifest(make_config({"dataset": "kermany"}, "demo"))  # doctest: +SKIP
    """
    from .demo import ensure_demo  # lazy: only generated when no data is found

    root, synthetic = resolve_data_root(cfg.data_root, fallback=ensure_demo)
    found = find_sources(root)
    if cfg.dataset not in found:
        raise not_found(root, cfg.dataset)
    source = build_manifest(cfg.dataset, found[cfg.dataset], on_bad_image=cfg.on_bad_image)
    # split_seed, not seed: every training seed (and every model) shares one test set
    manifest = assign_splits(source, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    manifest = cap_per_split(manifest, cfg.max_images, cfg.split_seed)
    manifest = cap_train(manifest, cfg.max_train_images, cfg.split_seed)
    manifest = check_images(manifest, cfg.on_bad_image)
    check_no_patient_leak(manifest)
    synthetic = bool(synthetic or is_synthetic(found[cfg.dataset]) or manifest["synthetic"].any())
    unreadable = list(manifest.attrs.get("skipped", []))
    manifest.attrs.update(source.attrs, synthetic=synthetic, source=cfg.dataset,
                          data_root=str(root), source_dir=str(found[cfg.dataset]),
                          source_version=source_version(source, found[cfg.dataset]))
    manifest.attrs["skipped"] = list(dict.fromkeys(
        [*source.attrs.get("skipped", []), *unreadable]))  # missing + unreadable, in order
    return manifest


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (albumentations 2.0 does not).

    Without this every worker starts from a copy of the same generator and, when workers
    are re-forked each epoch, repeats the same augmentations epoch after epoch.
    """
    info = get_worker_info()
    seed = info.seed % 2**32  # differs per worker and per epoch, derived from the loader seed
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def cache_dir_for(cfg) -> Path:
    """Where the loaders' caches live: env `CXR_CACHE_DIR`, else `cfg.cache_dir` (relative
    paths from the repository root)."""
    cache_dir = Path(os.environ.get("CXR_CACHE_DIR") or cfg.cache_dir)
    return cache_dir if cache_dir.is_absolute() else _REPO_ROOT / cache_dir


def _cache_for(rows: pd.DataFrame, cfg) -> Any:
    from .cache import build_cache

    return build_cache(rows, cfg.image_size, cache_dir_for(cfg))  # parallel, every core


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split, in manifest order, as the loaders (and their caches) see them."""
    return manifest[manifest["split"] == split].reset_index(drop=True)


def build_split_caches(cfg, manifest: pd.DataFrame) -> dict[str, Any]:
    """Build (or open) the caches `make_loaders(cfg, manifest, ...)` reads with `cache=True`:
    one per split, under the very keys it uses, so a later loader opens them instead of
    decoding every image again (what 01_preprocessing prepares for the model steps).

    Example:
        >>> caches = build_split_caches(cfg, load_manifest(cfg))  # doctest: +SKIP
        >>> caches["train"]                                        # doctest: +SKIP
        ImageCache(3410 images, 224×224 uint8, ...)
    """
    return {split: _cache_for(split_rows(manifest, split), cfg) for split in SPLITS
            if (manifest["split"] == split).any()}


def make_loaders(cfg, manifest: pd.DataFrame, norm: tuple[float, float],
                 splits: Sequence[str] = SPLITS) -> dict[str, DataLoader]:
    """train/val/test DataLoaders with the model's normalisation and the config's recipe.

    Train: `cfg.augmentation` transform, `cfg.sampler` (else a seeded shuffle), drop_last.
    Val/test: the `"none"` (resize) transform, in manifest order (predictions align with rows).

    Args:
        cfg: the RunConfig (image_size, batch_size, num_workers, cache, sampler, seed...).
        manifest: from `load_manifest(cfg)`, with train/val/test splits.
        norm: the model's 1-channel `(mean, std)`
            (`utils.models.normalisation(cfg.model, cfg.pretrained)`: the data layer
            knows no models).
        splits: which loaders to build (e.g. `("test",)` to score another source).
    Example:
        >>> norm = normalisation(cfg.model, cfg.pretrained)              # doctest: +SKIP
        >>> loaders = make_loaders(cfg, load_manifest(cfg), norm)        # doctest: +SKIP
        >>> images, targets, metas = next(iter(loaders["train"]))        # doctest: +SKIP
    """
    from ..runtime import loader_workers, pick_device
    from .samplers import make_sampler
    from .transforms import build_transform

    mean, std = norm  # xrv weights bring their own scaling (models.normalisation)
    names = class_names_for(cfg)
    cuda = pick_device(cfg.device).type == "cuda"
    loaders: dict[str, DataLoader] = {}
    for split in splits:
        rows = split_rows(manifest, split)  # the rows build_split_caches caches
        if rows.empty:
            raise ValueError(f"the {split!r} split is empty ({len(manifest)} images in all): "
                             f"raise max_images / the fractions, or check the data folder")
        train = split == "train"
        # the usable cores shared among this machine's training processes: more workers
        # than cores only thrash (Kaggle: 2 ranks on 4 vCPUs get 2 workers each, not 4)
        workers = loader_workers(cfg.num_workers)
        transform = build_transform(cfg.augmentation if train else "none", cfg.image_size,
                                    mean, std)
        if train and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(cfg.seed)  # main-process loading is reproducible too
        dataset = CXRDataset(rows, names, transform, _cache_for(rows, cfg) if cfg.cache else None)
        sampler = make_sampler(cfg.sampler, dataset.labels, cfg.sampler_cap, cfg.seed) \
            if train else None
        loaders[split] = DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=train and sampler is None,
            sampler=sampler, num_workers=workers, collate_fn=collate,
            pin_memory=cuda, persistent_workers=workers > 0,
            drop_last=train and len(dataset) > cfg.batch_size,  # no 1-image BatchNorm batch
            generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=_seed_worker)
    return loaders
