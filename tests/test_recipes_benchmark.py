"""benchmarks.recipes: the held-out split, the paired comparison and the verdict; and one
tiny end-to-end run on the real Kermany images (skipped without the shared data)."""
from __future__ import annotations

import json
import numpy as np
import pytest

from benchmarks import recipe_stats, recipes
from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(recipe: str, seed: int, p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict:
    return {"recipe": recipe, "seed": seed, "threshold": threshold, "seconds": 1.0,
            "test_prob": p.tolist(), "test_target": y.tolist(), "val_prob": p.tolist(),
            "val_target": y.tolist(), "test_patient": [f"p{i // 2}" for i in range(len(y))]}


def _runs(shift: float, noise: float = 0.35, n: int = 200) -> list[dict]:
    """Recipe "a" separates the classes by `shift` more than "b", for three seeds."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 3 > 0).astype(float)
    out = []
    for seed in range(3):
        base = y * 0.3 + rng.normal(0, noise, n)
        out += [_run("a", seed, 1 / (1 + np.exp(-(base + shift * (y - 0.5)) * 4)), y),
                _run("b", seed, 1 / (1 + np.exp(-base * 4)), y)]
    return out


def test_a_clearly_better_recipe_beats_the_spread_and_the_verdict_says_so():
    c = recipe_stats.paired_comparison(_runs(shift=0.6), "a", "b", n_boot=200)
    assert c["seeds"] == [0, 1, 2]
    for m in ("auroc", "f1"):
        assert c[m]["mean"] > c[m]["spread"] > 0 and c[m]["beats_spread"]
        assert c[m]["consistent"] and c[m]["wins"] == 3
        assert 0 < c[m]["ci"][0] < c[m]["mean"] < c[m]["ci"][1] and c[m]["p"] < 0.05
    assert recipe_stats.verdict([c])


def test_an_identical_recipe_does_not():
    runs = _runs(shift=0.0)
    runs = [dict(r, recipe="a") if r["recipe"] == "b" else dict(r, recipe="c") for r in runs]
    c = recipe_stats.paired_comparison(runs + [dict(r, recipe="b") for r in runs
                                               if r["recipe"] == "a"], "a", "b", n_boot=100)
    assert c["auroc"]["mean"] == 0 and c["auroc"]["p"] == 1.0
    assert not c["auroc"]["beats_spread"] and not recipe_stats.verdict([c])


def test_a_comparator_collapsing_on_one_seed_does_not_hide_a_consistent_win():
    runs = _runs(shift=0.6)
    collapsed = next(r for r in runs if r["recipe"] == "b" and r["seed"] == 1)
    collapsed["test_prob"] = (np.asarray(collapsed["test_prob"]) * 0.3).tolist()  # all < 0.5
    c = recipe_stats.paired_comparison(runs, "a", "b", n_boot=200)
    assert c["f1"]["wins"] == 3 and c["f1"]["sign_p"] == 0.125
    assert not c["f1"]["beats_spread"]  # b's collapse inflates the sd the mean must beat...
    assert c["f1"]["consistent"] and recipe_stats.verdict([c])  # ...not the per-seed wins


def test_losing_one_seed_fails_the_verdict():
    runs = _runs(shift=0.6)
    for r in runs:  # seed 2: "a" and "b" swap
        if r["seed"] == 2:
            r["recipe"] = {"a": "b", "b": "a"}[r["recipe"]]
    c = recipe_stats.paired_comparison(runs, "a", "b", n_boot=200)
    assert c["auroc"]["wins"] == 2 and c["auroc"]["sign_p"] == 0.5
    assert not c["auroc"]["consistent"] and not recipe_stats.verdict([c])


def test_runs_on_different_test_rows_are_refused():
    runs = _runs(shift=0.3)
    runs[1]["test_target"] = runs[1]["test_target"][::-1]
    with pytest.raises(ValueError, match="different test rows"):
        recipe_stats.paired_comparison(runs, "a", "b", n_boot=10)


def test_recipe_specs_parse_overrides():
    assert recipes.parse_recipe("final:focal_alpha=-1,ema_decay=0.998,tta=false") == \
        ("final", {"focal_alpha": -1, "ema_decay": 0.998, "tta": False})
    assert recipes._specs("plain,v1,final") == ["plain", "v1", "final"]
    with pytest.raises(SystemExit, match="separate specs with ';'"):
        recipes._specs("v1,final:focal_alpha=0.5")
    assert recipes._specs("final:augmentation=basic,ema_decay=0.99") == [
        "final:augmentation=basic,ema_decay=0.99"]  # one spec needs no ';'
    assert recipes._specs("v1;final:a=1,b=2;") == ["v1", "final:a=1,b=2"]


def test_split_is_by_patient_and_dev_mode_never_touches_the_test_part():
    root = shared_path("kermany224")
    full = recipes.benchmark_manifest(root)
    dev = recipes.benchmark_manifest(root, dev=True)
    test_paths = set(full.loc[full["split"] == "test", "path"])
    assert len(test_paths) > 500 and not test_paths & set(dev["path"])
    assert set(dev["split"]) == {"train", "val", "test"}
    for m in (full, dev):  # no patient in two parts (the splitter's own check, re-asserted)
        assert m.groupby("patient_id")["split"].nunique().max() == 1
    capped = recipes.benchmark_manifest(root, max_train=100)
    assert (capped["split"] == "train").sum() == 100
    assert (capped["split"] == "test").sum() == len(test_paths)  # test stays whole


def test_one_seed_never_beats_the_spread() -> None:
    runs = [r for r in _runs(shift=0.6) if r["seed"] == 0]  # "a" clearly better, one seed
    c = recipe_stats.paired_comparison(runs, "a", "b", n_boot=20)
    assert c["auroc"]["mean"] > 0 and not c["auroc"]["beats_spread"]
    assert not recipe_stats.verdict([c])


@pytest.mark.slow
def test_tiny_end_to_end_run_prints_the_table_and_a_verdict(capsys):
    shared_path("kermany224")
    recipes.main(["--max-train", "32", "--max-eval", "40", "--seeds", "2", "--epochs", "1",
                  "--image-size", "32", "--bootstrap", "20", "--threads", "1"])
    out = capsys.readouterr().out
    for name in ("plain", "v1", "final"):
        assert f"\n{name} " in out
    assert "final − plain" in out and "final − v1" in out
    assert out.strip().splitlines()[-1].startswith("verdict: final best on AUROC and F1")


def test_out_file_with_other_settings_is_refused_and_old_files_read_their_argv(tmp_path):
    out = tmp_path / "runs.json"
    out.write_text(json.dumps({"argv": ["--out", "runs.json"], "runs": [{"recipe": "v1"}]}))
    same = recipes.build_parser().parse_args(["--seeds", "5", "--out", str(out)])
    assert recipes.load_earlier(out, same) == [{"recipe": "v1"}]  # defaults, from its argv
    other = recipes.build_parser().parse_args(["--epochs", "4", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"other settings.*'epochs': \(3, 4\)"):
        recipes.load_earlier(out, other)
    assert recipes.load_earlier(tmp_path / "absent.json", same) == []


@pytest.mark.slow
def test_a_second_run_with_more_seeds_only_trains_the_missing_ones(tmp_path, capsys):
    shared_path("kermany224")
    out = tmp_path / "runs.json"
    tiny = ["--max-train", "32", "--max-eval", "40", "--epochs", "1", "--image-size", "32",
            "--bootstrap", "20", "--threads", "1", "--recipes", "plain,final", "--out", str(out)]
    recipes.main(tiny + ["--seeds", "1"])
    capsys.readouterr()
    recipes.main(tiny + ["--seeds", "2"])
    printed = capsys.readouterr().out
    assert "resuming" in printed and "2 runs kept" in printed
    assert "done plain seed 1" in printed and "seed 0:" not in printed
    saved = json.loads(out.read_text())
    assert sorted((r["recipe"], r["seed"]) for r in saved["runs"]) == [
        ("final", 0), ("final", 1), ("plain", 0), ("plain", 1)]
    assert saved["comparisons"][0]["seeds"] == [0, 1]
