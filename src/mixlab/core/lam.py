"""λ sampling at three granularities: one per batch, one per pair, one per element.

``granularity``:

* ``"batch"``: one λ shared by the whole batch (timm's ``mode="batch"``, torchvision v2).
* ``"pair"``: one λ per pair (i, j = index[i]), shared by both members. Needs a pairing that is
  its own inverse (``"flip"``), otherwise "the pair" of i is not well defined.
* ``"elem"``: an independent λ per element.

``distribution``: ``"beta"`` draws Beta(α, α) (Mixup, CutMix, ...); ``"uniform"`` draws U(0, α)
(RecursiveMix's patch-area fraction, Eq. 2 of its paper).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_alpha, check_choice, reads_values
from mixlab.core.random import beta_sample, rand

__all__ = ["GRANULARITIES", "DISTRIBUTIONS", "sample_lambda"]

GRANULARITIES = ("batch", "pair", "elem")
DISTRIBUTIONS = ("beta", "uniform")


def sample_lambda(
    batch_size: int,
    alpha: float,
    granularity: str = "batch",
    distribution: str = "beta",
    index: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw mixing weights λ, one per element of the batch, float32 of shape (B,).

    Args:
        batch_size: B.
        alpha: α of Beta(α, α), or the upper bound of U(0, α) (then 0 < α <= 1).
        granularity: ``"batch"``, ``"pair"`` or ``"elem"`` (see the module docstring).
        distribution: ``"beta"`` or ``"uniform"``.
        index: the partner index (B,), required for ``"pair"``: λ[index[i]] = λ[i]. That it
            is its own inverse is checked where :func:`~mixlab.core.checks.reads_values` allows
            (a CPU index, outside ``torch.compile``).
        generator: source of randomness (default: the global torch seed).
        device: where the result lives (default: the generator's device).

    Returns:
        λ of shape (B,); with ``"batch"`` all entries are equal.

    Raises:
        ValueError: bad α, granularity or distribution; ``"pair"`` with a non-involutive index.
    """
    check_alpha(alpha)
    check_choice(granularity, "granularity", GRANULARITIES)
    check_choice(distribution, "distribution", DISTRIBUTIONS)
    if distribution == "uniform" and alpha > 1.0:
        raise ValueError(f"alpha is the upper bound of U(0, alpha) and must be in (0, 1], got {alpha}")
    n = 1 if granularity == "batch" else batch_size
    if distribution == "beta":
        lam = beta_sample(alpha, alpha, n, generator)
    else:
        lam = rand((n,), generator) * alpha
    if granularity == "batch":
        lam = lam.expand(batch_size).clone()
    elif granularity == "pair":
        if index is None:
            raise ValueError("granularity='pair' needs the partner index")
        ar = torch.arange(batch_size, device=index.device)
        if reads_values(index, None) and not torch.equal(index[index], ar):
            raise ValueError("granularity='pair' needs a pairing that is its own inverse, use pairing='flip'")
        # each pair {i, index[i]} takes the λ of its smaller member (gathered where the index lives)
        lam = lam.to(index.device, non_blocking=True)[torch.minimum(ar, index)]
    return lam if device is None else lam.to(device, non_blocking=True)
