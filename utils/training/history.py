"""What `fit` records and shows per epoch: the History, the best-epoch and early-stopping
rule, the one-line epoch log, optional TensorBoard event files, and the progress record
run_all's console reads (`CXR_PROGRESS_DIR`)."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json

__all__ = ["History", "HIGHER_IS_BETTER", "improved", "record", "quiet", "print_epoch",
           "open_board", "log_board", "Board", "progress_path", "PROGRESS_ENV"]

HIGHER_IS_BETTER = {"val_auroc": True, "val_f1": True, "val_loss": False}
SINGLE_PROCESS = {"world_size": 1, "nnodes": 1, "backend": "none"}  # utils.training.distributed.World()


@dataclass
class History:
    """What `fit` did, epoch by epoch; `epochs` rows are also in every checkpoint."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0                  # 0 = no epoch run yet
    best_score: float = math.nan
    monitor: str = "val_auroc"
    stopped_early: bool = False
    train_seconds: float = 0.0           # sum of epoch wall times (train + validation)
    train_images_per_second: float = 0.0  # training images / training-phase seconds
    resumed_from: int = 0                # epoch of the checkpoint resumed from; 0 = fresh
    distributed: dict = field(default_factory=lambda: dict(SINGLE_PROCESS))  # processes
    resume: dict | None = None           # {from_epoch, bit_exact, reason}; None = fresh
    cudnn_benchmark: bool | None = None  # cuDNN autotuning during training

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.epochs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def quiet() -> bool:
    """Progress bars only where someone watches; papermill/CI get one line per epoch."""
    env = os.environ.get("CXR_QUIET", "").strip().lower()
    if env in ("1", "true", "yes"):
        return True
    if env in ("0", "false", "no"):
        return False
    if "ipykernel" in sys.modules:  # live notebook (run_all sets CXR_QUIET=1 for papermill)
        return False
    return not sys.stderr.isatty()


def improved(score: float, hist: History, loss: float = math.nan) -> bool:
    """The first epoch is always 'best' (so best.pt exists); NaN never beats a number.

    A tie on the monitor goes to the lower validation loss: on a small validation split the
    AUROC saturates at 1.0 within a few epochs (the demo's CheXNet on RSNA: epoch 1 of 3), and
    without the tie-break best.pt would keep the first, least-trained epoch to touch it and
    early stopping would count the better later epochs as no progress.
    """
    if hist.best_epoch == 0 or (math.isnan(hist.best_score) and not math.isnan(score)):
        return True
    if math.isnan(score):
        return False
    if score == hist.best_score and hist.monitor != "val_loss":
        return loss < _best_row(hist).get("val_loss", math.nan)  # NaN on either side: no
    return score > hist.best_score if HIGHER_IS_BETTER[hist.monitor] else score < hist.best_score


def _best_row(hist: History) -> dict:
    return next((r for r in hist.epochs if r.get("epoch") == hist.best_epoch), {})


def record(hist: History, cfg, row: dict) -> bool:
    """Append an epoch, update best/early-stopping/timing; True when it is the new best."""
    better = improved(row[cfg.monitor], hist, row.get("val_loss", math.nan))
    hist.epochs.append(row)
    if better:
        hist.best_epoch, hist.best_score = row["epoch"], row[cfg.monitor]
    hist.stopped_early = bool(cfg.early_stopping and row["epoch"] < cfg.epochs and
                              row["epoch"] - hist.best_epoch >= cfg.early_stopping)
    hist.train_seconds = float(sum(r["seconds"] for r in hist.epochs))
    train_time = sum(r["seconds"] - r["val_seconds"] for r in hist.epochs)
    hist.train_images_per_second = sum(r["train_images"] for r in hist.epochs) / max(train_time, 1e-9)
    return better


PROGRESS_ENV = "CXR_PROGRESS_DIR"  # run_all sets it: where each run's progress record goes


class Board:
    """What `fit` reports after every epoch besides its own line: TensorBoard events (when
    `cfg.tensorboard`) and, when run_all asks for it (`CXR_PROGRESS_DIR` in the environment,
    which the kernels and torchrun's workers inherit), a small JSON record per run that its
    console reads for the live training line. `fit` calls `log_board(board, row)` after each
    epoch and `board.close()` at the end."""

    def __init__(self, run: str, epochs: int, writer: Any = None,
                 progress: Path | None = None) -> None:
        self.run, self.epochs, self.writer, self.progress = run, epochs, writer, progress
        self.seconds: list[float] = []   # this process's epochs (a resume starts afresh)

    def start(self, done: int) -> None:
        """The record before the first epoch: the run has started training."""
        self._write_progress(done, math.nan)

    def log(self, row: dict) -> None:
        if self.writer is not None:
            for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"),
                             ("val/auroc", "val_auroc"), ("val/f1", "val_f1"), ("lr", "lr"),
                             ("images_per_second", "images_per_second")):
                self.writer.add_scalar(tag, row[key], row["epoch"])
            self.writer.flush()
        self.seconds.append(float(row["seconds"]))
        self._write_progress(row["epoch"], row["val_auroc"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _write_progress(self, epoch: int, val_auroc: float) -> None:
        if self.progress is None:
            return
        mean = sum(self.seconds) / len(self.seconds) if self.seconds else None
        atomic_write_json(self.progress, {  # atomic: a reader never sees half a record
            "run": self.run, "epoch": int(epoch), "epochs": int(self.epochs),
            "val_auroc": None if math.isnan(val_auroc) else float(val_auroc),
            "seconds_per_epoch": mean, "time": time.time()})


def progress_path(run: str) -> Path | None:
    """`$CXR_PROGRESS_DIR/<run>.json`, or None when nobody asked for progress records (a
    notebook opened by hand, the unit tests)."""
    folder = os.environ.get(PROGRESS_ENV, "").strip()
    return Path(folder) / f"{run}.json" if folder else None


def _tensorboard(cfg, done: int) -> Any:
    """A TensorBoard writer under <reports_dir>/runs/<run>/; a resume purges the events
    logged after its checkpoint (an interrupted epoch's)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise RuntimeError("tensorboard=true needs the tensorboard package: pip install "
                           "tensorboard==2.21.0 (pinned in requirements.txt), or set "
                           "tensorboard=false") from exc
    return SummaryWriter(log_dir=str(Path(cfg.reports_dir) / "runs" / (cfg.step or "run")),
                         purge_step=done + 1 if done else None)


def open_board(cfg, done: int) -> Board | None:
    """The run's Board (after `done` epochs already trained), or None when neither
    TensorBoard nor a progress record is wanted."""
    writer = _tensorboard(cfg, done) if cfg.tensorboard else None
    progress = progress_path(cfg.step or "run")
    if writer is None and progress is None:
        return None
    board = Board(cfg.step or "run", cfg.epochs, writer, progress)
    board.start(done)
    return board


def log_board(board: Board | None, row: dict) -> None:
    if board is not None:
        board.log(row)


def print_epoch(row: dict, epochs: int, best: bool) -> None:
    print(f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
          f"val_loss {row['val_loss']:.4f}  val_auroc {row['val_auroc']:.4f}  "
          f"val_f1 {row['val_f1']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s  "
          f"{row['images_per_second']:.0f} img/s" + ("  *best" if best else ""), flush=True)
