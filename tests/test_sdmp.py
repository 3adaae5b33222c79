"""SDMP's virtual labels (Eq. 3-4, 7-8) on hand-computed examples."""

from __future__ import annotations

import pytest
import torch

from mixlab.ssl.sdmp import (flip_partner, intra_weights, mixed_teacher, shared_fraction, soft_contrastive_loss,
                             source_weights)

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
