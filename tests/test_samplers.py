"""Samplers: balanced draws are ~50/50 on 1:9 labels, capped epochs respect the cap, seeds
make both reproducible."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_path
from torch.utils.data import DataLoader, WeightedRandomSampler

from utils.data.samplers import CappedSampler, make_sampler, sample_groups

BINARY = np.array([1] * 100 + [0] * 900)          # 1:9, like a rare positive class


def test_none_means_plain_shuffling():
    assert make_sampler("none", BINARY) is None


@pytest.mark.parametrize("shape", [(1000,), (1000, 1)])
def test_balanced_is_about_half_positive(shape):
    sampler = make_sampler("balanced", BINARY.reshape(shape), seed=0)
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == 1000
    drawn = np.concatenate([list(sampler) for _ in range(20)])     # 20 epochs, 20k draws
    assert abs(BINARY[drawn].mean() - 0.5) < 0.02
    assert len(np.unique(drawn)) > 950   # the majority class is subsampled, not discarded


def test_balanced_multilabel_lifts_the_rarest_finding():
    labels = np.zeros((2000, 3), int)
    labels[:600, 0] = 1                     # common finding
    labels[:40, 1] = 1                      # rare, always with the common one
    labels[600:700, 2] = 1
    groups = sample_groups(labels)
    assert (groups[:40] == 1).all() and (groups[40:600] == 0).all() and (groups[700:] == 3).all()
    drawn = np.concatenate([list(make_sampler("balanced", labels, seed=s)) for s in range(5)])
    share = labels[drawn].mean(0)
    assert share[1] == pytest.approx(0.25, abs=0.03)   # 4 groups: rare finding ≈ 1/4
    assert labels[drawn].sum(1).astype(bool).mean() == pytest.approx(0.75, abs=0.03)


def test_balanced_is_deterministic_per_seed():
    a, b = (list(make_sampler("balanced", BINARY, seed=7)) for _ in range(2))
    assert a == b and a != list(make_sampler("balanced", BINARY, seed=8))


def test_capped_respects_the_cap_each_epoch():
    labels = np.zeros((500, 3), int)
    labels[:300, 0] = 1
    labels[300:320, 1] = 1                 # fewer than the cap: all of them every epoch
    labels[320:400, 2] = 1                 # 100 rows with no finding
    sampler = make_sampler("capped", labels, cap=50, seed=0)
    assert isinstance(sampler, CappedSampler)
    epochs = [list(sampler) for _ in range(3)]
    for idx in epochs:
        idx = np.array(idx)
        assert len(idx) == len(set(idx)) == 50 + 20 + 50 + 50
        per_group = labels[idx].sum(0).tolist() + [int((labels[idx].sum(1) == 0).sum())]
        assert per_group == [50, 20, 50, 50]
    assert set(epochs[0]) != set(epochs[1])           # redrawn every epoch
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]                 # set_epoch replays an epoch (resume)
    assert len(sampler) == 170


def test_capped_is_deterministic_and_works_in_a_dataloader():
    labels = np.eye(4, dtype=int)[np.arange(200) % 4]
    a = make_sampler("capped", labels, cap=10, seed=3)
    b = make_sampler("capped", labels, cap=10, seed=3)
    loader = DataLoader(torch.arange(200), batch_size=16, sampler=a)
    assert len(loader) == 3 and torch.cat(list(loader)).tolist() == list(b)


def test_capped_on_real_nih_labels():
    path = shared_path("nih", "sample_labels.csv")
    findings = pd.read_csv(path)["Finding Labels"].str.get_dummies("|")
    labels = findings.drop(columns="No Finding").to_numpy()
    idx = np.array(list(make_sampler("capped", labels, cap=100, seed=0)))
    assert len(idx) == len(set(idx)) < len(labels)
    assert (~labels[idx].any(1)).sum() == 100          # "No Finding" capped exactly
    rare = labels.sum(0) <= 100                          # e.g. Hernia: every image kept
    assert (labels[idx][:, rare].sum(0) == labels[:, rare].sum(0)).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sampler_cap"):
        make_sampler("capped", BINARY, cap=0)
    with pytest.raises(ValueError, match="not one of"):
        make_sampler("weighted", BINARY)
