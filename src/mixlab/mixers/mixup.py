"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

x̃_i = λ_i x_i + (1 - λ_i) x_j,  ỹ_i = λ_i y_i + (1 - λ_i) y_j,  λ ~ Beta(α, α),  j = index[i].
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_alpha
from mixlab.mixers.base import Mixer, partner_of

__all__ = ["Mixup", "mixup"]


def mixup(images: Tensor, index: Tensor, lam: Tensor | float, out: Tensor | None = None, pairing: str | None = None) -> Tensor:
    """Functional kernel: ``out_i = λ_i images_i + (1 - λ_i) images_index[i]``.

    Args:
        images: (B, C, H, W) float.
        index: (B,) partner index.
        lam: a float (one λ) or a (B,) tensor.
        out: optional output tensor (may be ``images`` itself for an in-place mix).
        pairing: ``"roll"`` tells the kernel that ``index`` is a roll by one, which it then
            reads as two shifted views instead of gathering a partner batch.

    Returns:
        The mixed batch (``out`` if given).
    """
    if out is None:
        out = torch.empty_like(images)
    if isinstance(lam, Tensor):
        lam = lam.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    if pairing == "roll" and out is not images:
        w0, w1 = (lam[:1], lam[1:]) if isinstance(lam, Tensor) else (lam, lam)
        torch.lerp(images[:-1], images[1:], w1, out=out[1:])
        torch.lerp(images[-1:], images[:1], w0, out=out[:1])
        return out
    partner = partner_of(images, index, pairing or "")  # a copy, so out may alias images
    return torch.lerp(partner, images, lam, out=out)


class Mixup(Mixer):
    """Mixup: convex combination of image pairs and of their labels.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α), > 0 (default 1.0; 0.2 is the ImageNet setting of the paper,
            AutoMix's CIFAR tables use 1.0).
        **kwargs: the common mixer options (``p``, ``pairing``, ``granularity``,
            ``label_smoothing``, ``inplace``, ``check_finite``, ``generator``), see
            :class:`~mixlab.mixers.base.Mixer`.

    Example:
        >>> mixer = Mixup(num_classes=10, alpha=1.0, generator=torch.Generator().manual_seed(0))
        >>> images, targets = mixer(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    """

    name = "mixup"

    def __init__(self, num_classes: int, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, images: Tensor, index: Tensor) -> dict:
        return {"lam": self.sample_lambda(images.shape[0], self.alpha, index, device=images.device)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        lam = params["lam"]
        if self.granularity == "batch":
            weight: Tensor | float = float(lam[0])
            exact = lam
        else:
            weight = lam.to(images.dtype)
            exact = weight.float()  # the λ actually applied, after rounding to the images' dtype
        out = mixup(images, index, weight, out=self._out(images), pairing=self.pairing)
        return out, exact, None, None

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"
