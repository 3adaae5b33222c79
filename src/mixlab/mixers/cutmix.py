"""CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV 2019).

A box of area fraction 1 - λ (side √(1-λ) of each image side, uniform centre, clipped) is cut from
the partner and pasted into the image; λ is then corrected to the exact kept pixel fraction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.boxes import box_area_fraction, boxes_to_mask, rand_boxes
from mixlab.core.checks import check_alpha
from mixlab.mixers.base import Mixer, partner_of

__all__ = ["CutMix", "cutmix"]


def cutmix(images: Tensor, index: Tensor, boxes: Tensor, out: Tensor | None = None, pairing: str | None = None) -> Tensor:
    """Functional kernel: paste ``images[index[i]]`` into ``boxes[i]`` of ``images[i]``.

    If all boxes are equal (one box per batch) only the box region is gathered and copied.

    Args:
        images: (B, C, H, W).
        index: (B,) partner index.
        boxes: (B, 4) int64 ``(x1, y1, x2, y2)``.
        out: optional output (may be ``images`` for in-place).
    """
    if bool((boxes == boxes[:1]).all()):
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        patch = images[:, :, y1:y2, x1:x2].index_select(0, index.to(images.device))  # copy before writing
        if out is None:
            out = images.clone()
        elif out is not images:
            out.copy_(images)
        out[:, :, y1:y2, x1:x2] = patch
        return out
    mask = boxes_to_mask(boxes, images.shape[-2], images.shape[-1], device=images.device)
    partner = partner_of(images, index, pairing or "")
    if out is None:
        out = torch.empty_like(images)  # keeps the memory format (channels_last)
    return torch.where(mask, partner, images, out=out)


class CutMix(Mixer):
    """CutMix: paste a random box of the partner image; labels weighted by exact area.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α) for λ, > 0 (default 1.0, the paper's).
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`. With
            ``granularity="batch"`` one box is shared by the batch (as the paper's code); with
            ``"pair"``/``"elem"`` each sample gets its own box.

    Example:
        >>> images, targets = CutMix(num_classes=10)(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    """

    name = "cutmix"

    def __init__(self, num_classes: int, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, images: Tensor, index: Tensor) -> dict:
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        lam = self.sample_lambda(b, self.alpha, index, device="cpu")
        n_boxes = 1 if self.granularity == "batch" else b
        boxes = rand_boxes(1.0 - lam[:n_boxes], h, w, generator=self.generator)
        if self.granularity == "batch":
            boxes = boxes.expand(b, 4)
        elif self.granularity == "pair":
            boxes = boxes[torch.minimum(torch.arange(b), index.cpu())]  # the pair shares its box
        return {"boxes": boxes.to(images.device)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        boxes = params["boxes"]
        h, w = images.shape[-2:]
        out = cutmix(images, index, boxes, out=images if self.inplace else None, pairing=self.pairing)
        lam = 1.0 - box_area_fraction(boxes, h, w)
        return out, lam, None, boxes

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"
