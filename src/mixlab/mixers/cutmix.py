"""CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV 2019).

A box of area fraction 1 - λ (side √(1-λ) of each image side, uniform centre, clipped) is cut from
the partner and pasted into the image; λ is then corrected to the exact kept pixel fraction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.boxes import box_tensors, boxes_to_mask, kept_fraction, paste_boxes, rand_box, rand_boxes
from mixlab.core.checks import check_alpha, reads_values
from mixlab.mixers.base import Mixer, partner_of, select_from_partner

__all__ = ["CutMix", "cutmix_images"]


def cutmix_images(
    images: Tensor,
    index: Tensor,
    boxes: Tensor | tuple[int, int, int, int],
    out: Tensor | None = None,
    pairing: str | None = None,
) -> Tensor:
    """Functional kernel: paste ``images[index[i]]`` into box i of ``images[i]``. Any dtype.

    Args:
        images: (B, C, H, W).
        index: (B,) partner index.
        boxes: one box ``(x1, y1, x2, y2)`` of Python ints shared by the batch (only the box
            region is gathered and copied), or (B, 4) int64 per-sample boxes, or (1, 4) for one
            box as a tensor (one masked select over the batch: no host read, compiles).
        out: optional output (may be ``images`` for in-place); ``None`` computes out of place
            (differentiable).
        pairing: ``"roll"``/``"flip"`` let the kernel use shifted views or a flip instead of a gather.
    """
    if isinstance(boxes, tuple):
        x1, y1, x2, y2 = boxes
        if pairing == "roll" and out is not None and out is not images:  # two shifted views, no patch copy
            out.copy_(images)
            out[1:, :, y1:y2, x1:x2] = images[:-1, :, y1:y2, x1:x2]
            out[:1, :, y1:y2, x1:x2] = images[-1:, :, y1:y2, x1:x2]
            return out
        patch = partner_of(images[:, :, y1:y2, x1:x2], index, pairing or "")  # a copy, taken before writing
        return paste_boxes(images, patch, boxes, out)
    outside = ~boxes_to_mask(boxes, images.shape[-2], images.shape[-1], device=images.device)
    return select_from_partner(images, index, outside, out=out, pairing=pairing)


class CutMix(Mixer):
    """CutMix: paste a random box of the partner image; labels weighted by exact area.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α) for λ, > 0 (default 1.0, the paper's).
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`. With
            ``granularity="batch"`` one box is shared by the batch (as the paper's code); with
            ``"pair"``/``"elem"`` each sample gets its own box. The batch's one box is
            computed in Python and pasted by slicing when its draws are on the CPU outside
            ``torch.compile`` (reading them is free there); otherwise as a tensor, pasted with a
            mask over the batch. Both give the same box from the same draws.

    Example:
        >>> images, targets = CutMix(num_classes=10)(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    """

    name = "cutmix"

    def __init__(self, num_classes: int, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        lam = self.sample_lambda(b, self.alpha, index, None, coin=coin)  # stays where it was drawn
        if self.granularity == "batch":  # one box
            if reads_values(lam, None):
                return {"box": rand_box(1.0 - float(lam[0]), h, w, generator=self.generator)}
            return {"boxes": rand_boxes(1.0 - lam[:1].double(), h, w, generator=self.generator)}  # (1, 4)
        boxes = rand_boxes(1.0 - lam.double(), h, w, generator=self.generator)
        if self.granularity == "pair":  # the pair shares its box
            ar = torch.arange(b, device=index.device)
            boxes = boxes.to(index.device, non_blocking=True)[torch.minimum(ar, index)]
        return {"boxes": boxes.to(images.device, non_blocking=True)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        out = self._out(images, params)
        if "box" in params:
            mixed = cutmix_images(images, index, params["box"], out=out, pairing=self.pairing)
            lam, boxes = box_tensors(params["box"], b, h, w, images.device)
            return mixed, lam, None, boxes
        boxes = params["boxes"].to(images.device, non_blocking=True)
        mixed = cutmix_images(images, index, boxes, out=out, pairing=self.pairing)
        boxes = boxes.expand(b, 4)
        return mixed, kept_fraction(boxes, h, w), None, boxes

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"
