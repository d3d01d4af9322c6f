"""The 03 report says, per step of the study's ablation, whether this run shows its direction."""
import pandas as pd

from utils.study.recipes import ablation_direction


def test_holds_does_not_hold_and_cannot_tell() -> None:
    table = pd.DataFrame({
        "variant": ["v1", "v2", "v3", "final", "final"],
        "auroc": [0.80, 0.90, 0.91, 0.70, 0.72],
        "auroc_lo": [0.75, 0.86, 0.87, 0.65, 0.67],
        "auroc_hi": [0.85, 0.94, 0.95, 0.75, 0.77]})
    text = ablation_direction(table)
    lines = text.splitlines()
    assert len(lines) == 4  # v1->v2, v2->v3, v3->final, v1->final (no cnn/scratch rows)
    assert "`v2` AUROC 0.900" in lines[0] and "**holds**" in lines[0]
    assert "cannot tell" in lines[1]                       # v3 vs v2: CIs overlap
    assert "`final` AUROC 0.710" in lines[2] and "does not hold" in lines[2]  # seeds averaged
    assert "cannot tell" in lines[3]                       # final vs v1: 0.76 > 0.75


def test_nothing_to_compare_says_so() -> None:
    assert "No pair" in ablation_direction(pd.DataFrame(
        {"variant": ["v1"], "auroc": [0.9], "auroc_lo": [0.8], "auroc_hi": [0.95]}))
