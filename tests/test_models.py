"""Tests of mixlab.models: shapes, the staged protocol, parameter counts, the registry."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mixlab.models import (
    MODELS,
    count_parameters,
    create_model,
    forward_from,
    forward_until,
    has_stages,
)

K = 7
# timm models checked against the staged protocol: the required one + one per known family.
TIMM_STAGED = ["timm:resnet18", "timm:test_convnext", "timm:test_efficientnet", "timm:test_byobnet",
               "timm:regnetx_002", "timm:mobilenetv3_small_050"]
ALL = sorted(MODELS) + TIMM_STAGED

_CACHE: dict[str, nn.Module] = {}


def build(name: str) -> nn.Module:
    """Each model is built once per session (seeded), in eval mode; tests must not mutate it."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name, num_classes=K).eval()
    return _CACHE[name]


def images(h: int = 32, w: int = 32, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("hw", [(32, 32), (32, 40)])
def test_output_shapes(name: str, hw: tuple[int, int]) -> None:
    m = build(name)
    x = images(*hw)
    with torch.no_grad():
        logits = m(x)
        feats = m.forward_features(x)
        pooled = m.forward_head(feats, pre_logits=True)
        assert torch.allclose(m.forward_head(feats), logits, atol=1e-5)
    assert logits.shape == (2, K)
    assert feats.ndim == 4 and feats.shape[:2] == (2, m.stage_channels[-1])
    assert pooled.shape == (2, m.head_hidden_size)
    assert m.num_classes == K
    assert isinstance(m.get_classifier(), nn.Linear) and m.get_classifier().out_features == K


@pytest.mark.parametrize("name", sorted(MODELS) + ["timm:resnet18"])
def test_channels_last(name: str) -> None:
    m = copy.deepcopy(build(name))
    x = images(32, 40) if name.startswith("timm:") else images(16, 24)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        out = m(x.to(memory_format=torch.channels_last))
        h = forward_until(m, x.to(memory_format=torch.channels_last), 2)
        out2 = forward_from(m, h, 2)
    assert out.shape == (2, K)
    assert torch.allclose(out, ref, atol=1e-4) and torch.allclose(out2, ref, atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_stage_roundtrip_and_channels(name: str) -> None:
    m = build(name)
    assert has_stages(m)
    assert m.num_stages == len(m.stages) == len(m.stage_channels)
    x = images(32, 40) if name.startswith("timm:") else images(16, 24)  # timm nets downsample 32x
    with torch.no_grad():
        ref = m(x)
        assert forward_until(m, x, 0) is x
        for stage in range(m.num_stages + 1):
            h = forward_until(m, x, stage)
            if stage > 0:
                assert h.ndim == 4 and h.shape[:2] == (2, m.stage_channels[stage - 1])
            assert torch.allclose(forward_from(m, h, stage), ref, atol=1e-5), stage
        assert torch.equal(forward_until(m, x, m.num_stages), m.forward_features(x))
        pooled = forward_from(m, forward_until(m, x, 1), 1, pre_logits=True)
        assert torch.allclose(pooled, m.forward_head(m.forward_features(x), pre_logits=True), atol=1e-5)


def test_cifar_stage_resolutions() -> None:
    sizes = [tuple(forward_until(build("resnet18"), images(), s).shape[2:]) for s in range(5)]
    assert sizes == [(32, 32), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert build("wrn28_2").stage_channels == [32, 64, 128]
    assert forward_until(build("wrn28_2"), images(), 3).shape == (2, 128, 8, 8)
    assert forward_until(build("vit_tiny_patch4"), images(32, 40), 2).shape == (2, 192, 8, 10)


@pytest.mark.parametrize(
    "name, expected, tol",
    [("resnet18", 11.17e6, 0.1e6), ("resnet34", 21.28e6, 0.1e6), ("preactresnet18", 11.17e6, 0.1e6),
     ("wrn28_2", 1.47e6, 0.02e6), ("wrn28_10", 36.48e6, 0.1e6), ("resnet_small", 0.35e6, 0.15e6)],
)
def test_param_counts(name: str, expected: float, tol: float) -> None:
    assert abs(count_parameters(create_model(name, num_classes=10)) - expected) <= tol


def test_resnet_small_width_and_training_step() -> None:
    torch.manual_seed(0)
    m = create_model("resnet_small", num_classes=10, width=8)
    assert m.stage_channels == [8, 16, 32, 64]
    loss = nn.functional.cross_entropy(m(images(b=4)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        create_model("resnet81", num_classes=10)
    msg = str(err.value)
    assert "'resnet18'" in msg and "Did you mean" in msg
    assert all(name in msg for name in MODELS) and "timm:" in msg
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm:resnet_does_not_exist", num_classes=10)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch4", "timm:resnet18"])
@pytest.mark.parametrize("k", [0, -1])
def test_bad_num_classes(name: str, k: int) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model(name, num_classes=k)


@pytest.mark.parametrize("name", ["resnet18", "wrn28_2", "vit_tiny_patch4", "timm:resnet18"])
@pytest.mark.parametrize("stage", [-1, "last", 1.0, True, 99])
def test_bad_stage_index(name: str, stage) -> None:
    m = build(name)
    bad = m.num_stages + 1 if stage == 99 else stage
    for fn in (forward_until, forward_from):
        with pytest.raises(ValueError, match=rf"0\.\.{m.num_stages}"):
            fn(m, images(), bad)


def test_models_without_stages() -> None:
    torch.manual_seed(0)
    vit = create_model("timm:test_vit", num_classes=K, img_size=32)
    assert not has_stages(vit) and not has_stages(nn.Linear(2, 2))
    with torch.no_grad():
        assert vit(images()).shape == (2, K)
        assert vit.forward_head(vit.forward_features(images())).shape == (2, K)
    with pytest.raises(TypeError, match="TimmModel.*forward_stem"):
        forward_until(vit, images(), 1)
    with pytest.raises(TypeError, match="Sequential"):
        forward_from(nn.Sequential(nn.Flatten()), images(), 0)


def test_timm_resnet18() -> None:
    m = build("timm:resnet18")
    assert m.stage_channels == [64, 128, 256, 512]
    with torch.no_grad():
        feats = m.forward_features(images())
        assert feats.shape == (2, 512, 1, 1)
        assert m.forward_head(feats).shape == (2, K)
        assert m.forward_head(feats, pre_logits=True).shape == (2, 512)
    # stages reuse the timm modules: nothing registered twice
    assert all(k.startswith("model.") for k in m.state_dict())
    assert sum(1 for _ in m.parameters()) == sum(1 for _ in m.model.parameters())


def test_vit_matches_timm_vision_transformer() -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = VisionTransformer(img_size=32, patch_size=4, num_classes=K, embed_dim=192, depth=8, num_heads=3,
                            class_token=False, global_pool="avg", fc_norm=False).eval()
    m = create_model("vit_tiny_patch4", num_classes=K).eval()
    with torch.no_grad():
        m.patch_embed.load_state_dict(ref.patch_embed.state_dict())
        m.pos_embed.copy_(ref.pos_embed)
        blocks = [blk for stage in m.stages for blk in stage][:-1]  # the last one is the final norm
        for mine, theirs in zip(blocks, ref.blocks, strict=True):
            mine.load_state_dict(theirs.state_dict())
        m.stages[-1][-1].load_state_dict(ref.norm.state_dict())
        m.fc.load_state_dict(ref.head.state_dict())
    x = images()
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-5)


def test_zero_init_residual() -> None:
    m = create_model("resnet_small", num_classes=10, zero_init_residual=True)
    assert all(not blk.bn2.weight.detach().any() for stage in m.stages for blk in stage)
    p = create_model("wrn28_2", num_classes=10, zero_init_residual=True).eval()
    blk = p.stages[1][1]  # identity shortcut block starts as the identity
    h = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(blk(h), h)


def test_wide_resnet_depth_check() -> None:
    from mixlab.models import wide_resnet

    with pytest.raises(ValueError, match="6n"):
        wide_resnet(depth=27, widen_factor=2)


def test_fused_for_inference_folds_batchnorm_into_convolutions_and_keeps_the_outputs():
    """The evaluation copy has no BatchNorm left, gives the model's eval outputs up to float
    rounding, and leaves the model itself untouched; training-mode or untraceable models come back
    as they are."""
    from mixlab.models import fused_for_inference

    torch.manual_seed(0)
    model = create_model("resnet_small", num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics a trained model would have
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    assert fused_for_inference(model) is model  # training mode: BatchNorm uses the batch
    model.eval()
    fused = fused_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    odd = DataDependent().eval()
    assert fused_for_inference(odd) is odd
