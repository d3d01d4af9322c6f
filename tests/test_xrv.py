"""torchxrayvision weights (issue 14.3): files built here in the published formats (the
DenseNets are whole pickled modules of torchxrayvision's classes, saved by torch 1.x in
the legacy format; the ResNet-50 is a state_dict), placed where the README says, load into
the registry's densenet121/chexnet/resnet50 with the network disabled; absent, one message
names the file, its URL and the folder; the loaders scale pixels as torchxrayvision does."""
from __future__ import annotations

import hashlib
import socket
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.backends.thnn
import torchvision
from torch import nn

from utils.models.provenance import PretrainedWeightsError
from utils.models.registry import create_model, model_info
from utils.models.weights import describe_weights
from utils.models.xrv import PATHOLOGIES, XRV_WEIGHTS, read_state

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),  # legacy saves note the sources
              pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")]
ALL = XRV_WEIGHTS["densenet121-res224-all"]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """torch hub's checkpoints folder in tmp_path, an empty home, no network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


class _OldBackend:
    """torch < 1.5 pickled each module's `_backend` as this call (2019-2020 xrv files)."""

    def __reduce__(self):
        return (torch.nn.backends.thnn._get_thnn_function_backend, ())


def _xrv_densenet(monkeypatch) -> nn.Module:
    """xrv.models.DenseNet's layout: torchvision's densenet121, 1-channel stem, 18 outputs,
    an `op_threshs` buffer, every module class named `torchxrayvision.models.<class>`."""
    torch.manual_seed(3)
    model = torchvision.models.densenet121(num_classes=18)
    model.features.conv0 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model.register_buffer("op_threshs", torch.rand(18))
    fake = types.ModuleType("torchxrayvision.models")
    monkeypatch.setitem(sys.modules, "torchxrayvision", types.ModuleType("torchxrayvision"))
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", fake)
    for module in model.modules():
        name = type(module).__name__
        if type(module).__module__.startswith("torchvision") and not hasattr(fake, name):
            setattr(fake, name, type(name, (type(module),), {"__module__": fake.__name__}))
        if hasattr(fake, name):
            module.__class__ = getattr(fake, name)
        module._backend = _OldBackend()
    for bn in model.modules():  # non-trivial running statistics, as a trained net has
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.1, 0.1), bn.running_var.uniform_(0.5, 1.5)
    return model


def _save_densenet(monkeypatch, path: Path, legacy: bool = True) -> dict:
    model = _xrv_densenet(monkeypatch)
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.delitem(sys.modules, "torchxrayvision.models")  # loading must not need it
    monkeypatch.delitem(sys.modules, "torchxrayvision")
    return state


def test_xrv_densenet_file_loads_into_densenet121_with_pneumonia_head(hub, monkeypatch):
    path = hub / ALL.file
    state = _save_densenet(monkeypatch, path)
    model = create_model("densenet121", 1, pretrained="xrv:densenet121-res224-all")
    own = model.state_dict()
    body = [k for k in state if not k.startswith("classifier.") and k != "op_threshs"]
    assert len(body) > 600 and all(torch.equal(own[k], state[k]) for k in body)
    pneumonia = PATHOLOGIES.index("Pneumonia")
    assert torch.equal(own["classifier.1.weight"][0], state["classifier.weight"][pneumonia])
    assert torch.equal(own["classifier.1.bias"][0], state["classifier.bias"][pneumonia])
    info = model.info
    assert (info.mean, info.std, info.input_size) == (0.5, 1 / 2048, 224)
    assert info == model_info("densenet121", pretrained="xrv:all")
    record = model.pretrained_weights
    assert record["loaded"] and record["source"] == "xrv:densenet121-res224-all"
    assert Path(record["file"]) == path and record["url"] == ALL.url
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["head_labels"] == ["Pneumonia"]
    assert "torchxrayvision densenet121-res224-all" in describe_weights(record)


def test_all_18_outputs_reproduce_the_xrv_network(hub, monkeypatch):
    """chexnet with 18 outputs computes what torchxrayvision's DenseNet computes (its
    forward is torchvision's: features, ReLU, average pool, classifier)."""
    _save_densenet(monkeypatch, hub / ALL.file, legacy=False)  # the zip format reads too
    reference = _xrv_densenet(monkeypatch).eval()
    model = create_model("chexnet", 18, pretrained="xrv:all").eval()
    x = torch.rand(2, 1, 64, 64) * 2048 - 1024
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_xrv_resnet50_state_dict_maps_nih_findings(hub):
    from utils.data.nih import NIH_FINDINGS

    w = XRV_WEIGHTS["resnet50-res512-all"]
    net = torchvision.models.resnet50(num_classes=18)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    state = net.state_dict()
    torch.save(state, hub / w.file)
    model = create_model("resnet50", 14, pretrained="xrv:resnet50-res512-all")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    mapped = model.pretrained_weights["head_labels"]
    assert set(mapped) == set(NIH_FINDINGS)   # the file learned all 14 NIH findings
    for i, finding in enumerate(NIH_FINDINGS):
        assert torch.equal(own["fc.1.weight"][i], state["fc.weight"][PATHOLOGIES.index(finding)])
    assert model.info.input_size == 512


def test_labels_a_file_did_not_learn_get_a_fresh_head_row(hub, monkeypatch):
    rsna = XRV_WEIGHTS["densenet121-res224-rsna"]   # learned Pneumonia and Lung Opacity only
    _save_densenet(monkeypatch, hub / rsna.file)
    model = create_model("densenet121", 14, pretrained="xrv:rsna")
    assert model.pretrained_weights["head_labels"] == ["Pneumonia"]


def test_absent_file_one_message_naming_file_url_and_folder(hub):
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("densenet121", 1, pretrained="xrv:densenet121-res224-all")
    message = str(err.value)
    assert f"needs torchxrayvision's weights file {ALL.file}" in message
    assert f"Download it once from {ALL.url} and put it in {hub}" in message
    assert ALL.url.startswith("https://github.com/mlmed/torchxrayvision/releases/download/")


def test_file_in_torchxrayvision_own_cache_is_found(hub, tmp_path, monkeypatch):
    own_cache = tmp_path / "home" / ".torchxrayvision" / "models_data"
    own_cache.mkdir(parents=True)
    _save_densenet(monkeypatch, own_cache / ALL.file)
    model = create_model("densenet121", 1, pretrained="xrv:all")
    assert Path(model.pretrained_weights["file"]) == own_cache / ALL.file


def test_wrong_architecture_is_refused(hub, monkeypatch):
    _save_densenet(monkeypatch, hub / ALL.file)
    with pytest.raises(PretrainedWeightsError, match="holds densenet121 weights: use "
                                                     "model=densenet121 or chexnet"):
        create_model("resnet50", 1, pretrained="xrv:all")


def test_a_pickled_module_of_another_library_is_not_run(hub, tmp_path):
    """Only module classes are replaced by inert stand-ins; an unknown callable is refused."""
    from utils.training.checkpoint import CheckpointError

    path = tmp_path / "odd.pt"
    torch.save({"w": torch.zeros(1), "f": OrderedDict, "g": np.random.default_rng}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        read_state(path)


def test_a_pickled_module_carrying_code_is_refused(hub, monkeypatch, tmp_path):
    from utils.training.checkpoint import CheckpointError

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    model = _xrv_densenet(monkeypatch)
    model.features.denseblock1.extra = Payload()
    torch.save(model, hub / ALL.file, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"\(__builtin__.exec\).*could run code"):
        create_model("densenet121", 1, pretrained="xrv:all", fallback=True)  # no fallback
    assert not marker.exists()


def test_loaders_scale_pixels_to_xrv_range(tmp_path, monkeypatch):
    from utils.config import make_config
    from utils.data.dataset import load_manifest, make_loaders
    from utils.models import normalisation
    from utils.data.demo import make_demo

    root = make_demo(tmp_path / "demo", seed=0, image_px=64, scale=0.1)
    cfg = make_config({"dataset": "kermany", "data_root": str(root), "model": "densenet121",
                       "pretrained": "xrv:all", "augmentation": "none", "batch_size": 4},
                      profile="smoke")
    images = next(iter(make_loaders(cfg, load_manifest(cfg), normalisation(cfg.model, cfg.pretrained))["val"]))[0]
    assert images.min() >= -1024 and images.max() <= 1024 and images.max() - images.min() > 500


def test_load_model_keeps_the_xrv_scaling(hub, monkeypatch, tmp_path):
    from utils.training.checkpoint import load_model

    _save_densenet(monkeypatch, hub / ALL.file)
    model = create_model("densenet121", 1, pretrained="xrv:all", image_size=64)
    ckpt = {"model_name": "densenet121", "num_classes": 1, "input_size": 64,
            "model_state": model.state_dict(),
            "config": {"pretrained": "xrv:densenet121-res224-all"}}
    torch.save(ckpt, tmp_path / "best.pt")
    loaded, _ = load_model(tmp_path / "best.pt", device="cpu")
    assert (loaded.info.mean, loaded.info.std) == (0.5, 1 / 2048)


def test_absent_file_fails_before_the_data_work(hub, monkeypatch):
    from utils.config import make_config
    from utils.study.experiment import prepare_data

    def no_data(cfg):
        raise AssertionError("the manifest was built before the weights file was checked")

    monkeypatch.setattr("utils.data.dataset.load_manifest", no_data)
    cfg = make_config({"model": "chexnet", "pretrained": "xrv:all"}, profile="smoke")
    with pytest.raises(PretrainedWeightsError, match=f"Download it once from {ALL.url}"):
        prepare_data(cfg)
