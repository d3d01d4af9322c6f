"""Wall time of each real network of the full profile, through its own step, at toy size.

    python -m benchmarks.full_networks [--image-size 64] [--steps 2] [--work DIR] [--keep]

The rehearsal (`run_all.py --rehearse`) swaps the big networks for CPU stand-ins; this runs
the real ones once each, through the step that trains them in the full study, so a notebook
that cannot build, train or report on its real network shows up before the GPU hours:

    02_chexnet                  DenseNet-121 (part A on NIH's 14 findings, then part B)
    03_resnet_ablation_final    ResNet-50 (the ablation's final recipe)
    04_efficientnet_b4          EfficientNet-B4
    05_vit                      ViT-B/16 (timm, img_size = the run's image size)
    06_mlp_mixer                Mixer-B/16 (timm, img_size = the run's image size)

One `run_all.py --profile full --only <those steps>` with random init (`pretrained=false`:
it works offline), one seed, the step's own dataset, one epoch of `--steps` batches, 32
images per split and no bootstrap, at `--image-size` px (a multiple of 16: ViT and Mixer
cut 16-pixel patches; >= 32 for DenseNet's poolings). Everything is written under a scratch
folder; the repo's reports/ and checkpoints/ are never touched. The table gives each step's
duration from the run's state file (kernel start, data, model, training, evaluation, report).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["NETWORKS", "command", "run", "main"]

NETWORKS = {"02_chexnet": "DenseNet-121", "03_resnet_ablation_final": "ResNet-50",
            "04_efficientnet_b4": "EfficientNet-B4", "05_vit": "ViT-B/16",
            "06_mlp_mixer": "Mixer-B/16"}


def command(work: Path, image_size: int, steps: int) -> list[str]:
    """The run_all command line: full's networks and recipes, toy data and compute."""
    if image_size % 16 or image_size < 32:
        raise SystemExit(f"--image-size {image_size}: use a multiple of 16, at least 32 "
                         f"(ViT/Mixer patches are 16 px; DenseNet's poolings need >= 32)")
    params = {"seeds": 1, "datasets": "", "epochs": 1, "nih_epochs": 1,
              "max_steps_per_epoch": steps, "batch_size": 8, "max_images": 32,
              "image_size": image_size, "pretrained": "false", "bootstrap": 0,
              "num_workers": 0, "cache": "false"}
    return [sys.executable, str(ROOT / "run_all.py"), "--profile", "full", "--force",
            "--jobs", "1", "--reports-dir", str(work / "reports"),
            "--checkpoint-dir", str(work / "checkpoints"), "--only", *NETWORKS,
            *[a for k, v in params.items() for a in ("-p", f"{k}={v}")]]


def run(work: Path, image_size: int = 64, steps: int = 2) -> tuple[list[dict], float, int]:
    """(one row per network: step, network, status, seconds; total seconds; exit status)."""
    from utils.study.run_state import load_state

    started = time.time()
    proc = subprocess.run(command(work, image_size, steps), cwd=ROOT,
                          env={**os.environ, "CXR_CACHE_DIR": str(work / "cache")})
    total = time.time() - started
    state = load_state(work / "reports" / ".run_state.json")
    rows = [{"step": step, "network": net, "status": state.get(step, {}).get("status", "not run"),
             "seconds": state.get(step, {}).get("duration_s")} for step, net in NETWORKS.items()]
    return rows, total, proc.returncode


def _table(rows: list[dict], total: float, image_size: int, steps: int) -> str:
    lines = [f"full networks at {image_size} px, 1 epoch of {steps} batches of 8, random init, "
             f"one seed (load {', '.join(f'{x:.1f}' for x in os.getloadavg())})",
             f"{'step':<28} {'network':<16} {'status':<8} {'seconds':>8}"]
    for r in rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        lines.append(f"{r['step']:<28} {r['network']:<16} {r['status']:<8} {secs:>8}")
    lines.append(f"{'total (run_all, wall)':<54} {total:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64, help="pixels (multiple of 16, >= 32)")
    p.add_argument("--steps", type=int, default=2, help="training batches in the one epoch")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder's reports")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-full-networks-"))
    try:
        rows, total, status = run(work, args.image_size, args.steps)
        print(_table(rows, total, args.image_size, args.steps))
        if status:
            print(f"run_all.py exited {status}: see {work / 'reports' / 'run_all.log'}")
            args.keep = True
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"reports: {work / 'reports'}")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
