"""SDMP's virtual labels: the target weights of Eq. 3-4 (MoCo) and 7-8 (DINO).

Ren, Xie, Shen, Yuille et al. 2022, "A Simple Data Mixing Prior for Improving Self-Supervised
Learning" (CVPR 2022). The batch is mixed with its reversed copy (timm's intra-batch mixing): image
i with partner n−1−i (the paper's "n−i", indices from 0), with weight λ_i on image i. Both
frameworks then learn from two *teachers*, each a row-stochastic (n, n) weight matrix over the
batch:

* the **source** teacher (Eq. 3 and 7): mixed query i is positive with the other view of its two
  sources, ``W[i, i] = λ_i`` and ``W[i, n−1−i] = 1 − λ_i``;
* the **intra-batch** teacher (Eq. 4 and 8): mixed query i is positive with the other view of its
  own mix and with the mix of the same two sources in the other order,
  ``W[i, i] = 1 / (1 + λᶜ_i)`` and ``W[i, n−1−i] = λᶜ_i / (1 + λᶜ_i)``, where
  ``λᶜ_i = min(λ_i, 1 − λ_{n−1−i}) + min(1 − λ_i, λ_{n−1−i})`` is the share of content the two
  mixes have in common.

The losses are linear in these weights, so each is one soft-target cross-entropy:

* MoCo (Eq. 3-4): ``CE(softmax(q_i · k_j / τ) over j, W[i])``: :func:`soft_contrastive_loss`
  with keys of the other view of the sources (Eq. 3) or of the mixes (Eq. 4);
* DINO (Eq. 7-8): ``H(W @ P_t, P_s)``: the teacher's distributions averaged by the weights, then
  the usual cross-entropy against the student (:func:`mixed_teacher`).

With λ = 1 (no mixing) both matrices are the identity and each loss is its framework's plain loss.
When n is odd the middle image is its own partner; its two weights then add up on the diagonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.pairing import pair_index
from mixlab.core.targets import mix_targets

__all__ = ["flip_partner", "shared_fraction", "source_weights", "intra_weights", "soft_contrastive_loss",
           "mixed_teacher"]


def flip_partner(n: int, device: torch.device | str | None = None) -> Tensor:
    """(n,) int64 partner index ``n − 1 − i`` (the batch mixed with its reversed copy)."""
    return pair_index(n, "flip", device=device)


def _check_lam(lam: Tensor) -> Tensor:
    if lam.ndim != 1 or not lam.is_floating_point():
        raise ValueError(f"lam must be a (n,) float tensor, got shape {tuple(lam.shape)} {lam.dtype}")
    if bool(((lam < 0) | (lam > 1)).any()):
        raise ValueError(f"lam must lie in [0, 1], got values from {float(lam.min())} to {float(lam.max())}")
    return lam


def shared_fraction(lam: Tensor) -> Tensor:
    """λᶜ of Eq. 4: ``min(λ_i, 1 − λ_{n−1−i}) + min(1 − λ_i, λ_{n−1−i})``, (n,) in [0, 1].

    Mix i holds λ_i of source i and 1 − λ_i of source n−1−i; mix n−1−i holds λ_{n−1−i} of source
    n−1−i and 1 − λ_{n−1−i} of source i; λᶜ is the mass of the two sources they share.
    """
    lam = _check_lam(lam)
    other = lam.flip(0)  # λ_{n−1−i}
    return torch.minimum(lam, 1 - other) + torch.minimum(1 - lam, other)


def _pair_weights(first: Tensor) -> Tensor:
    """(n, n) matrix with ``first[i]`` at (i, i) and ``1 − first[i]`` at (i, n−1−i)."""
    n = first.shape[0]
    eye = torch.eye(n, device=first.device, dtype=first.dtype)
    # mix_targets builds λ·y_i + (1 − λ)·y_{index[i]}: with one-hot rows y = I, exactly these weights
    return mix_targets(eye, flip_partner(n, first.device), first)


def source_weights(lam: Tensor) -> Tensor:
    """Eq. 3 / Eq. 7: (n, n) row-stochastic weights of the source teacher (λ_i at i, 1 − λ_i at n−1−i)."""
    return _pair_weights(_check_lam(lam))


def intra_weights(lam: Tensor) -> Tensor:
    """Eq. 4 / Eq. 8: (n, n) row-stochastic weights of the mixed teacher
    (1 / (1 + λᶜ_i) at i, λᶜ_i / (1 + λᶜ_i) at n−1−i)."""
    c = shared_fraction(lam)
    return _pair_weights(1 / (1 + c))


def soft_contrastive_loss(queries: Tensor, keys: Tensor, weights: Tensor, tau: float) -> Tensor:
    """InfoNCE with soft positives: ``mean_i −Σ_j W[i, j] log softmax_j(⟨q_i, k_j⟩ / τ)``.

    ``queries`` (n, d) and ``keys`` (m, d) are L2-normalised here; ``weights`` (n, m) rows sum to 1.
    With ``weights = I`` it is MoCo v3's loss before its ``2τ`` factor (``CE(q kᵀ / τ, arange(n))``).
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (n, d) and keys (m, d) must share d, got {tuple(queries.shape)}, {tuple(keys.shape)}")
    if weights.shape != (queries.shape[0], keys.shape[0]):
        raise ValueError(f"weights must be (n, m) = {(queries.shape[0], keys.shape[0])}, got {tuple(weights.shape)}")
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    k = torch.nn.functional.normalize(keys.float(), dim=1)
    log_p = (q @ k.T / tau).log_softmax(dim=1)
    return -(weights.float() * log_p).sum(dim=1).mean()


def mixed_teacher(weights: Tensor, teacher_probs: Tensor) -> Tensor:
    """Eq. 7 / 8's teacher distribution for each mixed student input: ``W @ P_t`` (n, K).

    ``teacher_probs`` (n, K) are the teacher's (centred, sharpened) softmax outputs on the other
    view of the sources (Eq. 7) or of the mixes (Eq. 8); the DINO loss against the student is then
    ``H(W @ P_t, P_s)``.
    """
    if weights.ndim != 2 or weights.shape[1] != teacher_probs.shape[0]:
        raise ValueError(f"weights (n, m) and teacher_probs (m, K) do not match: {tuple(weights.shape)}, "
                         f"{tuple(teacher_probs.shape)}")
    return weights.to(teacher_probs.dtype) @ teacher_probs
