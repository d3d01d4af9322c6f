"""The cost plan of a run before it starts (`run_all.py --plan`), the hosted session it must
fit in (the guard), the profile `auto` picks on Kaggle/Colab, and each step's planned seconds
for the index.

The arithmetic is `utils.study.cost`'s; this module builds each step's config as its
notebook will (the recipe < the parameters cell < run_all's parameters), prices the runs
`run_sizes.runs_of` lists, adds what the steps write (checkpoints, the image caches 01 builds,
RSNA's PNG copies) and prints it as one table.
"""
from __future__ import annotations

import dataclasses
import os
import platform as _platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..fileio import atomic_write_json, read_json
from . import cost, run_sizes
from .cost import PlanError, SESSION_HOURS, fmt_hours
from .run_sizes import RunCost

__all__ = ["PLATFORMS", "detect_platform", "auto_profile", "StepCost", "Plan", "price_plan",
           "format_plan", "session_problem", "device_gpu", "cpu_rates_cached", "PLAN_HOURS",
           "PlanError"]

# The hosted platforms: the GPU a session gets and how many of them.
PLATFORMS: dict[str, tuple[str, int]] = {"kaggle": ("t4", 2), "colab": ("t4", 1)}
# What the kaggle and colab profiles are sized to by the plan: an hour of a 12-hour session
# is left for the setup cell, the installs, 01's first cache build beyond the estimate.
PLAN_HOURS = 11.0
# 01_preprocessing decodes every full-resolution image once into the caches: ~25 ms a
# 1024x1024 PNG/JPEG decode + INTER_AREA resize on one core, over 4 worker processes
# (Kaggle's and Colab's CPUs); converting an RSNA DICOM (JPEG baseline) to PNG about as much.
DECODE_IMAGES_PER_S, DICOM_TO_PNG_PER_S = 160.0, 40.0
# An RSNA 1024x1024 8-bit film as a lossless PNG: 348 KB, measured on the two RSNA films of
# ../shared/data (as JPEG-in-DICOM 127 KB: 3.4 GB for 26,684), so ~9.3 GB of PNGs.
PNG_BYTES = 348_000
# What a platform's working folder holds (Kaggle: /kaggle/working, 20 GB saved output).
DISK_GB = {"kaggle": 20.0}
# Each step's report: the executed notebook and HTML with their figures (demo: 1-4 MB).
REPORT_BYTES = 4_000_000


def detect_platform(environ: Mapping[str, str] | None = None,
                    modules: Mapping[str, Any] | None = None) -> tuple[str | None, str]:
    """(`kaggle` | `colab` | None, the evidence): Kaggle sets KAGGLE_KERNEL_RUN_TYPE in its
    notebooks; Colab sets COLAB_RELEASE_TAG and its kernels import google.colab."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "KAGGLE_KERNEL_RUN_TYPE" in environ:
        return "kaggle", "KAGGLE_KERNEL_RUN_TYPE is set"
    if "COLAB_RELEASE_TAG" in environ:
        return "colab", "COLAB_RELEASE_TAG is set"
    if "google.colab" in modules:
        return "colab", "google.colab is imported"
    return None, ""


def auto_profile(synthetic: bool, platform: str | None = None, evidence: str = ""
                 ) -> tuple[str, str]:
    """(profile, why) for `profile=auto`: demo on the synthetic set, the platform's profile
    on Kaggle or Colab with real data (sized to one session), else full."""
    if synthetic:
        return "demo", "no real data found: the synthetic demo set"
    if platform in PLATFORMS:
        gpu, count = PLATFORMS[platform]
        return platform, (f"running on {platform.capitalize()} ({evidence or 'given'}): the "
                          f"{platform} profile fits one {SESSION_HOURS[platform]:g}-hour session "
                          f"on {count}x{gpu.upper()} (≤ {PLAN_HOURS:g} h by the plan); "
                          f"--profile full for the study's settings")
    return "full", "real data found, not on Kaggle or Colab: the study's settings"


# --- the plan --------------------------------------------------------------------------------
@dataclass
class StepCost:
    """One step priced: its runs, seconds on the priced device, bytes it writes."""

    step: str
    runs: list[RunCost] = field(default_factory=list)
    seconds: float = 0.0
    disk: int = 0
    seeds: int = 0              # per dataset (the step's `seeds`); 0: no training

    @property
    def image_epochs(self) -> int:
        return sum(r.train_images * r.epochs for r in self.runs)


@dataclass
class Plan:
    steps: list[StepCost]
    device: str                 # "t4 x2", "cpu (this machine)"
    sizes_from: str             # "found" | "published"
    rate_sources: dict[str, str]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def disk(self) -> int:
        return sum(s.disk for s in self.steps)


def step_config(step, params: dict[str, Any], notebooks: Path):
    """The config the step's notebook builds: recipe < its parameters cell < run_all's."""
    from ..config import make_config
    from .recipes import recipe_for

    defaults = run_sizes.notebook_defaults(notebooks / step.notebook)
    variant = params.get("variant", defaults.get("variant", ""))
    merged = {**recipe_for(variant), **defaults, **params}
    return make_config(merged, params["profile"])


_PARAMS: dict[str, int] = {}


def _parameters(model: str, size: int) -> int:
    """Parameter count, built on torch's meta device (no memory, ~0.1-2 s once)."""
    key = f"{model}@{size}"
    if key not in _PARAMS:
        import torch

        from ..models.registry import create_model

        with torch.device("meta"):
            net = create_model(model, 1, pretrained=False, image_size=size)
        _PARAMS[key] = sum(p.numel() for p in net.parameters())
    return _PARAMS[key]


def cpu_rates_cached(models: list[str], size: int, batch: int, path: Path | None,
                     threads: int = 0, measure: bool = True) -> dict[str, cost.Rates]:
    """This machine's CPU rates (`cost.measure_cpu_rates`, a few seconds per model) with
    `threads` torch threads (0: torch's default), as many as each notebook kernel gets (with
    `--jobs 2` on 2 cores one each: two threads on a shared CPU measured 6x slower, OpenMP
    spin-waits), kept in `path` per host, threads, model, size and batch.

    `measure=False` (the index's planned column): the cached figures only, stale or not, and
    a `PlanError` naming the command that measures the missing ones, so a run that did not
    ask for a plan never spends its first seconds (minutes on a busy CPU) measuring."""
    host = f"{_platform.node()}/{os.cpu_count()}cpu/{threads or 'default'}t"
    stored = read_json(path) or {}
    batch = min(batch, 16)  # images/s on a CPU hardly depend on the batch beyond this
    key = lambda m: f"{host}|{m}|{size}|{batch}"  # noqa: E731
    load = _load()
    missing = [m for m in dict.fromkeys(models) if key(m) not in stored
               or (measure and _stale(stored[key(m)].get("load", 0.0), load))]
    if missing and not measure:
        raise PlanError(f"this CPU's throughput for {', '.join(missing)} at {size} px is not "
                        f"measured yet (python run_all.py --plan --gpu cpu with the run's flags measures "
                        f"it once and keeps it in {path})")
    if missing:
        import logging

        import torch

        logging.getLogger("run_all").info(
            "measuring this CPU's training throughput for the plan (%s at %d px; once, kept "
            "in %s)", ", ".join(missing), size, path or "memory")
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            measured = cost.measure_cpu_rates(missing, size, batch, steps=2)
        finally:
            torch.set_num_threads(before)
        for name, r in measured.items():
            stored[key(name)] = {"train": r.train, "eval": r.eval, "load": load}
        if path:  # re-read first: another run_all may have written its figures meanwhile
            atomic_write_json(path, {**(read_json(path) or {}), **stored})
    return {m: cost.Rates(stored[key(m)]["train"], stored[key(m)]["eval"],
                          "measured on this CPU") for m in models}




def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _stale(measured_at: float, now: float) -> bool:
    """A figure measured while the CPU was oversubscribed (load above its cores) is several
    times too slow: measure again once the machine is at most half as busy."""
    return measured_at > (os.cpu_count() or 1) and now < measured_at / 2


def _runs(step, cfg, data_root) -> list[RunCost]:
    return run_sizes.runs_of(step.notebook, cfg, data_root)


def _with_processes(run: RunCost, cfg, processes: int) -> RunCost:
    """A run as it trains on the priced machine: `nproc_per_node=0` (auto) is one process per
    GPU of the platform; `max_steps_per_epoch` caps the images an epoch trains."""
    train = run.train_images
    if cfg.max_steps_per_epoch:
        train = min(train, cfg.max_steps_per_epoch * cfg.batch_size)
    procs = (cfg.nproc_per_node or processes) * cfg.nnodes
    return dataclasses.replace(run, processes=procs, train_images=train)


def price_plan(steps, params: dict[str, dict[str, Any]], notebooks: Path,
               data_root: Path | None, gpu_name: str, processes: int = 1,
               figures_path: Path | None = None, cpu_cache: Path | None = None,
               cpu_threads: int = 0, measure_cpu: bool = True) -> Plan:
    """Each selected step priced on `gpu_name` (a `cost.GPUS` key or `cpu`, measured with
    `cpu_threads`, or only read from `cpu_cache` when not `measure_cpu`) with `processes`
    GPUs for `nproc_per_node=0`; `data_root` None: the published sizes."""
    gpu = cost.gpu_named(gpu_name)
    run_sizes.forget_manifests()  # the data as it is now, read once for the whole plan
    figures = cost.load_figures(figures_path) if (figures_path and gpu) else None
    configs = {s.name: step_config(s, params[s.name], notebooks) for s in steps}
    priced: list[tuple[Any, Any, list[RunCost]]] = []
    for s in steps:
        cfg = configs[s.name]
        runs = [_with_processes(r, cfg, processes if gpu else 1) for r in _runs(s, cfg, data_root)]
        priced.append((s, cfg, runs))
    cpu_rates: dict[str, cost.Rates] = {}
    if gpu is None:
        by_shape: dict[tuple[int, int], list[str]] = {}
        for _, cfg, runs in priced:
            for r in runs:
                by_shape.setdefault((r.image_size, cfg.batch_size), []).append(r.model)
        for (size, batch), models in by_shape.items():
            cpu_rates.update({f"{m}@{size}": v for m, v in
                              cpu_rates_cached(models, size, batch, cpu_cache,
                                               cpu_threads, measure_cpu).items()})
    sources: dict[str, str] = {}
    cached: set[tuple[str, int]] = set()
    out = []
    for s, cfg, runs in priced:
        sc = StepCost(s.name, runs, cost.STEP_OVERHEAD_S, REPORT_BYTES,
                      cfg.seeds if runs and not s.notebook.startswith("09_") else 0)
        for r in runs:
            rates = (cpu_rates[f"{r.model}@{r.image_size}"] if gpu is None
                     else cost.rates_for(r.model, r.image_size, gpu, figures))
            sources[r.model] = rates.source
            sc.seconds += cost.run_seconds(r, rates)
            sc.disk += cost.run_disk_bytes(r, _parameters(r.model, r.image_size)) \
                * (3 if cfg.keep_last else 1)   # last.pt: weights + AdamW's two moments
        sc.seconds, sc.disk = _preparation(s, cfg, runs, data_root, cached, sc)
        out.append(sc)
    found = {r.sizes_from for sc in out for r in sc.runs} or {"found" if data_root else "published"}
    device = "cpu (this machine)" if gpu is None else f"{gpu_name.lower()} x{processes}"
    return Plan(out, device, "published" if "published" in found else "found", sources)


def _preparation(step, cfg, runs: list[RunCost], data_root, cached: set, sc: StepCost
                 ) -> tuple[float, int]:
    """The image caches a step is the first to need (01 builds every source's at its size;
    a model step at another size builds its own) and 01's RSNA DICOM->PNG conversion."""
    seconds, disk = sc.seconds, sc.disk
    if not cfg.cache:
        return seconds, disk
    wanted: dict[tuple[str, int], int] = {}
    if step.notebook.startswith("01_"):
        names = cfg.dataset_list()
        names = list(run_sizes.PUBLISHED) if names == ["all"] else names
        for name in names:
            if data_root is None or name in run_sizes.found_sources(data_root):
                sizes, _ = run_sizes.split_sizes(dataclasses.replace(cfg, dataset=name, datasets=""),
                                            data_root)
                wanted[(name, cfg.image_size)] = sum(sizes.values())
        if "rsna" in names and data_root is None:  # a real RSNA download is DICOM
            seconds += run_sizes.PUBLISHED["rsna"]["pool"] / DICOM_TO_PNG_PER_S
            disk += run_sizes.PUBLISHED["rsna"]["pool"] * PNG_BYTES
    for r in runs:
        wanted.setdefault((r.dataset, r.image_size), r.train_images + r.val_images + r.test_images)
    for key, images in wanted.items():
        if key not in cached:
            cached.add(key)
            seconds += images / DECODE_IMAGES_PER_S
            disk += images * key[1] ** 2
    return seconds, disk


# --- output ----------------------------------------------------------------------------------
def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def format_plan(plan: Plan, profile: str) -> str:
    """The plan as an aligned table, its totals and where its figures come from."""
    head = ["step", "runs", "seeds", "train img/epoch", "val img", "image-epochs", "hours", "disk"]
    rows = []
    for s in plan.steps:
        runs = f"{len(s.runs)} ({'+'.join(sorted({r.dataset for r in s.runs}))})" \
            if s.runs else "-"
        rows.append([s.step, runs, str(s.seeds or "-"), f"{sum(r.train_images for r in s.runs):,}",
                     f"{sum(r.val_images for r in s.runs):,}", f"{s.image_epochs:,}",
                     f"{s.seconds / 3600:.2f}", _bytes(s.disk)])
    rows.append(["TOTAL", str(sum(len(s.runs) for s in plan.steps)), "",
                 f"{sum(sum(r.train_images for r in s.runs) for s in plan.steps):,}",
                 f"{sum(sum(r.val_images for r in s.runs) for s in plan.steps):,}",
                 f"{sum(s.image_epochs for s in plan.steps):,}", f"{plan.seconds / 3600:.2f}",
                 _bytes(plan.disk)])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths)))
    sizes = ("image counts from the data found" if plan.sizes_from == "found" else
             "image counts ASSUMED from the published Kaggle sizes (no data found): Kermany "
             "5,232 + 624 test, RSNA 26,684, NIH 86,524 + 25,596 test")
    out = [f"plan: profile={profile} on {plan.device}; {sizes}", line(head),
           "  ".join("-" * w for w in widths), *map(line, rows[:-1]),
           "  ".join("-" * w for w in widths), line(rows[-1]),
           f"total: {fmt_hours(plan.seconds)} ({plan.seconds / 3600:.2f} h) on {plan.device}, "
           f"{_bytes(plan.disk)} written; every epoch counted (early stopping can only "
           f"shorten it)"]
    out += [f"  rates {m}: {src}" for m, src in sorted(plan.rate_sources.items())]
    return "\n".join(out)


def session_problem(seconds: float, platform: str | None) -> str:
    """'' when `seconds` fits one session of `platform`, else the sentence saying it does not."""
    if platform not in SESSION_HOURS or seconds <= SESSION_HOURS[platform] * 3600:
        return ""
    return (f"the plan needs {seconds / 3600:.1f} h, more than one {platform.capitalize()} "
            f"session ({SESSION_HOURS[platform]:g} h): the session would end mid-run")


# --- the device a run actually uses (planned vs actual) ---------------------------------------
def device_gpu() -> tuple[str, int]:
    """(`cost.GPUS` key or `cpu`, count) of this machine: the CUDA device's name matched to
    the priced GPUs ("Tesla T4" -> t4); `cpu` without CUDA; ("", n) for an unknown GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "cpu", 1
        name, count = torch.cuda.get_device_name(0).lower(), torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or a broken driver: nothing to price
        return "", 0
    for key in cost.GPUS:
        if key in name.replace(" ", ""):
            return key, count
    return "", count
