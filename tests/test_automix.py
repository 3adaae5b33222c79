"""AutoMix (Liu et al. 2022): the Mix Block of Eq. 4-6, the momentum pipeline of Eq. 8 and 10-12,
ℓ_λ of Eq. 7, gradient isolation, checkpoints, and the `mixlab show` picture."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import mixlab
from mixlab import registry
from mixlab.core import mix_targets, pair_index, sample_lambda, soft_cross_entropy, soft_targets
from mixlab.engine import build_optimizer, load_checkpoint, load_config, train, train_step
from mixlab.engine.config import OptimConfig
from mixlab.methods.automix import AutoMix, MixBlock
from mixlab.models import create_model, forward_until

K = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: these tests train small models


def _setup(seed: int = 0, width: int = 8, **kwargs) -> tuple[nn.Module, AutoMix]:
    torch.manual_seed(seed)
    model = create_model("resnet_small", K, width=width)
    am = AutoMix(K, **kwargs)
    am.setup(model, torch.Generator().manual_seed(seed))
    return model, am


def _batch(n: int = 8, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def _eq5_reference(block: MixBlock, z: torch.Tensor, lam: torch.Tensor, index: torch.Tensor, size) -> torch.Tensor:
    """Eq. 5-6 written out with einsum, position by position (the test's own reading of the paper)."""
    b, c, h, w = z.shape
    lam_i = lam.view(b, 1, 1, 1).expand(b, 1, h, w)
    z_i, z_j = torch.cat([z, lam_i], 1), torch.cat([z[index], 1 - lam_i], 1)
    wp, bp = block.proj.weight[:, :, 0, 0], block.proj.bias  # W_P: (d, C+1)
    wz, bz = block.value.weight[0, :, 0, 0], block.value.bias  # W_Z: (C+1,)
    q = torch.einsum("dc,bcp->bdp", wp, z_i.flatten(2)) + bp[None, :, None]
    k = torch.einsum("dc,bcp->bdp", wp, z_j.flatten(2)) + bp[None, :, None]
    p = torch.softmax(torch.einsum("bdp,bdq->bpq", q, k) / math.sqrt(wp.shape[0]), dim=-1)  # rows: x_i's positions
    source = z_i if block.value_from == "own" else z_j
    v = torch.einsum("c,bcq->bq", wz, source.flatten(2)) + bz
    s = torch.sigmoid(torch.einsum("bpq,bq->bp", p, v)).view(b, 1, h, w)  # σ before U (Eq. 5)
    s = F.interpolate(s, size=size, mode=block.upsampling)
    return s if block.value_from == "own" else 1 - s


# ------------------------------------------------------------------------------ the Mix Block, Eq. 4-6
@pytest.mark.parametrize("value", ["own", "partner"])
@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
def test_mix_block_is_eq5_and_eq6(value, upsampling):
    """The mask equals Eq. 5 with the row-softmax attention of Eq. 6 normalised by sqrt(C_l / 2),
    for a Mix Block whose weights are far from their init (so every term matters)."""
    torch.manual_seed(0)
    block = MixBlock(12, value=value, upsampling=upsampling)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    z = torch.randn(5, 12, 4, 3)
    lam, index = torch.rand(5), torch.tensor([3, 0, 4, 1, 2])
    s = block(z, lam, index, (8, 6))
    assert s.shape == (5, 1, 8, 6) and s.dtype == torch.float32
    assert torch.allclose(s, _eq5_reference(block, z, lam, index, (8, 6)), atol=1e-5)
    assert block.inter_channels == 6 and block.proj.in_channels == 13  # C_l / 2, and the λ channel


def test_mask_values_in_unit_interval_and_the_two_weights_sum_to_one():
    """s_i ∈ [0, 1]; mixing images of pure colours (image b is the colour e_b in 8 channels) shows
    each pixel's two weights (Eq. 4): s_i in the own channel, s_j in the partner's, and s_i + s_j = 1."""
    model, am = _setup()
    with torch.no_grad():
        for p in am.mix_block.parameters():
            p.normal_(0, 1.0)  # strong, spatially varied masks
    x, y = _batch(8)
    mixed = am.mix_preview(x, y, lam=0.3)
    s, index = mixed.mask, mixed.index
    assert s.shape == (8, 1, 16, 16) and bool((s >= 0).all() and (s <= 1).all())
    assert s.std() > 0.05  # not a constant: the check below means something
    assert not (index == torch.arange(8)).any()
    colours = torch.eye(8)[:, :, None, None].expand(8, 8, 16, 16)
    out = AutoMix._mix(colours, s, index)
    rows = torch.arange(8)
    s_i, s_j = out[rows, rows].unsqueeze(1), out[rows, index].unsqueeze(1)
    assert torch.allclose(s_i, s, atol=1e-6) and torch.allclose(s_i + s_j, torch.ones_like(s), atol=1e-6)
    assert torch.allclose(out.sum(1, keepdim=True), torch.ones_like(s), atol=1e-6)  # nothing else in it
    assert torch.allclose(mixed.images, x[mixed.index] + s * (x - x[mixed.index]), atol=1e-6)


def test_lambda_embedding_makes_the_mask_depend_on_lambda():
    torch.manual_seed(0)
    z, index = torch.rand(4, 8, 4, 4), torch.tensor([1, 2, 3, 0])
    for lam_concat in (True, False):
        block = MixBlock(8, lam_concat=lam_concat)
        with torch.no_grad():
            for p in block.parameters():
                p.normal_(0, 1.0)
        a, b = block(z, torch.full((4,), 0.2), index, (8, 8)), block(z, torch.full((4,), 0.8), index, (8, 8))
        assert (not torch.allclose(a, b)) == lam_concat


def test_new_mix_block_gives_half_masks():
    """The reference's init, N(0, 0.01²) weights and zero biases: every mask starts near 0.5."""
    model, am = _setup()
    x, y = _batch()
    for lam in (0.1, 0.9):
        assert (am.mix_preview(x, y, lam=lam).mask - 0.5).abs().max() < 0.03


def test_mean_mask_tracks_lambda_once_the_lambda_loss_has_trained(tmp_path):
    """A short run of the whole pipeline on the synthetic set (300 steps of batch 32 at 16×16):
    before, the mean mask is 0.5 whatever λ; after, it is within ε (+ 0.05) of λ = 0.2, 0.5, 0.8.
    γ is 2 instead of 0.1 (and the Mix Block's lr 0.3× the model's) so that 300 steps suffice;
    with the paper's γ it takes ~1000 steps of batch 64 here."""
    from mixlab.data import normalize_on_device

    ds = registry.build_dataset("synthetic", "train", num_per_class=32, image_size=16, seed=0)
    x = normalize_on_device(torch.stack([ds[i][0] for i in range(len(ds))]), ds.mean, ds.std)
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    model, am = _setup(gamma=2.0, mix_block_lr_scale=0.3)
    optimizer = build_optimizer(model, am, OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4))
    g = torch.Generator().manual_seed(10)
    ev = torch.randperm(len(x), generator=g)[:64]
    lams = (0.2, 0.5, 0.8)

    def mean_masks() -> list[float]:
        state = am.generator.get_state()
        means = [am.mix_preview(x[ev], y[ev], lam=lam).mask.mean().item() for lam in lams]
        am.generator.set_state(state)
        return means

    assert all(abs(m - 0.5) < 0.01 for m in mean_masks())
    for _ in range(300):
        idx = torch.randint(0, len(x), (32,), generator=g)
        train_step(model, am, optimizer, (x[idx], y[idx]), 0.0)
    after = mean_masks()
    assert all(abs(m - lam) <= am.epsilon + 0.05 for m, lam in zip(after, lams)), after
    assert after[0] < after[1] < after[2]


def test_lambda_loss_is_eq7_per_sample_hinge():
    _, am = _setup()
    masks = torch.stack([torch.full((1, 4, 4), v) for v in (0.5, 0.5, 0.9, 0.1)])
    lam = torch.tensor([0.5, 0.65, 0.5, 0.3])
    # |λ - mean s_i| - ε, clamped at 0: 0, 0.05, 0.3, 0.1 -> mean 0.1125
    assert am.lam_loss(masks, lam).item() == pytest.approx(0.1125, abs=1e-6)
    assert am.gamma_at(0.0) == pytest.approx(0.1) and am.gamma_at(0.5) == pytest.approx(0.05)
    assert am.gamma_at(1.0) == 0.0


# ------------------------------------------------------------------------------ the momentum pipeline
def test_two_lambdas_two_pairings_and_features_from_the_momentum_encoder():
    """λ_q, idx_q then λ_k, idx_k from the method's generator; the classifier's mixed images are
    the Mix Block's mask for (λ_q, idx_q) on θk's stage-l features (not θq's); its labels weigh λ_q."""
    model, am = _setup(lam_margin=0.0)
    with torch.no_grad():  # θq != θk, and a Mix Block with visible masks
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        for p in am.mix_block.parameters():
            p.normal_(0, 1.0)
    x, y = _batch()
    g = torch.Generator().manual_seed(5)
    am.generator = g
    state = g.get_state()
    out = am.losses(model, x, y, 0.0)
    g.set_state(state)
    lam_q, idx_q = sample_lambda(8, 2.0, generator=g), pair_index(8, "random", g)
    lam_k, idx_k = sample_lambda(8, 2.0, generator=g), pair_index(8, "random", g)
    assert torch.equal(out.mixed.lam, lam_q) and torch.equal(out.mixed.index, idx_q)
    assert torch.equal(out.gen_lam, lam_k) and torch.equal(out.gen_index, idx_k) and lam_q[0] != lam_k[0]
    targets = soft_targets(y, K)
    assert torch.allclose(out.mixed.targets, lam_q[:, None] * targets + (1 - lam_q[:, None]) * targets[idx_q])
    with torch.no_grad():
        s_k = am.mix_block(forward_until(am.momentum_model, x, 3), lam_q, idx_q, (16, 16))
        s_q = am.mix_block(forward_until(model, x, 3), lam_q, idx_q, (16, 16))
    assert torch.allclose(out.mixed.mask, s_k, atol=1e-6) and not torch.allclose(out.mixed.mask, s_q, atol=1e-3)
    assert torch.allclose(out.mixed.images, x[idx_q] + s_k * (x - x[idx_q]), atol=1e-5)


def test_loss_terms_of_eq8():
    """classification = CE(θq(x), y) + MCE(θq(x_mix^q)); generation = MCE(θk(x_mix^k)) + γ(t) ℓ_λ."""
    model, am = _setup(lam_margin=0.0)
    x, y = _batch()
    state = am.generator.get_state()
    out = am.losses(model, x, y, 0.25)
    targets = soft_targets(y, K)
    with torch.no_grad():
        clean = soft_cross_entropy(model(x), targets)
        mix = soft_cross_entropy(model(out.mixed.images), out.mixed.targets)
        mixed_k = x[out.gen_index] + out.gen_mask * (x - x[out.gen_index])
        gen = soft_cross_entropy(am.momentum_model(mixed_k), mix_targets(targets, out.gen_index, out.gen_lam))
        lam_loss = am.lam_loss(out.gen_mask, out.gen_lam)
    assert torch.allclose(out.classification, clean + mix, atol=1e-5)
    assert torch.allclose(out.generation, gen + 0.075 * lam_loss, atol=1e-5)
    am.generator.set_state(state)
    no_ce = AutoMix(K, clean_loss=False, lam_margin=0.0)
    no_ce.setup(model, torch.Generator())
    no_ce.load_state_dict(am.state_dict())
    no_ce.generator.set_state(state)
    assert torch.allclose(no_ce.losses(model, x, y, 0.25).classification, mix, atol=1e-5)


def test_lam_margin_gives_plain_mixup_weights_near_the_ends():
    model, am = _setup(alpha=0.05)  # λ near 0 or 1 nearly always
    x, y = _batch()
    for _ in range(5):
        out = am.losses(model, x, y, 0.0)
        lam = float(out.mixed.lam[0])
        if lam <= 0.08 or lam >= 0.92:
            assert torch.equal(out.mixed.mask, torch.full_like(out.mixed.mask, lam))
            assert not torch.allclose(out.gen_mask, torch.full_like(out.gen_mask, float(out.gen_lam[0])))
            break
    else:
        pytest.fail("no λ_q within the margin in 5 draws of Beta(0.05, 0.05)")


def test_no_classification_gradient_reaches_phi_and_no_generation_gradient_reaches_the_encoders():
    model, am = _setup()
    x, y = _batch()
    out = am.losses(model, x, y, 0.1)
    theta_q, phi = list(model.parameters()), list(am.mix_block.parameters())
    theta_k = list(am.momentum_model.parameters())
    assert not any(p.requires_grad for p in theta_k)  # stop-gradient: θk is never trained

    def grads(loss):
        for p in [*theta_q, *phi]:
            p.grad = None
        loss.backward(retain_graph=True)
        return ([p.grad for p in theta_q], [p.grad for p in phi], [p.grad for p in theta_k])

    q, f, k = grads(out.classification)
    assert all(g is not None for g in q) and sum(g.abs().sum() for g in q) > 0
    assert all(g is None for g in f) and all(g is None for g in k)
    q, f, k = grads(out.generation)
    assert all(g is None for g in q) and all(g is None for g in k)
    assert all(g is not None and g.abs().sum() > 0 for g in f)  # through the mixed image and f_θk


def test_momentum_update_is_eq12_with_the_cosine_momentum():
    model, am = _setup()
    assert am.momentum_at(0.0) == pytest.approx(0.999) and am.momentum_at(1.0) == 1.0
    assert am.momentum_at(0.5) == pytest.approx(0.9995)
    assert am.momentum_at(0.25) == pytest.approx(1 - 0.001 * (math.cos(math.pi / 4) + 1) / 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for b in model.buffers():
            b.add_(1)  # the update ignores buffers: θk's BatchNorm statistics are its own
    before = copy.deepcopy(am.momentum_model.state_dict())
    for t in (0.0, 0.3):
        k0 = [p.clone() for p in am.momentum_model.parameters()]
        am.after_optimizer_step(model, t)
        m = 1 - (1 - 0.999) * (math.cos(math.pi * t) + 1) / 2
        for p_k, p_k0, p_q in zip(am.momentum_model.parameters(), k0, model.parameters()):
            assert torch.allclose(p_k, m * p_k0 + (1 - m) * p_q, rtol=0, atol=1e-6)
            assert not torch.equal(p_k, p_k0)
    for name, b in am.momentum_model.named_buffers():
        assert torch.equal(b, before[name]), name
    k0 = [p.clone() for p in am.momentum_model.parameters()]
    am.after_optimizer_step(model, 1.0)  # m = 1: no change
    assert all(torch.equal(a, b) for a, b in zip(k0, am.momentum_model.parameters()))
    copy_each_step = _setup(momentum=0.0, momentum_schedule="constant")[1]  # Table 10's "MP (m = 0)"
    copy_each_step.after_optimizer_step(model, 0.4)
    assert all(torch.equal(a, b) for a, b in zip(copy_each_step.momentum_model.parameters(), model.parameters()))
    assert _setup(momentum=0.0)[1].momentum_at(0.5) == 0.5  # the cosine from m_0 = 0


def test_one_training_step_through_the_engine():
    model, am = _setup()
    optimizer = build_optimizer(model, am, OptimConfig(name="sgd", lr=0.1, weight_decay=1e-4))
    group = optimizer.param_groups[-1]
    assert {id(p) for p in group["params"]} == {id(p) for p in am.mix_block.parameters()}
    assert group["base_lr"] == 0.1 and group["weight_decay"] == 1e-4 and not group.get("fixed_lr")
    assert not {id(p) for p in am.momentum_model.parameters()} & {id(p) for g in optimizer.param_groups
                                                                    for p in g["params"]}
    phi0 = [p.clone() for p in am.mix_block.parameters()]
    k0 = [p.clone() for p in am.momentum_model.parameters()]
    out = train_step(model, am, optimizer, _batch(), 0.0)
    assert math.isfinite(out.loss.item()) and out.mixed.mask is not None and out.logits.shape == (8, K)
    assert {"loss_ce", "loss_mix", "loss_gen", "loss_lam", "mask_gap"} <= set(out.logs)
    assert all(not torch.equal(a, b) for a, b in zip(phi0, am.mix_block.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(k0, am.momentum_model.parameters()) if a.numel() > 1)


def test_preview_changes_nothing_and_stages_are_resolved():
    model, am = _setup()
    x, y = _batch()
    state = copy.deepcopy(am.state_dict())
    mixed = am.mix_preview(x, y)
    assert mixed.mask.shape == (8, 1, 16, 16) and 0 < float(mixed.lam[0]) < 1
    assert all(torch.equal(v, state[k]) for k, v in am.state_dict().items())
    assert am.feature_stage == 3 and am.mix_block.in_channels == 32  # resnet_small: 4 stages, l = 3
    wrn = AutoMix(K)
    wrn.setup(create_model("wrn28_2", K))
    assert wrn.feature_stage == 2 and wrn.mix_block.in_channels == 64  # 3 stages: the second-to-last
    one = AutoMix(K, stage=1)
    one.setup(model)
    assert one.mix_block.in_channels == 8
    with pytest.raises(ValueError, match=r"stage must be in 1..4"):
        AutoMix(K, stage=5).setup(model)
    with pytest.raises(TypeError, match="staged-model protocol"):
        AutoMix(K).setup(nn.Linear(3, K))
    with pytest.raises(RuntimeError, match="setup"):
        AutoMix(K).training_step(model, (x, y), 0.0)


def test_deployed_model_is_unchanged_and_the_state_holds_both_extras():
    model, am = _setup()
    keys = set(am.state_dict())
    assert {k.split(".")[0] for k in keys} == {"mix_block", "momentum_model"}
    assert set(model.state_dict()) == set(create_model("resnet_small", K, width=8).state_dict())
    fresh = AutoMix(K)
    fresh.setup(create_model("resnet_small", K, width=8), torch.Generator())
    fresh.load_state_dict(am.state_dict())  # a fresh method accepts a checkpoint's state


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
    ({"stage": 0}, ValueError, "stage must be None .* or an int >= 1"),
    ({"stage": 2.5}, ValueError, "stage must be None"),
    ({"momentum": 1.5}, ValueError, r"momentum must be in \[0.0, 1.0\]"),
    ({"momentum": "0.9"}, TypeError, "momentum must be a real number"),
    ({"momentum_schedule": "linear"}, ValueError, "momentum_schedule must be one of"),
    ({"gamma": -0.1}, ValueError, "gamma must be in"),
    ({"epsilon": 1.0}, ValueError, "epsilon must be in"),
    ({"lam_margin": 0.5}, ValueError, "lam_margin must be in"),
    ({"lam_concat": 1}, TypeError, "lam_concat must be a bool"),
    ({"value": "key"}, ValueError, "value must be one of"),
    ({"upsampling": "bicubic"}, ValueError, "upsampling must be one of"),
    ({"reduction": 0}, ValueError, "reduction must be an int >= 1"),
    ({"pairing": "shuffle"}, ValueError, "pairing must be one of"),
    ({"clean_loss": "yes"}, TypeError, "clean_loss must be a bool"),
    ({"mix_block_lr_scale": 0.0}, ValueError, "mix_block_lr_scale must be in"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        AutoMix(K, **kwargs)


def test_registry_lazy_export_and_repr():
    assert mixlab.AutoMix is AutoMix
    am = registry.build_method("automix", K)
    assert am.alpha == 2.0 and am.stage is None and am.momentum == 0.999 and am.gamma == 0.1
    assert am.epsilon == 0.1 and am.upsampling == "nearest" and am.lam_concat
    assert "alpha=2.0" in repr(am)
    with pytest.raises(ValueError, match="has no hyper-parameter 'omega'"):
        registry.build_method("automix", K, omega=1.0)


# ------------------------------------------------------------------------------ the trainer and `mixlab show`
TINY = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
        "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false",
        "run.threads=1", "method.name=automix"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("automix") / "straight"
    return train(load_config(overrides=[*TINY, f"run.out={out}"])), out


def test_trainer_resumes_automix_exactly(straight, tmp_path):
    """2 epochs straight == 1 epoch + resume + 1 epoch: losses, model, Mix Block and θk bit for bit."""
    metrics, out = straight
    assert {"train_loss_gen", "train_loss_lam", "train_mask_gap"} <= set(metrics)
    train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'split'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*TINY, f"run.resume={tmp_path / 'split'}"]))
    for key in ("train_loss", "train_loss_gen", "train_acc", "test_acc1", "test_nll"):
        assert resumed[key] == metrics[key], key
    a, b = load_checkpoint(out), load_checkpoint(tmp_path / "split")
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert any(k.startswith("mix_block.") for k in a["method"]) and any(k.startswith("momentum_model.")
                                                                       for k in a["method"])
    assert set(a["model"]) == set(create_model("resnet_small", K, width=8).state_dict())
    assert (out / "samples.png").exists()


def test_show_draws_masks_from_a_checkpoint(straight, tmp_path, capsys):
    from mixlab.cli import main

    _, run = straight
    png = tmp_path / "automix.png"
    assert main(["show", "--method", "automix", "--checkpoint", str(run), "--n", "4", "--out", str(png)]) == 0
    assert "lambda 0.2, 0.5, 0.8" in capsys.readouterr().out
    with Image.open(png) as img:
        img.verify()
        assert img.format == "PNG"
    assert main(["show", "--method", "mixup", "--checkpoint", str(run)]) == 2
    assert "was trained with method 'automix'" in capsys.readouterr().err
