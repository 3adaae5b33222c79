"""Soft targets: integer labels (B,) or probability labels (B, K) in, dense (B, K) out.

Accepting probability labels means mixers chain (CutMix after CropMix, Mixup after a mixer).
Label smoothing (Szegedy et al. 2016) is applied to the un-mixed targets,
t = (1 - ε) y + ε / K, before they are mixed, as timm does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_targets", "mix_targets"]


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
