"""Run names and the (dataset × seed) grid of a step."""
from __future__ import annotations

import pytest

from utils.config import ConfigError, make_config
from utils.study.runs import datasets_for, run_configs
from utils.evaluation.results import parse_run_name, primary_run, run_name, run_seed


@pytest.mark.parametrize("dataset,seed,name", [("rsna", 42, "05_vit"),
                                               ("kermany", 42, "05_vit.kermany"),
                                               ("rsna", 43, "05_vit.s43"), ("rsna", 1, "05_vit.s1"),
                                               ("nih", 2, "05_vit.nih.s2"),
                                               ("kermany", 1, "05_vit.kermany.s1")])
def test_run_names_carry_the_seed_value(dataset, seed, name):
    assert run_name("05_vit", dataset, "rsna", seed) == name
    step, ds, value = parse_run_name(name)
    assert (step, ds or "rsna", value or 42) == ("05_vit", dataset, seed)
    assert run_seed(name) == seed


def test_part_a_name_is_not_read_as_a_dataset():
    assert parse_run_name("02_chexnet_nih") == ("02_chexnet_nih", None, None)
    assert parse_run_name("02_chexnet_nih.s1") == ("02_chexnet_nih", None, 1)


def test_primary_run_is_the_bare_name_else_the_lowest_seed():
    assert primary_run("05_vit", ["05_vit.s43", "05_vit", "05_vit.kermany"]) == "05_vit"
    assert primary_run("05_vit", ["05_vit.s7", "05_vit.s1", "05_vit.kermany.s0",
                                  "05_vit_x.s0"]) == "05_vit.s1"
    assert primary_run("05_vit", ["05_vit.kermany"]) is None


def test_grid_puts_the_own_dataset_first_and_shares_the_split_seed(tmp_path):
    for name in ("chest_xray/train/NORMAL", "chest_xray/train/PNEUMONIA",
                 "rsna"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "rsna" / "stage_2_train_labels.csv").write_text("patientId\n")
    cfg = make_config({"dataset": "rsna", "datasets": "all", "step": "05_vit", "seeds": 2},
                      "demo")
    runs = run_configs(cfg, tmp_path)
    assert [(r.step, r.dataset, r.seed) for r in runs] == [
        ("05_vit", "rsna", 42), ("05_vit.s43", "rsna", 43),
        ("05_vit.kermany", "kermany", 42), ("05_vit.kermany.s43", "kermany", 43)]
    assert {r.split_seed for r in runs} == {42}


def test_absent_named_source_is_an_error_and_empty_means_own(tmp_path):
    cfg = make_config({"dataset": "kermany", "datasets": "kermany,nih"}, "demo")
    with pytest.raises(FileNotFoundError, match="not found"):
        datasets_for(cfg, tmp_path)
    assert datasets_for(make_config({"dataset": "rsna"}, "demo"), tmp_path) == ["rsna"]
    with pytest.raises(ConfigError, match="not sources"):
        make_config({"datasets": "kermany,chexpert"}, "demo")
