"""ResizeMix (Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True
Labels", 2020).

The whole partner image is resized by a scale τ ~ U(τ_min, τ_max) (paper: (0.1, 0.8)) and pasted
at a uniformly random position fully inside the image; the label weight of the partner is the
pasted area fraction, so λ = 1 - (exact box area)/(H·W) ≈ 1 - τ².

Interpolation: the paper is silent; ``"nearest"`` by default, as openmixup's ResizeMix does,
``"bilinear"`` selectable. Both sample at pixel centres (``"nearest"`` is ``F.interpolate``'s
``"nearest-exact"``), identically on the one-box and per-sample-box paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.boxes import box_area_fraction, rand_boxes_inside, resize_paste
from mixlab.core.checks import check_choice, check_range
from mixlab.core.random import rand
from mixlab.mixers.base import Mixer, partner_of

__all__ = ["ResizeMix", "resizemix"]

INTERPOLATIONS = ("nearest", "bilinear")


def resizemix(
    images: Tensor,
    index: Tensor,
    boxes: Tensor | tuple[int, int, int, int],
    mode: str = "nearest",
    out: Tensor | None = None,
    pairing: str | None = None,
) -> Tensor:
    """Functional kernel: the whole ``images[index[i]]`` resized into box i of ``images[i]``.

    ``boxes`` is one box of Python ints shared by the batch (one ``interpolate``) or (B, 4) int64.
    """
    return resize_paste(images, partner_of(images, index, pairing or ""), boxes, mode, out)


class ResizeMix(Mixer):
    """ResizeMix: paste the resized partner into a random box; λ from the box area.

    Args:
        num_classes: K.
        scale: (τ_min, τ_max) range of the side scale τ, within (0, 1] (default (0.1, 0.8)).
        interpolation: ``"nearest"`` (default) or ``"bilinear"``.
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`.
    """

    name = "resizemix"

    def __init__(
        self, num_classes: int, scale: tuple[float, float] = (0.1, 0.8), interpolation: str = "nearest", **kwargs
    ) -> None:
        super().__init__(num_classes, **kwargs)
        self.scale = check_range(scale, "scale", 0.0, 1.0)
        if self.scale[0] <= 0.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        self.interpolation = check_choice(interpolation, "interpolation", INTERPOLATIONS)

    def make_params(self, images: Tensor, index: Tensor) -> dict:
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        n = 1 if self.granularity == "batch" else b
        tau = self.scale[0] + (self.scale[1] - self.scale[0]) * rand((n,), self.generator)
        boxes = rand_boxes_inside(tau, h, w, generator=self.generator)
        if self.granularity == "batch":
            return {"box": tuple(boxes[0].tolist())}
        if self.granularity == "pair":
            boxes = boxes[torch.minimum(torch.arange(b), index.cpu())]
        return {"boxes": boxes.to(images.device)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        h, w = images.shape[-2:]
        boxes = params.get("box") or params["boxes"]
        out = resizemix(images, index, boxes, self.interpolation, out=images if self.inplace else None, pairing=self.pairing)
        if isinstance(boxes, tuple):
            boxes = torch.tensor(boxes, device=images.device).expand(images.shape[0], 4)
        return out, 1.0 - box_area_fraction(boxes, h, w), None, boxes

    def _hyper_repr(self) -> str:
        return f"scale={self.scale}, interpolation={self.interpolation!r}"
