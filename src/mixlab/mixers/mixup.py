"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

x̃_i = λ_i x_i + (1 - λ_i) x_j,  ỹ_i = λ_i y_i + (1 - λ_i) y_j,  λ ~ Beta(α, α),  j = index[i].
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_alpha
from mixlab.mixers.base import Mixer, blend_with_partner, partner_of

__all__ = ["Mixup", "mixup_images"]


def mixup_images(images: Tensor, index: Tensor, lam: Tensor, out: Tensor | None = None,
                 pairing: str | None = None, partner: Tensor | None = None) -> Tensor:
    """Functional kernel: ``out_i = λ_i images_i + (1 - λ_i) images_index[i]``.

    Float images: one ``lerp`` with λ in the images' dtype. uint8 images: as timm's
    ``FastCollateMixup``, ``x_i·λ + x_j·(1 - λ)`` computed in float32, rounded half to even
    (``torch.round``, NumPy's ``rint``) and cast back.

    Args:
        images: (B, C, H, W) float or uint8.
        index: (B,) partner index.
        lam: (B,) λ, or (1,) for one λ shared by the batch.
        out: optional output tensor (may be ``images`` itself for an in-place mix); ``None``
            computes out of place (differentiable).
        pairing: ``"roll"`` tells the kernel that ``index`` is a roll by one, which it then
            reads as two shifted views instead of gathering a partner batch.
        partner: ``images[index]``, when the caller has it already.

    Returns:
        The mixed batch (``out`` if given).
    """
    if images.is_floating_point():
        weight = lam.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
        return blend_with_partner(images, index, weight, out=out, pairing=pairing, partner=partner)
    w = lam.to(device=images.device, dtype=torch.float32).view(-1, 1, 1, 1)
    partner = (partner_of(images, index, pairing or "") if partner is None else partner).float()
    mixed = torch.round(images.float() * w + partner * (1.0 - w))
    if out is None:
        return mixed.to(images.dtype)
    return out.copy_(mixed)


class Mixup(Mixer):
    """Mixup: convex combination of image pairs and of their labels.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α), > 0 (default 1.0; 0.2 is the ImageNet setting of the paper,
            AutoMix's CIFAR tables use 1.0).
        **kwargs: the common mixer options (``p``, ``pairing``, ``granularity``,
            ``label_smoothing``, ``inplace``, ``check_finite``, ``check_values``, ``generator``),
            see :class:`~mixlab.mixers.base.Mixer`.

    Precision: ``lam`` is the weight actually applied. For float16/bfloat16 images λ is rounded
    to the images' dtype before the blend and reported as that rounded value. uint8 images (a
    prefetcher pipeline, :class:`~mixlab.mixers.choice.MixCollate`) are blended as timm's
    ``FastCollateMixup`` does: ``round(x_i·λ + x_j·(1 - λ))`` in float32, rounding half to even;
    λ is then the weight used, and each pixel is within 0.5 grey levels of the exact blend.

    Example:
        >>> mixer = Mixup(num_classes=10, alpha=1.0, generator=torch.Generator().manual_seed(0))
        >>> images, targets = mixer(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    """

    name = "mixup"

    def __init__(self, num_classes: int, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        return {"lam": self.sample_lambda(images.shape[0], self.alpha, index, images.device, coin=coin)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        lam = params["lam"]
        weight = lam[:1] if self.granularity == "batch" else lam  # one λ: a broadcast weight
        out = mixup_images(images, index, weight, out=self._out(images, params), pairing=self.pairing)
        exact = lam.to(images.dtype).float() if images.is_floating_point() else lam.float()
        return out, exact, None, None

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"
