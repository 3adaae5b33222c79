"""Mixing for vision transformers (issue 27): the last block's attention recorded alongside timm's fused
attention, TransMix (attention-weighted CutMix labels), MixPro (MaskMix + progressive attention
labels) and SMMix (max-min attention windows, token labels, consistency), each checked against a
hand computation, on mixlab's GAP ViT and on timm ViTs with a class token, through the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import mixlab
from mixlab import registry
from mixlab.engine import OptimConfig, build_optimizer, load_checkpoint, load_config, train, train_step
from mixlab.methods.mixpro import MixPro, cells_to_grid, maskmix_cells, progressive_factor
from mixlab.methods.smmix import SMMix, max_min_windows, paste_windows
from mixlab.methods.transmix import TransMix, attention_lambda, patch_fraction
from mixlab.models import create_model
from mixlab.models.attention import AttentionRecorder, attention_layout, patch_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

K = 10


def gap_vit() -> torch.nn.Module:
    """mixlab's ViT (no class token, global average pooling), tiny: 8x8 patches of 4 px on 32x32."""
    torch.manual_seed(0)
    return create_model("vit_tiny_patch4", K, embed_dim=16, depth=2, num_heads=2, num_stages=2)


def cls_vit() -> torch.nn.Module:
    """A timm ViT with a class token, as timm builds it (not wrapped), tiny."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, embed_dim=16, num_heads=2,
                             num_classes=K)


MODELS = {"mixlab-vit": gap_vit, "timm-vit": cls_vit}


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, K, (n,), generator=g)


def unfused_attention(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's (B, heads, N, N) softmax map as timm's un-fused path computes it (the input of
    its attention dropout), and nothing of mixlab's recorder."""
    attn = attention_layout(model).attention
    seen = {}
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda m, inputs, out: seen.setdefault("map", inputs[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        attn.fused_attn = True
    return seen["map"]


def one_hot(labels: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    return F.one_hot(labels, K).float() * (1 - eps) + eps / K


def setup(method, model, seed: int = 0):
    method.setup(model, torch.Generator().manual_seed(seed))
    return method


# ================================================================ 1. the attention recorder
@pytest.mark.parametrize("name, query", [("mixlab-vit", "mean"), ("timm-vit", "cls"), ("timm-vit", "mean")])
def test_recorder_equals_the_unfused_softmax_map_and_leaves_the_output_alone(name, query):
    model = MODELS[name]().eval()
    x, _ = batch(3)
    ref = unfused_attention(model, x)  # (B, h, N, N)
    p = attention_layout(model).num_prefix_tokens
    expected = ref[:, :, 0, p:].mean(1) if query == "cls" else ref[:, :, p:, p:].mean((1, 2))
    with torch.no_grad():
        plain = model(x)
        with AttentionRecorder(model, query) as rec:
            recorded = model(x)
        with AttentionRecorder(model, query, heads="keep") as per_head:
            model(x)
    assert torch.equal(recorded, plain)  # the fused forward is untouched
    assert rec.map.shape == (3, 64) and torch.allclose(rec.map, expected, atol=1e-6)
    assert torch.allclose(per_head.map.mean(1), expected, atol=1e-6) and per_head.map.shape == (3, 2, 64)


def test_the_hook_exists_only_inside_the_with_block():
    model = cls_vit()
    qkv = attention_layout(model).attention.qkv
    recorder = AttentionRecorder(model)
    assert not qkv._forward_hooks
    with recorder:
        assert len(qkv._forward_hooks) == 1
    assert not qkv._forward_hooks  # ordinary forwards run without any hook
    with pytest.raises(RuntimeError, match="no attention recorded"):
        recorder.map  # noqa: B018
    with pytest.raises(RuntimeError), recorder:
        raise RuntimeError("a failing forward")
    assert not qkv._forward_hooks


def test_layouts_of_the_supported_models():
    gap = attention_layout(gap_vit())
    assert (gap.num_prefix_tokens, gap.class_token, gap.patch_size) == (0, False, (4, 4))
    wrapped = attention_layout(create_model("timm:deit_tiny_distilled_patch16_224", K, img_size=32, patch_size=4,
                                            depth=1, embed_dim=16, num_heads=2))
    assert (wrapped.num_prefix_tokens, wrapped.class_token) == (2, True)  # class + distillation token
    pooled = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1, embed_dim=16, num_heads=2,
                               global_pool="avg", num_classes=K)
    assert attention_layout(pooled).class_token is False  # a class token the head does not read
    assert AttentionRecorder(pooled).query == "mean" and AttentionRecorder(cls_vit()).query == "cls"
    with pytest.raises(ValueError, match="query='cls' needs a model that classifies from a class token"):
        AttentionRecorder(gap_vit(), "cls")


def test_patch_tokens_of_both_feature_layouts():
    x, _ = batch(2)
    for model in (gap_vit(), cls_vit()):
        assert patch_tokens(attention_layout(model), model.forward_features(x)).shape == (2, 64, 16)
    model = gap_vit()
    features = model.forward_features(x)  # (B, C, h, w): raster order, as the attention map's patches
    assert torch.equal(patch_tokens(attention_layout(model), features)[:, 9], features[:, :, 1, 1])


@pytest.mark.parametrize("method", ["transmix", "mixpro", "smmix"])
def test_a_model_without_attention_gets_an_error_saying_what_it_must_expose(method):
    m = registry.build_method(method, K)
    with pytest.raises(TypeError, match=r"must contain a timm Attention module .*qkv, num_heads, head_dim, scale.*"
                                        r"Supported: timm VisionTransformer"):
        m.setup(create_model("resnet_small", K, width=8))
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 1), num_classes=K)
    with pytest.raises(TypeError, match=r"window attention \(WindowAttention.*not supported\. Supported: timm "
                                        r"VisionTransformer models .* and mixlab's vit_tiny_patch4"):
        m.setup(swin)


# ================================================================ 2. TransMix
def hand_patch_fraction(boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """Fraction of each 4x4 patch of a 32x32 image outside the pasted box, by counting pixels."""
    out = torch.zeros(boxes.shape[0], 64)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        for r in range(8):
            for c in range(8):
                if mode == "nearest":
                    inside = x1 <= 4 * c < x2 and y1 <= 4 * r < y2
                    out[i, r * 8 + c] = 0.0 if inside else 1.0
                else:
                    overlap = max(0, min(x2, 4 * c + 4) - max(x1, 4 * c)) * max(0, min(y2, 4 * r + 4) - max(y1, 4 * r))
                    out[i, r * 8 + c] = 1 - overlap / 16
    return out


@pytest.mark.parametrize("area_weight, mode", [(0.0, "area"), (0.5, "area"), (0.0, "nearest")])
def test_transmix_label_weights_equal_a_hand_computation_on_a_tiny_vit(area_weight, mode):
    model = cls_vit()
    tm = setup(TransMix(K, label_smoothing=0.1, mixup_alpha=0.0, area_weight=area_weight, mask_downsample=mode), model)
    x, y = batch(6)
    for _ in range(4):  # four random boxes
        mixed, _, lam = tm.mix(model, x, y)
        a = unfused_attention(model, mixed.images)[:, :, 0, 1:].mean(1)  # class token -> patches, heads averaged
        own = hand_patch_fraction(mixed.boxes, mode)
        lam_attn = (a * own).sum(1) / a.sum(1)
        area = 1 - (mixed.boxes[:, 2] - mixed.boxes[:, 0]) * (mixed.boxes[:, 3] - mixed.boxes[:, 1]) / 1024
        expected = (1 - area_weight) * lam_attn + area_weight * area
        assert torch.allclose(lam, expected, atol=1e-5)
        target = expected[:, None] * one_hot(y, 0.1) + (1 - expected[:, None]) * one_hot(y[mixed.index], 0.1)
        assert torch.allclose(mixed.targets, target, atol=1e-5)
        assert torch.allclose(mixed.targets.sum(1), torch.ones(6), atol=1e-6)


def uniform_last_attention(model: torch.nn.Module) -> torch.nn.Module:
    """q = 0 in the last block: every query attends uniformly to every token."""
    qkv = attention_layout(model).attention.qkv
    with torch.no_grad():
        dim = qkv.weight.shape[0] // 3
        qkv.weight[:dim] = 0
        if qkv.bias is not None:
            qkv.bias[:dim] = 0
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_with_uniform_attention_transmix_reduces_to_cutmix_area_labels(name):
    model = uniform_last_attention(MODELS[name]())
    x, y = batch(8)
    tm = setup(TransMix(K, label_smoothing=0.1, mixup_alpha=0.0), model, seed=3)
    cutmix = mixlab.CutMix(K, alpha=1.0, label_smoothing=0.1, generator=torch.Generator().manual_seed(3))
    unaligned = 0
    for _ in range(6):
        mixed, _, lam = tm.mix(model, x, y)
        reference = cutmix(x, y)
        assert torch.equal(mixed.images, reference.images)
        assert torch.allclose(lam, reference.lam, atol=1e-6)
        assert torch.allclose(mixed.targets, reference.targets, atol=1e-6)
        unaligned += bool((mixed.boxes % 4 != 0).any())
    assert unaligned >= 3  # boxes cut through patches, and the labels are still the exact areas


def test_transmix_keeps_mixup_batches_and_uses_the_deit_switch():
    model = gap_vit()
    tm = setup(TransMix(K, cutmix_prob=0.5), model)
    x, y = batch(8)
    kinds = []
    for _ in range(40):
        mixed, _, lam = tm.mix(model, x, y)
        kinds.append(mixed.boxes is not None)
        if mixed.boxes is None:  # Mixup: a global mix, labelled by its λ
            assert torch.equal(lam, mixed.lam)
    assert 10 < sum(kinds) < 30


def test_attention_lambda_and_patch_fraction_kernels():
    attn = torch.tensor([[1.0, 3.0, 0.0, 4.0]])
    assert torch.allclose(attention_lambda(attn, torch.tensor([[1.0, 0.0, 1.0, 0.5]])), torch.tensor([3.0 / 8]))
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 3:8, 3:8] = 0  # box from pixel 3: patch (0,0) loses 1 of 16 pixels; nearest keeps it whole
    assert patch_fraction(mask, (4, 4), "area").tolist() == [[15 / 16, 12 / 16, 12 / 16, 0.0]]
    assert patch_fraction(mask, (4, 4), "nearest").tolist() == [[1.0, 1.0, 1.0, 0.0]]


# ================================================================ 3. MixPro
@pytest.mark.parametrize("cell", [8, 12, None])
def test_maskmix_masks_are_patch_aligned_and_labelled_by_exact_area(cell):
    model = gap_vit()
    mp = setup(MixPro(K, label_smoothing=0.1, mask_patch_size=cell, maskmix_prob=1.0, pal=False), model)
    x, y = batch(8)
    s = cell or 8  # the default: the multiple of the patch size nearest to 32 / 4
    grid = math.ceil(32 / s)
    for _ in range(5):
        mixed, _, alpha = mp.mix(model, x, y)
        mask = mixed.mask[:, 0]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        blocks = mask.unfold(1, 4, 4).unfold(2, 4, 4)  # (B, 8, 8, 4, 4): every 4x4 patch one image's
        assert torch.equal(blocks.amax((-1, -2)), blocks.amin((-1, -2)))
        cells = F.pad(mask, (0, grid * s - 32, 0, grid * s - 32), value=-1).unfold(1, s, s).unfold(2, s, s)
        kept_cells = ((cells == 1).any(-1).any(-1)).flatten(1).sum(1)  # each mask cell is one image's too
        assert torch.equal(cells.amax((-1, -2)), torch.where(cells == -1, 2.0, cells).amin((-1, -2)))
        assert len(set(kept_cells.tolist())) == 1  # every image keeps ceil(λ T) cells, one λ per batch
        assert torch.equal(mixed.images, torch.where(mask[:, None].bool(), x, x[mixed.index]))
        assert torch.equal(mixed.lam, mask.mean((1, 2)))  # the exact pixel fraction (cells of 12 px: cropped)
        target = mixed.lam[:, None] * one_hot(y, 0.1) + (1 - mixed.lam[:, None]) * one_hot(y[mixed.index], 0.1)
        assert torch.allclose(mixed.targets, target, atol=1e-6) and torch.equal(alpha, torch.zeros(8))


def test_maskmix_cells_keep_a_uniform_subset_of_the_asked_size():
    cells = maskmix_cells(4000, (2, 2), 1, torch.Generator().manual_seed(0))
    assert torch.equal(cells.flatten(1).sum(1), torch.ones(4000, dtype=torch.long))
    freq = cells.flatten(1).float().mean(0)
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.03)
    grid = cells_to_grid(torch.tensor([[[True, False], [False, True]]]), 3, 5, 4)
    assert grid.int().tolist() == [[[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]]]


@pytest.mark.parametrize("name", list(MODELS))
def test_progressive_attention_labels_equal_a_hand_computation(name):
    model = MODELS[name]()
    mp = setup(MixPro(K, label_smoothing=0.1, mask_patch_size=8, maskmix_prob=1.0), model)
    x, y = batch(6)
    mixed, logits, alpha = mp.mix(model, x, y)
    ref = unfused_attention(model, mixed.images)
    a = ref[:, :, 0, 1:].mean(1) if name == "timm-vit" else ref.mean((1, 2))  # cls row / mean over queries
    own = mixed.mask[:, 0, ::4, ::4].flatten(1)  # each 4x4 patch lies in one 8x8 cell
    lam_attn = (a * own).sum(1) / a.sum(1)
    area_targets = mixed.lam[:, None] * one_hot(y, 0.1) + (1 - mixed.lam[:, None]) * one_hot(y[mixed.index], 0.1)
    p = model(mixed.images).softmax(1)
    cos = (p * area_targets).sum(1) / (p.norm(dim=1) * area_targets.norm(dim=1))
    assert torch.allclose(alpha, cos, atol=1e-5) and not alpha.requires_grad
    lam = cos * lam_attn + (1 - cos) * mixed.lam
    target = lam[:, None] * one_hot(y, 0.1) + (1 - lam[:, None]) * one_hot(y[mixed.index], 0.1)
    assert torch.allclose(mixed.targets, target, atol=1e-5)
    assert torch.allclose(progressive_factor(logits, area_targets), cos, atol=1e-5)


def test_the_accuracy_factor_is_a_buffer_that_follows_the_training_accuracy():
    model = gap_vit()
    mp = setup(MixPro(K, maskmix_prob=1.0, mask_patch_size=8, factor="accuracy", accuracy_momentum=0.5), model)
    opt = build_optimizer(model, mp, OptimConfig(name="adamw", lr=1e-3))
    x, y = batch(8)
    out = train_step(model, mp, opt, (x, y), 0.0)
    assert torch.equal(out.logs["alpha"], torch.tensor(0.0))  # no accuracy yet: area labels
    assert torch.allclose(out.mixed.targets, out.mixed.lam[:, None] * one_hot(y) + (1 - out.mixed.lam[:, None])
                          * one_hot(y[out.mixed.index]), atol=1e-6)
    first = (out.logits.argmax(1) == out.mixed.targets.argmax(1)).float().mean()
    assert torch.allclose(mp.train_accuracy, 0.5 * first)
    out = train_step(model, mp, opt, (x, y), 0.0)
    assert torch.allclose(out.logs["alpha"], 0.5 * first)  # this step's labels used the running accuracy
    assert "train_accuracy" in mp.state_dict() and mp.per_rank_state().keys() == {"train_accuracy"}
    fresh = MixPro(K, factor="accuracy")
    fresh.load_state_dict(mp.state_dict())
    assert torch.equal(fresh.train_accuracy, mp.train_accuracy)


def test_mixpro_mask_cells_must_be_multiples_of_the_patch_size():
    with pytest.raises(ValueError, match="mask_patch_size must be a multiple of the model's patch size 4x4"):
        MixPro(K, mask_patch_size=6).setup(gap_vit())


# ================================================================ 4. SMMix
def test_max_min_windows_pick_the_least_and_the_partners_most_attended_window():
    scores = torch.zeros(2, 4, 4)
    scores[0, 0, 0] = scores[0, 3, 3] = 5.0  # image 0: least attended window at row 1, col 0; most at (2, 2)
    scores[0, 1:3, 0:2] = -1.0
    scores[1, 2:4, 1:3] = 3.0  # image 1: most attended window at row 2, col 1
    scores[1, 0, 3] = -4.0
    target, source = max_min_windows(scores, torch.tensor([1, 0]), 2)
    assert target[0].tolist() == [1, 0] and source[0].tolist() == [2, 1]  # partner 1's best window
    assert target[1].tolist() == [0, 2]  # image 1's least: the window holding the -4
    assert source[1].tolist() == [2, 2]  # partner 0's best window


def test_paste_windows_moves_the_partner_window_patch_by_patch():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    index = torch.tensor([1, 0])
    mixed, window = paste_windows(x, index, torch.tensor([[0, 1], [2, 2]]), torch.tensor([[3, 0], [0, 0]]), 1, (2, 2))
    assert torch.equal(mixed[0, 0, 0:2, 2:4], x[1, 0, 6:8, 0:2])  # window (0, 1) of image 0 <- (3, 0) of image 1
    assert torch.equal(mixed[1, 0, 4:6, 4:6], x[0, 0, 0:2, 0:2])
    untouched = ~window.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(mixed[:, 0][untouched], x[:, 0][untouched])
    assert window.sum().item() == 2 and window[0, 0, 1] and window[1, 2, 2]


@pytest.mark.parametrize("name", list(MODELS))
def test_smmix_mix_labels_and_losses_by_hand(name):
    model = MODELS[name]().train()
    sm = setup(SMMix(K, label_smoothing=0.1, mixup_alpha=0.0), model, seed=5)
    x, y = batch(6)
    with torch.no_grad():
        model.eval()
        clean = model(x)
        scores = unfused_attention(model, x)
        p = attention_layout(model).num_prefix_tokens
        scores = scores[:, :, p:, p:].mean((1, 2)).view(6, 8, 8)  # received attention, queries and heads averaged
        model.train()
    mixed, window, clean_logits = sm.mix(model, x, y)
    assert model.training and torch.allclose(clean_logits, clean, atol=1e-5)
    k = math.isqrt(int(window[0].sum()))
    assert 2 <= k <= 6 and torch.equal(window.flatten(1).sum(1), torch.full((6,), k * k))
    sums = F.avg_pool2d(scores[:, None], k, 1)[:, 0] * k * k  # every k x k window's total
    for i in range(6):
        r, c = (window[i].nonzero().min(0).values).tolist()
        assert torch.isclose(sums[i, r, c], sums[i].min(), atol=1e-6)  # image i's least attended window
        j = int(mixed.index[i])
        pasted = mixed.images[i, :, 4 * r:4 * (r + k), 4 * c:4 * (c + k)]
        hits = [(u, v) for u in range(9 - k) for v in range(9 - k)
                if torch.equal(x[j, :, 4 * u:4 * (u + k), 4 * v:4 * (v + k)], pasted)]
        assert any(torch.isclose(sums[j, u, v], sums[j].max(), atol=1e-6) for u, v in hits)  # partner's best window
    lam = 1 - k * k / 64
    assert torch.allclose(mixed.lam, torch.full((6,), lam))
    target = lam * one_hot(y, 0.1) + (1 - lam) * one_hot(y[mixed.index], 0.1)
    assert torch.allclose(mixed.targets, target, atol=1e-6)
    # Eq. (3)-(4) by hand for the same features
    features = model.forward_features(mixed.images)
    logits = model.forward_head(features)
    fine, con = sm.losses(mixed, window, clean_logits, features, logits)
    tokens = patch_tokens(attention_layout(model), features)
    w = window.flatten(1)
    ce = lambda z, t: -(t * z.log_softmax(1)).sum(1)
    hand_fine = torch.stack([0.5 * (ce(sm.token_head(tokens[i][~w[i]].mean(0, keepdim=True)), one_hot(y[i:i + 1], 0.1))
                                    + ce(sm.token_head(tokens[i][w[i]].mean(0, keepdim=True)),
                                         one_hot(y[mixed.index][i:i + 1], 0.1))) for i in range(6)]).mean()
    teacher = (lam * clean + (1 - lam) * clean[mixed.index]).softmax(1)
    hand_con = F.kl_div(logits.log_softmax(1), teacher, reduction="batchmean")
    assert torch.allclose(fine, hand_fine, atol=1e-5) and torch.allclose(con, hand_con, atol=1e-6)


def test_smmix_token_head_is_the_methods_own_and_trains():
    model = gap_vit()
    sm = setup(SMMix(K, mixup_alpha=0.0), model)
    assert sm.token_head.in_features == 16 and "token_head.weight" in sm.state_dict()
    groups = sm.param_groups(1e-3)
    assert [g["params"] for g in groups] == [[sm.token_head.weight], [sm.token_head.bias]]
    shared = setup(SMMix(K, mixup_alpha=0.0, share_head=True), model)
    assert shared.token_head is None and shared.param_groups(1e-3) == [] and shared._head() is model.get_classifier()


# ================================================================ 5. every method, end to end
@pytest.mark.parametrize("method", ["transmix", "mixpro", "smmix"])
def test_labels_sum_to_one_and_lie_in_the_unit_interval(method):
    for build in MODELS.values():
        model = build()
        m = setup(registry.build_method(method, K, 0.1), model)
        for seed in range(8):  # every branch of the switches
            x, y = batch(6, seed)
            out = m.training_step(model, (x, y), 0.0)
            t = out.mixed.targets
            assert torch.allclose(t.sum(1), torch.ones(6), atol=1e-5) and t.min() >= 0 and t.max() <= 1


@pytest.mark.parametrize("method", ["transmix", "mixpro", "smmix"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_trains_two_steps(method, name):
    model = MODELS[name]()
    m = setup(registry.build_method(method, K, 0.1, **({"mixup_alpha": 0.0} if method != "mixpro" else
                                                       {"maskmix_prob": 1.0})), model)
    opt = build_optimizer(model, m, OptimConfig(name="adamw", lr=1e-3))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        out = train_step(model, m, opt, batch(8), 0.5)
        assert torch.isfinite(out.loss) and out.logits.shape == (8, K)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if b.requires_grad)
    assert not attention_layout(model).attention.qkv._forward_hooks


@pytest.mark.parametrize("method, params", [("transmix", "{}"), ("mixpro", "{factor: accuracy}"), ("smmix", "{}")])
def test_trainer_runs_the_method_and_resumes_exactly(method, params, tmp_path: Path):
    tiny = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
            "model.name=vit_tiny_patch4", "model.kwargs={embed_dim: 16, depth: 2, num_heads: 2, num_stages: 1}",
            "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false", "run.threads=1",
            f"method.name={method}", f"method.params={params}", "method.label_smoothing=0.1"]
    straight = train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'a'}"]))
    train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*tiny, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["test_acc1"] == straight["test_acc1"]
    state = load_checkpoint(tmp_path / "a")["method"]
    if method == "mixpro":
        assert float(state["train_accuracy"]) > 0
    if method == "smmix":
        assert state["token_head.weight"].shape == (10, 16)
    assert (tmp_path / "a" / "samples.png").exists()


@pytest.mark.parametrize("method", ["transmix", "mixpro", "smmix"])
def test_previews_show_the_methods_own_mix_with_the_setup_model(method):
    """`mixlab show` and the bench gallery draw the method's own branch (CutMix + attention labels,
    MaskMix, SMMix windows), never the Mixup half of the switch."""
    m = registry.build_method(method, K, 0.1)
    with pytest.raises(RuntimeError, match="must be called before previewing"):
        m.mix_preview(*batch(4))
    setup(m, cls_vit())
    for seed in range(6):
        mixed = m.mix_preview(*batch(4, seed))
        own = mixed.boxes is not None if method == "transmix" else (mixed.boxes is None and mixed.mask is not None)
        assert own and torch.allclose(mixed.targets.sum(1), torch.ones(4), atol=1e-5)


# ================================================================ 6. bad input
@pytest.mark.parametrize("method, kwargs, match", [
    ("transmix", {"cutmix_prob": 1.5}, "cutmix_prob must be in \\[0, 1\\], got 1.5"),
    ("transmix", {"area_weight": -0.1}, "area_weight must be in \\[0, 1\\], got -0.1"),
    ("transmix", {"mixup_alpha": -1}, "mixup_alpha must be a number >= 0 \\(0 disables Mixup\\), got -1"),
    ("transmix", {"query": "first"}, "query must be one of \\['auto', 'cls', 'mean'\\], got 'first'"),
    ("transmix", {"mask_downsample": "bilinear"}, "mask_downsample must be one of \\['area', 'nearest'\\]"),
    ("mixpro", {"mask_patch_size": 0}, "mask_patch_size must be a positive int .* got 0"),
    ("mixpro", {"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
    ("mixpro", {"factor": "loss"}, "factor must be one of \\['similarity', 'accuracy'\\], got 'loss'"),
    ("mixpro", {"maskmix_prob": 2}, "maskmix_prob must be in \\[0, 1\\], got 2"),
    ("smmix", {"min_side_ratio": 0.8}, "min_side_ratio, max_side_ratio\\) must satisfy 0.0 <= min <= max <= 1.0"),
    ("smmix", {"fine_weight": -1.0}, "fine_weight must be a number >= 0, got -1.0"),
    ("smmix", {"smmix_prob": -0.5}, "smmix_prob must be in \\[0, 1\\], got -0.5"),
])
def test_bad_arguments_are_refused_with_the_argument_named(method, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        registry.build_method(method, K, **kwargs)


@pytest.mark.parametrize("method", ["transmix", "mixpro", "smmix"])
def test_images_must_tile_into_patches_and_setup_comes_first(method):
    m = registry.build_method(method, K, **({"maskmix_prob": 1.0} if method == "mixpro" else {"mixup_alpha": 0.0}))
    with pytest.raises(RuntimeError, match="setup\\(model, generator\\) must be called"):
        m.training_step(gap_vit(), batch(4), 0.0)
    model = gap_vit()
    setup(m, model)
    with pytest.raises(ValueError, match="must be a multiple of the model's patch size 4x4"):
        m.training_step(model, (torch.randn(4, 3, 30, 30), torch.zeros(4, dtype=torch.long)), 0.0)


def test_registry_entries_carry_the_papers_defaults_and_a_vit():
    for name, cls in (("transmix", TransMix), ("mixpro", MixPro), ("smmix", SMMix)):
        spec = registry.METHODS[name]
        assert spec.config == {"model": {"name": "vit_tiny_patch4"}}
        assert isinstance(registry.build_method(name, K), cls) and getattr(mixlab, cls.__name__) is cls
    assert registry.METHODS["transmix"].defaults == {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "cutmix_prob": 0.5,
                                                     "area_weight": 0.0}
    assert registry.METHODS["smmix"].defaults["min_side_ratio"] == 0.25


def test_the_vit_protocols_compare_the_same_rows_on_class_token_deits():
    from mixlab.bench.protocols import load_protocol

    quick, full = load_protocol("cifar10-vit-quick"), load_protocol("cifar10-vit-full")
    assert list(quick.methods) == list(full.methods) == ["vanilla", "mixup-cutmix", "cutmix", "transmix", "mixpro",
                                                         "smmix"]
    assert quick.methods == full.methods and quick.claims == full.claims and len(quick.seeds) == 3
    assert {(c.method, c.baseline) for c in quick.claims} >= {("transmix", "cutmix"), ("mixpro", "transmix")}
    assert quick.base.method.label_smoothing == full.base.method.label_smoothing == 0.1
    assert quick.base.optim.name == full.base.optim.name == "adamw" and full.base.run.amp == "bf16"
    cfg = quick.config("mixpro", 0)
    model = create_model(cfg.model.name, K, **cfg.model.kwargs)
    layout = attention_layout(model)
    assert layout.class_token and layout.patch_size == (4, 4)  # TransMix and MixPro read the class token's row
    for name in quick.methods:  # every row builds and sets up on the protocol's model
        c = quick.config(name, 0)
        registry.build_method(c.method.name, K, c.method.label_smoothing, **c.method.params).setup(model)
    assert 32 // cfg.method.params["mask_patch_size"] == 4  # MaskMix: the paper's 4 x 4 grid of cells


def test_the_map_is_computed_in_float32_under_autocast():
    """Under bf16 autocast the projections are bf16, but the scores and the softmax are float32."""
    model = cls_vit()
    qkv = attention_layout(model).attention.qkv
    seen = {}
    handle = qkv.register_forward_hook(lambda m, inputs, out: seen.setdefault("qkv", out.detach()))
    x, _ = batch(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), AttentionRecorder(model, "cls") as rec:
        model(x)
    handle.remove()
    q, k, _ = seen["qkv"].float().reshape(4, 65, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = ((q[:, :, :1] * 8 ** -0.5) @ k.transpose(-2, -1)).softmax(-1)[..., 0, 1:].mean(1)
    assert seen["qkv"].dtype == torch.bfloat16 and rec.map.dtype == torch.float32
    assert torch.allclose(rec.map, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["transmix", "mixpro", "smmix"])
def test_rectangular_images_mix_on_their_own_patch_grid(method):
    model = gap_vit()  # mixlab's ViT resamples its position embedding to any grid
    m = setup(registry.build_method(method, K, 0.1), model)
    x = torch.randn(4, 3, 32, 48)
    y = torch.arange(4)
    forced = {"transmix": {"cutmix": True}, "mixpro": {"maskmix": True}, "smmix": {}}[method]
    mixed = m.mix(model, x, y, **forced)[0]
    mask = mixed.mask[:, 0]
    assert mask.shape == (4, 32, 48) and torch.allclose(mixed.targets.sum(1), torch.ones(4), atol=1e-5)
    if method != "transmix":  # MaskMix cells and SMMix windows are whole patches
        blocks = mask.unfold(1, 4, 4).unfold(2, 4, 4)
        assert torch.equal(blocks.amax((-1, -2)), blocks.amin((-1, -2)))
        assert torch.allclose(mixed.lam, mask.mean((1, 2)))
