"""Run a trained model on new X-rays: `python -m utils.evaluation.predict --checkpoint PATH --images DIR`.

The checkpoint carries everything needed (model name, input size, normalisation, class
names, the validation-chosen threshold), so no other argument is required. Folders are
walked recursively for JPEG, PNG (and BMP/TIFF) and DICOM files (by extension, or by the
DICOM magic bytes for files without one). One CSV row per input file, in input order:
`path, probability, prediction, error` (+ `cam` with `--cam`, + one `p_<finding>` column
per finding for a multilabel NIH checkpoint). A file that cannot be read gets its error in
its row and the run goes on. The exit code is the number of failed files, capped at 100,
so scripts can tell a clean run (0) from a partial one; usage errors (no or a corrupt
checkpoint, no images) exit 2 without writing a CSV, as argparse does.

Example:
    python -m utils.evaluation.predict --checkpoint checkpoints/02_resnet/best.pt \\
        --images new_xrays/ extra.dcm --out preds.csv --cam cams/ --tta
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..fileio import atomic_path

__all__ = ["IMAGE_EXTENSIONS", "MAX_EXIT_CODE", "find_images", "predict_files", "main"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
MAX_EXIT_CODE = 100      # exit codes above 125 mean "killed by a signal" to shells
CAM_PREVIEW_SIDE = 1024  # overlays keep the image's aspect ratio, downsized to this side
_COLUMNS = ["path", "probability", "prediction", "error"]


def _wanted(path: Path) -> bool:
    """An image file met while walking a folder: by extension, else by the DICOM magic
    (DICOM files often have no extension, or a UID-like one such as `.1249`)."""
    from ..data.images import is_dicom

    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(path)


def _walk(folder: Path, skip: Path | None) -> list[Path]:
    """Image files below `folder`, sorted; hidden files and folders (`.git`, macOS `._x`,
    our own atomic-write temp files) and anything under `skip` are left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if skip and Path(os.path.abspath(path)).is_relative_to(skip):
            continue
        if path.is_file() and _wanted(path):
            found.append(path)
    return found


def find_images(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
                ) -> list[Path]:
    """Files given directly (whatever their extension) plus image files under given folders.

    Folders are walked recursively in sorted order; a file given twice (or also found in a
    folder) is listed once; two links to one file are two inputs.

    Args:
        inputs: files and/or folders.
        exclude: a folder whose contents are never listed (e.g. the `--cam` output).
    Raises:
        FileNotFoundError: an input that does not exist (named).
    """
    skip = Path(os.path.abspath(exclude)) if exclude else None
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += _walk(item, skip)
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    seen: set[str] = set()
    return [p for p in files if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]


@dataclass
class _Spec:
    """What the checkpoint says about inputs and outputs."""

    names: list[str]
    column: int            # the output scored against the threshold (Pneumonia)
    threshold: float
    threshold_note: str
    tta: bool              # whether the threshold was chosen on TTA-averaged probabilities
    transform: Callable

    @classmethod
    def of(cls, ckpt: dict[str, Any]) -> "_Spec":
        from ..data.transforms import build_transform

        num = int(ckpt.get("num_classes", 1))
        names = list(ckpt.get("class_names") or (["Pneumonia"] if num == 1 else
                                                 [f"class_{k}" for k in range(num)]))
        column = names.index("Pneumonia") if num > 1 and "Pneumonia" in names else 0
        if ckpt.get("threshold") is None:
            note = ("0.5 by default: this checkpoint has no validation-chosen threshold "
                    "(evaluate the run first)")
            warnings.warn(f"threshold {note}", stacklevel=3)
            threshold = 0.5
        else:
            threshold = float(ckpt["threshold"])
            note = f"validation-chosen, {ckpt.get('threshold_policy', 'policy not recorded')}"
        tta = bool(ckpt.get("threshold_tta", (ckpt.get("config") or {}).get("tta", False)))
        transform = build_transform("none", int(ckpt["input_size"]), float(ckpt["mean"]),
                                    float(ckpt["std"]), boxes=False)
        return cls(names, column, threshold, note + (", with TTA" if tta else ""), tta, transform)

    def label(self, p: float) -> str:
        positive = self.names[self.column]
        negative = "Normal" if len(self.names) == 1 else f"No {positive}"
        return positive if p >= self.threshold else negative


def _load(path: Path, spec: _Spec, keep_preview: bool) -> tuple[Any, Any, str]:
    """`(tensor, preview or None, "")`, or `(None, None, error)`: never raises on bad input."""
    from ..data.images import read_image

    try:
        image = read_image(path)
        tensor = spec.transform(image=image)["image"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported in its row
        return None, None, f"{type(exc).__name__}: {exc}"
    preview = None
    if keep_preview:
        import cv2

        scale = CAM_PREVIEW_SIDE / max(image.shape)
        preview = image if scale >= 1 else cv2.resize(
            image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
            interpolation=cv2.INTER_AREA)
    return tensor, preview, ""


def _cam_names(files: list[Path]) -> list[str]:
    """Overlay file names that cannot collide: the path below the files' common folder."""
    if not files:
        return []
    absolute = [Path(os.path.abspath(p)) for p in files]  # links keep their own names
    common = Path(os.path.commonpath([p.parent for p in absolute]))
    rel = [p.relative_to(common) for p in absolute]
    stems = ["__".join(r.parts[:-1] + (r.stem,)) for r in rel]
    counts = Counter(stems)  # a.jpg and a.png: keep the suffix to tell them apart
    return [(s if counts[s] == 1 else "__".join(r.parts)) + "_cam.png"
            for s, r in zip(stems, rel)]


def _write_cams(model, batch: torch.Tensor, previews: list, targets: list[Path],
                column: int) -> None:
    """One Grad-CAM overlay PNG per image (on the image itself, aspect kept), atomically."""
    from PIL import Image

    from .cam import CamExplainer, overlay

    with CamExplainer(model) as cam:
        maps = cam(batch, target_index=column)
    for preview, target, heat in zip(previews, targets, maps):
        with atomic_path(target) as tmp:
            Image.fromarray(overlay(preview, heat)).save(tmp, format="PNG")


def predict_files(checkpoint: str | os.PathLike, files: Sequence[str | os.PathLike], *,
                  tta: bool | None = None, batch_size: int = 16,
                  cam_dir: str | os.PathLike | None = None, device: str = "auto",
                  workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Probabilities, labels at the checkpoint's threshold, and errors: one row per file.

    Args:
        checkpoint: a `best.pt` written by `fit` (and given its threshold by evaluation).
        files: image files, e.g. from `find_images`; rows keep this order.
        tta: average over flips/rotations (`utils.evaluation.metrics.tta_probabilities`); default:
            as when the checkpoint's threshold was chosen (TTA shifts the probabilities, so
            the other choice gets a warning).
        batch_size: images per forward pass.
        cam_dir: write one Grad-CAM overlay PNG per readable image here (`cam` column).
        device: auto | cpu | cuda | mps.
        workers: threads decoding images (default min(4, CPUs)).
        progress: show a tqdm bar.
    Returns:
        DataFrame `path, probability, prediction, error` (+ `cam`, + `p_<finding>` for a
        multilabel checkpoint); `attrs` hold `threshold`, `threshold_note`, `failed`.
    Example:
        >>> table = predict_files("checkpoints/demo/best.pt", find_images(["x/"]))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from ..runtime import pick_device
    from ..training.checkpoint import load_model
    from .metrics import tta_probabilities

    dev = pick_device(device)
    model, ckpt = load_model(checkpoint, device=dev)
    spec = _Spec.of(ckpt)
    amp = bool(ckpt.get("config", {}).get("amp", True))  # as evaluation chose the threshold
    if tta is None:
        tta = spec.tta
    elif tta != spec.tta:
        warnings.warn(f"the threshold {spec.threshold:.3f} was chosen on probabilities "
                      f"{'with' if spec.tta else 'without'} TTA, these are "
                      f"{'with' if tta else 'without'}: labels may shift; leave tta unset "
                      f"(or pass --{'' if spec.tta else 'no-'}tta) to match", stacklevel=2)
    files = [Path(f) for f in files]
    cams = [Path(cam_dir) / n for n in _cam_names(files)] if cam_dir else [None] * len(files)
    if cam_dir:
        from .cam import CamExplainer

        CamExplainer(model)  # fails now, not after the first batch, if no CAM layer is known
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
        load = partial(_load, spec=spec, keep_preview=bool(cam_dir))
        for start, chunk, loaded in _prefetched(files, pool, load, batch_size):
            ok = [i for i, item in enumerate(loaded) if item[0] is not None]
            probs: dict[int, np.ndarray] = {}
            if ok:
                batch = torch.stack([loaded[i][0] for i in ok]).to(dev)
                out = tta_probabilities(model, batch, tta=tta, amp=amp).float().cpu().numpy()
                probs = dict(zip(ok, out))
                if cam_dir:
                    _write_cams(model, batch, [loaded[i][1] for i in ok],
                                [cams[start + i] for i in ok], spec.column)
            rows += [_row(path, probs.get(i), loaded[i][2], spec,
                          cams[start + i] if i in probs else None)
                     for i, path in enumerate(chunk)]
            bar.update(len(chunk))
    table = pd.DataFrame(rows, columns=_columns(spec, bool(cam_dir)))
    table.attrs.update(threshold=spec.threshold, threshold_note=spec.threshold_note,
                       failed=int((table["error"] != "").sum()))
    return table


def _prefetched(files: list[Path], pool: ThreadPoolExecutor, load: Callable,
                batch_size: int) -> Iterator[tuple[int, list[Path], list]]:
    """`(start, files, loaded)` per batch; the next batch decodes while this one is used,
    and no more than two batches are held in memory."""
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
    for k, chunk in enumerate(chunks):
        current = pending
        pending = [pool.submit(load, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
        yield k * batch_size, chunk, [f.result() for f in current]


def _columns(spec: _Spec, cam: bool) -> list[str]:
    extra = [f"p_{n}" for n in spec.names] if len(spec.names) > 1 else []
    return _COLUMNS + (["cam"] if cam else []) + extra


def _row(path: Path, probs: np.ndarray | None, error: str, spec: _Spec,
         cam: Path | None) -> dict[str, Any]:
    if probs is None:
        return {"path": str(path), "probability": np.nan, "prediction": "", "error": error,
                "cam": ""}
    p = float(probs[spec.column])
    row = {"path": str(path), "probability": p, "prediction": spec.label(p), "error": "",
           "cam": str(cam) if cam else ""}
    if len(spec.names) > 1:
        row.update({f"p_{n}": float(v) for n, v in zip(spec.names, probs)})
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (the number of failed files, capped)."""
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a best.pt from checkpoints/<step>/")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default %(default)s)")
    parser.add_argument("--cam", default=None, metavar="DIR", help="write Grad-CAM overlays here")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average flips/rotations (default: as the checkpoint's "
                             "threshold was chosen)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        parser.error(f"checkpoint {args.checkpoint} not found: train one with run_all.py "
                     f"(checkpoints/<step>/best.pt)")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size} must be >= 1")
    try:
        files = find_images(args.images, exclude=args.cam)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    if not files:
        parser.error(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))} or DICOM) found "
                     f"in {' '.join(args.images)}")
    from ..training.checkpoint import CheckpointError

    try:
        table = predict_files(args.checkpoint, files, tta=args.tta, batch_size=args.batch_size,
                              cam_dir=args.cam, device=args.device, workers=args.workers)
    except CheckpointError as exc:  # corrupt, or not ours: a usage error, not a file failure
        parser.error(str(exc))
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    _summary(table, args.out)
    return min(table.attrs["failed"], MAX_EXIT_CODE)


def _summary(table: pd.DataFrame, out: str, listed: int = 10) -> None:
    """One line for the run, then the failed files (the first `listed`) on stderr."""
    failed = table[table["error"] != ""]
    print(f"{len(table)} files: {len(table) - len(failed)} predicted, {len(failed)} failed; "
          f"threshold {table.attrs['threshold']:.3f} ({table.attrs['threshold_note']}) "
          f"-> {out}", flush=True)
    for row in failed.head(listed).itertuples():
        print(f"  failed: {row.error}" if row.path in row.error else
              f"  failed: {row.path}: {row.error}", file=sys.stderr)
    if len(failed) > listed:
        print(f"  ... and {len(failed) - listed} more (see the error column of {out})",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
