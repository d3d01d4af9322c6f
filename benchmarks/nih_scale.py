"""NIH ChestX-ray14 at full size: manifest, splits, image checks and cache at 10k-112k rows.

    python -m benchmarks.nih_scale [--sizes 10000,50000,112120] [--image-size 64]
                                   [--workers N] [--work-dir DIR] [--keep]

For each size n it writes a placeholder layout of the first n rows of the real
`Data_Entry_2017_v2020.csv.gz` (`benchmarks.nih_layout`: real labels and boxes, small PNGs),
then, in a fresh Python process (so each size starts from nothing and its memory is its
own), times what a training run does before its first batch:

- `manifest_s`: `load_manifest(cfg)` for `dataset="nih"` (the NIH manifest with the official
  test list, patient-level splits, the parallel image checks, the leak check) plus the
  fingerprints a run stores (`manifest_fingerprint`, `test_fingerprint`);
- `cache_img_per_s`: rows / seconds of `build_cache(manifest, image_size)` in `--workers`
  processes (default: every core).

`peak_rss_mb` is the largest sum of the resident set sizes of that process and all its
children (the pool workers included), sampled every 50 ms; `peak_pss_mb` the same with the
proportional set size, which counts a page shared by k processes (forked workers share their
parent's pages) 1/k times each, so it sums to the memory the tree really holds.
The last line is `scaling: X` = (seconds per row at the largest size) / (seconds per row at
the smallest), seconds = manifest_s + cache seconds. Goal: <= 1.5, and peak RSS <= 4 GB.
Files are freshly written, so they are in the page cache: this measures the CPU side, not
a cold disk. The work folder (a temporary one unless `--work-dir`) is deleted at the end
unless `--keep`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/nih_scale.py` works too
    sys.path.insert(0, str(ROOT))

__all__ = ["SIZES", "shared_nih", "measure", "TreeMemory", "run_size", "scaling", "main"]

SIZES = (10_000, 50_000, 112_120)
COLUMNS = ("rows", "manifest_s", "cache_img_per_s", "peak_rss_mb")


def shared_nih() -> Path | None:
    """`../shared/data/nih` (or `$CXR_SHARED_DATA/nih`) when it holds the label file."""
    root = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "nih"
    return root if (root / "Data_Entry_2017_v2020.csv.gz").is_file() else None


def _timed(store: dict, name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name] = store.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def _cpu_seconds() -> float:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(layout: str | os.PathLike, image_size: int, cache_dir: str | os.PathLike,
            workers: int | None = None) -> dict:
    """Time the manifest path and the cache build on one layout, in this process.

    Returns `rows`, `manifest_s`, `parts` (seconds inside load_manifest, by step),
    `cache_s`, `cache_img_per_s`, `cpu_s` (user + system seconds, this process and its
    finished children) and `split` (images per split).
    """
    from utils.config import make_config
    from utils.data import dataset
    from utils.data.cache import build_cache

    parts: dict[str, float] = {}
    steps = {"build_manifest": "nih_manifest", "assign_splits": "assign_splits",
             "check_images": "check_images", "check_no_patient_leak": "check_no_patient_leak"}
    steps = {name: label for name, label in steps.items() if hasattr(dataset, name)}
    originals = {name: getattr(dataset, name) for name in steps}
    for name, label in steps.items():  # where load_manifest's time goes, step by step
        setattr(dataset, name, _timed(parts, label, originals[name]))
    cfg = make_config({"dataset": "nih", "data_root": str(layout), "max_images": 0,
                       "image_size": image_size}, profile="full")
    cpu0, start = _cpu_seconds(), time.perf_counter()
    try:
        manifest = dataset.load_manifest(cfg)
    finally:
        for name, fn in originals.items():
            setattr(dataset, name, fn)
    fingerprints = time.perf_counter()
    dataset.manifest_fingerprint(manifest)
    dataset.test_fingerprint(manifest)
    manifest_s = time.perf_counter() - start
    parts["fingerprints"] = time.perf_counter() - fingerprints
    start = time.perf_counter()
    build_cache(manifest, image_size, cache_dir, workers=workers, progress=False)
    cache_s = time.perf_counter() - start
    return {"rows": len(manifest), "manifest_s": manifest_s, "parts": parts,
            "cache_s": cache_s, "cache_img_per_s": len(manifest) / cache_s,
            "cpu_s": _cpu_seconds() - cpu0,
            "split": manifest["split"].value_counts().sort_index().to_dict()}


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return None


class TreeMemory:
    """Samples the summed RSS (and PSS, where Linux reports it) of a process and its children."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.root, self.interval = psutil.Process(pid), interval
        self.peak_rss = self.peak_pss = 0
        self.pss_known = _pss_kb(os.getpid()) is not None  # Linux >= 4.14
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = pss = 0
        for proc in procs:
            kb = _pss_kb(proc.pid) if self.pss_known else 0
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                continue  # it ended meanwhile
            pss += (kb or 0) * 1024
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_size(entries, bbox, n: int, work: Path, args) -> dict:
    """Write the layout of the first n rows, measure it in a fresh process, clean up."""
    from benchmarks.nih_layout import write_layout

    layout, cache = work / f"nih_{n}", work / f"cache_{n}"
    start = time.perf_counter()
    write_layout(entries.head(n), layout, bbox=bbox, workers=args.workers)
    layout_s = time.perf_counter() - start
    cmd = [sys.executable, "-m", "benchmarks.nih_scale", "--measure", str(layout),
           "--image-size", str(args.image_size), "--cache-dir", str(cache)]
    cmd += ["--workers", str(args.workers)] if args.workers else []
    env = {**os.environ, "CXR_QUIET": "1", "PYTHONWARNINGS": "ignore"}
    load = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    with TreeMemory(proc.pid) as memory:
        out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"nih_scale: measuring {n} rows failed (exit {proc.returncode}); "
                           f"run `{' '.join(cmd)}` to see why")
    row = json.loads(out.strip().splitlines()[-1])
    row.update(peak_rss_mb=memory.peak_rss / 2**20, layout_s=layout_s,
               peak_pss_mb=memory.peak_pss / 2**20 if memory.pss_known else float("nan"),
               load=(load, os.getloadavg()[0]))
    if not args.keep:
        shutil.rmtree(layout)
        shutil.rmtree(cache, ignore_errors=True)
    return row


def seconds_per_row(row: dict) -> float:
    return (row["manifest_s"] + row["cache_s"]) / row["rows"]


def scaling(rows: list[dict], key: Callable[[dict], float] = seconds_per_row) -> float:
    """(seconds per row at the largest size) / (seconds per row at the smallest)."""
    small, large = min(rows, key=lambda r: r["rows"]), max(rows, key=lambda r: r["rows"])
    return key(large) / key(small)


HEADER = (f"{'rows':>7} {'manifest_s':>10} {'cache_img_per_s':>15} {'peak_rss_mb':>11} "
          f"{'peak_pss_mb':>11} {'cache_s':>8} {'cpu_s':>7} {'load before/after':>17}")


def print_row(r: dict) -> None:
    print(f"{r['rows']:>7} {r['manifest_s']:>10.2f} {r['cache_img_per_s']:>15.0f} "
          f"{r['peak_rss_mb']:>11.0f} {r['peak_pss_mb']:>11.0f} {r['cache_s']:>8.2f} "
          f"{r['cpu_s']:>7.1f} {r['load'][0]:>8.1f}/{r['load'][1]:.1f}", flush=True)


def print_details(rows: list[dict]) -> None:
    print("\nmanifest_s by step (s): " + "; ".join(
        f"{r['rows']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["parts"].items())
        for r in rows))
    print("splits: " + "; ".join(f"{r['rows']}: {r['split']}" for r in rows))
    print("layout writing (not counted): " + ", ".join(f"{r['layout_s']:.1f} s" for r in rows))


def main(argv: list[str] | None = None) -> float | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="row counts, comma-separated (first rows of Data_Entry)")
    parser.add_argument("--image-size", type=int, default=64, help="cache side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: every core)")
    parser.add_argument("--work-dir", default="", help="where layouts and caches go")
    parser.add_argument("--keep", action="store_true", help="keep layouts and caches")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.image_size, args.cache_dir,
                                 args.workers or None)))
        return None
    nih = shared_nih()
    if nih is None:
        print("nih_scale: skipped: Data_Entry_2017_v2020.csv.gz not found in ../shared/data/nih "
              "(set CXR_SHARED_DATA to the shared data folder)")
        return None
    import pandas as pd

    from benchmarks.nih_layout import read_entries

    entries = read_entries(nih / "Data_Entry_2017_v2020.csv.gz")
    bbox = pd.read_csv(nih / "BBox_List_2017.csv.gz") if (nih / "BBox_List_2017.csv.gz").is_file() \
        else None
    sizes = sorted({min(int(s), len(entries)) for s in args.sizes.split(",")})
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cxr-nih-scale-"))
    print(f"nih_scale: {os.cpu_count()} CPUs, cache {args.image_size} px, workers "
          f"{args.workers or os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, in {work}")
    print(HEADER, flush=True)
    rows = []
    try:
        for n in sizes:
            rows.append(run_size(entries, bbox, n, work, args))
            print_row(rows[-1])
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print_details(rows)
    cpu = scaling(rows, lambda r: r["cpu_s"] / r["rows"])
    print(f"cpu scaling (cpu seconds per row, largest / smallest): {cpu:.2f}")
    print("goal: scaling <= 1.5, peak_rss_mb <= 4096 at 112,120 rows")
    result = scaling(rows)
    print(f"scaling: {result:.2f}")
    return result


if __name__ == "__main__":
    main()
