"""utils.evaluation.anatomy: EfficientNet scaling tables with the paper's numbers, patch-embedding and
position maps, attention rollout (rows sum to 1, a closed-form case, the recorded attention
equal to softmax(q·kᵀ·scale) recomputed from the block's own weights), token-mixing maps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils.evaluation import anatomy
from utils.models.registry import create_model
from utils.evaluation.results import RESULT_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64  # a 4×4 patch grid for the 16-pixel ViT/Mixer patches


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_model("vit_tiny", 1, image_size=SIZE).eval()


def test_compound_scaling_has_the_papers_coefficients():
    table = anatomy.compound_scaling()
    assert list(table.index) == [f"B{k}" for k in range(8)]
    assert tuple(table.loc["B4", ["width", "depth", "resolution"]]) == (1.4, 1.8, 380)
    assert table.loc["B0", "flops_vs_b0"] == 1.0 and table.loc["B0", "phi"] == 0.0
    assert table["flops_vs_b0"].is_monotonic_increasing
    # d·w²·r² for B4: 1.8 · 1.4² · (380/224)²
    assert table.loc["B4", "flops_vs_b0"] == pytest.approx(1.8 * 1.96 * (380 / 224) ** 2, abs=0.01)


def test_efficientnet_b4_stages_and_head_as_the_checkpoint_holds_them():
    model = create_model("efficientnet_b4", 1, image_size=32)
    stages = anatomy.efficientnet_stages(model)
    inner = stages.drop(["stem", "head"])
    # Tan & Le 2019, table 1 (B0), and B4 = B0 scaled by width 1.4, depth 1.8
    assert list(inner["B0 channels"]) == [16, 24, 40, 80, 112, 192, 320]
    assert list(inner["B0 layers"]) == [1, 2, 2, 3, 3, 4, 1]
    assert list(inner["B4 channels"]) == [24, 32, 56, 112, 160, 272, 448]
    assert inner["B4 layers"].sum() == len(model._blocks) == 32
    assert stages.loc["stem", "B4 channels"] == 48 and stages.loc["head", "B4 channels"] == 1792
    head = anatomy.efficientnet_head(model)
    assert list(head["layer"]) == ["global average pool", "Linear", "ReLU", "Dropout p=0.3",
                                   "Linear"]
    assert list(head["in"]) == [1792, 1792, 512, 512, 512]
    assert list(head["out"]) == [1792, 512, 512, 512, 1]
    assert list(head["params"]) == [0, 1792 * 512 + 512, 0, 0, 512 + 1]


def test_patch_grid_and_embedding_components(vit):
    boxes = anatomy.patch_grid_boxes(vit)
    assert len(boxes) == 16 and boxes[0] == [0, 0, 16, 16] and boxes[-1] == [48, 48, 16, 16]
    assert boxes[1] == [16, 0, 16, 16]  # row-major, as the tokens are
    comps, share = anatomy.patch_embedding_components(vit, count=8)
    assert len(comps) == 8 and comps[0].shape == (16, 16)
    assert np.all(np.diff(share) <= 1e-7) and 0 < share.sum() <= 1 + 1e-6
    # known case: every filter a multiple of one pattern -> one component explains all
    pattern = torch.randn(16, 16)
    scale = torch.randn(vit.patch_embed.proj.out_channels)
    model = create_model("vit_tiny", 1, image_size=SIZE)
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_(scale[:, None, None, None] * pattern)
    comps, share = anatomy.patch_embedding_components(model, count=2)
    assert share[0] == pytest.approx(1.0, abs=1e-5)
    unit = (pattern / pattern.norm()).numpy()
    assert abs(float((comps[0] * unit).sum())) == pytest.approx(1.0, abs=1e-4)


def test_position_similarity_maps(vit):
    maps, cells = anatomy.position_similarity(vit, count=16)
    assert len(maps) == 16 and maps[0].shape == (4, 4) and cells[5] == (1, 1)
    for m, (r, c) in zip(maps, cells):
        assert m[r, c] == pytest.approx(1.0) and m.max() <= 1 + 1e-6  # itself: cosine 1
    model = create_model("vit_tiny", 1, image_size=SIZE)
    with torch.no_grad():  # one-hot positions: each one is similar only to itself
        model.pos_embed.zero_()
        model.pos_embed[0, 1:, :16] = torch.eye(16)
    maps, cells = anatomy.position_similarity(model, count=4)
    assert cells == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert np.allclose(maps[3], np.eye(16)[2 * 4 + 2].reshape(4, 4), atol=1e-6)
    with pytest.raises(ValueError, match="no position embedding"):
        anatomy.position_similarity(create_model("mixer_tiny", 1, image_size=SIZE))


def test_recorded_attention_is_softmax_qk_and_leaves_the_model_as_it_was(vit):
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = vit(x)
    first = {}
    hook = vit.blocks[0].norm1.register_forward_hook(lambda m, i, o: first.update(x=o))
    try:
        with anatomy.recorded_attention(vit) as records, torch.no_grad():
            out = vit(x)
    finally:
        hook.remove()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)  # same function
    assert all(a.fused_attn for a in (b.attn for b in vit.blocks))   # restored
    assert len(records) == len(vit.blocks) and records[0].shape == (2, 3, 17, 17)
    attn = vit.blocks[0].attn  # recompute block 0's attention from its own weights
    qkv = attn.qkv(first["x"]).reshape(2, 17, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    probs = (qkv[0] @ qkv[1].transpose(-2, -1) * attn.scale).softmax(-1)
    torch.testing.assert_close(records[0], probs, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a timm ViT"):
        with anatomy.recorded_attention(create_model("resnet18", 1)):
            pass


def test_rollout_rows_sum_to_one_and_known_cases():
    torch.manual_seed(0)
    attn = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(4)]
    result = anatomy.rollout(attn)
    assert result.shape == (2, 5, 5)
    torch.testing.assert_close(result.sum(-1), torch.ones(2, 5))
    swap = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # one layer, two tokens, one head
    torch.testing.assert_close(anatomy.rollout([swap])[0], torch.full((2, 2), 0.5))
    # uniform attention U in L layers: (I/2 + U/2)^L = 2^-L I + (1 - 2^-L) U, since U² = U
    uniform = [torch.full((1, 2, 4, 4), 0.25)] * 3
    closed = 0.125 * torch.eye(4) + 0.875 * torch.full((4, 4), 0.25)
    torch.testing.assert_close(anatomy.rollout(uniform)[0], closed)


def test_attention_rollout_of_a_vit_with_uniform_attention():
    model = create_model("vit_tiny", 1, image_size=SIZE).eval()
    dim = model.embed_dim
    with torch.no_grad():  # q = k = 0: every attention row uniform over the 17 tokens
        for block in model.blocks:
            block.attn.qkv.weight[:2 * dim] = 0
            block.attn.qkv.bias[:2 * dim] = 0
    with anatomy.recorded_attention(model) as records, torch.no_grad():
        model(torch.rand(1, 1, SIZE, SIZE))
    depth = len(model.blocks)
    closed = 0.5 ** depth * torch.eye(17) + (1 - 0.5 ** depth) / 17
    torch.testing.assert_close(anatomy.rollout(records)[0], closed, atol=1e-6, rtol=1e-5)
    maps = anatomy.attention_rollout(create_model("vit_tiny", 1, image_size=SIZE),
                                     torch.rand(3, 1, SIZE, SIZE))
    assert maps.shape == (3, 4, 4) and maps.min() == 0.0 and maps.max() == pytest.approx(1.0)


def test_rollout_of_a_pooling_vit_is_the_mean_of_the_token_rows():
    model = create_model("vit_mini", 1, image_size=SIZE).eval()  # no class token: GAP
    images = torch.rand(2, 1, SIZE, SIZE)
    with anatomy.recorded_attention(model) as records, torch.no_grad():
        model(images)
    mean_row = anatomy.rollout(records).mean(1).reshape(2, 4, 4)
    lo = mean_row.amin((1, 2), keepdim=True)
    expected = (mean_row - lo) / (mean_row.amax((1, 2), keepdim=True) - lo)
    np.testing.assert_allclose(anatomy.attention_rollout(model, images), expected.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_token_mixing_maps_are_fc1_rows_on_the_patch_grid():
    model = create_model("mixer_tiny", 1, image_size=SIZE)
    fc1 = model.blocks[0].mlp_tokens.fc1
    with torch.no_grad():
        fc1.weight[0] = torch.arange(16.0)
    maps = anatomy.token_mixing_maps(model, count=16)
    assert len(maps) == 16 and maps[0].shape == (4, 4)
    assert maps[0][1, 2] == 6  # token 6 is row 1, column 2 of the grid
    np.testing.assert_array_equal(maps[5].ravel(), fc1.weight[5].detach().numpy())
    with pytest.raises(ValueError, match="not a timm MLP-Mixer"):
        anatomy.token_mixing_maps(create_model("vit_tiny", 1, image_size=SIZE))


def test_side_by_side_keeps_runs_on_the_same_test_images(monkeypatch):
    rows = [("05_vit", "05_vit", "rsna", 0, "vit_tiny", 5e6, 90.0, 0.61, 0.5, 0.7, 0.4, "A"),
            ("05_vit.s1", "05_vit", "rsna", 1, "vit_tiny", 5e6, 110.0, 0.65, 0.55, 0.75, 0.5, "A"),
            ("02_chexnet", "02_chexnet", "rsna", 0, "chexnet", 7e6, 40.0, 0.8, 0.7, 0.9, 0.6, "A"),
            ("02_chexnet_nih", "02_chexnet_nih", "nih", 0, "chexnet", 7e6, 40.0, 0.7, 0.6,
             0.8, 0.5, "N"),
            ("04_efficientnet_b4.rsna", "04_efficientnet_b4", "rsna", 0, "efficientnet_b4",
             18e6, 20.0, 0.7, 0.6, 0.8, 0.5, "OTHER")]   # another test set: left out
    cols = ["step", "plan_step", "dataset", "seed_index", "model", "params",
            "images_per_second", "auroc", "auroc_lo", "auroc_hi", "f1", "test_fingerprint"]
    frame = pd.DataFrame(rows, columns=cols).reindex(columns=RESULT_COLUMNS)
    monkeypatch.setattr("utils.evaluation.results.load_results", lambda reports_dir: frame)
    table = anatomy.side_by_side("reports", "05_vit")
    assert list(table["plan_step"]) == ["05_vit", "02_chexnet"]   # fewest parameters first
    vit = table.iloc[0]
    assert vit["seeds"] == 2 and vit["auroc"] == pytest.approx(0.63) and vit["this"]
    assert (vit["auroc_lo"], vit["auroc_hi"]) == (0.5, 0.75) and vit["params_m"] == 5.0
    with pytest.raises(FileNotFoundError, match="no results for '06_mlp_mixer'"):
        anatomy.side_by_side("reports", "06_mlp_mixer")
