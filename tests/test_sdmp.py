"""SDMP's virtual labels (Eq. 3-4, 7-8) on hand-computed examples, and its ResizeMix against the
authors' ``datamixing``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mixlab.mixers import ResizeMix
from mixlab.ssl.sdmp import (SDMPMixing, SDMPResizeMix, flip_partner, intra_weights, mixed_teacher, shared_fraction,
                             soft_contrastive_loss, source_weights)

LAM = torch.tensor([0.3, 0.6, 0.8, 0.1])


def test_flip_partner_is_n_minus_1_minus_i():
    assert flip_partner(4).tolist() == [3, 2, 1, 0] and flip_partner(5).tolist() == [4, 3, 2, 1, 0]


def test_shared_fraction_by_hand():
    # i = 0: min(0.3, 1 - 0.1) + min(0.7, 0.1) = 0.4 ; i = 1: min(0.6, 0.2) + min(0.4, 0.8) = 0.6
    # i = 2: min(0.8, 0.4) + min(0.2, 0.6) = 0.6 ; i = 3: min(0.1, 0.7) + min(0.9, 0.3) = 0.4
    assert torch.allclose(shared_fraction(LAM), torch.tensor([0.4, 0.6, 0.6, 0.4]))
    assert torch.allclose(shared_fraction(torch.tensor([0.5, 0.5])), torch.ones(2))  # the same two halves
    assert torch.allclose(shared_fraction(torch.tensor([1.0, 1.0])), torch.zeros(2))  # no mixing: nothing shared


def test_source_and_intra_weights_by_hand():
    src = source_weights(LAM)
    expect = torch.tensor([[0.3, 0, 0, 0.7], [0, 0.6, 0.4, 0], [0, 0.2, 0.8, 0], [0.9, 0, 0, 0.1]])
    assert torch.allclose(src, expect)
    intra = intra_weights(LAM)
    a, b = 1 / 1.4, 1 / 1.6
    expect = torch.tensor([[a, 0, 0, 1 - a], [0, b, 1 - b, 0], [0, 1 - b, b, 0], [1 - a, 0, 0, a]])
    assert torch.allclose(intra, expect, atol=1e-6)
    for w in (src, intra):
        assert torch.allclose(w.sum(1), torch.ones(4))
    odd = intra_weights(torch.tensor([0.3, 0.5, 0.9]))  # the middle image is its own partner
    assert torch.allclose(odd.sum(1), torch.ones(3)) and odd[1, 1] == 1


def test_without_mixing_the_losses_are_the_plain_ones():
    torch.manual_seed(0)
    q, k = torch.randn(6, 8), torch.randn(6, 8)
    ones = torch.ones(6)
    assert torch.equal(source_weights(ones), torch.eye(6)) and torch.equal(intra_weights(ones), torch.eye(6))
    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    plain = torch.nn.functional.cross_entropy(qn @ kn.T / 0.2, torch.arange(6))  # MoCo v3 (before 2τ)
    assert torch.allclose(soft_contrastive_loss(q, k, source_weights(ones), 0.2), plain)
    teacher = torch.randn(6, 5).softmax(1)
    assert torch.equal(mixed_teacher(intra_weights(ones), teacher), teacher)  # DINO's own teacher


def test_soft_loss_is_the_weighted_sum_of_two_infonce_terms():
    """Eq. 3 written out: −λ_i log p(i | i) − (1 − λ_i) log p(n−1−i | i), averaged over i."""
    torch.manual_seed(1)
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    log_p = (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / 0.1).log_softmax(1)
    by_hand = -(LAM * log_p.diagonal() + (1 - LAM) * log_p[torch.arange(4), flip_partner(4)]).mean()
    assert torch.allclose(soft_contrastive_loss(q, k, source_weights(LAM), 0.1), by_hand)
    teacher = torch.randn(4, 5).softmax(1)
    expect = LAM[:, None] * teacher + (1 - LAM[:, None]) * teacher.flip(0)  # Eq. 7's source teacher
    assert torch.allclose(mixed_teacher(source_weights(LAM), teacher), expect)


@pytest.mark.parametrize("call, message", [
    (lambda: shared_fraction(torch.tensor([0.2, 1.5])), r"lam must lie in \[0, 1\]"),
    (lambda: source_weights(torch.ones(2, 2)), r"lam must be a \(n,\) float tensor"),
    (lambda: soft_contrastive_loss(torch.randn(2, 3), torch.randn(2, 3), torch.eye(2), 0.0), "tau must be > 0"),
    (lambda: soft_contrastive_loss(torch.randn(2, 3), torch.randn(2, 4), torch.eye(2), 0.1), "must share d"),
    (lambda: mixed_teacher(torch.eye(3), torch.rand(2, 5)), "do not match"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------ ResizeMix as the authors draw it
def _official_datamixing_boxes(n: int, h: int, w: int, seed: int):
    """The authors' ``datamixing`` + ``rand_bbox`` (github.com/OliverRensu/SDMP, moco/moco/builder.py),
    simulated directly: (pasted pixel counts, top rows yl)."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(1.0, 1.0, size=n).astype(np.float32)
    new_lam = lam * np.float32(0.8) + np.float32(0.1)
    ratio = np.sqrt(np.float32(1) - new_lam)
    cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
    cy = rng.integers(cut_h // 2, h - cut_h // 2)  # np.random.randint(low, high), high excluded
    cx = rng.integers(cut_w // 2, w - cut_w // 2)
    yl, yh, xl, xh = cy - cut_h // 2, cy + cut_h // 2, cx - cut_w // 2, cx + cut_w // 2
    return (yh - yl) * (xh - xl), yl


def _sdmp_resizemix_boxes(n_batches: int, b: int, h: int, w: int, seed: int) -> torch.Tensor:
    rm = SDMPResizeMix(generator=torch.Generator().manual_seed(seed))
    images = torch.zeros(b, 3, h, w)
    return torch.cat([rm.make_params(images, flip_partner(b))["boxes"] for _ in range(n_batches)])


@pytest.mark.parametrize("size", [(224, 224), (32, 32), (40, 56)])
def test_resizemix_pasted_area_follows_the_authors_datamixing(size):
    """Two-sample KS against the official formula simulated directly (λ ~ U(0, 1), λ' = 0.8λ + 0.1,
    sides int(H·√(1 − λ')) // 2 · 2): the pasted area ≈ U(0.1, 0.9), mean ≈ 0.46-0.49. The same test
    rejects the ResizeMix paper's τ ~ U(0.1, 0.8) that SDMP used before (area τ², mean 0.24)."""
    h, w = size

    def pixels(boxes: torch.Tensor) -> np.ndarray:  # exact integer areas: no float atoms to misalign
        return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()

    ours = pixels(_sdmp_resizemix_boxes(16, 256, h, w, seed=0))
    official, _ = _official_datamixing_boxes(200_000, h, w, seed=1)
    assert stats.ks_2samp(ours, official).pvalue > 0.01
    assert abs(ours.mean() - official.mean()) < 0.01 * h * w and 0.42 < official.mean() / (h * w) < 0.5
    assert ours.min() >= 0.05 * h * w and ours.max() <= 0.9 * h * w
    before = ResizeMix(1, scale=(0.1, 0.8), granularity="elem", generator=torch.Generator().manual_seed(0))
    old = np.concatenate([pixels(before.make_params(torch.zeros(256, 3, h, w), flip_partner(256))["boxes"])
                          for _ in range(16)])
    assert stats.ks_2samp(old, official).pvalue < 1e-6 and old.mean() < 0.27 * h * w


def test_resizemix_box_placement_follows_the_authors_randint():
    """Even sides 2·(cut // 2), the box inside the image, its top row uniform on 0..H − side − 1:
    the last row and column are never pasted (randint's excluded upper bound)."""
    h, w = 32, 48
    boxes = _sdmp_resizemix_boxes(16, 256, h, w, seed=2)
    x1, y1, x2, y2 = boxes.unbind(1)
    assert ((y2 - y1) % 2 == 0).all() and ((x2 - x1) % 2 == 0).all()
    assert (x1 >= 0).all() and (y1 >= 0).all() and (y2 <= h - 1).all() and (x2 <= w - 1).all()
    assert int(y1.min()) == 0 and int(x1.min()) == 0
    _, yl = _official_datamixing_boxes(200_000, h, w, seed=3)
    assert stats.ks_2samp(y1.numpy(), yl).pvalue > 0.01


def test_resizemix_pastes_the_bilinear_partner_and_lambda_is_the_exact_kept_fraction():
    """The whole partner (the batch's reverse) resized with F.interpolate(bilinear) into each box;
    outside the boxes the images are untouched; λ = 1 − pasted pixels / (H·W), counted."""
    g = torch.Generator().manual_seed(4)
    rm = SDMPResizeMix(generator=g)
    images = torch.rand(8, 3, 36, 28, generator=g)
    index = flip_partner(8)
    params = rm.make_params(images, index)
    mixed, lam, _, boxes = rm.mix(images, index, params)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        expect = torch.nn.functional.interpolate(images[7 - i:8 - i], size=(y2 - y1, x2 - x1), mode="bilinear")
        assert torch.allclose(mixed[i, :, y1:y2, x1:x2], expect[0], atol=1e-5)
        outside = torch.ones(36, 28, dtype=torch.bool)
        outside[y1:y2, x1:x2] = False
        assert torch.equal(mixed[i][:, outside], images[i][:, outside])
    own = torch.zeros(8, 1, 36, 28)
    own[:4] = 1.0  # the partner of image i < 4 is black, of i >= 4 white
    counted, lam2, _, _ = rm.mix(own, index, params)
    pasted = ((counted - own).abs() > 0.5).float().mean(dim=(1, 2, 3))
    assert torch.equal(lam2, lam) and torch.allclose(lam, 1 - pasted, atol=1e-7)


def test_sdmp_mixing_uses_the_authors_resizemix_for_every_view():
    mixing = SDMPMixing(ops=("resizemix",), generator=torch.Generator().manual_seed(5))
    small, big = torch.zeros(6, 1, 16, 16), torch.zeros(6, 1, 32, 32)
    small[:3], big[:3] = 1.0, 1.0
    draw = mixing.draw(small)
    assert isinstance(mixing.mixers["resizemix"], SDMPResizeMix)
    mixed_small, lam_small = mixing.apply(small, draw)
    _, lam_big = mixing.apply(big, draw)  # the boxes doubled exactly: the same λ
    assert torch.equal(lam_small, lam_big)
    own = torch.where(torch.arange(6) < 3, 1.0, 0.0)
    assert torch.allclose((mixed_small.mean(dim=(1, 2, 3)) - (1 - own)).abs(), lam_small, atol=1e-6)
    shared = SDMPMixing(ops=("resizemix",), per_sample=False, generator=torch.Generator().manual_seed(6))
    images = torch.rand(8, 3, 20, 20)
    draw = shared.draw(images)
    assert (draw.params["boxes"] == draw.params["boxes"][0]).all()
