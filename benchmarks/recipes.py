"""Recipe benchmark: the study's plain pipeline vs the ablation's `v1` and `final`, from scratch.

    python -m benchmarks.recipes [--seeds 5] [--epochs 3] [--image-size 128] [--max-train 0]
                                 [--recipes plain,v1,final] [--dev] [--threads 0] [--out FILE]

`--out FILE` is resumable: the runs already in it (same settings) are kept and only the
missing (recipe, seed) pairs train, so `--seeds 5 --out runs.json` adds seeds 3 and 4 to a
three-seed file and the table and comparisons cover all five.

Data: `../shared/data/kermany224` (Kermany's official *train* split, 5,216 films at 224 px;
the official test split is not there), carved by patient into train/val/test with the
project's splitter (`assign_splits`, 15 % val, 15 % test, split_seed 42). Every recipe sees
the same three parts; thresholds and best epochs are chosen on val; test is measured once.
`--dev` leaves that test part out altogether and carves a dev-test from the rest: recipe
changes are tried there, so nothing is ever chosen on the benchmark's test part.

Recipes (ResNet-18, random init, 3 epochs, 128 px unless told otherwise):
- `plain`: the study's pipeline: torchvision `ImageFolder` + PIL, `Resize`, `RandomRotation(20)`,
  `RandomHorizontalFlip`, ImageNet normalisation, torchvision `resnet18(num_classes=1)`,
  Adam 1e-3, BCE, the last epoch's weights, threshold 0.5 (`benchmarks/study_pipeline.py`).
- any `utils.study.recipes` variant (`v1`, `final`...), through `utils.study.experiment` as the notebooks
  run it; `NAME:key=value,key=value` adds RunConfig overrides (e.g. `final:focal_alpha=0.5`).

Prints, per recipe, test AUROC, F1, sensitivity and specificity at the recipe's own
threshold as mean ± sd over seeds, then the paired difference of the first project recipe
named `final` (or the last one) against each other recipe: per-seed differences, and a
bootstrap over test patients paired across recipes and seeds. The last line is the verdict:
whether it beats every other recipe on AUROC and F1 beyond seed-to-seed noise: better on
every seed (a sign test over five seeds: p 0.031) with the paired CI above 0. Each line also
says whether the mean gain exceeds the larger of the two recipes' seed sd.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/recipes.py` works too
    sys.path.insert(0, str(ROOT))

from benchmarks.recipe_stats import (paired_comparison, run_metrics, summarise,  # noqa: E402
                                     verdict)

__all__ = ["benchmark_manifest", "parse_recipe", "project_run", "run_recipe", "main"]

METRICS = ("auroc", "f1", "sensitivity", "specificity")


def kermany224_root() -> Path:
    """`<repo>/../shared/data/kermany224` (or under `$CXR_SHARED_DATA`); exit when absent."""
    root = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "kermany224"
    if not (root / "train" / "NORMAL").is_dir():
        sys.exit(f"recipes: Kermany images not found at {root} (train/NORMAL, train/PNEUMONIA); "
                 f"set CXR_SHARED_DATA to the shared data folder")
    return root


def benchmark_manifest(root: Path, *, dev: bool = False, max_train: int = 0, max_eval: int = 0,
                       split_seed: int = 42) -> pd.DataFrame:
    """Patient-level train/val/test of the Kermany train folder (see the module docstring).

    `dev`: drop the test part and re-carve train/val/test from what is left (another seed),
    for trying recipe changes. `max_train`: a seeded sample of that many training images
    (val and test stay whole, so the measurement does not get noisier). `max_eval`: the
    same for val and test (for tests of the code, not for measurements).
    """
    from utils.data.kermany import kermany_manifest
    from utils.data.splits import assign_splits, check_no_patient_leak

    manifest = assign_splits(kermany_manifest(root), 0.15, 0.15, split_seed)
    if dev:
        rest = manifest[manifest["split"] != "test"].assign(split="")
        manifest = assign_splits(rest.reset_index(drop=True), 0.15, 0.15, split_seed + 1)
    for splits, cap in ((("train",), max_train), (("val", "test"), max_eval)):
        for split in splits if cap else ():
            rows = manifest[manifest["split"] == split]
            drop = rows.index.difference(rows.sample(n=min(cap, len(rows)),
                                                     random_state=split_seed).index)
            manifest = manifest.drop(drop)
    manifest = manifest.reset_index(drop=True)
    manifest.attrs.update(source="kermany", source_dir=str(root), synthetic=False, skipped=[])
    check_no_patient_leak(manifest)
    return manifest


def parse_recipe(spec: str) -> tuple[str, dict[str, Any]]:
    """`final:focal_alpha=0.5,ema=true` → ("final", {"focal_alpha": 0.5, "ema": True})."""
    from utils.config import parse_value  # run_all's `-p` parsing, one spelling of values

    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"recipe {spec!r}: {item!r} is not key=value")
        overrides[key.strip()] = parse_value(text.strip())
    return name.strip(), overrides


def project_run(name: str, overrides: dict[str, Any], manifest: pd.DataFrame, seed: int,
                args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One `utils.study.recipes` variant trained and evaluated as the notebooks do it."""
    from utils.config import make_config
    from utils.data.dataset import make_loaders
    from utils.models import normalisation
    from utils.study.experiment import Experiment, build_model, evaluate_and_record, train
    from utils.runtime import RunContext
    from utils.study.recipes import recipe_for
    from utils.runtime import pick_device

    params = {**recipe_for(name), "variant": name, "model": "resnet18", "pretrained": False,
              "image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
              "seed": seed, "num_workers": args.workers, "cache": True, "bootstrap": 0,
              "resume": False, "data_root": str(manifest.attrs["source_dir"]),
              "step": f"recipes_{name}_s{seed}", "reports_dir": str(work / "reports"),
              "checkpoint_dir": str(work / "checkpoints"), **overrides}
    cfg = make_config(params, profile="full")
    ctx = RunContext(device=pick_device(cfg.device), data_root=Path(cfg.data_root),
                     synthetic=False, repo_root=ROOT, environment={})
    loaders = make_loaders(cfg, manifest, normalisation(cfg.model, cfg.pretrained))
    exp = Experiment(cfg=cfg, manifest=manifest, loaders=loaders,
                     class_names=["Pneumonia"])
    exp.model = build_model(cfg, 1)
    start = time.perf_counter()
    train(exp, ctx)
    evaluate_and_record(exp, ctx)
    preds = exp.evaluation["predictions"]
    return {"threshold": exp.evaluation["threshold"]["value"],
            "seconds": time.perf_counter() - start,
            **{f"{split}_{key}": list(map(float, getattr(preds[split], attr)[:, 0]))
               for split in ("val", "test") for key, attr in (("prob", "probs"),
                                                              ("target", "targets"))},
            "test_patient": list(preds["test"].patient_ids)}


def run_recipe(spec: str, manifest: pd.DataFrame, seed: int, args: argparse.Namespace,
               work: Path) -> dict[str, Any]:
    """Train one recipe with one seed; its val/test probabilities, threshold and seconds."""
    name, overrides = parse_recipe(spec)
    if name == "plain":
        from benchmarks.study_pipeline import plain_run

        out = plain_run(manifest, seed, epochs=args.epochs, image_size=args.image_size,
                        batch_size=args.batch_size, workers=args.workers, **overrides)
    else:
        out = project_run(name, overrides, manifest, seed, args, work)
    return {"recipe": spec, "seed": seed, **out}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'recipe':<34} {'seeds':>5} " + " ".join(f"{m:>15}" for m in METRICS)
          + f" {'threshold':>15} {'val auroc':>15} {'train+eval s':>12}")
    for r in rows:
        cells = " ".join(f"{r[m]:>7.4f} ± {r[m + '_sd']:.4f}" for m in METRICS)
        print(f"{r['recipe']:<34} {r['seeds']:>5} {cells} {r['threshold']:>7.3f} ± "
              f"{r['threshold_sd']:.3f} {r['val_auroc']:>7.4f} ± {r['val_auroc_sd']:.4f} "
              f"{r['seconds']:>12.0f}")


def print_comparisons(comparisons: list[dict[str, Any]]) -> None:
    print("\npaired differences (best recipe − other): per-seed mean ± sd; bootstrap over test "
          "patients, paired across recipes and seeds: 95% CI, two-sided p")
    for c in comparisons:
        for m in ("auroc", "f1"):
            d = c[m]
            print(f"  {c['a']} − {c['b']:<28} {m:<6} {d['mean']:+.4f} ± {d['sd']:.4f}  "
                  f"CI [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]  p {d['p']:.3f}  "
                  f"wins {d['wins']}/{len(c['seeds'])} seeds (sign p {d['sign_p']:.3f})  "
                  + ("(one seed: no spread)" if len(c["seeds"]) < 2 else
                     f"mean {'>' if d['beats_spread'] else '<='} larger sd {d['spread']:.4f}"))


# what must match for runs of two invocations to be pooled in one table
SETTINGS = ("epochs", "image_size", "batch_size", "max_train", "max_eval", "dev")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SETTINGS}


def load_earlier(out: Path | None, args: argparse.Namespace) -> list[dict]:
    """The runs an earlier invocation saved in `out`, if its settings match these."""
    import json

    if out is None or not out.exists():
        return []
    saved = json.loads(out.read_text())
    # files written before `settings` was saved: their argv says what they ran with
    settings = saved.get("settings") or _settings(build_parser().parse_args(saved["argv"]))
    if settings != _settings(args):
        diff = {k: (settings[k], v) for k, v in _settings(args).items() if settings.get(k) != v}
        sys.exit(f"recipes: {out} holds runs with other settings (saved, now: {diff}); "
                 f"pass those settings to extend it, or another --out")
    print(f"resuming {out}: {len(saved['runs'])} runs kept", flush=True)
    return saved["runs"]


def _save(out: Path | None, argv: list[str] | None, start: float, runs: list[dict],
          **summary: Any) -> float:
    """Write the runs so far (and the summary, at the end) to `out`; the wall time so far."""
    from utils.fileio import atomic_write_json

    wall = time.perf_counter() - start
    if out is not None:
        atomic_write_json(out, {"argv": argv if argv is not None else sys.argv[1:],
                                "settings": summary.pop("settings"), "wall_seconds": wall,
                                **summary, "runs": runs})
    return wall


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", default="plain,v1,final",
                   help="comma-free list separated by ';' or ',' of recipe specs (see docstring); "
                        "use ';' when a spec has overrides")
    p.add_argument("--seeds", type=int, default=5,
                   help="seeds 0..N-1 per recipe (5: winning all is a sign test's p 0.031)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-train", type=int, default=0, help="cap the training images (0 = all)")
    p.add_argument("--max-eval", type=int, default=0,
                   help="cap the val and test images (0 = all; for tests of the code)")
    p.add_argument("--dev", action="store_true",
                   help="leave the test part out; carve a dev-test from the rest (iterate here)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument("--out", type=Path, default=None,
                   help="write every run's probabilities and the summary here (JSON); if it "
                        "exists, its runs are kept and only missing (recipe, seed) pairs run, "
                        "so an interrupted run resumes and --seeds 5 extends a 3-seed file")
    return p


def _specs(text: str) -> list[str]:
    """`plain,v1,final`, `v1;final:a=1,b=2`, or one spec with overrides `final:a=1,b=2`."""
    if ";" not in text and ":" in text:
        if "," in text.partition(":")[0]:  # `v1,final:a=1`: which comma splits specs?
            raise SystemExit("recipes: separate specs with ';' when one has overrides "
                             "(e.g. --recipes 'v1;final:focal_alpha=0.5')")
        return [text.strip()]
    sep = ";" if ";" in text else ","
    return [s.strip() for s in text.split(sep) if s.strip()]


def main(argv: list[str] | None = None) -> bool:
    args = build_parser().parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    specs = _specs(args.recipes)
    manifest = benchmark_manifest(kermany224_root(), dev=args.dev, max_train=args.max_train,
                                  max_eval=args.max_eval)
    sizes = manifest.groupby("split").agg(images=("path", "size"), patients=("patient_id", "nunique"),
                                          positive=("label", "mean"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"recipes benchmark: {', '.join(specs)}; {args.seeds} seeds, {args.epochs} epochs, "
          f"{args.image_size} px, {'DEV split (test part left out)' if args.dev else 'test part'}"
          f"; torch {torch.__version__}, {torch.get_num_threads()} threads, load {load}")
    print(sizes.to_string())
    start, runs = time.perf_counter(), load_earlier(args.out, args)
    done = {(r["recipe"], r["seed"]) for r in runs}
    settings = _settings(args)
    with tempfile.TemporaryDirectory(prefix="cxr-recipes-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for spec in specs:  # seeds outer: an interrupted run still has paired seeds
                if (spec, seed) in done:
                    continue
                runs.append(run_recipe(spec, manifest, seed, args, Path(tmp)))
                m = run_metrics(runs[-1])
                print(f"  done {spec} seed {seed}: {m['seconds']:.0f} s; val auroc "
                      f"{m['val_auroc']:.4f}; test auroc {m['auroc']:.4f} f1 {m['f1']:.4f}",
                      flush=True)
                # an interrupted run keeps what it did
                _save(args.out, argv, start, runs, settings=settings)
    rows = summarise(runs, specs)
    print_table(rows)
    best = next((s for s in specs if parse_recipe(s)[0] == "final"), specs[-1])
    comparisons = [paired_comparison(runs, best, other, n_boot=args.bootstrap)
                   for other in specs if other != best]
    print_comparisons(comparisons)
    ok = verdict(comparisons)
    wall = _save(args.out, argv, start, runs, settings=settings, rows=rows,
                 comparisons=comparisons)
    print(f"wall time {wall / 60:.1f} min")
    one_seed = any(len(c["seeds"]) < 2 for c in comparisons)
    print(f"verdict: {best} best on AUROC and F1 beyond seed-to-seed noise (better on every "
          f"seed, bootstrap CI above 0): "
          f"{'cannot tell (one seed: no spread)' if one_seed else 'yes' if ok else 'no'}")
    return ok


if __name__ == "__main__":
    main()
