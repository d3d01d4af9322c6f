"""Run a trained model on new X-rays: `python -m utils.predict --checkpoint PATH --images DIR`.

The checkpoint carries everything needed (model name, input size, normalisation, class
names, the validation-chosen threshold). One CSV row per input file; a file that cannot be
read gets its error in its row and the run goes on; the exit code is the number of failures
(capped at 100), so scripts can tell a clean run from a partial one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .fileio import atomic_path

__all__ = ["IMAGE_EXTENSIONS", "find_images", "predict_files", "main"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given directly, plus image files (by extension) found under given folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def _batches(files: list[Path], transform, batch_size: int) -> Iterator[tuple[list, list, list]]:
    """(rows of unreadable files, readable paths, tensors) per batch; errors never stop it."""
    from .data.images import read_image

    for start in range(0, len(files), batch_size):
        errors, paths, tensors = [], [], []
        for path in files[start:start + batch_size]:
            try:
                tensors.append(transform(image=read_image(path))["image"])
                paths.append(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported in its row
                errors.append({"path": str(path), "probability": np.nan, "prediction": "",
                               "error": f"{type(exc).__name__}: {exc}"})
        yield errors, paths, tensors


def predict_files(checkpoint: str | Path, files: list[Path], *, tta: bool = False,
                  batch_size: int = 16, cam_dir: str | Path | None = None,
                  device: str = "auto") -> pd.DataFrame:
    """Probabilities, labels at the checkpoint's threshold, and errors, one row per file."""
    from tqdm.auto import tqdm

    from .evaluate import tta_probabilities
    from .runtime import pick_device
    from .train import load_model
    from .transforms import build_transform

    dev = pick_device(device)
    model, ckpt = load_model(checkpoint, device=dev)
    threshold = float(ckpt.get("threshold", 0.5))
    positive = (ckpt.get("class_names") or ["Pneumonia"])[0]
    transform = build_transform("none", int(ckpt["input_size"]), float(ckpt["mean"]),
                                float(ckpt["std"]), boxes=False)
    rows: list[dict] = []
    progress = tqdm(total=len(files), desc="predict", unit="img")
    for errors, paths, tensors in _batches(files, transform, batch_size):
        rows += errors
        if tensors:
            batch = torch.stack(tensors).to(dev)
            with torch.inference_mode():
                probs = tta_probabilities(model, batch, tta=tta)[:, 0].float().cpu().numpy()
            for path, p in zip(paths, probs):
                rows.append({"path": str(path), "probability": float(p),
                             "prediction": positive if p >= threshold else "Normal", "error": ""})
            if cam_dir:
                _write_cams(model, batch, paths, Path(cam_dir), ckpt)
        progress.update(len(errors) + len(paths))
    progress.close()
    table = pd.DataFrame(rows, columns=["path", "probability", "prediction", "error"])
    table.attrs["threshold"] = threshold
    return table


def _write_cams(model, batch: torch.Tensor, paths: list[Path], cam_dir: Path, ckpt: dict) -> None:
    """One Grad-CAM overlay PNG per image, written atomically."""
    from PIL import Image

    from .cam import CamExplainer, overlay

    cams = CamExplainer(model)
    with cams:
        maps = cams(batch)
    images = (batch[:, 0].float().cpu().numpy() * float(ckpt["std"]) + float(ckpt["mean"]))
    for path, image, cam in zip(paths, images, maps):
        picture = overlay((np.clip(image, 0, 1) * 255).astype(np.uint8), cam)
        with atomic_path(cam_dir / f"{path.stem}_cam.png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a best.pt from checkpoints/<step>/")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default %(default)s)")
    parser.add_argument("--cam", default=None, metavar="DIR", help="write Grad-CAM overlays here")
    parser.add_argument("--tta", action="store_true", help="average flips/rotations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).exists():
        parser.error(f"checkpoint {args.checkpoint} not found: train one with run_all.py "
                     f"(checkpoints/<step>/best.pt)")
    try:
        files = find_images(args.images)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    table = predict_files(args.checkpoint, files, tta=args.tta, batch_size=args.batch_size,
                          cam_dir=args.cam, device=args.device)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    failed = int((table["error"] != "").sum())
    print(f"{len(table)} files, {failed} failed, threshold {table.attrs['threshold']:.3f} "
          f"→ {args.out}")
    return min(failed, 100)


if __name__ == "__main__":
    sys.exit(main())
