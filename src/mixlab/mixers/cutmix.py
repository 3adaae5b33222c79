"""CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV 2019).

A box of area fraction 1 - λ (side √(1-λ) of each image side, uniform centre, clipped) is cut from
the partner and pasted into the image; λ is then corrected to the exact kept pixel fraction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.boxes import box_area_fraction, paste_boxes, rand_box, rand_boxes
from mixlab.core.checks import check_alpha
from mixlab.mixers.base import Mixer, partner_of

__all__ = ["CutMix", "cutmix"]


def cutmix(
    images: Tensor,
    index: Tensor,
    boxes: Tensor | tuple[int, int, int, int],
    out: Tensor | None = None,
    pairing: str | None = None,
) -> Tensor:
    """Functional kernel: paste ``images[index[i]]`` into box i of ``images[i]``.

    Args:
        images: (B, C, H, W).
        index: (B,) partner index.
        boxes: one box ``(x1, y1, x2, y2)`` of Python ints shared by the batch (only the box
            region is gathered and copied), or (B, 4) int64 per-sample boxes.
        out: optional output (may be ``images`` for in-place).
        pairing: ``"roll"`` lets the kernel use a roll instead of a gather.
    """
    if isinstance(boxes, tuple):
        x1, y1, x2, y2 = boxes
        patch = partner_of(images[:, :, y1:y2, x1:x2], index, pairing or "")  # a copy, taken before writing
        return paste_boxes(images, patch, boxes, out)
    return paste_boxes(images, partner_of(images, index, pairing or ""), boxes, out)


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
        if self.granularity == "batch":  # one box: Python ints, no tensor ops
            return {"box": rand_box(1.0 - float(lam[0]), h, w, generator=self.generator)}
        boxes = rand_boxes(1.0 - lam, h, w, generator=self.generator)
        if self.granularity == "pair":
            boxes = boxes[torch.minimum(torch.arange(b), index.cpu())]  # the pair shares its box
        return {"boxes": boxes.to(images.device)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        h, w = images.shape[-2:]
        out = images if self.inplace else None
        if "box" in params:
            box = params["box"]
            mixed = cutmix(images, index, box, out=out, pairing=self.pairing)
            lam = torch.full((images.shape[0],), 1.0 - (box[2] - box[0]) * (box[3] - box[1]) / (h * w), device=images.device)
            boxes = torch.tensor(box, device=images.device).expand(images.shape[0], 4)
            return mixed, lam, None, boxes
        boxes = params["boxes"]
        mixed = cutmix(images, index, boxes, out=out, pairing=self.pairing)
        return mixed, 1.0 - box_area_fraction(boxes, h, w), None, boxes

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"
