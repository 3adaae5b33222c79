"""Momentum (EMA) encoders, shared by AutoMix, MoCo v3 and DINO.

``θ_k ← m θ_k + (1 − m) θ_q`` over the parameters (the buffers, BatchNorm statistics, are the
copy's own, computed by its forward passes, as the reference implementations do), with m rising
from m_0 to 1 along a half cosine of the training fraction (BYOL's schedule, used by MoCo v3,
DINO and AutoMix).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["cosine_momentum", "momentum_update_", "frozen_copy"]


def cosine_momentum(m0: float, progress: float) -> float:
    """m = 1 − (1 − m_0)(cos(π t) + 1) / 2 at training fraction t ∈ [0, 1]: m_0 at t = 0, 1 at t = 1."""
    t = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - float(m0)) * (math.cos(math.pi * t) + 1.0) / 2.0


@torch.no_grad()
def momentum_update_(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], m: float) -> None:
    """In place ``target ← m · target + (1 − m) · source`` (one fused ``_foreach_lerp_``).

    Raises:
        ValueError: the two lists differ in length, or m is outside [0, 1].
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    mine, theirs = list(target), [p.detach() for p in source]
    if len(mine) != len(theirs):
        raise ValueError(f"the momentum copy has {len(mine)} tensors and its source {len(theirs)}")
    if m < 1.0 and mine:
        torch._foreach_lerp_(mine, theirs, 1.0 - m)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` everywhere (a momentum encoder's start)."""
    import copy

    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
