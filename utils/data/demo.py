"""A small synthetic chest X-ray set in the three Kaggle layouts, so everything runs offline.

`make_demo(root)` writes, deterministically from `seed`:

- `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg` with Kermany's file names
  (`IM-0012-0001.jpeg`, `NORMAL2-IM-0345-0001.jpeg`, `person12_bacteria_45.jpeg`), and
  `chest_xray/boxes.csv` (`path,x,y,w,h`): Kermany has no boxes, but Grad-CAM is scored on them;
- `rsna-pneumonia-detection-challenge/stage_2_train_images/<patientId>.dcm` (8-bit CR, some
  MONOCHROME1, some JPEG baseline like the real files), `stage_2_train_labels.csv`,
  `stage_2_detailed_class_info.csv` (one row per label row, duplicates included, as on Kaggle);
- `nih/images_00N/images/<patient>_<follow-up>.png`, `Data_Entry_2017.csv`,
  `BBox_List_2017.csv`, `train_val_list.txt`, `test_list.txt` (headers copied from the real files);
- `rsna-pneumonia-detection-challenge/pneumonia-challenge-dataset-mappings_2018.json`: RSNA's
  patientId → NIH `Image Index` file (the real one is on the RSNA challenge page, not Kaggle),
  linking a seeded ~27 % of the NIH images (the real share: 30k of 112k) to RSNA patients, so
  notebook 02's removal of RSNA holdout patients from NIH training runs on the demo too.

Every dataset folder holds `SYNTHETIC_DEMO_DATA.txt`, which discovery and reports use to label
results "synthetic demo data". The pictures come from `utils.data.phantom.render_chest`
(pneumonia = a blurred opacity in the lateral part of a lung; NIH Cardiomegaly = a large heart,
Effusion = a bright blunted base; the other NIH findings are rare labels with no sign).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..fileio import atomic_write_text
from .phantom import render_chest

__all__ = ["make_demo", "ensure_demo", "render_chest", "DEMO_VERSION", "MARKER",
           "DEFAULT_DEMO_ROOT", "NIH_DATA_ENTRY_HEADER", "NIH_BBOX_HEADER"]

log = logging.getLogger(__name__)

DEMO_VERSION = 4  # bump when the pictures or layouts change: ensure_demo then regenerates
MARKER = "SYNTHETIC_DEMO_DATA.txt"
DEFAULT_DEMO_ROOT = Path(__file__).resolve().parents[2] / "data" / "demo"
KERMANY, RSNA, NIH = "chest_xray", "rsna-pneumonia-detection-challenge", "nih"
# the real headers, byte for byte (the bracketed names contain commas, as on Kaggle)
NIH_DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                         "Patient Gender,View Position,OriginalImage[Width,Height],"
                         "OriginalImagePixelSpacing[x,y]")
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_RARE = ["Atelectasis", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Hernia",
         "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumothorax"]



def _rng(seed: int, *keys: int) -> np.random.Generator:
    """One generator per (source, image): images do not depend on the order they are drawn."""
    return np.random.default_rng([seed, *keys])


# --- Kermany --------------------------------------------------------------------------

# NORMAL, PNEUMONIA. Test splits of ~300 images give AUROC CIs of about ±0.03-0.05; the
# official 16-image val is replaced by a patient-level split of train, as on Kaggle.
_KERMANY_COUNTS = {"train": (140, 280), "val": (8, 8), "test": (130, 170)}


def _kermany_names(rng: np.random.Generator, scale: float) -> list[tuple[str, str, str]]:
    """(split, class, file name) with 1-3 images per patient; no patient in two splits."""
    normal_ids = iter(rng.permutation(np.arange(1, 1800)))  # one pool: IM- and NORMAL2-IM-
    person_ids = iter(rng.permutation(np.arange(1, 1800)))
    counter = {"bacteria": int(rng.integers(1, 50)), "virus": int(rng.integers(1, 50))}
    rows = []
    for split, counts in _KERMANY_COUNTS.items():
        n_normal, n_pneu = (max(2, round(c * scale)) for c in counts)
        names: list[str] = []
        while len(names) < n_normal:
            pid, k = int(next(normal_ids)), int(rng.choice([1, 1, 1, 2, 3]))
            prefix = "NORMAL2-IM" if rng.random() < 0.5 else "IM"
            extra = [f"{prefix}-{pid:04d}-0001-{j:04d}.jpeg" for j in range(1, k)]
            names += [f"{prefix}-{pid:04d}-0001.jpeg"] + extra  # real: IM-0429-0001(-0002)
        rows += [(split, "NORMAL", n) for n in names[:n_normal]]
        names = []
        while len(names) < n_pneu:
            pid, k = int(next(person_ids)), int(rng.choice([1, 1, 2, 2, 3, 4]))
            kind = "bacteria" if rng.random() < 0.65 else "virus"
            for _ in range(k):
                names.append(f"person{pid}_{kind}_{counter[kind]}.jpeg")
                counter[kind] += 1
        rows += [(split, "PNEUMONIA", n) for n in names[:n_pneu]]
    return rows


def _write_kermany(folder: Path, seed: int, image_px: int, scale: float) -> int:
    rows, boxes = _kermany_names(_rng(seed, 1, 0), scale), []
    for i, (split, cls, name) in enumerate(rows):
        rng = _rng(seed, 1, 1, i)
        height = int(round(image_px * rng.uniform(0.72, 0.92)))  # Kermany films are wider
        img, found = render_chest(rng, height, image_px, opacities=int(cls == "PNEUMONIA"),
                                  diffuse="_virus_" in name)
        path = folder / split / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img)
        if i % 17 == 5:  # a few RGB JPEGs, as in the real set
            pil = pil.convert("RGB")
        pil.save(path, format="JPEG", quality=92)
        boxes += [[f"{split}/{cls}/{name}", *b] for b in found["opacity"]]
    table = pd.DataFrame(boxes, columns=["path", "x", "y", "w", "h"])
    table.to_csv(folder / "boxes.csv", index=False)
    return len(rows)


# --- RSNA -----------------------------------------------------------------------------

def _write_dicom(path: Path, img: np.ndarray, pid: str, rng: np.random.Generator,
                 monochrome1: bool, jpeg: bool) -> None:
    """An 8-bit CR DICOM with the header fields the real RSNA files carry."""
    from pydicom.config import IGNORE
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage,
                             generate_uid)

    stored = 255 - img if monochrome1 else img  # stored inverted: readers must flip back
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    uid = generate_uid(entropy_srcs=[pid, "instance"])  # deterministic, unique per patient
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"  # RSNA blanks dates the same way
    ds.Modality, ds.ConversionType = "CR", "WSD"
    view = "AP" if rng.random() < 0.45 else "PA"
    ds.SeriesDescription, ds.ViewPosition, ds.BodyPartExamined = f"view: {view}", view, "CHEST"
    ds.PatientName = ds.PatientID = pid
    ds.PatientSex = str(rng.choice(["M", "F"]))
    # RSNA writes the age as a bare number ('62'), not DICOM's '062Y': keep it, quietly
    ds.add(DataElement(0x00101010, "AS", str(int(rng.integers(18, 90))), validation_mode=IGNORE))
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[pid, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[pid, "series"])
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PixelSpacing = [round(0.168 * 1024 / img.shape[1], 4)] * 2
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    if jpeg:
        from io import BytesIO

        buf = BytesIO()
        Image.fromarray(stored).save(buf, format="JPEG", quality=95)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.Rows, ds.Columns = img.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.set_pixel_data(stored, photometric, 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def _write_rsna(folder: Path, seed: int, image_px: int, scale: float) -> int:
    rng = _rng(seed, 2, 0)
    n = max(4, round(750 * scale))
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    positive = rng.permutation(n) < round(0.3 * n)
    (folder / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    labels, classes = [], []
    for i, pid in enumerate(ids):
        img_rng = _rng(seed, 2, 1, i)
        sign = {}
        if positive[i]:
            cls, sign["opacities"] = "Lung Opacity", 1 + int(img_rng.random() < 0.4)
        elif img_rng.random() < 0.45:
            cls = "Normal"
        else:  # "not normal": a non-pneumonia sign, or nothing visible
            cls, pick = "No Lung Opacity / Not Normal", img_rng.integers(3)
            sign = [{"heart": 1.4}, {"effusion": int(img_rng.choice([-1, 1]))}, {}][pick]
        img, found = render_chest(img_rng, image_px, image_px, **sign)
        _write_dicom(folder / "stage_2_train_images" / f"{pid}.dcm", img, pid, img_rng,
                     monochrome1=i % 4 in (1, 2), jpeg=i % 2 == 0)
        rows = [[pid, *b, 1] for b in found["opacity"]] or [[pid] + [np.nan] * 4 + [0]]
        labels += rows
        classes += [[pid, cls]] * len(rows)  # Kaggle repeats the class per label row
    cols = ["patientId", "x", "y", "width", "height", "Target"]
    table = pd.DataFrame(labels, columns=cols).sort_values("patientId", kind="stable")
    table[cols[1:5]] = table[cols[1:5]].round()
    table.to_csv(folder / "stage_2_train_labels.csv", index=False, float_format="%.1f")
    info = pd.DataFrame(classes, columns=["patientId", "class"])
    info.sort_values("patientId", kind="stable").to_csv(
        folder / "stage_2_detailed_class_info.csv", index=False)
    return n


# --- NIH ------------------------------------------------------------------------------

def _nih_labels(rng: np.random.Generator) -> list[str]:
    """Three findings with a visible sign; the 11 others rare and invisible (label noise)."""
    found = [f for f, p in (("Pneumonia", 0.25), ("Cardiomegaly", 0.15), ("Effusion", 0.15))
             if rng.random() < p]
    found += [f for f in _RARE if rng.random() < 0.025]
    return sorted(found) or ["No Finding"]


def _write_nih(folder: Path, seed: int, image_px: int, scale: float) -> int:
    rng = _rng(seed, 3, 0)
    n, entries, bboxes, patients = max(4, round(800 * scale)), [], [], {}
    pid = 0
    while len(entries) < n:
        pid += int(rng.integers(1, 4))  # real ids are nearly consecutive
        age, sex = int(rng.integers(20, 80)), str(rng.choice(["M", "F"]))
        for fu in range(min(int(rng.geometric(0.35)), 8, n - len(entries))):
            name = f"{pid:08d}_{fu:03d}.png"
            img_rng = _rng(seed, 3, 1, len(entries))
            found = _nih_labels(img_rng)
            img, boxes = render_chest(
                img_rng, image_px, image_px, opacities=int("Pneumonia" in found),
                heart=img_rng.uniform(1.3, 1.5) if "Cardiomegaly" in found else 1.0,
                effusion=int(img_rng.choice([-1, 1])) if "Effusion" in found else 0)
            entries.append((name, "|".join(found), fu, pid, age + fu // 3, sex,
                            "AP" if img_rng.random() < 0.4 else "PA", img))
            patients.setdefault(pid, []).append(name)
            for finding, key in (("Pneumonia", "opacity"), ("Cardiomegaly", "heart"),
                                 ("Effusion", "effusion")):
                if boxes[key] and img_rng.random() < 0.6:  # boxes exist for some images only
                    bboxes.append([name, finding, *boxes[key][0]])
    spacing = round(0.168 * 1024 / image_px, 6)
    per_folder = max(1, -(-n // 2))  # two images_00N folders, as the real set has twelve
    lines = [NIH_DATA_ENTRY_HEADER]
    for i, (name, labels, fu, p, age, sex, view, img) in enumerate(entries):
        out = folder / f"images_{i // per_folder + 1:03d}" / "images" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img)
        pil = pil.convert("RGBA") if i % 41 == 7 else pil  # a few RGBA, as in the real set
        pil.save(out, format="PNG", compress_level=1)
        lines.append(f"{name},{labels},{fu},{p},{age},{sex},{view},{image_px},{image_px},"
                     f"{spacing},{spacing}")
    (folder / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    rows = [NIH_BBOX_HEADER] + [",".join(str(v) for v in b) for b in bboxes]
    (folder / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n")
    # ~35 % of the patients in test_list.txt (the real list: ~23 %): a test split of ~280
    test_ids = set(rng.permutation(sorted(patients))[: max(1, round(len(patients) * 0.35))]
                   .tolist())
    for fname, keep in (("train_val_list.txt", False), ("test_list.txt", True)):
        names = sorted(nm for p, nms in patients.items() if (p in test_ids) == keep for nm in nms)
        (folder / fname).write_text("".join(f"{nm}\n" for nm in names))
    return n


def _write_mapping(root: Path, seed: int) -> int:
    """RSNA's NIH mapping JSON for the demo: distinct RSNA ids → distinct NIH images."""
    from pydicom.uid import generate_uid

    from .rsna import MAPPING_NAME

    rsna_ids = sorted(pd.read_csv(root / RSNA / "stage_2_train_labels.csv")["patientId"].unique())
    entry = pd.read_csv(root / NIH / "Data_Entry_2017.csv", usecols=[0, 1])
    rng = _rng(seed, 4, 0)
    n = min(len(rsna_ids), round(0.27 * len(entry)))
    pids = rng.permutation(rsna_ids)[:n].tolist()
    rows = entry.iloc[np.sort(rng.permutation(len(entry))[:n])]
    mapping = [{"subset_img_id": pid, "img_id": name, "orig_labels": labels.split("|"),
                "SOPInstanceUID": generate_uid(entropy_srcs=[pid, "instance"])}  # as the DICOM
               for pid, (name, labels) in zip(pids, rows.itertuples(index=False))]
    (root / RSNA / MAPPING_NAME).write_text(json.dumps(mapping, indent=1) + "\n")
    return n


# --- the set --------------------------------------------------------------------------

_WRITERS = {KERMANY: _write_kermany, RSNA: _write_rsna, NIH: _write_nih}


def make_demo(root: str | os.PathLike, seed: int = 0, image_px: int = 256,
              scale: float = 1.0) -> Path:
    """Write the synthetic set under `root` (files of the same names are overwritten).

    Args:
        root: output folder; gets `chest_xray/`, `rsna-pneumonia-detection-challenge/`,
            `nih/` and, written last, a `.complete` marker (JSON: version, arguments, counts).
        seed: same seed and arguments → byte-identical files.
        image_px: image width (RSNA/NIH square; Kermany 72-92 % as tall, like its films).
        scale: multiplies every count (1.0: 736 Kermany, 750 RSNA, 800 NIH images).
    Example:
        >>> root = make_demo("/tmp/cxr-demo", scale=0.2)   # doctest: +SKIP
        >>> sorted(p.name for p in root.iterdir())          # doctest: +SKIP
        ['.complete', 'chest_xray', 'nih', 'rsna-pneumonia-detection-challenge']
    """
    if image_px < 32 or scale <= 0:
        raise ValueError(f"image_px={image_px} must be >= 32 and scale={scale} > 0")
    root, start, counts = Path(root), time.perf_counter(), {}
    for name, writer in _WRITERS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(  # first: even a half-written folder says what it is
            f"SYNTHETIC DEMO DATA - generated pictures, not real patients or X-rays.\n"
            f"Made by utils.data.demo (version {DEMO_VERSION}, seed {seed}) in the layout "
            f"of the Kaggle '{name}' data so the notebooks run offline.\n"
            f"Results computed on it say nothing about real chest X-rays.\n")
        counts[name] = writer(folder, seed, image_px, scale)
    counts["rsna_nih_mapping"] = _write_mapping(root, seed)
    info = {"version": DEMO_VERSION, "seed": seed, "image_px": image_px, "scale": scale,
            "counts": counts, "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_text(root / ".complete", json.dumps(info, indent=2, sort_keys=True))
    return root


def _is_complete(root: Path) -> bool:
    try:
        return json.loads((root / ".complete").read_text()).get("version") == DEMO_VERSION
    except (OSError, ValueError):
        return False


def ensure_demo(root: str | os.PathLike | None = None) -> Path:
    """Generate the demo set once (default `<repo>/data/demo`) and return its root.

    Reused only when its `.complete` marker carries the current generator version; anything
    else (a crash half-way, an older generator) is rebuilt in a temporary sibling folder and
    renamed into place, so a reader never sees half a set.
    """
    root = Path(root) if root is not None else DEFAULT_DEMO_ROOT
    if not _is_complete(root):
        strangers = [p.name for p in root.iterdir() if not _ours(p)] if root.is_dir() else []
        if strangers:
            raise FileExistsError(f"{root} holds files that are not demo data ({strangers[:3]}); "
                                  f"pass an empty or new folder to ensure_demo(root)")
        tmp = root.with_name(f".{root.name}.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make_demo(tmp)
        shutil.rmtree(root, ignore_errors=True)  # stale or half-written demo data only
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not _is_complete(root):
                raise
    log.info("Using SYNTHETIC demo data (generated pictures, not real X-rays) at %s", root)
    return root


def _ours(entry: Path) -> bool:
    return entry.name == ".complete" or (entry.name in _WRITERS and (entry / MARKER).exists())
