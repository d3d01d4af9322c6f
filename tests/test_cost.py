"""The cost plan's arithmetic (utils/study/cost.py) and its step pricing (utils/study/budget.py):
split sizes, the training cap, processes, rates, the CPU-rate cache."""
from __future__ import annotations

import dataclasses
import json

import pytest

from utils.config import make_config
from utils.study import budget, cost, run_sizes


def test_published_sizes_cap_the_training_split_only():
    full = make_config({"dataset": "nih"}, "full")
    sizes, source = run_sizes.split_sizes(full, None)
    assert source == "published" and sizes["test"] == 25596
    assert sizes["train"] + sizes["val"] == 86524 and sizes["train"] > 70000
    capped, _ = run_sizes.split_sizes(dataclasses.replace(full, max_train_images=16000), None)
    assert capped == {**sizes, "train": 16000}
    rsna, _ = run_sizes.split_sizes(make_config({"dataset": "rsna"}, "full"), None)
    assert rsna["test"] == round(26684 * 0.15)  # no official test split: carved


def test_unknown_gpu_names_the_choices():
    with pytest.raises(cost.PlanError, match="'k80' is not one of t4, l4, p100, a100, h100, cpu"):
        cost.gpu_named("k80")
    assert cost.gpu_named("CPU") is None and cost.gpu_named(" T4 ").name == "NVIDIA T4"


def _run(**kw) -> run_sizes.RunCost:
    base = dict(step="s", run="s", model="vit", dataset="nih", train_images=16000,
                val_images=13000, test_images=30000, epochs=10, image_size=224)
    return run_sizes.RunCost(**{**base, **kw})


def test_two_processes_train_faster_but_validate_as_one():
    rates = cost.rates_for("vit", 224, cost.GPUS["t4"])
    one, two = cost.run_seconds(_run(), rates), cost.run_seconds(_run(processes=2), rates)
    train = 10 * 16000 / rates.train
    assert one - two == pytest.approx(train - train / 1.9)
    assert rates.train == pytest.approx(390.86 * 320 / 936)  # timm's 3090 figure, by bandwidth
    frozen = cost.run_seconds(_run(frozen=True), rates)
    assert frozen < one  # head-only: the backbone runs forward only


def test_max_steps_per_epoch_and_auto_processes_in_the_priced_run():
    cfg = make_config({"max_steps_per_epoch": 2, "batch_size": 8}, "full")
    run = budget._with_processes(_run(), cfg, processes=2)
    assert run.train_images == 16 and run.processes == 2
    one = budget._with_processes(_run(), make_config({"nproc_per_node": 1}, "full"), 2)
    assert one.processes == 1 and one.train_images == 16000  # explicit N wins


def test_cpu_rates_come_from_the_cache_without_measuring(tmp_path, monkeypatch):
    path = tmp_path / "cpu_rates.json"

    def measure(models, size, batch, steps=3):
        return {m: cost.Rates(100.0, 300.0, "now") for m in models}

    monkeypatch.setattr(cost, "measure_cpu_rates", measure)
    monkeypatch.setattr(budget, "_load", lambda: 0.5)  # an idle machine, both times
    first = budget.cpu_rates_cached(["resnet18"], 32, 8, path)
    assert first["resnet18"].train == 100.0 and path.exists()
    monkeypatch.setattr(cost, "measure_cpu_rates", lambda *a, **k: pytest.fail("re-measured"))
    assert budget.cpu_rates_cached(["resnet18"], 32, 8, path)["resnet18"].eval == 300.0
    assert len(json.loads(path.read_text())) == 1


def test_the_index_reads_cpu_rates_without_ever_measuring(tmp_path, monkeypatch):
    """A run that did not ask for a plan spends nothing measuring: the cached figures, even
    stale ones, or a PlanError naming --plan (the index then leaves its column empty)."""
    path = tmp_path / "cpu_rates.json"
    monkeypatch.setattr(cost, "measure_cpu_rates", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(cost.PlanError, match=r"resnet18 at 32 px .*run_all.py --plan"):
        budget.cpu_rates_cached(["resnet18"], 32, 8, path, measure=False)
    monkeypatch.setattr(budget, "_load", lambda: 50.0)  # measured on a crowded CPU
    monkeypatch.setattr(cost, "measure_cpu_rates",
                        lambda models, *a, **k: {m: cost.Rates(10.0, 30.0, "x") for m in models})
    budget.cpu_rates_cached(["resnet18"], 32, 8, path)
    monkeypatch.setattr(budget, "_load", lambda: 0.0)  # idle now: --plan would re-measure
    monkeypatch.setattr(cost, "measure_cpu_rates", lambda *a, **k: pytest.fail("measured"))
    assert budget.cpu_rates_cached(["resnet18"], 32, 8, path, measure=False)[
        "resnet18"].train == 10.0


def test_session_problem_says_the_hours():
    assert budget.session_problem(11 * 3600, "kaggle") == ""
    assert "13.0 h, more than one Colab session (12 h)" in budget.session_problem(13 * 3600,
                                                                                  "colab")
    assert budget.session_problem(99 * 3600, None) == ""


def test_a_figure_measured_on_a_crowded_cpu_is_measured_again(tmp_path, monkeypatch):
    path, calls = tmp_path / "cpu_rates.json", []

    def measure(models, size, batch, steps=3):
        calls.append(list(models))
        return {m: cost.Rates(10.0 * len(calls), 30.0, "now") for m in models}

    monkeypatch.setattr(cost, "measure_cpu_rates", measure)
    monkeypatch.setattr(budget, "_load", lambda: 100.0)  # far above any core count
    budget.cpu_rates_cached(["vit_mini"], 32, 8, path)
    monkeypatch.setattr(budget, "_load", lambda: 80.0)   # still crowded: the figure stands
    assert budget.cpu_rates_cached(["vit_mini"], 32, 8, path)["vit_mini"].train == 10.0
    monkeypatch.setattr(budget, "_load", lambda: 0.0)    # idle now: measured again
    assert budget.cpu_rates_cached(["vit_mini"], 32, 8, path)["vit_mini"].train == 20.0
    assert len(calls) == 2
