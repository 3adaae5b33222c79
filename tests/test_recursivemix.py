"""RecursiveMix (Yang et al. 2022): the recursion of Eq. 1-2, the RoI consistency of Eq. 3-5, and
the edge cases of a stateful method (first step, short batches, epochs, eval, resume, DDP)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mixlab
from mixlab.core.losses import soft_cross_entropy
from mixlab.engine import load_checkpoint, load_config, train
from mixlab.methods.recursivemix import RecursiveMix
from mixlab.models import create_model


def _colour_batch(labels: torch.Tensor, k: int, size: tuple[int, int]) -> torch.Tensor:
    """Images whose pixels encode their class: class c is the constant colour e_c in K channels."""
    return torch.nn.functional.one_hot(labels, k).float()[:, :, None, None].expand(-1, -1, *size).contiguous()


def _fake_step(rm: RecursiveMix, images: torch.Tensor, labels: torch.Tensor):
    """mix + update with a stand-in network whose 'feature map' is the image itself."""
    mixed = rm.mix(images, labels)
    logits = mixed.images.mean(dim=(2, 3)) * 5
    loss = rm.update(mixed.images, logits)
    return mixed, loss


# ------------------------------------------------------------------------------ Eq. 1-2: the recursion
@pytest.mark.parametrize("per_sample_boxes", [False, True])
def test_soft_labels_equal_the_pixel_fractions_over_many_steps(per_sample_boxes):
    """After 40 recursive steps every image holds pieces of many earlier images; its soft label
    equals the fraction of its pixels of each class (up to the few pixels nearest resizing moves
    at region borders), and the label mass is 1."""
    k, size = 5, (64, 48)
    rm = RecursiveMix(k, omega=0.0, per_sample_boxes=per_sample_boxes).train()
    rm.generator = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(1)
    worst, pasted = 0.0, 0
    for step in range(40):
        labels = torch.randint(0, k, (16,), generator=g)
        mixed, _ = _fake_step(rm, _colour_batch(labels, k, size), labels)
        pixel_fraction = mixed.images.mean(dim=(2, 3))  # (B, K): one-hot colours, so class areas
        assert torch.allclose(mixed.targets.sum(1), torch.ones(16), atol=1e-5)
        worst = max(worst, (pixel_fraction - mixed.targets).abs().max().item())
        pasted += int((mixed.lam < 1).sum())
    assert pasted > 300  # history was pasted in most samples of most steps
    assert worst < 0.03, worst


def test_box_fraction_is_the_exact_clipped_area_and_lambda_is_uniform():
    rm = RecursiveMix(10, omega=0.0, per_sample_boxes=True).train()
    rm.setup(create_model("resnet_small", 10, width=8), torch.Generator().manual_seed(0))
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    fracs = []
    for _ in range(30):
        mixed, _ = _fake_step(rm, x, y)
        if rm.has_history and (mixed.lam < 1).any() or mixed.boxes is not None:
            b = mixed.boxes
            area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).float() / (32 * 32)
            assert torch.allclose(1 - mixed.lam, area)
            assert torch.equal(mixed.mask[:, 0].float().mean(dim=(1, 2)), mixed.lam)  # mask = pixels kept
            fracs.append(area)
    fracs = torch.cat(fracs)
    # λ ~ U[0, 0.5] drawn; a box of side s = √λ with a uniform centre keeps s - s²/4 of each side
    # on average after clipping: E[area] = E[λ] - E[λ^1.5]/2 + E[λ²]/16 = 0.185 (less with int sides)
    assert fracs.max() <= 0.5 + 1e-6 and 0.15 < fracs.mean() < 0.2


@pytest.mark.parametrize("per_sample_boxes", [False, True])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resizefill_is_the_whole_previous_mixed_batch_resized_into_the_box(mode, per_sample_boxes):
    """ResizeFill (Eq. 1): the box holds the previous step's *mixed* batch resized (not a cut of
    it); outside the box the current images are untouched. Bilinear is the authors'
    ``F.interpolate(..., mode="bilinear", align_corners=True)``."""
    rm = RecursiveMix(4, omega=0.0, interpolation=mode, per_sample_boxes=per_sample_boxes).train()
    rm.generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (6,))
    previous, _ = _fake_step(rm, torch.rand(6, 3, 40, 32), labels)
    checked = 0
    for _ in range(30):
        history = previous.images.clone()
        current = torch.rand(6, 3, 40, 32)
        mixed, _ = _fake_step(rm, current, labels)
        for i, (x1, y1, x2, y2) in enumerate(mixed.boxes.tolist()):
            if x2 > x1 and y2 > y1:
                kwargs = {"mode": "nearest-exact"} if mode == "nearest" else {"mode": mode, "align_corners": True}
                expect = torch.nn.functional.interpolate(history[i:i + 1], size=(y2 - y1, x2 - x1), **kwargs)
                assert torch.allclose(mixed.images[i, :, y1:y2, x1:x2], expect[0], atol=1e-5)
                checked += 1
            outside = torch.ones(40, 32, dtype=torch.bool)
            outside[y1:y2, x1:x2] = False
            assert torch.equal(mixed.images[i][:, outside], current[i][:, outside])
        previous = mixed
    assert checked > 100
    assert mixed.partner_targets is not None and torch.equal(mixed.index, torch.arange(6))


def test_bilinear_resizefill_puts_the_history_corners_on_the_box_corners():
    """align_corners=True (the authors' bilinear): the four corner pixels of the box are exactly
    the history's four corner pixels; a 1-pixel side reads the first row or column."""
    from mixlab.core.boxes import resize_into_boxes

    source = torch.rand(3, 2, 9, 7)
    boxes = torch.tensor([[2, 3, 12, 10], [0, 0, 1, 5], [4, 4, 7, 5]])
    canvas = resize_into_boxes(source, boxes, 12, 14, mode="bilinear-align-corners")
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        expect = torch.nn.functional.interpolate(source[i:i + 1], size=(y2 - y1, x2 - x1), mode="bilinear",
                                                 align_corners=True)[0]
        assert torch.allclose(canvas[i, :, y1:y2, x1:x2], expect, atol=1e-6)
    x1, y1, x2, y2 = boxes[0].tolist()
    assert torch.allclose(canvas[0, :, y1, x1], source[0, :, 0, 0]) and torch.allclose(canvas[0, :, y2 - 1, x2 - 1],
                                                                                          source[0, :, -1, -1])
    assert torch.allclose(canvas[1, :, 0:5, 0], torch.nn.functional.interpolate(
        source[1:2, :, :, :1], size=(5, 1), mode="bilinear", align_corners=True)[0, :, :, 0])


# ------------------------------------------------------------------------------ Eq. 3-5: the consistency loss
def test_roi_is_exactly_the_pasted_region():
    """With the image as the feature map (and at half resolution), the 1x1 aligned RoIAlign over
    the box is the mean of the pasted pixels: same pixels, H and W not swapped (non-square
    images and boxes)."""
    rm = RecursiveMix(3, per_sample_boxes=True, in_features=3).train()
    rm.setup(create_model("resnet_small", 3, width=8), torch.Generator().manual_seed(0))
    rm.head_roi = nn.Identity()  # read the pooled features themselves
    images = torch.rand(32, 3, 48, 64)
    boxes = torch.tensor([[0, 0, 64, 48], [4, 10, 30, 14], [62, 2, 64, 40], [10, 20, 12, 46]] * 8)
    pooled = rm.roi_logits(images, boxes, (48, 64))
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        assert torch.allclose(pooled[i], images[i, :, y1:y2, x1:x2].mean(dim=(1, 2)), atol=1e-5)
    half = torch.nn.functional.avg_pool2d(images, 2)  # a stride-2 "backbone"; even boxes stay exact
    pooled = rm.roi_logits(half, boxes, (48, 64))
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        assert torch.allclose(pooled[i], images[i, :, y1:y2, x1:x2].mean(dim=(1, 2)), atol=1e-5)


def test_consistency_gradients_reach_backbone_and_head_but_not_history():
    model = create_model("resnet_small", 10, width=8)
    rm = RecursiveMix(10, omega=1.0).train()
    rm.setup(model, torch.Generator().manual_seed(0))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = rm.training_step(model, (x, y), 0.0)
    assert out.logs["loss_cl"] == 0 and out.mixed is None  # first step: plain training
    for _ in range(5):
        mixed = rm.mix(torch.randn(8, 3, 32, 32), y)
        if (mixed.lam < 1).any():
            break
        rm.update(model.forward_features(mixed.images), model(mixed.images))
    assert not (rm.hist_images.requires_grad or rm.hist_probs.requires_grad or rm.hist_targets.requires_grad)
    features = model.forward_features(mixed.images)
    loss_cl = rm.update(features, model.forward_head(features))
    assert loss_cl > 0
    model.zero_grad()
    loss_cl.backward()
    assert rm.head_roi.weight.grad.abs().sum() > 0
    assert model.stages[-1][0].conv1.weight.grad.abs().sum() > 0  # through RoIAlign into the backbone
    assert model.fc.weight.grad is None  # H′ is unshared: the main head gets nothing from L_KL
    assert rm.hist_images.grad is None and not rm.hist_images.requires_grad


def test_consistency_loss_is_omega_lambda_kl():
    """Eq. 5's second term, by hand: ω·mean_i(λ_i·KL(p^h_i ‖ softmax(H′(roi_i))))."""
    k = 4
    rm = RecursiveMix(k, omega=0.3, per_sample_boxes=True, in_features=k).train()
    rm.generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, k, 16, 16), torch.randint(0, k, (6,))
    _fake_step(rm, x, y)
    p_hist = rm.hist_probs.clone()
    mixed = rm.mix(torch.randn(6, k, 16, 16), y)
    features = torch.randn(6, k, 8, 8)
    roi = rm.roi_logits(features, mixed.boxes, (16, 16))
    kl = (p_hist * (p_hist.log() - roi.log_softmax(1))).sum(1)
    expect = 0.3 * ((1 - mixed.lam) * kl).mean()
    assert torch.allclose(rm.update(features, torch.randn(6, k)), expect, atol=1e-6)


def test_shared_head_uses_the_model_classifier():
    model = create_model("resnet_small", 10, width=8)
    rm = RecursiveMix(10, share_head=True).train()
    rm.setup(model)
    assert rm.head_roi is None and rm.param_groups(0.1) == []
    x = torch.randn(2, model.num_features, 4, 4)
    assert torch.allclose(rm.roi_logits(x, torch.tensor([[0, 0, 32, 32]] * 2), (32, 32)),
                          model.fc(x.mean(dim=(2, 3))), atol=1e-5)


# ------------------------------------------------------------------------------ fidelity fixes (issue 22 §3)
def test_the_history_is_a_copy_of_the_callers_batch():
    """A loop that refills one input buffer in place (a prefetcher's staging tensor) must not rewrite
    the history: the first step's batch is the caller's own tensor, so it is stored as a copy."""
    rm = RecursiveMix(5, omega=0.0).train()
    rm.generator = torch.Generator().manual_seed(0)
    buffer = torch.rand(4, 3, 16, 16)
    soft = torch.nn.functional.one_hot(torch.arange(4), 5).float()
    for step in range(3):
        _fake_step(rm, buffer, soft)
        saved_images, saved_targets = rm.hist_images.clone(), rm.hist_targets.clone()
        buffer.copy_(torch.rand(4, 3, 16, 16))  # the next batch, written into the same buffer
        soft.copy_(soft.roll(1, dims=0))
        assert torch.equal(rm.hist_images, saved_images), step
        assert torch.equal(rm.hist_targets, saved_targets), step


@pytest.mark.parametrize("per_sample_boxes", [False, True])
def test_an_empty_box_skips_the_roi_branch_so_h_prime_gets_no_gradient(per_sample_boxes):
    """λ < (2/H)² rounds the box to nothing (the code's ``lam == 1``): no RoI branch, H′'s ``.grad``
    stays None, as in the authors' loop (a zero gradient would still let SGD's momentum and weight
    decay move H′). α = 1e-6 makes every box empty on 32×32 images."""
    model = create_model("resnet_small", 10, width=8)
    rm = RecursiveMix(10, alpha=1e-6, omega=1.0, per_sample_boxes=per_sample_boxes).train()
    rm.setup(model, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (6,), generator=g)
    rm.training_step(model, (torch.randn(6, 3, 32, 32, generator=g), y), 0.0)  # first step: no history
    out = rm.training_step(model, (torch.randn(6, 3, 32, 32, generator=g), y), 0.0)
    assert rm.has_history and out.mixed is None and float(out.logs["loss_cl"]) == 0
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    assert rm.head_roi.weight.grad is None and rm.head_roi.bias.grad is None
    assert model.fc.weight.grad is not None  # the main loss still trains the model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_a_half_precision_model_trains(dtype, interpolation):
    """H′ takes the model's dtype; RoIAlign runs in float32 (torchvision has no bf16 CPU kernel)."""
    torch.manual_seed(0)
    model = create_model("resnet_small", 10, width=8).to(dtype)
    x = torch.randn(8, 3, 32, 32).to(dtype)
    try:
        model(x)
    except RuntimeError as err:  # a CPU build without these half-precision kernels
        pytest.skip(f"{dtype} forward not supported on this CPU build: {err}")
    rm = RecursiveMix(10, omega=1.0, interpolation=interpolation).train()
    rm.setup(model, torch.Generator().manual_seed(0))
    assert rm.head_roi.weight.dtype == dtype
    y = torch.randint(0, 10, (8,))
    pasted = 0
    for _ in range(6):
        out = rm.training_step(model, (torch.randn(8, 3, 32, 32).to(dtype), y), 0.0)
        model.zero_grad(set_to_none=True)
        rm.zero_grad(set_to_none=True)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert out.mixed is None or out.mixed.images.dtype == dtype
        if out.mixed is not None and float(out.logs["loss_cl"]) > 0:
            pasted += 1
            assert rm.head_roi.weight.grad is not None and rm.head_roi.weight.grad.dtype == dtype
    assert pasted >= 2


# ------------------------------------------------------------------------------ edge cases
def test_short_and_long_batches_and_mix_update_order():
    rm = RecursiveMix(5, omega=0.0).train()
    rm.generator = torch.Generator().manual_seed(0)
    y8, y5 = torch.randint(0, 5, (8,)), torch.randint(0, 5, (5,))
    first, loss = _fake_step(rm, torch.rand(8, 3, 16, 16), y8)
    assert torch.equal(first.lam, torch.ones(8)) and loss == 0 and rm.hist_images.shape[0] == 8
    short, _ = _fake_step(rm, torch.rand(5, 3, 16, 16), y5)  # the last batch of an epoch: first 5 of history
    assert short.images.shape[0] == 5 and rm.hist_images.shape[0] == 5
    for _ in range(10):  # a full batch after a short one (history kept): only the first 5 rows mix
        long, _ = _fake_step(rm, torch.rand(8, 3, 16, 16), y8)
        assert torch.equal(long.lam[5:], torch.ones(3)) and rm.hist_images.shape[0] == 8
        _fake_step(rm, torch.rand(5, 3, 16, 16), y5)
    rm.mix(torch.rand(5, 3, 16, 16), y5)
    with pytest.raises(RuntimeError, match="without update"):
        rm.mix(torch.rand(5, 3, 16, 16), y5)
    rm.reset()
    with pytest.raises(RuntimeError, match="needs a preceding mix"):
        rm.update(torch.rand(5, 3, 4, 4), torch.rand(5, 5))
    _fake_step(rm, torch.rand(5, 3, 16, 16), y5)
    with pytest.raises(ValueError, match="call reset"):
        rm.mix(torch.rand(5, 3, 8, 8), y5)


def test_epoch_boundary_eval_mode_and_preview_leave_history_alone():
    rm = RecursiveMix(5, omega=0.0).train()
    rm.generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 5, (4,))
    _fake_step(rm, x, y)
    saved = rm.hist_images.clone()
    rm.eval()
    out = rm.mix(torch.rand(4, 3, 16, 16), y)
    assert torch.equal(out.lam, torch.ones(4)) and rm.update(x, torch.rand(4, 5)) == 0
    rm.train()
    preview = rm.mix_preview(torch.rand(4, 3, 16, 16), y)
    assert preview.images.shape == (4, 3, 16, 16) and torch.equal(rm.hist_images, saved)
    keep = RecursiveMix(5, omega=0.0, reset_each_epoch=False)
    _fake_step(keep, x, y)
    keep.on_epoch_start(1)
    rm.on_epoch_start(1)
    assert keep.has_history and not rm.has_history
    # a fresh method previews with the rolled batch as the stand-in history
    fresh = RecursiveMix(5, omega=0.0)
    fresh.generator = torch.Generator().manual_seed(4)
    assert (fresh.mix_preview(x, y).lam <= 1).all() and not fresh.has_history


def test_state_dict_round_trip_continues_exactly():
    """History and H′ are in the method's state: a fresh method that loads it continues the same."""
    model = create_model("resnet_small", 10, width=8)
    a = RecursiveMix(10, reset_each_epoch=False)
    a.setup(model, torch.Generator().manual_seed(0))
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    for _ in range(3):
        a.training_step(model, (x, y), 0.0)
    b = RecursiveMix(10, reset_each_epoch=False)
    b.setup(model, torch.Generator().manual_seed(0))
    b.load_state_dict(a.state_dict())
    b.generator.set_state(a.generator.get_state())
    assert torch.equal(a.hist_images, b.hist_images) and torch.equal(a.head_roi.weight, b.head_roi.weight)
    la, lb = a.training_step(model, (x, y), 0.5), b.training_step(model, (x, y), 0.5)
    assert torch.equal(la.loss, lb.loss)
    assert set(model.state_dict()) == set(create_model("resnet_small", 10, width=8).state_dict())  # deployed model unchanged


def test_ablation_switches_of_table_2():
    rs = RecursiveMix(10, history=False, omega=0.0)
    his = RecursiveMix(10, omega=0.0)
    full = RecursiveMix(10)
    model = create_model("resnet_small", 10, width=8)
    for m in (rs, his, full):
        m.setup(model, torch.Generator().manual_seed(0))
    assert rs.head_roi is None and his.head_roi is None and full.head_roi is not None
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(3):
        mixed, loss = _fake_step(rs, x, y)
    assert not rs.has_history and loss == 0 and not torch.equal(mixed.index, torch.arange(8))
    assert mixed.partner_targets is None  # RS pairs inside the batch, like CutMix
    with pytest.raises(ValueError, match="omega > 0 needs history=True"):
        RecursiveMix(10, history=False)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": 0.0}, ValueError, r"alpha .* \(0, 1\]"),
    ({"alpha": 1.5}, ValueError, r"alpha .* \(0, 1\]"),
    ({"omega": -0.1}, ValueError, "omega must be a finite number >= 0"),
    ({"omega": math.inf}, ValueError, "omega must be a finite number >= 0"),
    ({"interpolation": "bicubic"}, ValueError, "interpolation"),
    ({"share_head": 1}, TypeError, "share_head must be a bool"),
    ({"in_features": 0}, ValueError, "in_features must be None or an integer >= 1"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        RecursiveMix(10, **kwargs)


def test_models_without_a_feature_map_are_refused():
    with pytest.raises(TypeError, match="forward_features"):
        RecursiveMix(10).setup(nn.Linear(3, 10))
    rm = RecursiveMix(4, in_features=8).train()
    rm.setup(create_model("resnet_small", 4, width=8))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,))
    _fake_step(rm, x, y)
    for _ in range(10):
        mixed = rm.mix(x, y)
        if (mixed.lam < 1).any():
            break
        rm.update(torch.randn(4, 8, 2, 2), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) feature map"):
        rm.update(torch.randn(4, 5, 8), torch.randn(4, 4))  # ViT tokens


def test_lazy_export_and_custom_loop_from_the_docstring():
    assert mixlab.RecursiveMix is RecursiveMix
    torch.manual_seed(0)
    model = create_model("resnet_small", 10, width=8)
    rm = mixlab.RecursiveMix(num_classes=10)
    rm.setup(model, torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([*model.parameters(), *rm.parameters()], lr=0.05)
    for _ in range(4):
        images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        mixed = rm.mix(images, labels)
        features = model.forward_features(mixed.images)
        logits = model.forward_head(features)
        loss = soft_cross_entropy(logits, mixed.targets) + rm.update(features, logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert math.isfinite(loss.item()) and rm.has_history


# ------------------------------------------------------------------------------ the trainer
def test_trainer_runs_recursivemix_and_resumes_exactly(tmp_path: Path):
    tiny = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
            "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false",
            "run.threads=1", "method.name=recursivemix", "method.params={reset_each_epoch: false}"]
    straight = train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'a'}"]))
    assert "train_loss_cl" in straight and straight["train_loss_cl"] > 0
    ckpt = load_checkpoint(tmp_path / "a")
    assert ckpt["method"]["hist_images"].shape == (8, 3, 16, 16) and "head_roi.weight" in ckpt["method"]
    train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*tiny, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["test_acc1"] == straight["test_acc1"]
    assert (tmp_path / "a" / "samples.png").exists()
