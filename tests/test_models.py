"""The model registry: every entry builds, maps B×1×H×W to logits, trains, fine-tunes from
another run's checkpoint, and fails fast and clearly when pretrained weights are offline."""
from __future__ import annotations

import pickle
import time
import urllib.error

import pytest
import torch
from torch import nn

from utils.models.provenance import PretrainedWeightsError
from utils.models.nets import ResNet18Scratch
from utils.models.registry import count_parameters, create_model, list_models, model_info

SIZE = 32  # smallest size every entry accepts (5 poolings; 2×2 ViT/Mixer patches)
_CACHE: dict[str, nn.Module] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True, scope="module")
def _clear_cache():
    yield
    _CACHE.clear()


def _fourteen(name: str) -> nn.Module:
    """One 14-class model per entry, shared by the tests below (building ViT-B is slow)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name, num_classes=14, image_size=SIZE)
    return _CACHE[name]


def test_registry_lists_every_study_model():
    expected = {"simple_cnn", "resnet18_scratch", "resnet18", "resnet50", "densenet121",
                "efficientnet_b4", "vit", "vit_small", "vit_tiny", "mixer",
                "mixer_small", "mixer_tiny",
                "efficientnet_b0", "vit_mini"}  # the demo's CPU-sized stand-ins
    assert set(list_models()) == expected
    assert set(list_models(aliases=True)) == expected | {"chexnet"}
    with pytest.raises(KeyError, match="choose one of.*'chexnet'"):
        model_info("resnet19")


def test_chexnet_is_densenet121_under_its_own_name(tmp_path):
    """One network, two names: `-p model=chexnet` builds DenseNet-121, and its checkpoints
    and results say `chexnet` (the name the run used)."""
    from dataclasses import replace

    from utils.training.checkpoint import load_model

    info = model_info("chexnet")
    assert info.name == "chexnet" and replace(info, name="densenet121") == model_info("densenet121")
    torch.manual_seed(0)
    model = create_model("chexnet", num_classes=14, image_size=SIZE)
    assert model.info == info
    reference = create_model("densenet121", num_classes=14, image_size=SIZE)
    assert model.state_dict().keys() == reference.state_dict().keys()
    path = tmp_path / "best.pt"
    torch.save({"model_name": "chexnet", "num_classes": 14, "input_size": SIZE,
                "model_state": model.state_dict()}, path)
    loaded, _ = load_model(path, device="cpu")
    x = torch.rand(1, 1, SIZE, SIZE)
    torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_cam_layer(name):
    model = _fourteen(name).train()
    assert model.info == model_info(name) and model.info.name == name
    feats = []
    hook = model.info.cam_layer(model).register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        out = model(torch.rand(2, 1, SIZE, SIZE))
    finally:
        hook.remove()
    assert out.shape == (2, 14) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    cam = model.info.cam_reshape(feats[0]) if model.info.cam_reshape else feats[0]
    assert cam.ndim == 4 and cam.shape[0] == 2 and cam.shape[-1] == cam.shape[-2] >= 1
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list_models())
def test_nothing_modifies_the_cam_layer_output_in_place(name):
    """pytorch-grad-cam keeps the CAM layer's output with `.cpu()`: on CPU that is the same
    memory, so an in-place op after the layer (DenseNet's F.relu(inplace=True) after norm5)
    would change the stored activation on CPU but not on CUDA. Values must survive the
    forward (an in-place op that leaves them equal, a ReLU of a ReLU output, is harmless)."""
    model = _fourteen(name).eval()
    kept = {}

    def keep(module, inputs, output):
        kept["output"], kept["copy"] = output, output.detach().clone()

    hook = model.info.cam_layer(model).register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(torch.rand(1, 1, SIZE, SIZE))
    finally:
        hook.remove()
    assert torch.equal(kept["output"], kept["copy"]), \
        f"{name}: the forward modifies its CAM layer's output in place"


# ViT-B and Mixer-B share vit_small's / mixer_small's code path; saving and reloading their
# 340 MB of weights would only cost time.
@pytest.mark.parametrize("name", sorted(set(list_models()) - {"vit", "mixer"}))
def test_init_checkpoint_new_head_and_head_only_training(name, tmp_path, capsys):
    source = _fourteen(name)
    path = tmp_path / "best.pt"
    torch.save({"model_name": name, "num_classes": 14, "model_state": source.state_dict()}, path)
    model = create_model(name, num_classes=1, image_size=SIZE, init_checkpoint=str(path),
                         trainable_from="head")
    head = model.info.head + "."
    assert "new head" in capsys.readouterr().out
    src, dst = source.state_dict(), model.state_dict()
    backbone = [k for k in dst if not k.startswith(head) and dst[k].is_floating_point()]
    for key in (backbone[0], backbone[len(backbone) // 2], backbone[-1]):
        torch.testing.assert_close(dst[key], src[key], msg=f"{key} not loaded")
    last = [k for k in dst if k.startswith(head)][-1]   # the final layer's bias
    assert dst[last].shape == (1,) and src[last].shape == (14,)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(head) for n in trainable)
    assert count_parameters(model, trainable_only=True) < count_parameters(model)
    out = model.train()(torch.rand(2, 1, SIZE, SIZE))
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,stage,first,frozen", [
    ("resnet18", "layer4", "layer4.0.conv1.weight", "layer3.1.bn2.bias"),
    ("densenet121", "denseblock4", "features.denseblock4.denselayer1.norm1.weight",
     "features.transition3.conv.weight"),
    ("efficientnet_b4", "blocks_last", "_blocks.24._expand_conv.weight", "_blocks.23._bn2.bias"),
    ("vit_tiny", "last_blocks", "blocks.8.norm1.weight", "blocks.7.mlp.fc2.bias"),
])
def test_trainable_from_stage_freezes_everything_before(name, stage, first, frozen):
    params = dict(create_model(name, image_size=SIZE, trainable_from=stage).named_parameters())
    assert params[first].requires_grad and not params[frozen].requires_grad
    names = list(params)
    assert all(params[n].requires_grad for n in names[names.index(first):])
    assert not any(params[n].requires_grad for n in names[:names.index(first)])


def test_unknown_stage_lists_valid_ones():
    with pytest.raises(ValueError, match=r"valid: \['all', 'head', 'layer3', 'layer4'\]"):
        create_model("resnet18", trainable_from="denseblock3")


def test_init_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("simple_cnn").state_dict(), path)
    with pytest.raises(ValueError, match="does not fit vit_tiny"):
        create_model("vit_tiny", image_size=SIZE, init_checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        create_model("simple_cnn", init_checkpoint=str(tmp_path / "missing.pt"))
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="corrupt or incomplete checkpoint"):
        create_model("simple_cnn", init_checkpoint=str(tmp_path / "cut.pt"))


def test_resnet18_scratch_is_torchvision_resnet18():
    import torchvision
    reference = torchvision.models.resnet18(num_classes=1)
    reference.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    ours = create_model("resnet18_scratch")
    assert count_parameters(ours) == count_parameters(reference) == 11_170_753
    state = {k.replace("fc.1.", "fc."): v for k, v in ours.state_dict().items()}
    reference.load_state_dict(state)  # same names and shapes: strict load succeeds
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x))
    assert isinstance(ours, ResNet18Scratch)


def test_model_info_settings():
    import timm
    assert (model_info("resnet50").mean, model_info("resnet50").std) == (0.449, 0.226)
    assert (model_info("simple_cnn").mean, model_info("simple_cnn").std) == (0.5, 0.25)
    for name, arch in [("vit", "vit_base_patch16_224"), ("mixer", "mixer_b16_224")]:
        cfg = timm.models.get_pretrained_cfg(arch)   # our gray stats = mean of timm's RGB
        assert model_info(name).mean == pytest.approx(sum(cfg.mean) / 3)
        assert model_info(name).std == pytest.approx(sum(cfg.std) / 3)
    assert all(model_info(n).input_size == 224 for n in list_models())
    assert pickle.loads(pickle.dumps(model_info("vit"))) == model_info("vit")


def test_vit_needs_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("vit_tiny", image_size=40)


def test_pretrained_stem_sums_rgb_kernels():
    from utils.models.zoo import _set_in_chans
    conv = nn.Conv2d(3, 8, 3, bias=False)
    rgb = conv.weight.detach().clone()
    _set_in_chans(conv, 1, pretrained=True)
    torch.testing.assert_close(conv.weight, rgb.sum(1, keepdim=True))
    x = torch.rand(1, 1, 9, 9)  # gray input == the same image replicated in RGB
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x.expand(-1, 3, -1, -1), rgb))


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b4", "vit_tiny"])
def test_pretrained_offline_fails_fast_with_one_message(name, monkeypatch, tmp_path):
    import efficientnet_pytorch.utils
    import huggingface_hub.constants
    import torchvision.models._api
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _offline)
    monkeypatch.setattr(efficientnet_pytorch.utils.model_zoo, "load_url", _offline)
    monkeypatch.setattr("utils.models.weights.hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        create_model(name, pretrained=True)
    assert time.monotonic() - start < 20, "offline failure must not wait for retries"
    message = str(err.value)
    assert message.startswith(f"could not download pretrained weights for {name} (offline?): "
                              f"pass pretrained=False (-p pretrained=false) or set "
                              f"allow_random_init")
    with pytest.warns(UserWarning, match="RANDOM initial weights"):
        model = create_model(name, pretrained=True, fallback=True, image_size=SIZE)
    assert model.eval()(torch.rand(1, 1, SIZE, SIZE)).shape == (1, 1)


def test_models_without_weights_say_so():
    with pytest.raises(PretrainedWeightsError, match="pretrained=False"):
        create_model("simple_cnn", pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights for mixer_s16"):
        create_model("mixer_small", pretrained=True)


def test_random_init_batchnorm_does_not_collapse_eval_outputs():
    """A from-scratch BN net evaluated after a short run must still rank images: with the
    default BN momentum its eval outputs collapsed to one value (AUROC 0.16 here)."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    x = torch.rand(96, 1, 64, 64) * 0.2
    y = (torch.arange(96) % 2).float()[:, None]
    x[y[:, 0] == 1, :, 10:30, 10:30] += 0.3
    model = create_model("simple_cnn", 1)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for step in range(20):
        batch = slice((step % 2) * 32, (step % 2) * 32 + 32)
        loss = nn.functional.binary_cross_entropy_with_logits(model.train()(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = model.eval()(x[64:]).ravel()
    assert scores.std() > 1e-3
    assert roc_auc_score(y[64:, 0], scores) > 0.9
