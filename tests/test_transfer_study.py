"""The transfer experiment (notebook 09): arms planned from starts × stages, the ones that
cannot run here skipped with the reason, the rest trained on one split and compared."""
from __future__ import annotations

import json

import pytest
import torch

from utils.config import ConfigError, make_config
from utils.study import transfer_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(monkeypatch):
    """No download ever: pretrained weights are 'offline' whatever the machine can reach."""
    from utils.models import provenance, registry

    real = registry._build

    def build(name, num_classes, pretrained, *args):
        if pretrained:
            raise provenance.PretrainedWeightsError(f"could not download pretrained weights for "
                                                f"{name} (offline?) [test]")
        return real(name, num_classes, pretrained, *args)

    monkeypatch.setattr(registry, "_build", build)


def _cfg(tmp_path, root=None, **params):
    base = {"model": "resnet18", "image_size": 32, "step": "09_transfer",
            "checkpoint_dir": str(tmp_path / "ckpt"), "reports_dir": str(tmp_path / "reports"),
            "transfer_stages": "head,all", "device": "cpu", "bootstrap": 50}
    if root is not None:
        base["data_root"] = str(root)
    return make_config({**base, **params}, profile="smoke")


def _nih_checkpoint(tmp_path):
    """What 02's part A leaves: a 14-finding model's best.pt."""
    from utils.models.registry import create_model

    path = tmp_path / "ckpt" / "02_chexnet_nih" / "best.pt"
    path.parent.mkdir(parents=True)
    model = create_model("resnet18", 14)
    torch.save({"model_state": model.state_dict(), "model_name": "resnet18",
                "num_classes": 14}, path)
    return path


def test_arms_that_cannot_run_say_why(tmp_path, offline):
    arms = {a.name: a for a in transfer_study.plan_arms(_cfg(tmp_path))}
    assert list(arms) == ["random/all", "imagenet/head", "imagenet/all", "nih/head", "nih/all",
                          "xrv/head", "xrv/all"]  # random init trains only with "all"
    assert not arms["random/all"].skipped
    assert "offline" in arms["imagenet/head"].skipped
    assert "02_chexnet_nih/best.pt" in arms["nih/all"].skipped and "run 02_chexnet" in \
        arms["nih/all"].skipped
    assert arms["xrv/head"].skipped  # the weights helper's xrv support, or its file, is absent
    assert len(transfer_study.skipped_table(list(arms.values()))) == 6


def test_each_arm_gets_its_start_stage_and_learning_rate(tmp_path, offline):
    nih = _nih_checkpoint(tmp_path)
    arms = {a.name: a for a in transfer_study.plan_arms(_cfg(tmp_path))}
    random_, head, whole = arms["random/all"].cfg, arms["nih/head"].cfg, arms["nih/all"].cfg
    assert (random_.pretrained, random_.init_checkpoint, random_.learning_rate()[0]) == \
        (False, "", 1e-3)
    assert head.init_checkpoint == str(nih) and head.learning_rate()[0] == 1e-4
    assert (head.trainable_from, whole.trainable_from) == ("head", "all")
    assert head.step == "09_transfer_nih_head" and head.reports_dir.endswith("transfer")
    trainable = [p for p in arms["nih/head"].model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 512 + 1  # only the new 1-output head
    with pytest.raises(ConfigError, match="must include 'all'"):
        transfer_study.plan_arms(_cfg(tmp_path, transfer_stages="head"))


def test_nih_start_on_rsna_warns_unless_part_a_left_rsna_test_patients_out(tmp_path, offline):
    """RSNA's films are NIH films: 02's part A must have dropped the RSNA val/test patients."""
    _nih_checkpoint(tmp_path)
    cfg = _cfg(tmp_path, dataset="rsna", transfer_starts="random,nih")
    with pytest.warns(UserWarning, match="may score films they trained on"):
        transfer_study.plan_arms(cfg)
    results = tmp_path / "reports" / "results" / "02_chexnet_nih.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"data": {"dropped_for_rsna_overlap": 12}}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        transfer_study.plan_arms(cfg)


def test_full_profile_compares_the_last_stage_too(tmp_path):
    cfg = make_config({"model": "chexnet"}, profile="full")
    assert transfer_study.stages_for(cfg) == ["head", "denseblock4", "all"]
    assert transfer_study.stages_for(make_config({}, profile="demo")) == ["head", "all"]


@pytest.mark.slow
def test_arms_train_on_one_split_and_are_compared_paired(tmp_path, offline):
    from utils.data.dataset import load_manifest
    from utils.data.demo import make_demo
    from utils.runtime import RunContext
    from utils.evaluation.results import load_results

    root = make_demo(tmp_path / "demo", scale=0.2)
    _nih_checkpoint(tmp_path)
    cfg = _cfg(tmp_path, root, transfer_starts="random,nih", max_images=24, batch_size=8)
    ctx = RunContext(device="cpu", data_root=root, synthetic=True, repo_root=tmp_path,
                     environment={})
    arms = transfer_study.run_arms(transfer_study.plan_arms(cfg), load_manifest(cfg), ctx)
    table = transfer_study.transfer_table(arms, n_boot=50)
    assert list(table["start"] + "/" + table["trainable_from"]) == \
        ["random/all", "nih/head", "nih/all"]
    assert list(table["lr"]) == [1e-3, 1e-4, 1e-4]
    assert table["trainable_params"].iloc[1] == 513
    delta = table["delta_auroc vs random/all"]
    assert delta.isna().iloc[0] and delta.notna().iloc[1:].all()
    assert (table["delta_lo vs random/all"] <= table["delta_hi vs random/all"]).iloc[1:].all()
    curves = transfer_study.learning_curves(arms)
    assert set(curves) == {"random/all", "nih/head", "nih/all"} and curves["nih/all"][0]["epoch"] == 1
    summary = transfer_study.write_summary(cfg, arms, table, synthetic=True)
    assert json.loads(summary.read_text())["arms"][2]["trainable_from"] == "all"
    # the arms' own results sit apart, so the comparison does not rank them with the models
    assert (tmp_path / "reports" / "transfer" / "results" / "09_transfer_nih_head.json").exists()
    assert load_results(cfg.reports_dir).empty
