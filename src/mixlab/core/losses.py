"""Losses for soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SoftTargetCrossEntropy", "BinaryCrossEntropy", "soft_cross_entropy", "mixed_cross_entropy"]


def soft_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """-Σ_k t_k log softmax(z)_k per sample; ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``.

    Computed in float32 whatever the logits' dtype (AMP-safe).
    """
    loss = torch.sum(-targets.float() * F.log_softmax(logits.float(), dim=-1), dim=-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mixed_cross_entropy(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor) -> Tensor:
    """The (y_a, y_b, λ) form: mean_i [λ_i CE(z_i, y_a_i) + (1 - λ_i) CE(z_i, y_b_i)].

    ``labels_a``/``labels_b`` may be (B,) indices or (B, K) probabilities; ``lam`` is (B,) or a
    float. For hard labels this equals the soft-target cross-entropy of the mixed targets.
    """

    def ce(y: Tensor) -> Tensor:
        if y.ndim == 1:
            return F.cross_entropy(logits.float(), y, reduction="none")
        return soft_cross_entropy(logits, y, reduction="none")

    lam = torch.as_tensor(lam, dtype=torch.float32, device=logits.device)
    return (lam * ce(labels_a) + (1.0 - lam) * ce(labels_b)).mean()


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against dense soft targets (B, K), averaged over the batch.

    Example:
        >>> loss = SoftTargetCrossEntropy()(torch.randn(4, 10), torch.full((4, 10), 0.1))
    """

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return soft_cross_entropy(logits, targets)


class BinaryCrossEntropy(nn.Module):
    """Per-class binary cross-entropy with logits against soft targets (Wightman et al. 2021).

    Args:
        target_threshold: if set, targets above it become 1 and the rest 0 (so mixed labels count
            as "both classes present"); ``None`` keeps the soft values.
        pos_weight: optional (K,) weight of positive examples, as in ``BCEWithLogitsLoss``.
        reduction: ``"mean"`` (over batch and classes), ``"sum"`` or ``"none"``.
    """

    def __init__(
        self, target_threshold: float | None = None, pos_weight: Tensor | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if target_threshold is not None and not 0.0 <= float(target_threshold) < 1.0:
            raise ValueError(f"target_threshold must be in [0, 1) or None, got {target_threshold}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.target_threshold = target_threshold
        self.reduction = reduction
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if targets.ndim == 1:  # integer labels
            targets = F.one_hot(targets.long(), logits.shape[-1])
        targets = targets.to(dtype=torch.float32)
        if self.target_threshold is not None:
            targets = (targets > self.target_threshold).float()
        return F.binary_cross_entropy_with_logits(
            logits.float(), targets, pos_weight=self.pos_weight, reduction=self.reduction
        )
