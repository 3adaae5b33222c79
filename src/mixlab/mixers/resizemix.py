"""ResizeMix (Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True
Labels", 2020).

The whole partner image is resized by a scale τ ~ U(τ_min, τ_max) (paper: (0.1, 0.8)) and pasted
into a box of the image; the label weight of the partner is the pasted area fraction, so
λ = 1 - (exact box area)/(H·W).

Box placement (``box``):

* ``"clip"`` (default): the code behind the ResizeMix numbers of the AutoMix/openmixup tables
  (openmixup ``models/augments/resizemix.py``, ``rand_bbox_tao``): sides ``2·(int(τ·H)//2)`` ×
  ``2·(int(τ·W)//2)`` around a uniform integer centre, clipped to the image, like CutMix's box
  (:func:`mixlab.core.boxes.clipped_boxes`). Clipping makes the pasted area smaller than τ²:
  its mean is 0.160 for τ ~ U(0.1, 0.8) on 32×32 images. (openmixup draws the box with the
  image's height and width swapped, which only matters for non-square images; mixlab uses
  each side for its own axis.)
* ``"inside"``: sides ``round(τ·H)`` × ``round(τ·W)`` placed uniformly fully inside the image,
  so the pasted area is ≈ τ² (mean 0.24 for the same τ range): the formula λ = 1 - τ² of the
  paper's text describes this placement.

Interpolation (the paper is silent): ``"nearest"`` (default) samples at pixel centres, i.e.
``F.interpolate(mode="nearest-exact")``; ``"nearest-legacy"`` is ``F.interpolate``'s
``mode="nearest"`` (source pixel ``floor(i·in/out)``), what openmixup calls, shifted by up to half
a source pixel; ``"bilinear"`` uses ``align_corners=False``. Each mode samples identically on the
one-box and the per-sample-box paths (``"bilinear"`` to float rounding).

Label maps (segmentation targets) are resized into the same box by nearest neighbour, never
blending classes: with the ``"nearest"`` and ``"nearest-legacy"`` modes each pasted label sits
exactly under the pixel it labels; with ``"bilinear"`` the map uses ``"nearest"`` (pixel centres,
the same geometry as bilinear's ``align_corners=False``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.boxes import (
    RESIZE_MODES,
    box_tensors,
    clipped_box,
    clipped_boxes,
    kept_fraction,
    label_resize_mode,
    rand_boxes_inside,
    resize_paste,
    resize_paste_labels,
)
from mixlab.core.checks import check_choice, check_range, reads_values
from mixlab.core.random import rand
from mixlab.mixers.base import Mixer, partner_of

__all__ = ["ResizeMix", "resizemix_images", "BOX_PLACEMENTS"]

#: where ResizeMix puts its box, see the module docstring
BOX_PLACEMENTS = ("clip", "inside")


def resizemix_images(
    images: Tensor,
    index: Tensor,
    boxes: Tensor | tuple[int, int, int, int],
    mode: str = "nearest",
    out: Tensor | None = None,
    pairing: str | None = None,
) -> Tensor:
    """Functional kernel: the whole ``images[index[i]]`` resized into box i of ``images[i]``.

    ``boxes`` is one box of Python ints shared by the batch (one ``interpolate``) or (B, 4) int64;
    ``mode`` one of ``"nearest"``, ``"nearest-legacy"``, ``"bilinear"``. ``out=None`` computes
    out of place (differentiable).
    """
    return resize_paste(images, partner_of(images, index, pairing or ""), boxes, mode, out)


class ResizeMix(Mixer):
    """ResizeMix: paste the resized partner into a random box; λ from the box area.

    Args:
        num_classes: K.
        scale: (τ_min, τ_max) range of the side scale τ, within (0, 1] (default (0.1, 0.8)).
        interpolation: ``"nearest"`` (default, pixel centres), ``"nearest-legacy"``
            (openmixup's ``F.interpolate(mode="nearest")``) or ``"bilinear"``.
        box: ``"clip"`` (default, openmixup's reference box, clipped) or ``"inside"`` (fully
            inside the image); see the module docstring.
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`.
    """

    name = "resizemix"

    def __init__(
        self, num_classes: int, scale: tuple[float, float] = (0.1, 0.8), interpolation: str = "nearest",
        box: str = "clip", **kwargs
    ) -> None:
        super().__init__(num_classes, **kwargs)
        self.scale = check_range(scale, "scale", 0.0, 1.0)
        if self.scale[0] <= 0.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        self.interpolation = check_choice(interpolation, "interpolation", RESIZE_MODES)
        self.box = check_choice(box, "box", BOX_PLACEMENTS)

    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        n = 1 if self.granularity == "batch" else b
        tau = self.scale[0] + (self.scale[1] - self.scale[0]) * rand((n,), self.generator)
        if coin is not None:
            tau = torch.where(coin, tau, 0.0)  # τ = 0: an empty box, nothing pasted
        if self.box == "clip":
            if n == 1 and reads_values(tau, None):  # the batch's one box, in Python
                return {"box": clipped_box(float(tau[0]), h, w, generator=self.generator)}
            boxes = clipped_boxes(tau, h, w, generator=self.generator)
        else:
            boxes = rand_boxes_inside(tau, h, w, generator=self.generator)
            if n == 1 and reads_values(boxes, None):
                return {"box": tuple(boxes[0].tolist())}
        if self.granularity == "pair":
            ar = torch.arange(b, device=index.device)
            boxes = boxes.to(index.device, non_blocking=True)[torch.minimum(ar, index)]
        return {"boxes": boxes.to(images.device, non_blocking=True)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        out = self._out(images, params)
        if "box" in params:
            mixed = resizemix_images(images, index, params["box"], self.interpolation, out=out, pairing=self.pairing)
            lam, boxes = box_tensors(params["box"], b, h, w, images.device)
            return mixed, lam, None, boxes
        boxes = params["boxes"].expand(b, 4)
        mixed = resizemix_images(images, index, boxes, self.interpolation, out=out, pairing=self.pairing)
        return mixed, kept_fraction(boxes, h, w), None, boxes

    def mix_label_maps(self, maps: Tensor, index: Tensor, params: dict, mask: Tensor | None,
                       boxes: Tensor | None) -> Tensor:
        """The partner's whole label map resized into the box by nearest neighbour (module docstring)."""
        partner = partner_of(maps, index, self.pairing)
        return resize_paste_labels(maps, partner, boxes, label_resize_mode(self.interpolation))

    def _hyper_repr(self) -> str:
        return f"scale={self.scale}, interpolation={self.interpolation!r}, box={self.box!r}"
