"""utils.evaluation.gallery's and utils.evaluation.localisation's pure parts: which test cases the 08 gallery picks,
which CAM layer and method it explains them with, and its table."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from utils.evaluation.gallery import localisation_table, pick_cases


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


def test_hit_rate_ci_resamples_patients_not_films():
    from utils.evaluation.localisation import hit_rate_ci

    hits = [1, 1, 1, 1, 0, 0, 0, 0] * 4
    films = [f"f{i}" for i in range(len(hits))]          # 32 independent films
    patients = [f"p{i // 4}" for i in range(len(hits))]  # 8 patients, all hit or all miss
    lo, hi = hit_rate_ci(hits, films)
    plo, phi = hit_rate_ci(hits, patients)
    assert lo < 0.5 < hi and plo < 0.5 < phi
    assert phi - plo > 1.3 * (hi - lo)  # clustered films carry less information
    assert hit_rate_ci([1, 1, 1], ["a", "b", "c"]) == (1.0, 1.0)
    assert all(np.isnan(hit_rate_ci([], [])))


@pytest.mark.parametrize("name, sides", [
    ("resnet18", [16, 8, 4, 2]), ("densenet121", [16, 8, 4, 2]),
    ("simple_cnn", [32, 16, 8, 4, 2]), ("efficientnet_b0", [16, 8, 4, 2]),
    ("vit_mini", [None])])
def test_cam_candidates_run_fine_to_coarse_and_end_with_the_default(name, sides):
    import torch

    from utils.evaluation.localisation import cam_candidates
    from utils.models.registry import create_model

    model = create_model(name, 1, image_size=64).eval()
    layers = cam_candidates(model)
    assert list(layers)[-1] == "default" and layers["default"] is model.info.cam_layer(model)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
             for m in layers.values()]
    with torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    for h in hooks:
        h.remove()
    assert [s[-1] if len(s) == 4 else None for s in seen] == sides


class _Loader:
    """A loader whose dataset holds two boxed positives (or raises when it is the test's)."""

    def __init__(self, forbidden: bool = False):
        import pandas as pd
        import torch

        self.forbidden = forbidden
        self.labels = np.array([[1.0], [1.0], [0.0]])
        self.manifest = pd.DataFrame({"boxes": [[[1, 1, 4, 4]], [[2, 2, 4, 4]], []]})
        self.item = (torch.zeros(1, 16, 16), torch.ones(1), {"boxes": torch.ones(1, 4)})

    @property
    def dataset(self):
        assert not self.forbidden, "the CAM layer must not be chosen on the test split"
        return self

    def __getitem__(self, i):
        return self.item


def _choice(choice: dict) -> dict:
    return {k: choice[k] for k in ("layer", "method", "chosen_on", "val_hit_rate")}


def test_the_cam_layer_is_chosen_on_validation_boxes_deeper_on_ties(monkeypatch):
    from utils.evaluation import gallery, localisation
    from utils.models.registry import create_model

    model = create_model("resnet18", 1, image_size=64)
    rates = {"layer1": 0.5, "layer2": 0.7, "layer3": 0.7, "default": 0.0}
    monkeypatch.setattr(localisation, "_sweep", lambda m, layers, methods, *a: {
        (n, k): {"hit_rate": rates[n]} for n in layers for k in methods})
    cases = gallery.Cases(model, {}, None, _Loader(forbidden=True), None, 0.5, {}, _Loader())
    choice = localisation.choose_cam_layer(cases, "cpu")
    assert _choice(choice) == {"layer": "layer3", "method": "gradcam", "chosen_on": "val",
                               "val_hit_rate": 0.7}  # every method ties: Grad-CAM wins ties
    assert (choice["plain_layer"], choice["plain_method"]) == ("layer3", "gradcam")
    cases.val = None
    assert localisation.choose_cam_layer(cases, "cpu")["layer"] == "default"


def test_a_cam_method_that_localises_better_on_validation_is_chosen(monkeypatch):
    from utils.evaluation import gallery, localisation
    from utils.models.registry import create_model

    model = create_model("resnet18", 1, image_size=64)

    def sweep(m, layers, methods, images, boxes, device, references=None):
        assert "gradcam-ref" not in methods, "no references: no -ref methods"
        return {(n, k): {"hit_rate": 0.6 if (n, k) == ("layer2", "layercam") else 0.1}
                for n in layers for k in methods}

    monkeypatch.setattr(localisation, "_sweep", sweep)
    cases = gallery.Cases(model, {}, None, _Loader(forbidden=True), None, 0.5, {}, _Loader())
    assert _choice(localisation.choose_cam_layer(cases, "cpu")) == {
        "layer": "layer2", "method": "layercam", "chosen_on": "val", "val_hit_rate": 0.6}


def test_the_choice_is_what_training_added_over_an_untrained_copy(monkeypatch):
    """A map that hits as often on the untrained copy shows the image, not the model
    (Adebayo et al.'s randomisation check): the choice maximises the difference."""
    from utils.evaluation import gallery, localisation
    from utils.models.registry import create_model

    model = create_model("resnet18", 1, image_size=64)
    copy = localisation.untrained_copy(SimpleNamespace(model="resnet18", dropout=0.0,
                                                  image_size=64))
    assert not copy.training
    trained_rates = {("layer1", "gradcam-ref"): 0.9, ("layer2", "gradcam-ref"): 0.8}
    untrained_rates = {("layer1", "gradcam-ref"): 0.8, ("layer2", "gradcam-ref"): 0.1}

    def sweep(m, layers, methods, images, boxes, device, references=None):
        rates = trained_rates if m is model else untrained_rates
        assert references is not None and set(references) == set(layers)
        return {(n, k): {"hit_rate": rates.get((n, k), 0.0)} for n in layers for k in methods}

    monkeypatch.setattr(localisation, "_sweep", sweep)
    refs = {n: np.zeros(1) for n in localisation.cam_candidates(model)}
    trained = localisation.Explained(model, localisation.cam_candidates(model), refs, 3)
    untrained = localisation.Explained(copy, localisation.cam_candidates(copy), refs, 3)
    cases = gallery.Cases(model, {}, None, _Loader(forbidden=True), None, 0.5, {}, _Loader())
    choice = localisation.choose_cam_layer(cases, "cpu", trained=trained, untrained=untrained)
    assert (choice["layer"], choice["method"]) == ("layer2", "gradcam-ref")
    assert (choice["val_hit_rate"], choice["val_untrained_hit_rate"]) == (0.8, 0.1)
