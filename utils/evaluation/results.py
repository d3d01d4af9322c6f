"""One JSON per run under `reports/results/`, and the table of all runs the comparison reads.

No training imports here (json, numpy, pandas only): the comparison notebook and
`run_all.py` read results without loading torch. NaN becomes `null`, so every file is
strict JSON that any reader accepts.
"""
from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..data import BINARY_SOURCES
from ..fileio import atomic_write_json, atomic_write_text

__all__ = ["run_name", "parse_run_name", "run_seed", "primary_run", "primary_results",
           "DEFAULT_SEED", "RESULTS_SCHEMA", "run_settings", "build_results", "write_results", "load_results", "write_predictions",
           "load_predictions", "METRICS", "RESULT_COLUMNS"]

METRICS = ("auroc", "auprc", "f1", "accuracy", "precision", "recall", "specificity")
RESULT_COLUMNS = (["step", "plan_step", "dataset", "seed", "seed_index", "model", "synthetic",
                   "params", "train_seconds", "images_per_second"]
                  + [c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
                  + ["threshold", "threshold_policy", "variant", "test_fingerprint", "weights",
                     "val_auroc", "split_seed", "source_version", "profile", "settings", "schema"])
_TEXT_COLUMNS = ("step", "plan_step", "dataset", "model", "synthetic", "threshold_policy",
                 "variant", "test_fingerprint", "weights", "profile", "source_version",
                 "settings")


# --- run names: `<step>[.<dataset>][.s<seed>]` (utils.study.runs makes the runs) -----------
DEFAULT_SEED = 42    # RunConfig.seed's default: its runs keep the bare name
RESULTS_SCHEMA = 2   # 2: run names carry the seed's value (`05_vit.s43`); 1 (no key): its index


def run_name(step: str, dataset: str, home: str, seed: int = DEFAULT_SEED) -> str:
    """The name of one run of `step` (see `utils.study.runs`): the bare step for the default
    seed, `.s<seed>` otherwise, so runs made by different people with different seeds have
    different names and can be gathered in one folder."""
    name = step if dataset == home else f"{step}.{dataset}"
    return name if seed == DEFAULT_SEED else f"{name}.s{seed}"


def parse_run_name(name: str) -> tuple[str, str | None, int | None]:
    """`(step, dataset or None for the step's own, seed value or None for the bare name,
    i.e. DEFAULT_SEED)` of a run name."""
    parts = name.split(".")
    seed = None
    if len(parts) > 1 and parts[-1][:1] == "s" and parts[-1][1:].isdigit():
        seed = int(parts.pop()[1:])
    dataset = parts.pop() if len(parts) > 1 and parts[-1] in BINARY_SOURCES else None
    return ".".join(parts), dataset, seed


def run_seed(name: str) -> int:
    """The training seed a run name stands for (DEFAULT_SEED for the bare name)."""
    seed = parse_run_name(name)[2]
    return DEFAULT_SEED if seed is None else seed


def primary_run(step: str, names: Iterable[str]) -> str | None:
    """The run standing for `step` where one is shown alone (gallery, index, anatomy, 09's
    NIH start): the bare name when present, else the step's own-dataset run with the lowest
    seed (a member who ran `-p seed=1` has `05_vit.s1` only); None when it has none."""
    own = [n for n in names if parse_run_name(n)[:2] == (step, None)]
    if step in own:
        return step
    return min(own, key=run_seed) if own else None


def primary_results(results_dir: str | Path, step: str) -> Path:
    """`results_dir/<primary run of step>.json` (`primary_run`); `<step>.json` when none."""
    results_dir = Path(results_dir)
    names = [p.stem for p in results_dir.glob(f"{step}*.json")] if results_dir.is_dir() else []
    return results_dir / f"{primary_run(step, names) or step}.json"


SETTINGS = ("image_size", "epochs", "batch_size", "lr", "max_images", "max_train_images")


def run_settings(config: Mapping[str, Any], lr_used: Any = None) -> str:
    """The training settings that tell two profiles' runs apart, in one line
    (`image_size=224 epochs=20 ...`; unset caps and `lr=0`, auto, left out; `lr_used`: the
    rate training started at): 07 shows it beside each merged run."""
    values = {**config, "lr": lr_used or config.get("lr")}
    return " ".join(f"{k}={values[k]:g}" if isinstance(values[k], float) else f"{k}={values[k]}"
                    for k in SETTINGS if values.get(k) not in (None, "", 0))


def _clean(obj: Any) -> Any:
    """Plain JSON values: numpy → builtins, NaN/inf → None, tuples → lists."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _metrics_block(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric with its `<name>_ci` ([null, null] when bootstrapping was off)."""
    block = dict(metrics)
    for name in METRICS:
        block.setdefault(name, None)
        block.setdefault(f"{name}_ci", [None, None])
    return block


def build_results(cfg, *, model_name: str, n_params: int, data_sizes: dict,
                  history: dict, evaluation: dict, environment: dict | None,
                  synthetic: bool, extra: dict | None = None) -> dict[str, Any]:
    """The results record of one run (docs/ARCHITECTURE.md, "Run outputs").

    Args:
        history: `History.to_dict()` from `utils.training.loop.fit`.
        evaluation: `utils.evaluation.metrics.evaluate_run(...)`; its raw `predictions` stay out.
        extra: more top-level keys (e.g. Grad-CAM localisation); may not replace a core key.
    Example:
        >>> res = build_results(cfg, model_name="resnet18", n_params=11e6,  # doctest: +SKIP
        ...                     data_sizes={"train": 100}, history=hist.to_dict(),
        ...                     evaluation=ev, environment=environment(), synthetic=True)
        >>> res["test"]["auroc"], res["test"]["auroc_ci"]
    """
    history = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    plan_step = parse_run_name(cfg.step)[0]
    results = {
        "schema": RESULTS_SCHEMA,
        "step": cfg.step, "plan_step": plan_step, "seed": cfg.seed,
        "variant": cfg.variant,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "model": {"name": model_name, "params": int(n_params)},
        "data": {"dataset": cfg.dataset, "task": cfg.task, "synthetic": bool(synthetic),
                 "sizes": dict(data_sizes)},
        "timing": {"train_seconds": history.get("train_seconds"),
                   "train_images_per_second": history.get("train_images_per_second")},
        "history": list(history.get("epochs", [])),
        "training": {**{k: history.get(k) for k in ("best_epoch", "best_score", "monitor",
                                                    "stopped_early", "resumed_from")},
                     **_lr_used(cfg)},
        "threshold": dict(evaluation["threshold"]),
        "test": _metrics_block(evaluation["test"]),
        "val": dict(evaluation.get("val") or {}),
        "calibration": evaluation.get("calibration"),
        # rows only (one per finding); the macro means sit beside them
        "per_finding": (evaluation.get("per_finding") or {}).get("per_finding"),
        "per_finding_macro": {k: v for k, v in (evaluation.get("per_finding") or {}).items()
                              if k.startswith("macro_")} or None,
        "class_names": evaluation.get("class_names"),
        "target": evaluation.get("target"),
        "tta": evaluation.get("tta", cfg.tta),
        "bootstrap": {"resamples": evaluation.get("bootstrap", cfg.bootstrap),
                      "unit": evaluation.get("bootstrap_unit", "image")},
        "environment": dict(environment or {}),
    }
    clash = sorted(set(extra or {}) & set(results))
    if clash:
        raise ValueError(f"build_results(extra=...) would replace core keys {clash}; "
                         f"rename them")
    results.update(extra or {})
    return _clean(results)


def _lr_used(cfg) -> dict[str, Any]:
    """`lr` (the rate training started at) and `lr_reason` (explicit, or auto from the
    starting point: `RunConfig.learning_rate`); a config without it records its `lr`."""
    if hasattr(cfg, "learning_rate"):
        lr, reason = cfg.learning_rate()
        return {"lr": lr, "lr_reason": reason}
    return {"lr": getattr(cfg, "lr", None), "lr_reason": "set explicitly (lr)"}


def write_results(results: dict[str, Any], reports_dir: str | Path = "reports") -> Path:
    """Write `reports_dir/results/<step>.json` atomically (a crash never leaves half a file)."""
    step = results.get("step")
    if not step:
        raise ValueError("results have no 'step': set cfg.step (run_all names each step) "
                         "before writing results")
    return atomic_write_json(Path(reports_dir) / "results" / f"{step}.json", _clean(results))


def _row(res: dict[str, Any]) -> dict[str, Any]:
    test, thr = res.get("test") or {}, res.get("threshold") or {}
    row = {"step": res.get("step"), "plan_step": res.get("plan_step", res.get("step")),
           "seed": res.get("seed"), "seed_index": res.get("seed_index", 0),
           "split_seed": (res.get("config") or {}).get("split_seed"),
           "source_version": (res.get("data") or {}).get("source_version"),
           "profile": (res.get("config") or {}).get("profile"),
           "settings": run_settings(res.get("config") or {},
                                    (res.get("training") or {}).get("lr")),
           "schema": res.get("schema", 1),
           "test_fingerprint": (res.get("data") or {}).get("test_fingerprint"),
           "dataset": (res.get("data") or {}).get("dataset"),
           "model": (res.get("model") or {}).get("name"),
           "synthetic": (res.get("data") or {}).get("synthetic"),
           "params": (res.get("model") or {}).get("params"),
           "train_seconds": (res.get("timing") or {}).get("train_seconds"),
           "images_per_second": (res.get("timing") or {}).get("train_images_per_second"),
           "threshold": thr.get("value"), "threshold_policy": thr.get("policy"),
           "variant": res.get("variant", ""), "weights": _weights_label(res.get("pretrained")),
           # the validation AUROC (07 picks its reference on it, never on test)
           "val_auroc": (res.get("val") or {}).get("auroc")}
    for m in METRICS:
        lo, hi = (test.get(f"{m}_ci") or [None, None])[:2]
        row.update({m: test.get(m), f"{m}_lo": lo, f"{m}_hi": hi})
    return row


def _weights_label(record: dict | None) -> str | None:
    """`imagenet`, `xrv:<name>`, `none`, or `random (imagenet requested)` for a fallback."""
    if not record:
        return None  # a results file from before the record existed
    if record.get("requested") and not record.get("loaded"):
        return f"random ({record.get('source')} requested)"
    return record.get("source")


def load_results(reports_dir: str | Path = "reports") -> pd.DataFrame:
    """One row per run from `reports_dir/results/*.json`, tidy columns (`RESULT_COLUMNS`).

    A file that does not parse is skipped with a warning naming it (a crashed run's
    leftover must not hide every other result); null metrics read as NaN.
    """
    rows = []
    for path in sorted((Path(reports_dir) / "results").glob("*.json")):
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(res, dict):
                raise ValueError("top level is not an object")
        except (ValueError, OSError) as exc:
            warnings.warn(f"skipping unreadable results file {path}: {exc}; delete it or "
                          f"re-run its step", stacklevel=2)
            continue
        if "test" not in res:  # not a training run (e.g. 07_comparison's own summary)
            continue
        rows.append(_row(res))
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    numeric = [c for c in RESULT_COLUMNS if c not in _TEXT_COLUMNS]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    if len(df):  # each run's rank by seed among its step's runs on its dataset (0 = lowest)
        seeds = df["seed"].fillna(df["seed_index"] + DEFAULT_SEED)
        df["seed_index"] = seeds.groupby([df["plan_step"], df["dataset"].fillna("")]).rank(
            method="dense").sub(1).fillna(0).astype(int)
    return df.sort_values("step", ignore_index=True)


def _frame(split: str, preds: Any, class_names: list[str] | None,
           dataset: str = "") -> pd.DataFrame:
    def get(key: str) -> Any:  # `Predictions` objects or plain dicts
        return preds.get(key) if isinstance(preds, Mapping) else getattr(preds, key, None)

    probs = np.asarray(get("probs"), dtype=float)
    probs = probs.reshape(len(probs), -1)
    targets = np.asarray(get("targets"), dtype=float).reshape(probs.shape)
    n, k = probs.shape
    names = list(class_names or get("class_names") or [])
    cols = {}
    if k > 1:
        names = names if len(names) == k else [f"class_{j}" for j in range(k)]
        cols = {**{f"target_{c}": targets[:, j] for j, c in enumerate(names)},
                **{f"prob_{c}": probs[:, j] for j, c in enumerate(names)}}
    # `target`/`prob`: the binary pneumonia column every run has (NIH: its Pneumonia finding)
    j = names.index("Pneumonia") if k > 1 and "Pneumonia" in names else 0
    cols = {"target": targets[:, j], "prob": probs[:, j], **cols}
    indices = get("indices")
    meta = {"split": [split] * n, "dataset": [dataset] * n,
            "index": list(indices) if indices is not None and len(indices) == n else range(n),
            "path": list(get("paths") or [""] * n),
            "patient_id": list(get("patient_ids") or [""] * n)}
    return pd.DataFrame({**meta, **cols})


def write_predictions(step: str, preds: Mapping[str, Any], reports_dir: str | Path = "reports",
                      class_names: list[str] | None = None, dataset: str = "",
                      external: Mapping[str, Any] | None = None) -> Path:
    """Save val/test probabilities as `reports_dir/results/<step>_predictions.csv` (atomic).

    Args:
        preds: `{"val": Predictions, "test": Predictions}` (`evaluate_run(...)["predictions"]`)
            or the same with dicts holding `probs`, `targets` (and optionally `paths`...).
        dataset: the run's own source (the `dataset` column of its val/test rows).
        external: `{source: Predictions}` of other sources' test splits scored by this
            model (rows with `split="external"`), for the comparison's external validation.
    """
    if not step:
        raise ValueError("write_predictions needs a step name (cfg.step)")
    parts = [_frame(split, p, class_names, dataset) for split, p in preds.items()]
    parts += [_frame("external", p, class_names, name) for name, p in (external or {}).items()]
    frame = pd.concat(parts, ignore_index=True)
    return atomic_write_text(Path(reports_dir) / "results" / f"{step}_predictions.csv",
                             frame.to_csv(index=False))


def load_predictions(step: str, reports_dir: str | Path = "reports") -> pd.DataFrame:
    """The CSV `write_predictions` wrote, for ROC/PR overlays in the comparison notebook."""
    path = Path(reports_dir) / "results" / f"{step}_predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no predictions for step {step!r} at {path}: run that step "
                                f"(run_all.py) first")
    return pd.read_csv(path, dtype={"path": str, "patient_id": str}, keep_default_na=False)
