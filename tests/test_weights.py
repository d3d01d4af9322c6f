"""Where pretrained weights come from (issue 13.4), safe loading (13.6), and weights as a
named source (14.3 is in test_xrv.py): weight files of random tensors, shaped like the real
ones and built here, are placed in each hub's cache; `create_model(..., pretrained=True)`
loads them with the network disabled, and records the file and its sha256."""
from __future__ import annotations

import hashlib
import pickle
import socket
from pathlib import Path

import pytest
import torch

from utils.training.checkpoint import CheckpointError, load_checkpoint
from utils.config import ConfigError, RunConfig, make_config
from utils.models.provenance import PretrainedWeightsError
from utils.models.registry import create_model
from utils.models.weights import canonical_pretrained, describe_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty hub caches in tmp_path, huggingface offline, and no socket can connect."""
    import huggingface_hub.constants as hf

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    return tmp_path


def _random_like(state: dict) -> dict:
    """The same keys and shapes, other values: a loaded tensor equals the file's or not."""
    g = torch.Generator().manual_seed(1)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in state.items()}


def _place_torch_hub(tmp_path: Path, url: str, state: dict) -> Path:
    path = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _place_timm(tmp_path: Path, arch: str, state: dict) -> Path:
    """The huggingface cache layout: models--<org>--<repo>/{refs/main, snapshots/<rev>/}."""
    import timm
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    folder = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(rev)
    path = folder / "snapshots" / rev / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _place(hub: str, tmp_path: Path) -> tuple[Path, dict]:
    """A file of random tensors with the real file's keys and shapes, where `hub` looks."""
    if hub == "torchvision":
        import torchvision
        url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
        state = _random_like(torchvision.models.resnet18().state_dict())
        return _place_torch_hub(tmp_path, url, state), state
    if hub == "efficientnet-pytorch":
        from efficientnet_pytorch import EfficientNet
        from efficientnet_pytorch.utils import url_map
        state = _random_like(EfficientNet.from_name("efficientnet-b4").state_dict())
        return _place_torch_hub(tmp_path, url_map["efficientnet-b4"], state), state
    import timm
    state = _random_like(timm.create_model("vit_tiny_patch16_224").state_dict())
    return _place_timm(tmp_path, "vit_tiny_patch16_224", state), state


# (hub, registry name, RGB stem key, head prefix)
HUBS = [("torchvision", "resnet18", "conv1.weight", "fc."),
        ("efficientnet-pytorch", "efficientnet_b4", "_conv_stem.weight", "_fc."),
        ("timm", "vit_tiny", "patch_embed.proj.weight", "head.")]


@pytest.mark.parametrize("hub,name,stem,head", HUBS)
def test_placed_weight_files_load_offline_and_are_recorded(hub, name, stem, head, offline):
    path, state = _place(hub, offline)
    model = create_model(name, num_classes=1, pretrained=True)
    own = model.state_dict()
    body = [k for k in state if k != stem and not k.startswith(head)
            and state[k].is_floating_point()]
    assert body and all(torch.equal(own[k], state[k]) for k in body)
    # the 1-channel stem is the sum of the file's RGB kernels
    torch.testing.assert_close(own[stem], state[stem].sum(1, keepdim=True))
    record = model.pretrained_weights
    assert record["requested"] and record["loaded"] and record["source"] == "imagenet"
    assert record["hub"] == hub and Path(record["file"]) == path
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert describe_weights(record).startswith(f"Weights: ImageNet ({hub}), file {path}")


def test_offline_without_file_names_file_url_and_folder_and_fallback_is_recorded(offline):
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("resnet18", pretrained=True)
    folder = offline / "torch" / "hub" / "checkpoints"
    assert (f"place the torchvision file resnet18-f37072fd.pth in {folder} (download it "
            f"once from https://download.pytorch.org/models/resnet18-f37072fd.pth)"
            in str(err.value))
    with pytest.warns(UserWarning, match="RANDOM initial weights"):
        model = create_model("resnet18", pretrained=True, fallback=True)
    record = model.pretrained_weights
    assert record["requested"] is True and record["loaded"] is False
    assert record["file"] is None and record["sha256"] is None
    assert "RANDOM initialisation" in describe_weights(record)
    # random weights get the from-scratch BatchNorm averaging, as pretrained=False does
    assert all(m.momentum is None for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_results_record_where_the_weights_came_from(offline, monkeypatch, tmp_path):
    """evaluate_and_record writes the checkpoint's record into the results JSON."""
    from types import SimpleNamespace

    import utils.study.experiment as experiment

    path, _ = _place("torchvision", offline)
    model = create_model("resnet18", pretrained=True)
    ckpt = {"pretrained_weights": model.pretrained_weights}
    monkeypatch.setattr("utils.training.checkpoint.load_model", lambda *a, **k: (model, ckpt))
    monkeypatch.setattr("utils.training.checkpoint.update_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr("utils.evaluation.metrics.evaluate_run", lambda *a, **k: {
        "threshold": {"value": 0.5}, "test": {}, "predictions": None})
    monkeypatch.setattr("utils.evaluation.results.write_predictions", lambda *a, **k: None)
    monkeypatch.setattr("utils.data.dataset.test_fingerprint", lambda m: "fp")
    import pandas as pd

    cfg = make_config({"step": "t", "model": "resnet18", "trainable_from": "head",
                       "reports_dir": str(tmp_path / "reports")}, profile="smoke")
    exp = experiment.Experiment(cfg=cfg, manifest=pd.DataFrame({"split": ["test"]}),
                                loaders={}, class_names=["Pneumonia"], model=model,
                                history=SimpleNamespace(to_dict=lambda: {}),
                                checkpoint=tmp_path)
    ctx = SimpleNamespace(device="cpu", environment={}, synthetic=True)
    results = experiment.evaluate_and_record(exp, ctx)
    assert results["pretrained"]["loaded"] is True
    assert results["pretrained"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_fallback_run_does_not_resume_as_a_pretrained_one():
    from utils.study.experiment import _weights_fingerprint
    from utils.training.loop import RESUME_META_KEYS

    assert "weights_fingerprint" in RESUME_META_KEYS
    fallback = {"source": "imagenet", "loaded": False, "sha256": None}
    loaded = {"source": "imagenet", "loaded": True, "sha256": "ab12"}
    assert _weights_fingerprint(fallback) != _weights_fingerprint(loaded)


# --- the `pretrained` value ----------------------------------------------------------

@pytest.mark.parametrize("given,canonical", [
    (True, True), ("imagenet", True), ("TRUE", True), (False, False), ("none", False),
    ("xrv:all", "xrv:densenet121-res224-all"),
    ("xrv:densenet121-res224-all", "xrv:densenet121-res224-all")])
def test_pretrained_has_one_spelling_per_source(given, canonical):
    assert canonical_pretrained(given) == canonical
    model = "resnet18" if not isinstance(canonical, str) else "densenet121"
    cfg = make_config({"pretrained": given, "model": model}, profile="full")
    assert cfg.pretrained == canonical and RunConfig(pretrained=given).pretrained == canonical


def test_resume_keys_and_fingerprints_treat_true_and_imagenet_alike(tmp_path):
    from utils.study.run_state import fingerprint

    assert RunConfig(pretrained="imagenet").to_dict() == RunConfig(pretrained=True).to_dict()
    nb = tmp_path / "nb.ipynb"
    nb.write_text("{}")
    assert (fingerprint(nb, {"pretrained": "imagenet"}, "c", {})
            == fingerprint(nb, {"pretrained": True}, "c", {}))
    assert (fingerprint(nb, {"pretrained": "none"}, "c", {})
            != fingerprint(nb, {"pretrained": True}, "c", {}))


def test_bad_pretrained_values_are_config_errors():
    with pytest.raises(ConfigError, match="xrv:<name> with a name from"):
        make_config({"pretrained": "imagenet21k"})
    with pytest.raises(ConfigError, match="unknown torchxrayvision weights 'densenet999'"):
        make_config({"pretrained": "xrv:densenet999"})
    with pytest.raises(ConfigError, match="has type int"):
        make_config({"pretrained": 3})


# --- safe loading (13.6) ---------------------------------------------------------------

class _Payload:
    """Unpickling this runs `exec(...)`, which creates `marker`: code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _load_init(path: Path) -> None:
    create_model("simple_cnn", init_checkpoint=str(path))


def _load_xrv_file(path: Path) -> None:
    from utils.models.xrv import read_state
    read_state(path)


@pytest.mark.parametrize("load", [_load_init, load_checkpoint, _load_xrv_file])
def test_a_file_that_would_run_code_is_refused(load, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "stranger.pt"
    torch.save({"model_state": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    assert pickle.loads(pickle.dumps(_Payload(marker))) is None and marker.exists()
    marker.unlink()  # the payload works: unpickling it unchecked creates the marker
    with pytest.raises(CheckpointError, match="could run code") as err:
        load(path)
    assert str(path) in str(err.value) and "(exec)" in str(err.value)
    assert not marker.exists()


def test_results_table_says_which_weights_each_run_started_from(tmp_path):
    from utils.fileio import atomic_write_json
    from utils.evaluation.results import load_results

    records = {"a": {"requested": True, "loaded": True, "source": "imagenet"},
               "b": {"requested": True, "loaded": False, "source": "imagenet"},
               "c": {"requested": True, "loaded": True, "source": "xrv:densenet121-res224-all"},
               "d": None}
    for step, record in records.items():
        res = {"step": step, "test": {"auroc": 0.5}, **({"pretrained": record} if record else {})}
        atomic_write_json(tmp_path / "results" / f"{step}.json", res)
    table = load_results(tmp_path).set_index("step")["weights"]
    assert table[:3].to_dict() == {"a": "imagenet", "b": "random (imagenet requested)",
                                   "c": "xrv:densenet121-res224-all"}
    assert table.isna()["d"]  # written before the record existed
