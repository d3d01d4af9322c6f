"""utils.gallery's pure parts: which test cases the 08 gallery picks, and its table."""
from __future__ import annotations

import numpy as np
import pytest

from utils.gallery import localisation_table, pick_cases


def test_pick_cases_most_confident_and_worst_errors():
    probs = np.array([0.95, 0.80, 0.40, 0.05, 0.70, 0.20, 0.99, 0.55])
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 1])
    cases = pick_cases(probs, targets, threshold=0.6, k=2)
    tp, fn, fp = cases.values()
    assert tp.tolist() == [0, 1]          # the most confident true positives first
    assert fn.tolist() == [3, 2]          # the most confidently missed positives first
    assert fp.tolist() == [6, 4]          # the most confident false alarms first
    assert pick_cases(probs, targets, threshold=0.6, k=10)[list(cases)[1]].tolist() == [3, 2, 7]


def test_localisation_table_ratio_to_random():
    galleries = {s: {"localisation": {"step": s, "model": "m", "dataset": "kermany", "n": 10,
                                      "hit_rate": h, "random_hit_rate": 0.05, "mean_iou": 0.1,
                                      "threshold": 0.5}}
                 for s, h in (("a", 0.5), ("b", 0.0))}
    table = localisation_table(galleries)
    assert table["hit_rate_vs_random"].tolist() == pytest.approx([10.0, 0.0])
    assert list(table["step"]) == ["a", "b"]
