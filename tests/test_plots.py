"""Every figure function on small fixed inputs: a Figure with the expected axes and artists."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from conftest import shared_path
from utils.reports import plots
from utils.reports.plots import SYNTHETIC_STAMP


def _stamped(fig: Figure) -> bool:
    return any(t.get_text() == SYNTHETIC_STAMP for t in fig.texts)


def _lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


HISTORY = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_auroc": 0.6 + e / 20,
            "val_f1": 0.5 + e / 20, "lr": 1e-3 / e} for e in range(1, 5)]


def test_history_three_panels_and_stamp():
    fig = plots.plot_history(HISTORY, synthetic=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    loss, metric, lr = fig.axes
    assert _lines(loss) == ["train_loss", "val_loss"]
    assert _lines(metric) == ["val_auroc", "val_f1"]
    assert lr.get_yscale() == "log" and len(loss.get_lines()[0].get_xdata()) == 4
    assert _stamped(fig)
    assert not _stamped(plots.plot_history(pd.DataFrame(HISTORY)))
    with pytest.raises(ValueError, match="train_loss"):
        plots.plot_history([{"epoch": 1}])


def test_roc_pr_many_models_with_auc_in_legend():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    curves = {"good": (y, y * 0.6 + rng.random(100) * 0.5), "coin": (y, rng.random(100)),
              "perfect": (y, y.astype(float))}
    fig = plots.plot_roc_pr(curves)
    roc, pr = fig.axes
    assert len(fig.axes) == 2 and len(roc.get_lines()) == 4 and len(pr.get_lines()) == 4
    assert "perfect (AUROC 1.000)" in _legend(roc) and "perfect (AP 1.000)" in _legend(pr)
    assert any(label.startswith("chance (prevalence 0.50") for label in _legend(pr))
    one_class = plots.plot_roc_pr({"a": (np.ones(5), np.random.rand(5))})
    assert any("one class" in t.get_text() for t in one_class.axes[0].texts)


def test_confusion_counts_and_normalised():
    cm = [[40, 10], [5, 45]]
    fig = plots.plot_confusion(cm)
    assert len(fig.axes) == 2  # heatmap + colour bar
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["10", "40", "45", "5"]
    norm = plots.plot_confusion(cm, normalize=True)
    assert "0.80\n(40)" in [t.get_text() for t in norm.axes[0].texts]
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion([[1, 2, 3]] * 3)


def test_reliability_from_evaluate_calibration_dict():
    cal = {"ece": 0.05, "bin_confidence": [0.05, float("nan"), 0.7, None],
           "bin_accuracy": [0.1, float("nan"), 0.6, None], "bin_count": [10, 0, 5, 0],
           "bin_edges": [0, 0.25, 0.5, 0.75, 1.0], "n_bins": 4}
    fig = plots.plot_reliability(cal)
    rel, hist = fig.axes
    assert len(rel.get_lines()) == 2 and len(rel.get_lines()[1].get_xdata()) == 2  # empty bins
    assert len(hist.patches) == 4 and "model (ECE 0.050)" in _legend(rel)
    two = plots.plot_reliability({"a": cal, "b": cal})
    assert len(two.axes[0].get_lines()) == 3


def test_threshold_sweep_curves_and_chosen_line():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    fig = plots.plot_threshold_sweep(y, p, {"value": 0.3, "policy": "max_f1"})
    (ax,) = fig.axes
    f1, sens, spec, chosen = ax.get_lines()
    t = np.asarray(f1.get_xdata())
    at = int(np.argmin(np.abs(t - 0.3)))  # threshold 0.3: TP 2, FP 1, FN 0
    assert sens.get_ydata()[at] == 1.0 and spec.get_ydata()[at] == 0.5
    assert f1.get_ydata()[at] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert f1.get_ydata()[-1] == 0.0 and sens.get_ydata()[0] == 1.0
    assert chosen.get_xdata()[0] == 0.3 and "max_f1" in chosen.get_label()


RUNS = pd.DataFrame({"name": ["a", "b", "c"], "auroc": [0.8, 0.9, 0.7],
                     "auroc_lo": [0.75, 0.85, np.nan], "auroc_hi": [0.85, 0.95, np.nan],
                     "synthetic": [True, False, False]})


def test_metric_bars_with_ci_and_groups():
    fig = plots.plot_metric_bars(RUNS, "auroc")
    (ax,) = fig.axes
    assert len(ax.patches) == 3 and [b.get_height() for b in ax.patches] == [0.8, 0.9, 0.7]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    whiskers = [c for c in ax.containers if isinstance(c, BarContainer)][0].errorbar
    spans = [tuple(np.round(seg[:, 1], 3)) for seg in whiskers.lines[2][0].get_segments()]
    assert spans == [(0.75, 0.85), (0.85, 0.95), (0.7, 0.7)]  # no CI: no whisker length
    assert _stamped(fig)  # auto from the synthetic column
    assert not _stamped(plots.plot_metric_bars(RUNS, "auroc", synthetic=False))
    with pytest.raises(ValueError, match="f1_lo"):
        plots.plot_metric_bars(RUNS.assign(f1=0.5), "f1")
    assert len(plots.plot_metric_bars(RUNS.assign(f1=0.5), "f1", ci=False).axes[0].patches) == 3
    grouped = pd.concat([RUNS.assign(dataset="kermany"), RUNS.assign(dataset="rsna")])
    with pytest.raises(ValueError, match="hue"):
        plots.plot_metric_bars(grouped, "auroc")
    fig = plots.plot_metric_bars(grouped, "auroc", hue="dataset")
    assert len(fig.axes[0].patches) == 6 and _legend(fig.axes[0]) == ["kermany", "rsna"]


def test_metric_bars_over_seeds_draw_the_mean_a_dot_per_seed_and_their_range():
    """The full profile trains 3 seeds per variant: one bar per variant (their mean), not
    a bar per seed, nor the `several rows share ['name']` error 03 hit with 3 seeds."""
    seeds = pd.DataFrame({"name": ["v1", "v1", "v1", "v2"], "seed": [42, 43, 44, 42],
                          "f1": [0.6, 0.7, 0.8, 0.5], "f1_lo": [0.5, 0.6, 0.7, 0.4],
                          "f1_hi": [0.7, 0.8, 0.9, 0.6]})
    with pytest.raises(ValueError, match="over="):
        plots.plot_metric_bars(seeds, "f1")
    fig = plots.plot_metric_bars(seeds, "f1", over="seed")
    (ax,) = fig.axes
    assert [round(b.get_height(), 3) for b in ax.patches] == [0.7, 0.5]
    whiskers = [c for c in ax.containers if isinstance(c, BarContainer)][0].errorbar
    spans = [tuple(np.round(seg[:, 1], 3)) for seg in whiskers.lines[2][0].get_segments()]
    assert spans == [(0.6, 0.8), (0.4, 0.6)]  # v1: the seeds' range; v2 alone: its CI
    dots = np.concatenate([c.get_offsets() for c in ax.collections
                           if isinstance(c, PathCollection)])
    assert sorted(np.round(dots[:, 1], 3)) == [0.5, 0.6, 0.7, 0.8]
    assert "mean over seeds" in ax.get_title()
    assert _stamped(plots.plot_metric_bars(seeds.assign(synthetic=True), "f1", over="seed"))
    with pytest.raises(ValueError, match="seed"):
        plots.plot_metric_bars(pd.concat([seeds, seeds]), "f1", over="seed")
    by_data = pd.concat([seeds.assign(dataset="kermany"), seeds.assign(dataset="rsna")])
    fig = plots.plot_metric_bars(by_data, "f1", over="seed", hue="dataset")
    assert len(fig.axes[0].patches) == 4


def test_per_finding_auroc_from_evaluate_output():
    rows = [{"finding": "Atelectasis", "auroc": 0.7, "auprc": 0.3, "n_pos": 10, "n": 100},
            {"finding": "Hernia", "auroc": float("nan"), "auprc": float("nan"), "n_pos": 0,
             "n": 100},
            {"finding": "Pneumonia", "auroc": 0.8, "auprc": 0.2, "n_pos": 5, "n": 100}]
    fig = plots.plot_per_finding_auroc({"per_finding": rows, "macro_auroc": 0.75})
    (ax,) = fig.axes
    assert len(ax.patches) == 3
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "Pneumonia (n+=5)"  # best at the top
    assert any(t.get_text() == "n/a (one class)" for t in ax.texts)
    assert "macro mean 0.750" in _legend(ax)
    assert len(plots.plot_per_finding_auroc({"A": 0.6, "B": 0.9}).axes[0].patches) == 2


MANIFEST = pd.DataFrame({
    "path": [f"/x/{i}.png" for i in range(8)],
    "patient_id": ["p1", "p1", "p2", "p3", "p4", "p4", "p5", "p6"],
    "split": ["train", "train", "train", "val", "", "", "test", "test"],
    "label": [1, 1, 0, 1, 0, 0, 1, 0], "synthetic": False})


def test_class_balance_images_vs_patients():
    fig = plots.plot_class_balance(MANIFEST)
    images, patients = fig.axes
    assert len(fig.axes) == 2 and not _stamped(fig)
    # bars go label by label (Normal, Pneumonia), each over the splits in sorted order
    assert [t.get_text() for t in images.get_xticklabels()] == ["test", "train", "unsplit", "val"]
    assert [b.get_height() for b in images.patches] == [1, 1, 2, 0, 1, 2, 0, 1]
    assert [b.get_height() for b in patients.patches] == [1, 1, 1, 0, 1, 1, 0, 1]
    assert _stamped(plots.plot_class_balance(MANIFEST.assign(synthetic=True)))
    assert isinstance(plots.plot_class_balance(MANIFEST.iloc[:0]), Figure)


def test_image_sizes_excludes_unknown_and_says_so():
    sizes = pd.DataFrame({"width": [100, 200, 0], "height": [100, 150, 0], "label": [0, 1, 1]})
    fig = plots.plot_image_sizes(sizes)
    scatter, hist = fig.axes
    assert sum(len(c.get_offsets()) for c in scatter.collections) == 2
    assert "1 of unknown size" in scatter.get_title()


def test_image_grid_one_rectangle_per_box_and_cams():
    images = [np.full((32, 32), i * 30, np.uint8) for i in range(5)]
    boxes = [[[1, 2, 10, 10]], [], [[0, 0, 5, 5], [10, 10, 5, 5]], np.zeros((0, 4)),
             [[3, 3, 3, 3]]]
    cams = [np.random.rand(8, 8) for _ in images]
    fig = plots.image_grid(images, titles=list("abcde"), boxes=boxes, cams=cams, ncols=3,
                           synthetic=True, suptitle="step")
    assert len(fig.axes) == 6  # 2 rows × 3, the last one blank
    rects = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in fig.axes]
    assert [len(r) for r in rects] == [1, 0, 2, 0, 1, 0]
    assert rects[0][0].get_xy() == (0.5, 1.5) and rects[0][0].get_width() == 10
    assert [len(ax.images) for ax in fig.axes] == [2, 2, 2, 2, 2, 0]
    assert fig.axes[2].get_title() == "c" and _stamped(fig)
    tensor_like = np.random.rand(2, 1, 16, 16)
    assert len(plots.image_grid(tensor_like).axes) == 2
    with pytest.raises(ValueError, match="2 titles for 5 images"):
        plots.image_grid(images, titles=["a", "b"])


def test_box_stats_from_eda_table():
    table = pd.DataFrame({"x": [10, 50], "y": [20, 60], "w": [30, 40], "h": [30, 20],
                          "cx": [0.25, 0.7], "cy": [0.35, 0.7], "area_fraction": [0.05, 0.04]})
    fig = plots.plot_box_stats(table)
    assert len(fig.axes) == 3  # sizes, centres, colour bar
    counts = fig.axes[1].images[0].get_array()
    assert counts.sum() == 2 and counts[5, 4] == 1  # cy 0.35 → row 5, cx 0.25 → column 4


def test_box_stats_on_real_rsna_boxes():
    labels = pd.read_csv(shared_path("rsna", "stage_2_train_labels.csv"), nrows=3000)
    boxes = labels.dropna(subset=["x"]).rename(columns={"width": "w", "height": "h"})
    boxes = boxes.assign(width=1024, height=1024)  # RSNA images are 1024×1024
    fig = plots.plot_box_stats(boxes)
    counts = fig.axes[1].images[0].get_array()
    assert counts.sum() == len(boxes) > 100
    # pneumonia opacities sit in the lungs: left and right halves, not on the midline
    assert counts[:, :6].sum() + counts[:, 10:].sum() > counts[:, 7:9].sum()


def test_cooccurrence_on_real_nih_labels():
    path = shared_path("nih", "Data_Entry_2017_v2020.csv.gz")
    with gzip.open(path, "rt") as fh:
        entries = pd.read_csv(fh, nrows=3000)
    names = ["Atelectasis", "Effusion", "Infiltration", "Pneumonia"]
    findings = entries["Finding Labels"].str.split("|")
    labels = pd.DataFrame({n: findings.map(lambda f, n=n: int(n in f)) for n in names})
    fig = plots.plot_cooccurrence(labels, names)
    (ax, _) = fig.axes
    both = int(((labels["Effusion"] == 1) & (labels["Infiltration"] == 1)).sum())
    assert both > 0 and str(both) in [t.get_text() for t in ax.texts]
    assert f"Effusion ({int(labels['Effusion'].sum())})" in [t.get_text()
                                                            for t in ax.get_yticklabels()]
    with pytest.raises(ValueError, match="Hernia"):
        plots.plot_cooccurrence(labels, names + ["Hernia"])


def test_save_figure_atomic_png(tmp_path):
    fig = plots.plot_confusion([[1, 2], [3, 4]])
    out = plots.save_figure(fig, tmp_path / "sub" / "cm.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["cm.png"]  # no temp left
    with pytest.raises(ValueError, match="suffix"):
        plots.save_figure(fig, tmp_path / "noext")
