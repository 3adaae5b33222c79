"""Pairing: which image each image is mixed with.

* ``"flip"``: i ↔ B-1-i (timm, SDMP). Its own inverse, so ``granularity="pair"`` works. On an odd
  batch the middle image is paired with itself: it is "mixed" with itself and keeps its label.
* ``"roll"``: i ← i-1 (torchvision v2). Any B >= 2, never a self-pair, and the partner batch is a
  view-friendly shift, the cheapest pairing.
* ``"random"``: a random permutation with no fixed point (no self-pairs), any B >= 2: a uniformly
  random single cycle through the batch (Sattolo-style), drawn without a Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_choice
from mixlab.core.random import randperm

__all__ = ["PAIRINGS", "pair_index"]

PAIRINGS = ("flip", "roll", "random")


def pair_index(
    batch_size: int,
    pairing: str = "roll",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Partner index (B,) int64: image i is mixed with image ``index[i]``.

    Raises:
        ValueError: unknown pairing, or batch_size < 2.
    """
    check_choice(pairing, "pairing", PAIRINGS)
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 to pair images, got {batch_size}")
    if pairing == "flip":  # fixed pairings are built where they are used
        return torch.arange(batch_size - 1, -1, -1, device=device)
    if pairing == "roll":
        return torch.arange(-1, batch_size - 1, device=device).remainder_(batch_size)
    # a uniformly random single cycle through all B images: p[0] -> p[1] -> ... -> p[0]
    # (no fixed points, vectorised), built on the generator's device
    p = randperm(batch_size, generator)
    index = torch.empty_like(p).scatter_(0, p, p.roll(-1))
    return index if device is None else index.to(device, non_blocking=True)
