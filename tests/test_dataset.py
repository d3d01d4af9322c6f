"""CXRDataset items, box geometry through transforms and the cache, manifests and loaders."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from conftest import shared_path
from utils.config import make_config
from utils.data.dataset import (CXRDataset, _seed_worker, class_names_for, collate,
                                load_manifest, make_loaders)
from utils.models import normalisation
from utils.data.discover import DataNotFoundError
from utils.data.nih import NIH_FINDINGS

H, W = 100, 80
BOX = [20.0, 30.0, 40.0, 50.0]  # x, y, w, h of the bright rectangle drawn in the images


def compose(*transforms, boxes: bool = True) -> A.Compose:
    params = A.BboxParams(format="coco", label_fields=["labels"]) if boxes else None
    scale = A.Normalize(mean=0.0, std=1.0, max_pixel_value=255.0)  # uint8 → [0, 1]
    return A.Compose([*transforms, scale, ToTensorV2()], bbox_params=params)


def bright_box(image: torch.Tensor, level: float = 0.5) -> list[float]:
    """x, y, w, h of the pixels above `level`: where the drawn rectangle really is."""
    ys, xs = np.nonzero(image[0].numpy() > level)
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


@pytest.fixture
def boxed(tmp_path) -> pd.DataFrame:
    """Three H×W PNGs, a white rectangle at BOX in rows 0 and 2 (row 1: no box)."""
    rows = []
    for i in range(3):
        image = np.zeros((H, W), np.uint8)
        if i != 1:
            x, y, w, h = map(int, BOX)
            image[y:y + h, x:x + w] = 255
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), image)
        rows.append({"path": str(path), "patient_id": f"p{i}", "split": "train",
                     "label": int(i != 1), "boxes": [BOX] if i != 1 else [],
                     "width": W if i != 1 else 0, "height": H if i != 1 else 0,
                     "source": "kermany", "synthetic": True})
    return pd.DataFrame(rows)


def test_item_contract_without_transform(boxed):
    image, target, meta = CXRDataset(boxed, ["Pneumonia"])[0]
    assert image.shape == (1, H, W) and image.dtype == torch.float32
    assert float(image.max()) == 1.0 and float(image.min()) == 0.0
    assert target.tolist() == [1.0] and target.dtype == torch.float32
    assert set(meta) == {"path", "patient_id", "index", "boxes"} and meta["index"] == 0
    assert meta["boxes"].tolist() == [BOX] and bright_box(image) == BOX
    assert CXRDataset(boxed, ["Pneumonia"])[1][2]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("transforms", [
    [A.Resize(32, 48)],
    [A.HorizontalFlip(p=1.0), A.Resize(50, 40)],
    [A.VerticalFlip(p=1.0), A.Crop(10, 20, 70, 90)],
], ids=["resize", "flip_resize", "vflip_crop"])
def test_boxes_follow_the_image_through_transforms(boxed, transforms):
    image, _, meta = CXRDataset(boxed, ["Pneumonia"], compose(*transforms))[0]
    (box,) = meta["boxes"].tolist()
    assert box == pytest.approx(bright_box(image), abs=1.0)


def test_cache_rows_scale_boxes_from_the_original_size(boxed, tmp_path):
    from utils.data.cache import build_cache
    cache = build_cache(boxed, 40, tmp_path / "cache", workers=1, progress=False)
    ds = CXRDataset(boxed, ["Pneumonia"], cache=cache)
    image, _, meta = ds[0]
    assert image.shape == (1, 40, 40)
    assert meta["boxes"].tolist()[0] == pytest.approx([10, 12, 20, 20])  # ×40/80, ×40/100
    assert meta["boxes"].tolist()[0] == pytest.approx(bright_box(image), abs=1.0)
    # unknown frame (width/height 0): the cache's original size is used instead
    unknown = boxed.assign(width=0, height=0)
    same = CXRDataset(unknown, ["Pneumonia"], cache=cache)[0][2]["boxes"]
    assert same.tolist() == meta["boxes"].tolist()
    with pytest.raises(ValueError, match="built for other rows"):
        CXRDataset(boxed.iloc[:2], ["Pneumonia"], cache=cache)


def test_boxes_in_another_frame_and_clipping(boxed):
    # the manifest's boxes were drawn on a 2× larger original (e.g. DICOM vs resized PNG)
    big = boxed.assign(width=2 * W, height=2 * H, boxes=[[[40.0, 60.0, 80.0, 100.0]]] * 3)
    assert CXRDataset(big, ["Pneumonia"])[0][2]["boxes"].tolist() == [BOX]
    # boxes running off the image are clipped; boxes fully outside are dropped
    off = boxed.assign(boxes=[[[-10.0, 90.0, 30.0, 30.0], [100.0, 5.0, 10.0, 10.0]]] * 3)
    image, _, meta = CXRDataset(off, ["Pneumonia"], compose(A.Resize(50, 40)))[0]
    assert meta["boxes"].tolist() == [pytest.approx([0.0, 45.0, 10.0, 5.0], abs=1e-4)]


def test_transform_without_bbox_params_is_refused(boxed):
    with pytest.raises(ValueError, match="no bbox_params.*boxes=True"):
        CXRDataset(boxed, ["Pneumonia"], compose(A.Resize(32, 32), boxes=False))
    ds = CXRDataset(boxed.assign(boxes=[[]] * 3), ["Pneumonia"],
                    compose(A.Resize(32, 32), boxes=False))
    assert ds[0][0].shape == (1, 32, 32)


def test_labels_counts_repr_and_collate(boxed):
    ds = CXRDataset(boxed.assign(split=["train", "val", "val"]), ["Pneumonia"])
    assert ds.labels.tolist() == [[1.0], [0.0], [1.0]] and ds.class_counts == {"Pneumonia": 2}
    text = repr(ds)
    assert "SYNTHETIC" in text and "kermany" in text and "3 images" in text
    assert "val" in text and "2 positive (66.7%)" in text
    images, targets, metas = collate([ds[0], ds[1]])
    assert images.shape == (2, 1, H, W) and targets.shape == (2, 1)
    assert [m["boxes"].shape[0] for m in metas] == [1, 0]
    with pytest.raises(ValueError, match=r"class_names \['Effusion'\] are not manifest columns"):
        CXRDataset(boxed, ["Effusion"])


def test_nih_multilabel_targets_from_real_images():
    from utils.data.nih import nih_files_manifest, nih_labels
    labels = nih_labels(shared_path("nih", "Data_Entry_2017_v2020.csv.gz"))
    paths = sorted(shared_path("nih", "images64", "train", "1_abnormal").glob("*.png"))[:8]
    m = nih_files_manifest(paths, labels)
    ds = CXRDataset(m, NIH_FINDINGS, compose(A.Resize(32, 32)))
    image, target, meta = ds[3]
    assert image.shape == (1, 32, 32) and target.shape == (14,)
    assert target.tolist() == m.loc[3, NIH_FINDINGS].astype(float).tolist()
    assert (ds.labels.sum(axis=1) >= 1).all() and ds.labels.shape == (8, 14)
    assert "real data" in repr(ds)


def test_real_kermany_items():
    from utils.data.kermany import kermany_manifest
    m = kermany_manifest(shared_path("kermany224", "train").parent)
    rows = pd.concat([m[m.label == 0].head(2), m[m.label == 1].head(2)])
    ds = CXRDataset(rows, ["Pneumonia"], compose(A.Resize(64, 64)))
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch[0].shape == (4, 1, 64, 64) and batch[1][:, 0].tolist() == [0, 0, 1, 1]
    assert 0.1 < float(batch[0].mean()) < 0.9  # real pixels, not blank


def test_class_names_for():
    assert class_names_for(make_config({}, "smoke")) == ["Pneumonia"]
    cfg = make_config({"dataset": "nih", "task": "multilabel"}, "smoke")
    assert class_names_for(cfg) == NIH_FINDINGS


def test_load_manifest_real_kermany():
    root = shared_path("kermany224")
    cfg = make_config({"dataset": "kermany", "data_root": str(root), "max_images": 30}, "smoke")
    m = load_manifest(cfg)
    assert m.split.value_counts().to_dict() == {"train": 30, "val": 30, "test": 30}
    assert m.attrs["synthetic"] is False and m.attrs["source"] == "kermany"
    assert (m.groupby("split").label.sum() >= 1).all()
    assert m.path.tolist() == load_manifest(cfg).path.tolist()  # deterministic
    with pytest.raises(DataNotFoundError, match=r"'rsna' not found.*download rsna"):
        load_manifest(make_config({"dataset": "rsna", "data_root": str(root)}, "smoke"))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from utils.data.demo import make_demo
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=64, scale=0.3)


@pytest.mark.parametrize("dataset, task", [("kermany", "binary"), ("rsna", "binary"),
                                           ("nih", "multilabel")])
def test_load_manifest_demo_sources(demo_root, dataset, task):
    cfg = make_config({"dataset": dataset, "task": task, "data_root": str(demo_root)}, "smoke")
    m = load_manifest(cfg)
    assert m.attrs["synthetic"] is True and set(m.split) == {"train", "val", "test"}
    assert m.groupby("patient_id").split.nunique().max() == 1
    ds = CXRDataset(m[m.split == "train"], class_names_for(cfg), compose(A.Resize(32, 32)))
    assert ds[0][1].shape == (len(class_names_for(cfg)),) and "SYNTHETIC" in repr(ds)


@pytest.mark.parametrize("cache", [False, True])
def test_make_loaders(demo_root, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    cfg = make_config({"dataset": "rsna", "data_root": str(demo_root), "cache": cache,
                       "sampler": "balanced", "model": "simple_cnn", "batch_size": 4}, "smoke")
    manifest = load_manifest(cfg)
    loaders = make_loaders(cfg, manifest, normalisation(cfg.model, cfg.pretrained))
    assert set(loaders) == {"train", "val", "test"}
    images, targets, metas = next(iter(loaders["train"]))
    assert images.shape == (4, 1, cfg.image_size, cfg.image_size) and targets.shape == (4, 1)
    assert loaders["train"].drop_last and loaders["train"].sampler is not None
    val = loaders["val"]
    order = [m["path"] for _, _, ms in val for m in ms]
    assert order == manifest[manifest.split == "val"].path.tolist()  # predictions align
    assert all(b["boxes"].shape[1] == 4 for b in metas)
    assert (val.dataset.cache is not None) == cache


def test_workers_get_their_own_augmentation_streams(boxed):
    """albumentations 2.0 copies one generator into every worker; _seed_worker reseeds it."""
    rows = pd.concat([boxed.iloc[[1]]] * 8, ignore_index=True)  # the row without boxes
    noise = A.GaussNoise(std_range=(0.2, 0.3), p=1.0)
    ds = CXRDataset(rows, ["Pneumonia"], compose(noise, boxes=False))
    ds.transform.set_random_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate,
                                         worker_init_fn=_seed_worker,
                                         generator=torch.Generator().manual_seed(0))
    first = [batch[0] for batch in loader]
    # worker 0 served items 0, 2, ...; worker 1 items 1, 3, ...: their first draws must differ
    assert not torch.equal(first[0], first[1])
    again = [batch[0] for batch in loader]  # same loader seed → new epoch, new draws
    assert not torch.equal(first[0], again[0])


def test_manifest_fingerprint_sees_files_labels_and_splits_not_order():
    from utils.data.dataset import manifest_fingerprint

    m = pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png"], "label": [0, 1, 0, 1],
                      "split": ["train", "train", "val", "test"], "patient_id": list("pqrs")})
    base = manifest_fingerprint(m)
    assert manifest_fingerprint(m.iloc[::-1]) == base                 # row order is not data
    assert manifest_fingerprint(m.assign(patient_id="x")) == base     # nor unused columns
    assert manifest_fingerprint(m.assign(label=[1, 1, 0, 1])) != base
    assert manifest_fingerprint(m.assign(split=["train", "val", "val", "test"])) != base
    assert manifest_fingerprint(pd.concat([m, m.iloc[:1].assign(path="e.png")])) != base


def test_manifest_fingerprint_is_the_same_for_the_same_data_at_another_path():
    """A new session's mount (Kaggle, Colab, --resume-from) moves the data, not the data."""
    from utils.data.dataset import manifest_fingerprint

    def at(root: str) -> pd.DataFrame:
        m = pd.DataFrame({"path": [f"{root}/x/a.png", f"{root}/x/b.png"], "label": [0, 1],
                          "split": ["train", "val"]})
        m.attrs["source_dir"] = root
        return m

    assert manifest_fingerprint(at("/kaggle/input/a")) == manifest_fingerprint(at("/tmp/b"))
    moved = at("/tmp/b").assign(path=["/tmp/b/x/a.png", "/tmp/b/y/b.png"])
    assert manifest_fingerprint(moved) != manifest_fingerprint(at("/tmp/b"))
