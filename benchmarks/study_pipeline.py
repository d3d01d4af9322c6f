"""The study's plain training pipeline, as its notebooks wrote it: the baseline of
`benchmarks.recipes`.

torchvision `ImageFolder` + PIL transforms (`Resize`, `RandomRotation(20)`,
`RandomHorizontalFlip`, `ToTensor`, ImageNet `Normalize`; RGB, as ImageFolder loads it),
torchvision `resnet18(num_classes=1)` from random init, Adam 1e-3, BCE-with-logits, a
shuffled loader, the last epoch's weights, threshold 0.5. No cache, no sampler, no
schedule, no threshold search, no BatchNorm re-estimation: what the project adds is what
`v1`/`final` are measured against. It trains on exactly the manifest's train rows and
predicts its val and test rows in manifest order, so runs pair with the project's.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["plain_run", "split_subset"]

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def split_subset(dataset, manifest: pd.DataFrame, split: str):
    """The ImageFolder items of one split's rows, in manifest order (labels checked)."""
    from torch.utils.data import Subset

    where = {os.path.realpath(p): i for i, (p, _) in enumerate(dataset.samples)}
    rows = manifest[manifest["split"] == split]
    missing = [p for p in rows["path"] if os.path.realpath(p) not in where]
    if missing:
        raise ValueError(f"{len(missing)} {split} images are not under the ImageFolder root "
                         f"{dataset.root}, e.g. {missing[0]}")
    index = [where[os.path.realpath(p)] for p in rows["path"]]
    folder_labels = [dataset.targets[i] for i in index]
    if folder_labels != rows["label"].astype(int).tolist():
        raise ValueError(f"ImageFolder classes {dataset.class_to_idx} disagree with the "
                         f"manifest labels of the {split} split")
    return Subset(dataset, index)


def _predict(model, subset, batch_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    probs, targets = [], []
    with torch.inference_mode():
        for x, y in DataLoader(subset, batch_size=batch_size, num_workers=workers):
            probs.append(torch.sigmoid(model(x)).squeeze(1))
            targets.append(y)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def plain_run(manifest: pd.DataFrame, seed: int, *, epochs: int = 3, image_size: int = 128,
              batch_size: int = 32, workers: int = 0, lr: float = 1e-3) -> dict[str, Any]:
    """Train and predict as the study did; val/test probabilities, threshold 0.5, seconds."""
    import time

    import torch
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms as T

    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    base = Path(manifest.attrs["source_dir"]) / "train"
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.Resize((image_size, image_size)), T.RandomRotation(20),
                          T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), norm])
    train = split_subset(datasets.ImageFolder(str(base), train_tf), manifest, "train")
    evaluated = datasets.ImageFolder(str(base), eval_tf)
    model = torchvision.models.resnet18(num_classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            loss = loss_fn(model(x).squeeze(1), y.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        print(f"plain epoch {epoch}/{epochs}  train_loss {total / n:.4f}", flush=True)
    out: dict[str, Any] = {"threshold": 0.5}
    for split in ("val", "test"):
        p, y = _predict(model, split_subset(evaluated, manifest, split), batch_size, workers)
        out[f"{split}_prob"], out[f"{split}_target"] = p.astype(float).tolist(), y.astype(float).tolist()
    out["test_patient"] = manifest.loc[manifest["split"] == "test", "patient_id"].astype(str).tolist()
    out["seconds"] = time.perf_counter() - start
    return out
