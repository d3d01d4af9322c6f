"""RunConfig: profiles, precedence, and rejection of unknown keys and wrong types."""
from __future__ import annotations

import pytest

from utils.config import PROFILES, ConfigError, RunConfig, make_config
from utils.study.notebook import setup
from utils.study.recipes import ABLATION_VARIANTS, recipe_for


def test_precedence_defaults_profile_params() -> None:
    assert RunConfig().epochs == 20
    assert make_config(profile="demo").epochs == PROFILES["demo"]["epochs"]
    assert make_config({"epochs": 3}, profile="demo").epochs == 3
    # None means "leave it to the profile", as notebooks' parameter cells use it
    assert make_config({"epochs": None}, profile="smoke").epochs == PROFILES["smoke"]["epochs"]


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="epoch_count"):
        make_config({"epoch_count": 3})


def test_wrong_type_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        make_config({"batch_size": "32"})
    assert make_config({"lr": 1}).lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize("params, fragment", [
    ({"epochs": 0}, "epochs=0 must be >= 1"),
    ({"batch_size": 0}, "batch_size=0 must be >= 1"),
    ({"model": "vit_tiny", "image_size": 40}, "multiple of 16"),
    ({"loss": "hinge"}, "loss='hinge' is not one of"),
    ({"val_fraction": 1.5}, "val_fraction"),
    ({"task": "multilabel", "dataset": "kermany"}, "nih"),
])
def test_impossible_values_fail_before_work(params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        make_config(params, profile="demo")


def test_every_variant_recipe_is_a_valid_config() -> None:
    for variant in ABLATION_VARIANTS:
        cfg = make_config({**recipe_for(variant), "variant": variant}, profile="smoke")
        assert cfg.variant == variant
    with pytest.raises(ValueError, match="unknown ablation variant"):
        recipe_for("v9")


def test_setup_resolves_auto_profile_on_demo_data(tmp_path, monkeypatch) -> None:
    from utils.data.demo import make_demo

    root = make_demo(tmp_path / "demo", scale=0.2)
    monkeypatch.setenv("CXR_DATA_ROOT", str(root))
    cfg, ctx = setup({"profile": "auto", "variant": "v2", "model": None, "In": []},
                     verbose=False)
    assert ctx.synthetic and cfg.profile == "demo"
    assert cfg.sampler == "balanced" and cfg.loss == "weighted_bce"  # the v2 recipe
    assert cfg.step == "resnet50_kermany_v2"                        # interactive run name
    assert cfg.reports_dir.startswith("/")                          # made absolute


def test_package_exports_resolve() -> None:
    import utils

    for name in utils.__all__:
        assert getattr(utils, name) is not None, name
