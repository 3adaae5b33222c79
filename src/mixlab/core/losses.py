"""Losses for soft targets, DecoupleMix's regulariser for any mixed batch with a pair structure,
and the segmentation loss of a mixed batch of label maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from mixlab.core.result import MixResult

__all__ = ["SoftTargetCrossEntropy", "BinaryCrossEntropy", "soft_cross_entropy", "mixed_cross_entropy",
           "decoupled_regularizer", "decouple_term",
           "mixed_segmentation_loss"]


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


def decoupled_regularizer(logits: Tensor, classes_a: Tensor, classes_b: Tensor, lam: Tensor) -> Tensor:
    """DecoupleMix's regulariser per sample (Liu et al., "Harnessing Hard Mixed Samples with Decoupled
    Regularizer", NeurIPS 2023; the authors' ``soft_mix_cross_entropy`` in Westlake-AI/openmixup).

    The decoupled softmax scores each mixed class without its partner class in the normaliser,
    ``φ(z)_{a∖b} = exp(z_a) / Σ_{c≠b} exp(z_c)``, so the two classes of a mix no longer compete; the
    regulariser is its cross-entropy for each class, weighted by that class's label weight::

        R_i = λ_i · (-log φ(z_i)_{a∖b}) + (1 - λ_i) · (-log φ(z_i)_{b∖a})

    (the reference's default configs: ``eta_weight`` mode ``"both"``, ``lam_scale_mode="pow"`` with
    ``lam_idx=1``, i.e. η·λ on one term and η·(1 - λ) on the other). A sample that is not a mix of two
    classes (``a == b``, or λ of 0 or 1) gets 0, as the reference gives such rows the plain loss.
    The paper's text could not be read here beyond its abstract; this follows the code, except two
    artefacts of its batch-wide bookkeeping: it finds the mixed classes by thresholding the label
    values and pairs the two weights with them in the *first* row's class order (when that row's
    partner class sorts first, every row gets λ and 1 - λ swapped), and it skips the regulariser for
    the whole batch when λ = 1/2 (the two label values are then equal); mixlab reads each sample's
    own pair (a, b, λ).

    Args:
        logits: (B, K).
        classes_a, classes_b: (B,) int64 classes of each sample's two sources.
        lam: (B,) weight of source a.

    Returns:
        (B,) float32, >= 0.
    """
    z = logits.float()
    a, b = classes_a.long().unsqueeze(1), classes_b.long().unsqueeze(1)
    lam = lam.to(device=z.device, dtype=z.dtype)
    drop_b = z.scatter(1, b, float("-inf"))  # the normaliser without the partner class
    drop_a = z.scatter(1, a, float("-inf"))
    own_a = torch.logsumexp(drop_b, dim=1) - z.gather(1, a).squeeze(1)  # -log φ_{a∖b}
    own_b = torch.logsumexp(drop_a, dim=1) - z.gather(1, b).squeeze(1)  # -log φ_{b∖a}
    reg = lam * own_a + (1.0 - lam) * own_b
    mixed = (a.squeeze(1) != b.squeeze(1)) & (lam > 0) & (lam < 1)
    return torch.where(mixed, reg, torch.zeros_like(reg))


def decouple_term(logits: Tensor, mixed: MixResult) -> Tensor:
    """The batch mean of :func:`decoupled_regularizer` for a mixed batch, from its pair structure
    (``mixed.pairs()``: source targets, partner targets, λ; each source's class is its target's
    argmax, so smoothed and probability labels work). The loss option ``decouple=η`` of every method
    that takes it adds ``η · decouple_term(logits, mixed)`` to its mixed cross-entropy (η = 0: nothing
    is added, the loss is the plain one bit for bit)."""
    targets_a, targets_b, lam = mixed.pairs()
    return decoupled_regularizer(logits, targets_a.argmax(dim=1), targets_b.argmax(dim=1), lam).mean()


def mixed_segmentation_loss(
    logits: Tensor, result: Any, ignore_index: int = 255, label_smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of per-pixel logits against a mixed batch of label maps.

    With ``(y_a, y_b, λ) = result.pairs()`` (:class:`~mixlab.core.result.MixResult`), per pixel p of
    sample i::

        ℓ_ip = λ_i·CE(z_ip, y_a[i, p]) + (1 - λ_i)·CE(z_ip, y_b[i, p])

    where a term whose label is ``ignore_index`` is left out, and the mean is the weighted mean
    ``Σ ℓ / Σ (λ_i·[y_a ≠ ignore] + (1 - λ_i)·[y_b ≠ ignore])``. Box and mask mixers (CutMix,
    ResizeMix, FMix, SaliencyMix) give ``y_a = y_b`` = the exact mixed map: this is then exactly
    ``F.cross_entropy(logits, targets, ignore_index=...)``. Mixup gives the two source maps and its
    λ: the two cross-entropies mixed pixel by pixel. Equal to the soft cross-entropy against
    :func:`~mixlab.core.targets.dense_soft_targets`, normalised by the targets' total weight.

    Args:
        logits: (B, K, H, W) scores (any float dtype; computed in float32).
        result: a mixer's result on label maps, or any object with ``pairs()`` returning
            ``(y_a, y_b, lam)``: (B, H, W) integer maps and (B,) weights.
        ignore_index: the label of pixels without a class (default 255, VOC's).
        label_smoothing: ε, as ``F.cross_entropy``'s.
        reduction: ``"mean"`` (default, the weighted mean above), ``"sum"`` or ``"none"`` (the
            (B, H, W) map ℓ, 0 where both labels are ignored).

    Raises:
        ValueError: logits not (B, K, H, W) matching the maps, or an unknown reduction.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    y_a, y_b, lam = result.pairs()
    if logits.ndim != 4 or logits.shape[:1] + logits.shape[2:] != y_a.shape:
        raise ValueError(f"logits must be (B, K, H, W) over the label maps' (B, H, W) = {tuple(y_a.shape)}, "
                         f"got {tuple(logits.shape)}")
    z = logits.float()
    one_map = y_b is y_a  # box and mask mixers: one exact map
    y_a, y_b = y_a.as_subclass(Tensor), y_b.as_subclass(Tensor)

    def ce(y: Tensor) -> Tensor:
        return F.cross_entropy(z, y.long(), ignore_index=ignore_index, reduction="none",
                               label_smoothing=label_smoothing)

    valid_a = (y_a != ignore_index).float()
    if one_map:  # the plain cross-entropy
        loss, weight = ce(y_a), valid_a
    else:
        w = lam.to(device=z.device, dtype=torch.float32).view(-1, 1, 1)
        loss = w * ce(y_a) + (1.0 - w) * ce(y_b)
        weight = w * valid_a + (1.0 - w) * (y_b != ignore_index).float()
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


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
