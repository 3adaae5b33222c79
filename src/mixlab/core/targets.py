"""Soft targets: integer labels (B,) or probability labels (B, K) in, dense (B, K) out.

Accepting probability labels means mixers chain (CutMix after CropMix, Mixup after a mixer).
Label smoothing (Szegedy et al. 2016) is applied to the un-mixed targets,
t = (1 - ε) y + ε / K, before they are mixed, as timm does.

Segmentation: :func:`dense_soft_targets` turns a mixed batch's two label maps and λ into per-pixel
soft targets (B, K, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_targets", "mix_targets", "dense_soft_targets"]


def soft_targets(
    labels: Tensor, num_classes: int, smoothing: float = 0.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Dense (B, K) targets from (B,) class indices or (B, K) float targets, with smoothing ε.

    Class indices become ``off = ε / K`` everywhere and ``on = 1 - ε + off`` at the label, both
    computed in double precision then stored (timm's ``one_hot``, value for value); (B, K)
    targets become ``(1 - ε) t + ε / K``.
    """
    if labels.ndim == 1:
        off = smoothing / num_classes
        out = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
        return out.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    out = labels.to(dtype=dtype, copy=True)
    if smoothing > 0.0:
        out.mul_(1.0 - smoothing).add_(smoothing / num_classes)
    return out


def mix_targets(targets: Tensor, index: Tensor, lam: Tensor) -> Tensor:
    """λ_i t_i + (1 - λ_i) t_index[i] for dense targets (B, K) and per-sample λ (B,)."""
    lam = lam.to(device=targets.device, dtype=targets.dtype).unsqueeze(1)
    return torch.lerp(targets[index], targets, lam)


def dense_soft_targets(
    targets: Tensor, partner_targets: Tensor, lam: Tensor, num_classes: int, ignore_index: int = 255,
    label_smoothing: float = 0.0, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-pixel soft targets (B, K, H, W) of a mixed segmentation batch:
    ``t[i, :, p] = λ_i·onehot(y_a[i, p]) + (1 - λ_i)·onehot(y_b[i, p])`` (smoothed to
    ``(1 - ε)·onehot + ε/K`` first), where a map that says ``ignore_index`` at p contributes nothing.

    ``(y_a, y_b, λ)`` is :meth:`MixResult.pairs() <mixlab.core.result.MixResult.pairs>` of a mixed
    batch of label maps: ``dense_soft_targets(*result.pairs(), num_classes)``. A pixel's targets sum
    to the weight of its non-ignored labels (1, or less where a map ignores it), so
    ``Σ_p Σ_k -t log softmax(z) / Σ_p Σ_k t`` is :func:`~mixlab.core.losses.mixed_segmentation_loss`.

    Args:
        targets, partner_targets: (B, H, W) integer label maps.
        lam: (B,) weight of ``targets``.
        num_classes: K.
        ignore_index: the value of pixels without a class.
        label_smoothing: ε.
        dtype: floating dtype of the result.
    """
    lam = lam.to(device=targets.device, dtype=dtype).view(-1, 1, 1, 1)

    def one_hot(maps: Tensor) -> Tensor:
        maps = maps.long()
        valid = (maps != ignore_index).unsqueeze(1)  # (B, 1, H, W)
        hot = torch.zeros(maps.shape[0], num_classes, *maps.shape[1:], dtype=dtype, device=maps.device)
        hot.scatter_(1, torch.where(valid, maps.unsqueeze(1), 0), 1.0)
        if label_smoothing > 0.0:
            hot.mul_(1.0 - label_smoothing).add_(label_smoothing / num_classes)
        return hot * valid

    return torch.lerp(one_hot(partner_targets), one_hot(targets), lam)
