"""AutoMix's successors and the loss-side plug-ins: SAMix (Li et al. 2021), AdAutoMix (Qin et al.
2024), DecoupleMix (Liu et al. 2023) as a loss option, RegMixup (Pinto et al. 2022), and the
out-of-distribution score (max-softmax AUROC, FPR at 95 % TPR) — each checked against the equations
written out by hand, plus gradient isolation, exact resume through the trainer and the errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixlab
from mixlab import registry
from mixlab.bench import report
from mixlab.bench.protocols import load_protocol, protocol_from_dict
from mixlab.core import (
    MixResult,
    decouple_term,
    decoupled_regularizer,
    mix_targets,
    soft_cross_entropy,
    soft_targets,
)
from mixlab.engine import (
    load_checkpoint,
    load_config,
    train,
)
from mixlab.evaluation import (
    OOD_SETS,
    auroc,
    fpr_at_tpr,
    msp_scores,
    ood_detection,
    synthetic_ood,
)
from mixlab.methods.adautomix import AdaptiveMaskGenerator, AdAutoMix
from mixlab.methods.automix import AutoMix
from mixlab.methods.base import MixerMethod
from mixlab.methods.momentum_pipeline import mix_images
from mixlab.methods.regmixup import RegMixup
from mixlab.methods.samix import SAMix, SAMixBlock, rescale_lam
from mixlab.models import create_model

K = 10

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: these tests train small models


def _batch(n: int = 8, size: int = 16, seed: int = 1, labels: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    return x, (torch.randint(0, K, (n,), generator=g) if labels is None else labels)


def _setup(cls, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = create_model("resnet_small", K, width=8)
    method = cls(K, **kwargs)
    method.setup(model, torch.Generator().manual_seed(seed))
    return model, method


def _visible(module: nn.Module, std: float = 1.0) -> None:
    """Weights far from their init, so that masks vary over the image and every term matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "value.1" not in name:  # SAMix's BatchNorm keeps its affine (1, 0)
                p.normal_(0, std)


def _grads(loss: torch.Tensor, *groups: list[torch.Tensor]) -> list[list[torch.Tensor | None]]:
    for group in groups:
        for p in group:
            p.grad = None
    loss.backward(retain_graph=True)
    return [[p.grad for p in group] for group in groups]


# ------------------------------------------------------------------------------------ SAMix: the Mixer
def _samix_reference(block: SAMixBlock, z: torch.Tensor, lam: torch.Tensor, index: torch.Tensor, size) -> torch.Tensor:
    """SAMix's Mixer written out with einsum (the module docstring's equations), BatchNorm in training mode."""
    b, _, h, w = z.shape
    k1 = block.lam_rescale + 1
    lt = ((4 / 3 * lam ** 3 - 2 * lam ** 2 + k1 * lam) / (k1 - 2 / 3)).view(b, 1, 1, 1)
    z_i, z_j = z * (1 + lt), z[index] * (1 + (1 - lt))
    pair = torch.cat([z_i, z_j], 1).flatten(2)  # (B, 2C, hw)
    q = torch.einsum("dc,bcp->bdp", block.query.weight[:, :, 0, 0], pair) + block.query.bias[None, :, None]
    k = torch.einsum("dc,bcp->bdp", block.key.weight[:, :, 0, 0], pair) + block.key.bias[None, :, None]
    p = torch.softmax(torch.einsum("bdp,bdq->bpq", q, k) / math.sqrt(q.shape[1]), dim=-1)
    conv1, bn, _, conv2 = block.value
    hidden = torch.einsum("ec,bcp->bep", conv1.weight[:, :, 0, 0], z_j.flatten(2))
    mean, var = hidden.mean(dim=(0, 2)), hidden.var(dim=(0, 2), unbiased=False)
    hidden = (hidden - mean[None, :, None]) / torch.sqrt(var[None, :, None] + bn.eps)
    hidden = F.elu(hidden * bn.weight[None, :, None] + bn.bias[None, :, None])
    v = torch.einsum("e,bep->bp", conv2.weight[0, :, 0, 0], hidden)
    logits = torch.einsum("bpq,bq->bp", p, v).view(b, 1, h, w)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return 1 - torch.sigmoid(logits)  # s_i = 1 - s_j


def test_samix_mixer_is_its_equations():
    torch.manual_seed(0)
    block = SAMixBlock(12)
    _visible(block, 0.3)
    z, lam, index = torch.randn(5, 12, 4, 3), torch.rand(5), torch.tensor([3, 0, 4, 1, 2])
    s = block(z, lam, index, (8, 6))
    assert s.shape == (5, 1, 8, 6) and s.dtype == torch.float32 and bool(((s > 0) & (s < 1)).all())
    assert torch.allclose(s, _samix_reference(block, z, lam, index, (8, 6)), atol=1e-5)
    assert block.query.in_channels == 24 and block.inter_channels == 6 and block.value[0].out_channels == 6


def test_samix_lambda_rescaling_runs_through_0_half_and_1_steep_at_the_ends():
    lam = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    out = rescale_lam(lam, 0.25)
    assert torch.allclose(out[[0, 2, 4]], torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    # (4/3 · 0.25³ - 2 · 0.25² + 1.25 · 0.25) / (1.25 - 2/3) = 0.20833 / 0.58333
    assert out[1].item() == pytest.approx(0.2083333 / 0.5833333, abs=1e-5) and out[1] > 0.25 and out[3] < 0.75
    assert torch.allclose(out + rescale_lam(1 - lam, 0.25), torch.ones(5), atol=1e-6)
    assert torch.equal(rescale_lam(lam, None), lam)
    assert bool((rescale_lam(torch.linspace(0, 1, 101), 0.0).diff() >= 0).all())  # monotone for k >= 0


def test_new_samix_mixer_gives_half_masks():
    _, sam = _setup(SAMix)
    x, y = _batch()
    assert (sam.mix_preview(x, y, lam=0.3).mask - 0.5).abs().max() < 0.03


# ------------------------------------------------------------------------------------ SAMix: the losses
def test_samix_loss_terms_by_hand():
    """classification = CE(θq(x)) + MCE(θq(x_mix^q)); generation = ℓ_local + η ℓ_global + 0.1 ·
    (max(|1 - mean s_j - λ| - 0.1, 0) - 2 Var s_j), every term written out."""
    model, sam = _setup(SAMix, lam_margin=0.0)
    _visible(sam.mix_block, 0.5)
    x, y = _batch(labels=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))  # same-class pairs happen
    out = sam.losses(model, x, y, 0.3)
    a, b, lam = y, y[out.gen_index], out.gen_lam
    assert bool((a == b).any()) and bool((a != b).any())
    targets = soft_targets(y, K)
    with torch.no_grad():
        clean = soft_cross_entropy(model(x), targets)
        mix = soft_cross_entropy(model(out.mixed.images), out.mixed.targets)
        s_i = out.gen_mask
        logp = F.log_softmax(sam.momentum_model(x[out.gen_index] + s_i * (x - x[out.gen_index])), dim=1)
        lp_a, lp_b = logp[torch.arange(8), a], logp[torch.arange(8), b]
        log_s = torch.where(a == b, lp_a, torch.log(lp_a.exp() + lp_b.exp()))  # log(p_a + p_b), or log p_a
        local = -(lam * (lp_a - log_s) + (1 - lam) * (lp_b - log_s))
        eta_loss = (local + 0.5 * -log_s).mean()
        s_j = 1 - s_i
        mask_term = max(abs(1 - s_j.mean().item() - lam[0].item()) - 0.1, 0.0) - 2 * s_j.var(unbiased=False).item()
    assert torch.allclose(out.classification, clean + mix, atol=1e-5)
    assert out.logs["loss_gen"].item() == pytest.approx(eta_loss.item(), abs=1e-5)
    assert out.logs["loss_mask"].item() == pytest.approx(mask_term, abs=1e-5)
    assert out.generation.item() == pytest.approx(eta_loss.item() + 0.1 * mask_term, abs=1e-5)


def test_eta_one_is_the_mixup_cross_entropy_and_eta_weighs_the_global_term():
    _, sam = _setup(SAMix, eta=1.0)
    torch.manual_seed(3)
    logits, targets = torch.randn(6, K), soft_targets(torch.tensor([1, 2, 3, 4, 5, 6]), K)
    index, lam = torch.tensor([1, 2, 3, 4, 5, 0]), torch.full((6,), 0.3)
    plain = soft_cross_entropy(logits, mix_targets(targets, index, lam))
    assert torch.equal(sam.eta_balanced_loss(logits, targets, index, lam), plain)
    p = logits.softmax(1)
    a, b = torch.arange(1, 7), torch.arange(1, 7)[index]
    pa, pb = p[torch.arange(6), a], p[torch.arange(6), b]
    for eta in (0.0, 0.5, 2.0):
        sam.eta = eta
        local = -(0.3 * torch.log(pa / (pa + pb)) + 0.7 * torch.log(pb / (pa + pb)))
        by_hand = (local - eta * torch.log(pa + pb)).mean()
        assert sam.eta_balanced_loss(logits, targets, index, lam).item() == pytest.approx(by_hand.item(), abs=1e-6)


@pytest.mark.parametrize("cls, kwargs, steps", [(SAMix, {}, 0), (AdAutoMix, {}, 0), (AdAutoMix, {}, 1),
                                                 (AdAutoMix, {"num_mix": 2}, 0), (AdAutoMix, {"num_mix": 2}, 1)])
def test_no_classification_gradient_reaches_the_mixer_and_no_generation_gradient_reaches_the_encoders(
        cls, kwargs, steps):
    """AdAutoMix on an adversarial step (0) and on a cooperative one (1)."""
    model, method = _setup(cls, **kwargs)
    for _ in range(steps):
        method.after_optimizer_step(model, 0.0)
    x, y = _batch()
    out = method.losses(model, x, y, 0.1)
    theta_q, phi, theta_k = list(model.parameters()), list(method.mix_block.parameters()), \
        list(method.momentum_model.parameters())
    assert not any(p.requires_grad for p in theta_k)
    q, f, k = _grads(out.classification, theta_q, phi, theta_k)
    assert all(g is not None for g in q) and sum(g.abs().sum() for g in q) > 0
    assert all(g is None for g in f) and all(g is None for g in k)
    q, f, k = _grads(out.generation, theta_q, phi, theta_k)
    assert all(g is None for g in q) and all(g is None for g in k)
    assert all(g is not None and g.abs().sum() > 0 for g in f)  # through the mixed images and f_θk


# ------------------------------------------------------------------------------------ AdAutoMix: N images
def test_adautomix_weights_sum_to_one_per_pixel_and_labels_are_the_exact_pixel_fractions():
    """Image c is the pure colour e_c (8 channels): mixing the colours with the generator's weights
    paints, in channel c of output i, the weight of image c at each pixel; the channels sum to 1, and
    their means, the pixel fractions, are the label weights of the classifier's targets."""
    model, ada = _setup(AdAutoMix, lam_margin=0.0)  # N = 3
    _visible(ada.mix_block)
    x, y = _batch(labels=torch.arange(8))  # image c is of class c
    state = ada.generator.get_state()
    out = ada.losses(model, x, y, 0.0)
    ada.generator.set_state(state)
    lam_q, sources_q = ada.draw_mix(8, x.device)
    with torch.no_grad():
        weights = ada.mix_block(ada.features(x), sources_q, lam_q, (16, 16))
    assert weights.shape == (8, 3, 16, 16) and bool((weights >= 0).all()) and weights.std() > 0.05
    assert torch.allclose(weights.sum(dim=1), torch.ones(8, 16, 16), atol=1e-6)
    assert torch.equal(sources_q[:, 0], torch.arange(8)) and not (sources_q[:, 1:] == torch.arange(8)[:, None]).any()
    assert torch.allclose(lam_q.sum(1), torch.ones(8)) and torch.equal(lam_q[0], lam_q[1])  # one draw per batch
    colours = torch.eye(8)[:, :, None, None].expand(8, 8, 16, 16)
    painted = mix_images(colours, weights, sources_q)  # (8, 8, 16, 16)
    assert torch.allclose(painted.sum(dim=1), torch.ones(8, 16, 16), atol=1e-6)
    fractions = painted.mean(dim=(2, 3))  # (8, 8): the share of image c in output i
    expected = torch.zeros(8, K)
    expected[:, :8] = fractions
    assert torch.allclose(out.mixed.targets, expected, atol=1e-6)
    assert torch.allclose(out.mixed.targets.sum(1), torch.ones(8), atol=1e-6)
    assert torch.allclose(out.mixed.lam, fractions.diagonal(), atol=1e-6)  # the weight of image i in output i
    assert torch.allclose(out.mixed.images, mix_images(x, weights, sources_q), atol=1e-5)
    assert torch.equal(out.mixed.index, sources_q[:, 1])
    assert torch.allclose(out.mixed.mask, weights[:, :1])


def test_adautomix_generator_is_the_reference_attention_over_the_other_images():
    """``A_n = softmax(Σ_{m≠n} q_nᵀ k_m / sqrt(d))``, logits ``A_n v_n``, upsampled, softmax over n:
    the reference's co_caculate_attention written as its loop over n and m."""
    torch.manual_seed(0)
    gen = AdaptiveMaskGenerator(6, lam_concat=True)
    _visible(gen, 0.5)
    z = torch.randn(4, 6, 3, 3)
    sources, lam = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]]), torch.tensor([[0.2, 0.3, 0.5]] * 4)
    out = gen(z, sources, lam, (6, 6))
    maps = [torch.cat([z[sources[:, n]], lam[:, n].view(4, 1, 1, 1).expand(4, 1, 3, 3)], 1) for n in range(3)]
    q = [gen.query(m).flatten(2) for m in maps]
    k = [gen.key(m).flatten(2) for m in maps]
    logits = []
    for n in range(3):
        co = sum(q[n].transpose(1, 2) @ k[m] for m in range(3) if m != n)
        attn = torch.softmax(co / math.sqrt(3), dim=-1)
        logits.append((attn @ gen.value(maps[n]).flatten(2).transpose(1, 2)).view(4, 1, 3, 3))
    ref = F.interpolate(torch.cat(logits, 1), size=(6, 6), mode="bilinear", align_corners=False).softmax(dim=1)
    assert torch.allclose(out, ref, atol=1e-6)


def _ada_by_hand(ada: AdAutoMix, model, x, y, out, state):
    """The classifier's and the generator's terms of one AdAutoMix step, recomputed from its draws."""
    ada.generator.set_state(state)
    lam_q, src_q = ada.draw_mix(8, x.device)
    _, src_k = ada.draw_mix(8, x.device)
    t = soft_targets(y, K)

    def mixed_t(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bn,bnk->bk", w, t[s])

    with torch.no_grad():
        clean = soft_cross_entropy(model(x), t)
        mix = soft_cross_entropy(model(out.mixed.images), out.mixed.targets)
        plain = sum(lam_q[:, n].view(8, 1, 1, 1) * x[src_q[:, n]] for n in range(ada.num_mix))
        mixup = soft_cross_entropy(model(plain), mixed_t(lam_q, src_q))
        w_k = out.gen_mask
        frac_k = w_k.mean(dim=(2, 3))
        logits_k = ada.momentum_model(sum(w_k[:, n:n + 1] * x[src_k[:, n]] for n in range(ada.num_mix)))
        gen = soft_cross_entropy(logits_k, mixed_t(frac_k, src_k))
        clean_k = ada.momentum_model(x)
        cos = sum(frac_k[:, n] * F.cosine_similarity(logits_k, clean_k[src_k[:, n]], dim=1) for n in range(ada.num_mix))
    assert torch.equal(out.gen_index, src_k)
    return clean, mix, mixup, gen, cos.mean()


def test_adautomix_loss_terms_by_hand_and_the_alternation():
    """N = 3. classification = MCE(x_mix) + (1 - r) CE(x) + r MCE(Σ λ_n x_n); the generator's loss is
    -β MCE_k + (1 - β)(1 - Σ ρ_n cos(θk(x_mix), θk(x_n))) on every other step and +MCE_k between."""
    model, ada = _setup(AdAutoMix, lam_margin=0.0)
    _visible(ada.mix_block, 0.5)
    x, y = _batch()
    for step in range(3):
        assert ada.steps == step and ada.adversarial_now() == (step % 2 == 0)
        state = ada.generator.get_state()
        out = ada.losses(model, x, y, 0.0)
        clean, mix, mixup, gen, cos = _ada_by_hand(ada, model, x, y, out, state)
        assert out.classification.item() == pytest.approx((mix + 0.5 * clean + 0.5 * mixup).item(), abs=1e-5)
        expected = -0.3 * gen + 0.7 * (1 - cos) if step % 2 == 0 else gen
        assert out.generation.item() == pytest.approx(expected.item(), abs=1e-5)
        ada.after_optimizer_step(model, 0.0)
    assert ada.steps == 3 and int(ada.adv_steps) == 3
    code = _setup(AdAutoMix, lam_margin=0.0, similarity="code")[1]  # the reference's sign of the cosine term
    code.load_state_dict(ada.state_dict())
    code.steps = 0
    state = code.generator.get_state()
    out = code.losses(model, x, y, 0.0)
    _, _, _, gen, cos = _ada_by_hand(code, model, x, y, out, state)
    assert out.generation.item() == pytest.approx((-0.3 * gen + 0.7 * cos).item(), abs=1e-5)


def test_adautomix_with_two_images_draws_lambda_and_one_minus_lambda_and_has_no_mixup_term():
    model, ada = _setup(AdAutoMix, num_mix=2, lam_margin=0.0)
    x, y = _batch()
    state = ada.generator.get_state()
    out = ada.losses(model, x, y, 0.0)
    ada.generator.set_state(state)
    lam, sources = ada.draw_mix(8, x.device)
    ada.generator.set_state(state)
    from mixlab.core import pair_index, sample_lambda
    first = sample_lambda(8, 1.0, generator=ada.generator)
    assert torch.equal(lam, torch.stack([first, 1 - first], 1)) and sources.shape == (8, 2)
    assert torch.equal(sources[:, 1], pair_index(8, "random", ada.generator))
    clean, mix, _, _, _ = _ada_by_hand(ada, model, x, y, out, state)
    assert out.classification.item() == pytest.approx((mix + clean).item(), abs=1e-5)
    assert out.logs["loss_mixup"].item() == 0.0


def test_adautomix_margin_gives_the_classifier_constant_weights():
    model, ada = _setup(AdAutoMix, alpha=0.05)  # most draws put some λ_n near 0
    _visible(ada.mix_block)
    x, y = _batch()
    for _ in range(10):
        state = ada.generator.get_state()
        out = ada.losses(model, x, y, 0.0)
        ada.generator.set_state(state)
        lam, _ = ada.draw_mix(8, x.device)
        if bool((lam[0] <= 0.03).any()):
            assert torch.allclose(out.mixed.mask, lam[:, :1].view(8, 1, 1, 1).expand(8, 1, 16, 16))
            assert torch.allclose(out.mixed.lam, lam[:, 0]) and out.gen_mask.std() > 0.01  # the generator's own
            break
    else:
        pytest.fail("no λ_n within the margin in 10 draws of Beta(0.05, 0.05)")


# ------------------------------------------------------------------------------------ DecoupleMix
def test_decoupled_regularizer_by_hand():
    """R = λ (-log φ_{a∖b}) + (1 - λ)(-log φ_{b∖a}), φ_{a∖b} = e^{z_a} / Σ_{c≠b} e^{z_c}; 0 for a
    sample that is not a mix of two classes (a == b, λ = 0 or 1)."""
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0], [1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0],
                      [1.0, 2.0, 0.0, 0.0]])
    a, b = torch.tensor([0, 2, 1, 0, 0]), torch.tensor([1, 0, 1, 1, 1])
    lam = torch.tensor([0.7, 0.4, 0.5, 1.0, 0.0])
    e = math.exp
    row0 = 0.7 * (-2 + math.log(e(2) + e(0) + e(-1))) + 0.3 * (-1 + math.log(e(1) + e(0) + e(-1)))
    row1 = 0.4 * (-3 + math.log(e(0.5) + e(3) + e(0))) + 0.6 * (-0.5 + math.log(e(0.5) + e(0.5) + e(0)))
    out = decoupled_regularizer(z, a, b, lam)
    assert out.tolist() == pytest.approx([row0, row1, 0.0, 0.0, 0.0], abs=1e-6)


def test_decouple_zero_is_the_plain_mixed_loss_bit_for_bit():
    model = create_model("resnet_small", K, width=8)
    x, y = _batch()
    for name in ("mixup", "cutmix", "mixup-cutmix", "regmixup"):
        losses = []
        for params in ({}, {"decouple": 0.0}):
            method = registry.build_method(name, K, **params)
            method.setup(model, torch.Generator().manual_seed(4))
            losses.append(method.training_step(model, (x, y), 0.0).loss)
        assert torch.equal(losses[0], losses[1]), name
    plain = registry.build_method("mixup", K)
    zero = registry.build_method("mixup+decouple", K, decouple=0.0)
    for m in (plain, zero):
        m.setup(model, torch.Generator().manual_seed(4))
    assert torch.equal(plain.training_step(model, (x, y), 0.0).loss, zero.training_step(model, (x, y), 0.0).loss)
    losses = []
    for decouple in (0.0, None):  # AutoMix's classifier loss, with decouple 0 and without the option
        torch.manual_seed(0)
        am_model = create_model("resnet_small", K, width=8)
        am = AutoMix(K) if decouple is None else AutoMix(K, decouple=decouple)
        am.setup(am_model, torch.Generator().manual_seed(0))
        losses.append(am.losses(am_model, x, y, 0.0).classification)
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_decouple_adds_eta_times_the_regulariser_of_the_pairs(smoothing):
    model = create_model("resnet_small", K, width=8)
    x, y = _batch()
    method = registry.build_method("cutmix+decouple", K, smoothing)
    assert method.decouple == 0.1 and method.mixer.alpha == 1.0
    method.setup(model, torch.Generator().manual_seed(2))
    state = method.generator.get_state()
    loss = method.training_step(model, (x, y), 0.0).loss
    method.generator.set_state(state)
    mixed = method.mixer(x, y)
    with torch.no_grad():
        logits = model(mixed.images)
    reg = decoupled_regularizer(logits, y, y[mixed.index], mixed.lam)  # the classes, whatever the smoothing
    assert reg.abs().sum() > 0
    assert loss.item() == pytest.approx((soft_cross_entropy(logits, mixed.targets) + 0.1 * reg.mean()).item(), abs=1e-5)


def test_decouple_reads_the_partner_targets_of_a_history_mix():
    """A mix whose partner is not in the batch (RecursiveMix's history): ``partner_targets``."""
    logits = torch.randn(3, 4)
    source, partner = soft_targets(torch.tensor([0, 1, 2]), 4), soft_targets(torch.tensor([3, 3, 2]), 4)
    mixed = MixResult(torch.zeros(3, 3, 2, 2), torch.zeros(3, 4), torch.full((3,), 0.6), torch.arange(3), source,
                      partner_targets=partner)
    expected = decoupled_regularizer(logits, torch.tensor([0, 1, 2]), torch.tensor([3, 3, 2]), torch.full((3,), 0.6))
    assert decouple_term(logits, mixed).item() == pytest.approx(expected.mean().item()) and expected[2] == 0


def test_decouple_is_offered_where_it_applies_and_refused_clearly_elsewhere():
    assert registry.decouple_methods() == ("mixup", "cutmix", "resizemix", "fmix", "saliencymix", "mixup-cutmix",
                                           "mixup+decouple", "cutmix+decouple", "regmixup", "automix", "samix")
    for name in ("puzzlemix", "adautomix", "manifold-mixup", "vanilla", "mocov3"):
        with pytest.raises(ValueError, match=rf"method '{name}' does not take decouple \(DecoupleMix's loss option\); "
                                             r"the methods that take it: mixup, cutmix, "):
            registry.build_method(name, K, decouple=0.1)
    assert registry.build_method("samix", K, decouple=0.2).decouple == 0.2
    with pytest.raises(ValueError, match=r"decouple must be in \[0.0, inf\), got -0.1"):
        registry.build_method("mixup", K, decouple=-0.1)
    with pytest.raises(TypeError, match="decouple must be a real number"):
        MixerMethod(mixlab.Mixup(K), decouple="0.1")


# ------------------------------------------------------------------------------------ RegMixup
def test_regmixup_is_clean_ce_plus_eta_mixup_ce_in_one_pass():
    torch.manual_seed(0)
    model = create_model("resnet_small", K, width=8)
    x, y = _batch()
    reg = RegMixup(K, eta=0.5)
    reg.setup(model, torch.Generator().manual_seed(1))
    assert reg.mixer.alpha == 20.0 and reg.mixer.pairing == "random"
    state = reg.generator.get_state()
    out = reg.training_step(model, (x, y), 0.0)
    reg.generator.set_state(state)
    mixed = reg.mixer(x, y)
    assert 0.25 < float(mixed.lam[0]) < 0.75  # Beta(20, 20): λ near 1/2
    with torch.no_grad():
        both = model(torch.cat([x, mixed.images]))  # one pass: BatchNorm statistics of both halves
        expected = soft_cross_entropy(both[:8], soft_targets(y, K)) + 0.5 * soft_cross_entropy(both[8:], mixed.targets)
        apart = soft_cross_entropy(model(x), soft_targets(y, K)) + 0.5 * soft_cross_entropy(model(mixed.images),
                                                                                           mixed.targets)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert abs(out.loss.item() - apart.item()) > 1e-4  # two passes would give another loss
    assert torch.allclose(out.logits, both[:8], atol=1e-5) and out.mixed is None  # accuracy on the clean half
    assert registry.build_method("regmixup", K).alpha == 20.0  # the code's CIFAR-10 setting


# ------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("cls, kwargs, error, message", [
    (SAMix, {"eta": -1.0}, ValueError, r"eta must be in \[0.0, inf\)"),
    (SAMix, {"mask_loss": "0.1"}, TypeError, "mask_loss must be a real number"),
    (SAMix, {"mask_margin": 1.0}, ValueError, r"mask_margin must be in \[0.0, 1.0\)"),
    (SAMix, {"lam_rescale": -0.5}, ValueError, r"lam_rescale must be in \[0.0, 10.0\]"),
    (SAMix, {"upsampling": "bicubic"}, ValueError, "upsampling must be one of"),
    (SAMix, {"reduction": 0}, ValueError, "reduction must be an int >= 1"),
    (SAMix, {"momentum": 2.0}, ValueError, r"momentum must be in \[0.0, 1.0\]"),
    (SAMix, {"alpha": 0}, ValueError, "alpha must be a finite number > 0"),
    (AdAutoMix, {"num_mix": 1}, ValueError, "num_mix must be an int >= 2, got 1"),
    (AdAutoMix, {"num_mix": 2.0}, ValueError, "num_mix must be an int >= 2"),
    (AdAutoMix, {"adv_interval": 0}, ValueError, "adv_interval must be an int >= 1"),
    (AdAutoMix, {"beta": 1.5}, ValueError, r"beta must be in \[0.0, 1.0\]"),
    (AdAutoMix, {"mixup_weight": -0.1}, ValueError, r"mixup_weight must be in \[0.0, 1.0\]"),
    (AdAutoMix, {"similarity": "cosine"}, ValueError, r"similarity must be one of \['paper', 'code'\]"),
    (AdAutoMix, {"lam_concat": 1}, TypeError, "lam_concat must be a bool"),
    (AdAutoMix, {"lam_margin": 0.5}, ValueError, "lam_margin must be in"),
    (AdAutoMix, {"stage": 0}, ValueError, "stage must be None"),
    (RegMixup, {"alpha": -1.0}, ValueError, "alpha must be a finite number > 0"),
    (RegMixup, {"eta": -0.5}, ValueError, r"eta must be in \[0.0, inf\)"),
    (RegMixup, {"pairing": "shuffle"}, ValueError, "pairing must be one of"),
])
def test_bad_arguments_are_named(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(K, **kwargs)


def test_setup_errors_name_the_method():
    for cls in (SAMix, AdAutoMix):
        with pytest.raises(RuntimeError, match=f"{cls.__name__}.setup"):
            cls(K).losses(nn.Linear(3, K), *_batch(), 0.0)
        with pytest.raises(TypeError, match="staged-model protocol"):
            cls(K).setup(nn.Linear(3, K))
    with pytest.raises(ValueError, match="num_classes must be >= 2 for AdAutoMix"):
        AdAutoMix(1)
    with pytest.raises(ValueError, match="has no hyper-parameter 'gamma'"):
        registry.build_method("samix", K, gamma=0.1)


def test_registry_entries_carry_the_papers_defaults():
    sam, ada, reg = (registry.build_method(n, K) for n in ("samix", "adautomix", "regmixup"))
    assert (sam.alpha, sam.eta, sam.mask_loss, sam.lam_margin, sam.lam_rescale) == (2.0, 0.5, 0.1, 0.08, 0.25)
    assert (ada.alpha, ada.num_mix, ada.beta, ada.mixup_weight, ada.adv_interval, ada.lam_margin) == \
        (1.0, 3, 0.3, 0.5, 2, 0.03)
    assert (reg.alpha, reg.eta) == (20.0, 1.0)
    for name, cls in (("samix", SAMix), ("adautomix", AdAutoMix), ("regmixup", RegMixup)):
        assert registry.method_class(name) is cls and not registry.is_self_supervised(name)
    assert registry.method_class("mixup+decouple") is MixerMethod
    assert "eta=0.5" in repr(sam) and "num_mix=3" in repr(ada) and "decouple=0.1" in repr(
        registry.build_method("mixup+decouple", K))


@pytest.mark.parametrize("name", ["automix", "samix", "adautomix", "regmixup", "cutmix+decouple"])
def test_every_trainable_parameter_gets_a_gradient_on_every_step(name):
    """Why none of them declares ``ddp_find_unused_parameters``: DDP's reducer would wait for a
    parameter without a gradient (AdAutoMix: an adversarial step, then a cooperative one)."""
    torch.manual_seed(0)
    model = create_model("resnet_small", K, width=8)
    method = registry.build_method(name, K)
    method.setup(model, torch.Generator().manual_seed(0))
    params = [*model.parameters(), *(p for g in method.param_groups(0.1) for p in g["params"])]
    x, y = _batch()
    for _ in range(2):
        for p in params:
            p.grad = None
        method.training_step(model, (x, y), 0.0).loss.backward()
        assert all(p.grad is not None for p in params), name
        method.after_optimizer_step(model, 0.0)
    assert getattr(type(method), "ddp_find_unused_parameters", False) is False


def test_previews_change_nothing():
    for cls in (SAMix, AdAutoMix):
        _, method = _setup(cls)
        x, y = _batch()
        state = {k: v.clone() for k, v in method.state_dict().items()}
        mixed = method.mix_preview(x, y)
        assert mixed.mask.shape == (8, 1, 16, 16) and mixed.targets.shape == (8, K)
        assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items()), cls.__name__
    assert SAMix.preview_lams == (0.2, 0.5, 0.8) and AdAutoMix.preview_lams == ()


# ------------------------------------------------------------------------------------ the trainer
TINY = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
        "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false",
        "run.threads=1"]


@pytest.mark.parametrize("method", ["samix", "adautomix", "regmixup", "cutmix+decouple"])
def test_trainer_resumes_exactly(method, tmp_path):
    """2 epochs straight == 1 epoch + resume + 1 epoch: losses, model and method state bit for bit
    (5 steps an epoch: AdAutoMix's alternation crosses the resume at an odd step)."""
    tiny = [*TINY, f"method.name={method}"]
    metrics = train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'straight'}"]))
    train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'split'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*tiny, f"run.resume={tmp_path / 'split'}"]))
    for key in ("train_loss", "train_acc", "test_acc1", "test_nll"):
        assert resumed[key] == metrics[key], key
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    if method == "adautomix":
        assert int(a["method"]["adv_steps"]) == 10 and "train_loss_sim" in metrics
    if method == "samix":
        assert "train_loss_mask" in metrics


# ------------------------------------------------------------------------------------ the OOD score
def test_auroc_by_hand_with_ties():
    s_in, s_out = torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.1, 0.3])
    # 0.9 beats all 3; each 0.8 ties one and beats two (2.5 each); 0.3 beats 0.1 and ties 0.3 (1.5): 9.5 / 12
    assert auroc(s_in, s_out) == pytest.approx(9.5 / 12)
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5])) == 1.0
    assert auroc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.full((5,), 0.5), torch.full((3,), 0.5)) == 0.5


def test_auroc_is_the_mann_whitney_statistic_as_roc_auc_score_computes_it():
    from scipy.stats import mannwhitneyu

    g = torch.Generator().manual_seed(0)
    for n_in, n_out in ((50, 70), (200, 13)):
        s_in = (torch.rand(n_in, generator=g) * 10).round() / 10 + 0.05  # many ties, shifted up
        s_out = (torch.rand(n_out, generator=g) * 10).round() / 10
        u = mannwhitneyu(s_in.numpy(), s_out.numpy(), alternative="two-sided").statistic  # midranks for ties
        assert auroc(s_in, s_out) == pytest.approx(u / (n_in * n_out), abs=1e-12)


def test_fpr_at_95_tpr_by_hand_and_by_brute_force():
    s_in, s_out = torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.1, 0.3])
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(2 / 3)  # all four accepted: t = 0.3 accepts 0.8 and 0.3
    assert fpr_at_tpr(s_in, s_out, 0.5) == pytest.approx(1 / 3)  # t = 0.8 (three in-scores, TPR 0.75)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        s_in, s_out = (torch.rand(40, generator=g) * 8).round(), (torch.rand(31, generator=g) * 8).round() - 1
        candidates = torch.cat([s_in, s_out]).unique()
        rates = [(float((s_in >= t).double().mean()), float((s_out >= t).double().mean())) for t in candidates]
        best = min(fpr for tpr, fpr in rates if tpr >= 0.95)  # the ROC point of highest threshold with TPR >= 95 %
        assert fpr_at_tpr(s_in, s_out) == pytest.approx(best)


def test_synthetic_ood_sets():
    assert OOD_SETS == ("gaussian", "uniform")
    gauss = synthetic_ood("gaussian", 400, (3, 8, 8), seed=1)
    assert gauss.shape == (400, 3, 8, 8) and gauss.dtype == torch.float32
    assert torch.equal(gauss, synthetic_ood("gaussian", 400, (3, 8, 8), seed=1))
    assert not torch.equal(gauss, synthetic_ood("gaussian", 400, (3, 8, 8), seed=2))
    assert float(gauss.min()) == 0.0 and float(gauss.max()) == 1.0 and abs(float(gauss.mean()) - 0.5) < 0.01
    assert abs(float((gauss == 0).float().mean()) - 0.3085) < 0.01  # P(N(0.5, 1) < 0) clipped to 0
    uniform = synthetic_ood("uniform", 400, (3, 8, 8))
    assert 0.0 <= float(uniform.min()) and float(uniform.max()) < 1.0 and abs(float(uniform.mean()) - 0.5) < 0.01


def test_ood_detection_scores_the_models_max_softmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    labels = torch.zeros(30, dtype=torch.int64)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        msp_in = model((images.float() / 255 - m) / s).softmax(1).amax(1)
        noise = synthetic_ood("uniform", 45, (3, 8, 8), seed=3)
        msp_out = model((noise - m) / s).softmax(1).amax(1)
    out = ood_detection(model, (images, labels), "uniform", mean, std, n_out=45, seed=3)
    assert out["ood"] == "uniform" and (out["n_in"], out["n_out"]) == (30, 45)
    assert out["auroc"] == pytest.approx(100 * auroc(msp_in, msp_out))
    assert out["fpr95"] == pytest.approx(100 * fpr_at_tpr(msp_in, msp_out))
    assert out["msp_in"] == pytest.approx(100 * msp_in.double().mean().item(), abs=1e-4)
    pair = ((noise - m) / s, torch.zeros(45, dtype=torch.int64))
    assert ood_detection(model, (images, labels), pair, mean, std)["auroc"] == pytest.approx(out["auroc"])
    msp = msp_scores(torch.tensor([[0.0, 0.0], [10.0, 0.0]])).float()
    assert torch.allclose(msp, torch.tensor([0.5, 1.0]), atol=1e-4)


@pytest.mark.parametrize("call, error, message", [
    (lambda: auroc(torch.tensor([]), torch.tensor([1.0])), ValueError, "scores_in must be a non-empty 1-D tensor"),
    (lambda: auroc(torch.tensor([1.0]), torch.tensor([[1.0]])), ValueError, "scores_out must be a non-empty 1-D"),
    (lambda: auroc(torch.tensor([1, 2]), torch.tensor([1.0])), TypeError, "scores_in must be floating-point"),
    (lambda: auroc(torch.tensor([math.nan]), torch.tensor([1.0])), ValueError, "scores_in must be finite"),
    (lambda: fpr_at_tpr(torch.tensor([1.0]), torch.tensor([1.0]), 0.0), ValueError,
     r"tpr must be a number in \(0, 1\]"),
    (lambda: synthetic_ood("svhn", 3, (3, 4, 4)), ValueError, r"kind must be one of \['gaussian', 'uniform'\]"),
    (lambda: synthetic_ood("uniform", 0, (3, 4, 4)), ValueError, "n must be an int >= 1"),
    (lambda: synthetic_ood("uniform", 2, (4, 4)), ValueError, r"shape must be \(C, H, W\)"),
    (lambda: ood_detection(nn.Flatten(), (torch.zeros(2, 1, 2, 2), torch.zeros(2)), "noise", (0.5,), (0.5,)),
     ValueError, r"out_data must be one of \['gaussian', 'uniform'\] or \(images, labels\) data"),
    (lambda: ood_detection(nn.Flatten(), (torch.zeros(2, 1, 2, 2), torch.zeros(2)), "uniform", (0.5,), (0.5,), n_out=0),
     ValueError, "n_out must be None or an int >= 1"),
])
def test_ood_errors_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------------------ protocols and claims
def test_protocols_list_the_successors_with_their_claims():
    for name in ("cifar10-quick", "cifar10-full"):
        p = load_protocol(name)
        for method in ("samix", "adautomix", "regmixup", "mixup+decouple", "cutmix+decouple"):
            assert method in p.methods, (name, method)
        claims = {(c.method, c.baseline, c.metric) for c in p.claims}
        assert {("samix", "automix", "top1"), ("adautomix", "automix", "top1"), ("mixup+decouple", "mixup", "top1"),
                ("cutmix+decouple", "cutmix", "top1"), ("regmixup", "mixup", "ece")} <= claims
        assert p.config("mixup+decouple", 0).method.params == {"alpha": 1.0, "decouple": 0.1}
        assert p.config("regmixup", 0).method.params["alpha"] == 20.0
    assert load_protocol("cifar10-quick").methods["samix"]["momentum"] == 0.99  # as AutoMix's row


def test_an_ece_claim_is_won_by_the_lower_ece():
    rows = [{"method": m, "seed": s, "top1": 50.0, "ece": v} for m, vals in
            (("regmixup", [2.0, 2.5, 3.0]), ("mixup", [6.0, 6.5, 7.0]), ("worse", [9.0, 9.5, 10.0]))
            for s, v in enumerate(vals)]
    assert report.check_claim(rows, "regmixup", "mixup", "R beats M", key="ece") == (
        "R beats M: ece (lower is better) regmixup 2.50 vs mixup 6.50 (-4.00 points, threshold 2 x 0.50 = 1.00): "
        "supported here.")
    assert report.check_claim(rows, "worse", "mixup", "W beats M", key="ece").endswith("contradicted here (the "
                                                                                       "difference is the other way, "
                                                                                       "beyond the spread).")
    base = {"base": {"data": {"name": "synthetic"}}, "methods": {"mixup": {}, "regmixup": {}}, "seeds": [0]}
    ok = protocol_from_dict({**base, "claims": [{"method": "regmixup", "baseline": "mixup", "metric": "ece",
                                                 "claim": "c"}]})
    assert ok.claims[0].metric == "ece"
    with pytest.raises(ValueError, match=r"claim 'c': metric must be one of top1, top5, .*ece.*, got 'speed'"):
        protocol_from_dict({**base, "claims": [{"method": "regmixup", "baseline": "mixup", "metric": "speed",
                                                "claim": "c"}]})


def test_the_report_checks_each_claim_on_its_metric(tmp_path):
    rows = [{"method": m, "seed": s, "top1": t, "ece": e, "fgsm_top1": 1.0, "corruption_top1": 1.0, "epoch_time_s": 1.0,
             "wall_time_s": 1.0, "corruption_images": 10}
            for m, t, e in (("mixup", 50.0, 6.0), ("regmixup", 49.0, 2.0)) for s in range(3)]
    for r in rows:
        r["top1"] += r["seed"] * 0.1
        r["ece"] += r["seed"] * 0.1
    protocol = protocol_from_dict({"base": {"data": {"name": "synthetic"}}, "methods": {"mixup": {}, "regmixup": {}},
                                   "seeds": [0, 1, 2], "claims": [{"method": "regmixup", "baseline": "mixup",
                                                                   "metric": "ece", "claim": "RegMixup ECE"}]})
    md = report.write_markdown(rows, tmp_path / "results.md", protocol=protocol, commands=["x"], machines=["y"],
                               wall_clock_s=1.0, baseline="mixup")
    assert "- RegMixup ECE: ece (lower is better) regmixup 2.10 vs mixup 6.10 (-4.00 points" in md
    assert "supported here." in md.split("RegMixup ECE")[1]
