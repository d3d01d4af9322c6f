"""benchmarks.bootstrap and benchmarks.reference_fwer on tiny settings: they run, the
bootstrap's two sides compute the same CIs (so its ratio compares implementations), and
each ends with one `ratio:` line. No timing assertion."""
from __future__ import annotations

import re

import pytest

from benchmarks import bootstrap, reference_fwer
from utils.evaluation.metrics import bootstrap_ci


def test_loop_baseline_gives_bootstrap_ci_s_intervals():
    y, p, groups = bootstrap.make_data(80, 40)
    want = bootstrap_ci(y, p, bootstrap.THRESHOLD, 60, bootstrap.SEED, groups=groups)
    got = bootstrap.loop_ci(y, p, groups, 60)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-9), name


def test_main_prints_a_table_and_ends_with_the_ratio(capsys):
    ratio = bootstrap.main(["--images", "60", "--patients", "30", "--resamples", "20",
                            "--repeats", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d\d", out[-1]) and out[-1] == f"ratio: {ratio:.2f}"
    assert any(line.startswith("| bootstrap_ci (vectorised) |") for line in out)


def test_reference_fwer_runs_every_rule_and_ends_with_the_ratio(capsys):
    rates = reference_fwer.simulate(models=3, images=60, reps=4)
    assert set(rates) == {"test", "validation", "fixed"}
    assert all(0 <= r <= 1 and r * 4 == int(r * 4) for r in rates.values())
    reference_fwer.main(["--models", "3", "--images", "60", "--reps", "4"])
    assert re.fullmatch(r"ratio: (\d+\.\d\d|inf)", capsys.readouterr().out.strip().splitlines()[-1])
