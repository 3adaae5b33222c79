"""Mixing for object detection: CutMix, ResizeMix and Mixup with box targets.

Targets are torchvision's detection format (its detection references and models): one dict per
image, ``{"boxes": tv_tensors.BoundingBoxes (N, 4), "labels": int64 (N,)}``, optionally
``"masks"`` (N, H, W) instance masks (``tv_tensors.Mask``, bool or uint8), ``"weights"`` (N,)
per-box loss weights, and the per-instance ``"iscrowd"`` / ``"area"``; any other key
(``"image_id"``, ...) is kept from the image the output is built on. Images are a (B, C, H, W)
batch or a list/tuple of (C, H, W) images of one size (the detection collate,
``tuple(zip(*batch))``). Boxes may be in any of the axis-aligned formats (XYXY, XYWH, CXCYWH, or
plain (N, 4) tensors read as XYXY pixels); they are mixed in XYXY and returned in the input's
format and type, on the (H, W) canvas. Everything comes back in the input's types: tensor or the
same container, ``tv_tensors.Image`` / ``BoundingBoxes`` / ``Mask`` where they came in, as
torchvision's v2 transforms do; each output ``(image, target)`` also goes through per-sample v2
transforms such as ``v2.SanitizeBoundingBoxes``.

Rules every detection mixer here shares (one place: :func:`hide_instances` /
:func:`crop_instances` / :func:`keep_visible`):

* An instance is *occluded* by what is pasted over it, or *cut* by the border of what is pasted.
  Its visible fraction is measured on its mask when it has one (visible pixels / pixels), else on
  its box (visible box area / box area). It is kept when the visible fraction is > 0 and at least
  ``1 - max_occlusion``, and its box is at least ``min_size`` pixels wide and high: no box of zero
  area survives, whatever the settings.
* Boxes of cut instances are clipped to what is visible of them. With masks, an instance that
  lost pixels gets the box of its visible pixels (pixel edges, as
  :func:`mixlab.core.boxes.mask_boxes`) and its mask loses them; without masks an occluded box is
  kept as it is (its visible part need not be a box).
* Output i is built on image i and its partner ``index[i]`` (``pairing`` as the classification
  mixers, default ``"roll"``); own instances come first, then the partner's. ``p`` is the
  probability that an image is mixed (per image; an unmixed image keeps its targets, boxes of zero
  area removed). Randomness goes through ``generator`` (default: the global torch seed).

The result is a :class:`~mixlab.core.result.MixResult`: ``(images, targets)`` with ``lam`` (the
pixel fraction of each image's own pixels; Mixup's λ), ``index``, ``source_targets`` (the input
targets) and, for the box mixers, ``boxes`` (the pasted regions, (B, 4) int64).
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.boxes import (
    clipped_boxes,
    kept_fraction,
    label_resize_mode,
    mask_boxes,
    rand_boxes,
    rand_boxes_inside,
    resize_paste,
)
from mixlab.core.checks import check_alpha, check_choice, check_nonnegative, check_probability, check_range
from mixlab.core.lam import sample_lambda
from mixlab.core.pairing import PAIRINGS, pair_index
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.mixers.base import partner_of, unpack_batch
from mixlab.mixers.cutmix import cutmix_images
from mixlab.mixers.mixup import mixup_images

__all__ = [
    "INSTANCE_KEYS",
    "DetectionBatch",
    "DetectionMixer",
    "DetectionCutMix",
    "DetectionResizeMix",
    "DetectionMixup",
    "read_detection_batch",
    "check_detection_targets",
    "to_xyxy",
    "from_xyxy",
    "select_instances",
    "concat_instances",
    "keep_visible",
    "hide_instances",
    "crop_instances",
    "transform_instances",
    "place_masks",
    "resize_image",
    "sanitize",
    "mask_bytes",
]

#: per-instance keys of a target dict (indexed with the boxes); every other key describes the image
INSTANCE_KEYS = ("labels", "masks", "weights", "iscrowd", "area")
_FORMATS = ("XYXY", "XYWH", "CXCYWH")


# ----------------------------------------------------------------------------- formats and checks
def to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    """(N, 4) boxes in ``fmt`` (``"XYXY"``, ``"XYWH"``, ``"CXCYWH"``) as XYXY."""
    if fmt == "XYXY":
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if fmt == "XYWH":
        return torch.stack([a, b, a + c, b + d], dim=-1)
    return torch.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], dim=-1)


def from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    """XYXY (N, 4) boxes in ``fmt``."""
    if fmt == "XYXY":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "XYWH":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def _tv_tensors():
    """torchvision's ``tv_tensors`` module if torchvision is imported (a tv_tensor exists only then)."""
    return sys.modules.get("torchvision.tv_tensors")


def _box_format(boxes: Tensor) -> str:
    tv = _tv_tensors()
    if tv is not None and isinstance(boxes, tv.BoundingBoxes):
        fmt = boxes.format.name if hasattr(boxes.format, "name") else str(boxes.format)
        if fmt not in _FORMATS:
            raise ValueError(f"boxes must be axis-aligned ({', '.join(_FORMATS)}), got format {fmt}")
        return fmt
    return "XYXY"


def check_detection_targets(targets: Any, batch_size: int, height: int, width: int,
                            need_masks: bool = False) -> None:
    """Targets in torchvision's detection format for B images of (H, W) (module docstring).

    Raises:
        TypeError: not a list/tuple of dicts; boxes not a tensor, labels not integers; masks of a
            non-integer dtype.
        ValueError: a missing key, shapes that disagree (boxes (N, 4), labels (N,), masks
            (N, H, W) of the image's size), a box canvas that is not the image's, boxes outside
            the canvas or with x2 < x1 / y2 < y1, rotated formats, missing masks where needed.
    """
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, dict) for t in targets):
        kind = type(targets).__name__ if not isinstance(targets, (list, tuple)) else \
            f"a {type(targets).__name__} holding {sorted({type(t).__name__ for t in targets})}"
        raise TypeError("targets must be a list of dicts, one per image, each with 'boxes' (N, 4) and 'labels' "
                        f"(N,) (torchvision's detection format), got {kind}")
    if len(targets) != batch_size:
        raise ValueError(f"targets must hold one dict per image: {len(targets)} != {batch_size}")
    tv = _tv_tensors()
    for i, t in enumerate(targets):
        for key in ("boxes", "labels") + (("masks",) if need_masks else ()):
            if key not in t:
                need = " (Copy-Paste pastes instances by their masks)" if key == "masks" else ""
                raise ValueError(f"targets[{i}] has no {key!r}{need}; it has {sorted(t)}")
        boxes, labels = t["boxes"], t["labels"]
        fmt = _box_format(boxes) if isinstance(boxes, Tensor) else "XYXY"
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"targets[{i}]['boxes'] must be a (N, 4) tensor (tv_tensors.BoundingBoxes), got {shape}")
        n = boxes.shape[0]
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"targets[{i}]['labels'] must be an integer tensor (N,), got "
                            f"{labels.dtype if isinstance(labels, Tensor) else type(labels).__name__}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"targets[{i}]['labels'] must have shape ({n},), one per box, got {tuple(labels.shape)}")
        if tv is not None and isinstance(boxes, tv.BoundingBoxes) and tuple(boxes.canvas_size) != (height, width):
            raise ValueError(f"targets[{i}]['boxes'] has canvas_size {tuple(boxes.canvas_size)}, its image is "
                             f"{(height, width)}")
        xyxy = to_xyxy(boxes.as_subclass(Tensor).double(), fmt)
        bad = (xyxy[:, 0] < 0) | (xyxy[:, 1] < 0) | (xyxy[:, 2] > width) | (xyxy[:, 3] > height) \
            | (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(f"targets[{i}]['boxes'][{k}] = {[round(v, 2) for v in xyxy[k].tolist()]} (XYXY) lies "
                             f"outside the canvas (H, W) = {(height, width)} or has x2 < x1 / y2 < y1; clamp the boxes "
                             "first (v2.ClampBoundingBoxes) or fix their format")
        masks = t.get("masks")
        if masks is not None:
            if not isinstance(masks, Tensor) or tuple(masks.shape) != (n, height, width):
                shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
                raise ValueError(f"targets[{i}]['masks'] must be (N, H, W) = {(n, height, width)}, one per box, of "
                                 f"the image's size, got {shape}")
            if masks.is_floating_point() or masks.is_complex():
                raise TypeError(f"targets[{i}]['masks'] must be bool or uint8 instance masks, got {masks.dtype}")
        weights = t.get("weights")
        if weights is not None and (not isinstance(weights, Tensor) or tuple(weights.shape) != (n,)):
            raise ValueError(f"targets[{i}]['weights'] must be a tensor of shape ({n},)")


class DetectionBatch:
    """A detection batch as plain tensors (a (B, C, H, W) stack, XYXY float boxes, plain masks),
    with what it takes to give results back in the input's types (:meth:`write`).

    Attributes:
        images: (B, C, H, W) plain tensor (a view of the input batch, or a stack of the list).
        targets: B dicts of plain tensors, boxes XYXY in the images' float dtype (float32 for
            integer boxes), zero-area boxes kept (the mixers drop them).
    """

    def __init__(self, images: Tensor, targets: list[dict], container: type | None, image_types: list[type],
                 box_kinds: list[tuple[type, str, torch.dtype]], mask_types: list[type | None]) -> None:
        self.images, self.targets = images, targets
        self._container, self._image_types = container, image_types
        self._box_kinds, self._mask_types = box_kinds, mask_types

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def write(self, images: Tensor, targets: list[dict]) -> tuple[Any, list[dict]]:
        """``(images, targets)`` in the input's types: the container (a tensor, or a list/tuple of
        (C, H, W)), tv_tensors subclasses, box formats and dtypes; boxes on the images' canvas."""
        h, w = images.shape[-2:]
        tv = _tv_tensors()
        out_targets = []
        for t, (box_type, fmt, dtype), mask_type in zip(targets, self._box_kinds, self._mask_types):
            t = dict(t)
            boxes = from_xyxy(t["boxes"], fmt).to(dtype)
            if tv is not None and box_type is tv.BoundingBoxes:
                boxes = tv.BoundingBoxes(boxes, format=fmt, canvas_size=(h, w))
            t["boxes"] = boxes
            if "masks" in t and mask_type is not None and mask_type is not Tensor:
                t["masks"] = t["masks"].as_subclass(mask_type)
            out_targets.append(t)
        if self._container is None:
            kind = self._image_types[0]
            return (images if kind is Tensor else images.as_subclass(kind)), out_targets
        rows = [img if kind is Tensor else img.as_subclass(kind) for img, kind in zip(images.unbind(0), self._image_types)]
        return self._container(rows), out_targets


def read_detection_batch(images: Any, targets: Any, need_masks: bool = False) -> DetectionBatch:
    """Check a detection batch and read it as plain tensors (:class:`DetectionBatch`).

    Raises:
        TypeError, ValueError: images not a (B, C, H, W) tensor or a list of same-size (C, H, W)
            tensors; targets as :func:`check_detection_targets` says.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W) or a list of (C, H, W), got shape {tuple(images.shape)}")
        container, stack, types = None, images.as_subclass(Tensor), [type(images)]
    elif isinstance(images, (list, tuple)) and images and all(isinstance(x, Tensor) and x.ndim == 3 for x in images):
        sizes = {tuple(x.shape) for x in images}
        if len(sizes) != 1:
            raise ValueError(f"a detection batch mixer needs images of one size (resize them first), got {sorted(sizes)}")
        container, types = type(images), [type(x) for x in images]
        stack = torch.stack([x.as_subclass(Tensor) for x in images])
    else:
        raise TypeError("images must be a (B, C, H, W) tensor or a non-empty list of (C, H, W) tensors, got "
                        f"{type(images).__name__}")
    if not (stack.is_floating_point() or stack.dtype == torch.uint8):
        raise TypeError(f"images must be floating-point or uint8, got {stack.dtype}")
    b, _, h, w = stack.shape
    check_detection_targets(targets, b, h, w, need_masks)
    fdtype = stack.dtype if stack.is_floating_point() else torch.float32
    plain, box_kinds, mask_types = [], [], []
    for t in targets:
        boxes = t["boxes"]
        fmt = _box_format(boxes)
        out = {k: (v.as_subclass(Tensor) if isinstance(v, Tensor) else v) for k, v in t.items()}
        out["boxes"] = to_xyxy(boxes.as_subclass(Tensor).to(fdtype), fmt)
        plain.append(out)
        box_kinds.append((type(boxes), fmt, boxes.dtype if boxes.is_floating_point() else fdtype))
        mask_types.append(type(t["masks"]) if "masks" in t else None)
    return DetectionBatch(stack, plain, container, types, box_kinds, mask_types)


# ----------------------------------------------------------------------------- instance operations
def select_instances(target: dict, keep: Tensor) -> dict:
    """The target with only the instances where ``keep`` (N,) is True (per-instance keys indexed)."""
    return {k: (v[keep] if k == "boxes" or (k in INSTANCE_KEYS and isinstance(v, Tensor)) else v)
            for k, v in target.items()}


def concat_instances(own: dict, partner: dict) -> dict:
    """Own instances, then the partner's; other keys from ``own``. A per-instance key present in
    only one of them is filled in for the other (``weights``: 1, ``iscrowd``: 0, ``area``: box area).

    Raises:
        ValueError: masks in one target and not the other.
    """
    if ("masks" in own) != ("masks" in partner):
        raise ValueError("either every target has 'masks' or none does: the masks of mixed instances must stay "
                         "one per box")
    out = dict(own)
    out["boxes"] = torch.cat([own["boxes"], partner["boxes"]])
    for key in INSTANCE_KEYS:
        if key not in own and key not in partner:
            continue
        parts = [own.get(key), partner.get(key)]
        for j, (t, other) in enumerate(((own, partner), (partner, own))):
            if parts[j] is None:
                parts[j] = _filler(key, t["boxes"], other[key])
        out[key] = torch.cat(parts)
    return out


def _filler(key: str, boxes: Tensor, like: Tensor) -> Tensor:
    n = boxes.shape[0]
    if key == "area":
        return _box_area(boxes).to(like.dtype)
    value = 1 if key == "weights" else 0
    return torch.full((n, *like.shape[1:]), value, dtype=like.dtype, device=like.device)


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def keep_visible(boxes: Tensor, visible: Tensor, max_occlusion: float, min_size: float) -> Tensor:
    """(N,) bool: the instances that stay (module docstring): visible fraction > 0 and
    >= 1 - ``max_occlusion``, box sides >= ``min_size`` and > 0."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (visible > 0) & (visible >= 1.0 - max_occlusion - 1e-9) & (w >= min_size) & (h >= min_size) \
        & (w > 0) & (h > 0)


def _rect_overlap(boxes: Tensor, rect: Sequence[float]) -> Tensor:
    x1, y1, x2, y2 = rect
    w = (torch.minimum(boxes[:, 2], boxes.new_tensor(x2)) - torch.maximum(boxes[:, 0], boxes.new_tensor(x1))).clamp_min(0)
    h = (torch.minimum(boxes[:, 3], boxes.new_tensor(y2)) - torch.maximum(boxes[:, 1], boxes.new_tensor(y1))).clamp_min(0)
    return w * h


def _fraction(part: Tensor, whole: Tensor) -> Tensor:
    return torch.where(whole > 0, part / whole.clamp_min(1e-12), torch.zeros_like(part))


def _recount(target: dict, boxes: Tensor, masks: Tensor | None, visible: Tensor, max_occlusion: float,
             min_size: float) -> dict:
    """The target with new boxes (and masks), filtered by :func:`keep_visible`; ``area`` recomputed."""
    out = dict(target)
    out["boxes"] = boxes
    if masks is not None:
        out["masks"] = masks
    if "area" in out:
        area = _count(masks) if masks is not None else _box_area(boxes)
        out["area"] = area.to(out["area"].dtype)
    return select_instances(out, keep_visible(boxes, visible, max_occlusion, min_size))


def mask_bytes(masks: Tensor) -> Tensor:
    """Bool or integer masks as a 0/1 uint8 view or copy (uint8 reductions are fast; bool ones are not)."""
    return masks.view(torch.uint8) if masks.dtype == torch.bool else masks.ne(0).view(torch.uint8)


def _count(masks: Tensor) -> Tensor:
    """(N,) int64 pixel count of (N, H, W) masks."""
    return mask_bytes(masks).flatten(1).sum(1, dtype=torch.int32).long()


def _mask_update(target: dict, boxes: Tensor, rect: Sequence[float] | None = None, inside: bool = False,
                 occluder: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The masks left after an occlusion, the boxes of those that lost pixels recomputed from what
    is left, and each instance's visible fraction of pixels (1 for an empty mask, which is then
    judged by its box alone). What stays: inside the integer rectangle ``rect`` (``inside=True``),
    outside it (``False``), or outside the (H, W) bool ``occluder``. Rectangles touch only their
    region of the masks."""
    masks = target["masks"]
    pixels = _count(masks)
    if occluder is not None:
        visible_masks = masks & ~occluder.to(masks.dtype) if masks.dtype != torch.bool else masks & ~occluder
    else:
        h, w = masks.shape[-2:]
        x1, y1 = max(math.floor(rect[0]), 0), max(math.floor(rect[1]), 0)
        x2, y2 = min(max(math.ceil(rect[2]), x1), w), min(max(math.ceil(rect[3]), y1), h)
        if inside:
            visible_masks = torch.zeros_like(masks)
            visible_masks[:, y1:y2, x1:x2] = masks[:, y1:y2, x1:x2]
        else:
            visible_masks = masks.clone()
            visible_masks[:, y1:y2, x1:x2] = 0
    left = _count(visible_masks)
    changed = (left < pixels).nonzero().squeeze(1)
    if changed.numel():
        boxes = boxes.clone()
        boxes[changed] = mask_boxes(visible_masks[changed].bool()).to(boxes.dtype)
    visible = torch.where(pixels > 0, left.double() / pixels.clamp_min(1).double(), 1.0)
    return boxes, visible_masks, visible


def hide_instances(target: dict, rect: Sequence[float] | None, max_occlusion: float, min_size: float,
                   occluder: Tensor | None = None) -> dict:
    """Instances under something pasted over them: the rectangle ``rect`` (x1, y1, x2, y2) of a
    pasted patch, or, with masks, the pixel mask ``occluder`` (H, W) bool of pasted instances.

    Box-only targets need ``rect``: the visible fraction is ``1 - |box ∩ rect| / |box|`` and the
    box is kept as it is. With masks the occluded pixels leave the masks, and boxes that lost
    pixels are recomputed from the visible ones. Then :func:`keep_visible`.
    """
    boxes = target["boxes"]
    if "masks" in target:
        boxes, masks, visible = _mask_update(target, boxes, rect, inside=False, occluder=occluder)
        return _recount(target, boxes, masks, visible, max_occlusion, min_size)
    if rect is None:
        raise ValueError("box-only targets can be occluded by a rectangle only; give instance masks")
    area = _box_area(boxes)
    visible = torch.where(area > 0, 1.0 - _fraction(_rect_overlap(boxes, rect), area), 0.0)
    return _recount(target, boxes, None, visible, max_occlusion, min_size)


def crop_instances(target: dict, rect: Sequence[float], max_occlusion: float, min_size: float) -> dict:
    """Instances seen through the window ``rect`` (x1, y1, x2, y2) (a pasted patch, a mosaic tile
    cut by the canvas): boxes clipped to it, visible fraction ``|box ∩ rect| / |box|`` (with masks:
    of pixels, masks cut to the window, boxes of cut masks recomputed), then :func:`keep_visible`."""
    boxes = target["boxes"]
    x1, y1, x2, y2 = rect
    clipped = torch.stack([boxes[:, 0].clamp(x1, x2), boxes[:, 1].clamp(y1, y2),
                           boxes[:, 2].clamp(x1, x2), boxes[:, 3].clamp(y1, y2)], dim=1)
    if "masks" in target:
        clipped, masks, visible = _mask_update(target, clipped, rect, inside=True)
        return _recount(target, clipped, masks, visible, max_occlusion, min_size)
    area = _box_area(boxes)
    visible = torch.where(area > 0, _fraction(_box_area(clipped), area), 0.0)
    return _recount(target, clipped, None, visible, max_occlusion, min_size)


def transform_instances(target: dict, scale: tuple[float, float], offset: tuple[float, float],
                        canvas: tuple[int, int], region: Sequence[int], mode: str = "bilinear") -> dict:
    """Instances of an image scaled by ``scale`` (sx, sy) and shifted by ``offset`` (ox, oy) onto a
    canvas (H, W): ``x' = ox + sx·x``, ``y' = oy + sy·y`` (not clipped: see :func:`crop_instances`).
    Masks are resized by nearest neighbour into ``region`` (x1, y1, x2, y2), the integer rectangle
    the resized image occupies on the canvas (it may stick out of it: that part is cut), with the
    nearest mode that follows the image's resize ``mode`` (:func:`~mixlab.core.boxes.label_resize_mode`)."""
    out = dict(target)
    sx, sy = scale
    ox, oy = offset
    b = target["boxes"]
    out["boxes"] = torch.stack([b[:, 0] * sx + ox, b[:, 1] * sy + oy, b[:, 2] * sx + ox, b[:, 3] * sy + oy], dim=1)
    if "masks" in target:
        out["masks"] = place_masks(target["masks"], region, canvas, mode)
    return out


def resize_image(image: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(C, h, w) -> (C, th, tw): ``"bilinear"`` (antialiased, ``align_corners=False``) or
    ``"nearest"`` (pixel centres); integer images resampled in float32 and rounded back."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    x = image.unsqueeze(0)
    x = x if x.is_floating_point() else x.float()
    if mode == "bilinear":
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(x, size=size, mode="nearest-exact")
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255)
    return out.squeeze(0).to(image.dtype)


def place_masks(masks: Tensor, region: Sequence[int], canvas: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(N, h, w) masks resized by nearest neighbour into the integer ``region`` (x1, y1, x2, y2) of
    an (H, W) canvas of zeros, with the nearest mode that follows the image's resize ``mode``
    (:func:`~mixlab.core.boxes.label_resize_mode`: pixel centres, or the legacy nearest); the
    part of the region outside the canvas is cut. Only the region is resampled."""
    n = masks.shape[0]
    hc, wc = canvas
    x1, y1, x2, y2 = (int(v) for v in region)
    out = masks.new_zeros(n, hc, wc)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, wc), min(y2, hc)
    if n == 0 or cx2 <= cx1 or cy2 <= cy1:
        return out
    torch_mode = "nearest" if label_resize_mode(mode) == "nearest-legacy" else "nearest-exact"
    small = masks.unsqueeze(1).to(torch.uint8)
    if (y2 - y1, x2 - x1) != tuple(masks.shape[-2:]):
        small = F.interpolate(small, size=(y2 - y1, x2 - x1), mode=torch_mode)
    out[:, cy1:cy2, cx1:cx2] = small[:, 0, cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1].to(masks.dtype)
    return out


# ----------------------------------------------------------------------------- the mixers
class DetectionMixer(ABC):
    """The template of the pairwise detection mixers: check and read the batch, draw the pairing,
    the per-image ``p`` coins and the mixer's parameters (:meth:`make_params`), then apply them
    (:meth:`mix`: the pixels, vectorised where the mixer allows, and the targets image by image).

    Args:
        p: probability that an image is mixed (per image).
        pairing: ``"roll"`` (default), ``"flip"`` or ``"random"`` (:mod:`mixlab.core.pairing`).
        max_occlusion: instances with more than this fraction hidden or cut off are dropped (module
            docstring); 1.0 drops only the fully hidden ones.
        min_size: the smallest box side kept, in pixels (default 1).
        generator: ``torch.Generator`` for all randomness (default: the global torch seed).
    """

    name = "detection-mixer"
    need_masks = False

    def __init__(self, *, p: float = 1.0, pairing: str = "roll", max_occlusion: float = 0.8,
                 min_size: float = 1.0, generator: torch.Generator | None = None) -> None:
        self.p = check_probability(p, "p")
        self.pairing = check_choice(pairing, "pairing", PAIRINGS)
        self.max_occlusion = check_probability(max_occlusion, "max_occlusion")
        self.min_size = check_nonnegative(min_size, "min_size")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    @abstractmethod
    def make_params(self, batch: DetectionBatch, index: Tensor, mixed: Tensor) -> dict:
        """Draw this batch's parameters; ``mixed`` (B,) bool says which images the ``p`` coin mixes."""

    @abstractmethod
    def mix(self, batch: DetectionBatch, index: Tensor, mixed: Tensor, params: dict
            ) -> tuple[Tensor, Tensor, list[dict], Tensor | None]:
        """Apply the parameters: ``(images (B, C, H, W), λ (B,) the fraction of each image's own
        pixels, B plain targets, per-pixel own-weight mask (B, 1, H, W) or None)``."""

    def each_target(self, batch: DetectionBatch, index: Tensor, mixed: Tensor, fn) -> list[dict]:
        """``fn(own, partner, i)`` for every mixed image i, the sanitized own target for the others."""
        return [fn(batch.targets[i], batch.targets[j], i) if bool(mixed[i]) else sanitize(batch.targets[i], self.min_size)
                for i, j in enumerate(index.tolist())]

    def __call__(self, images: Any, targets: Any = None) -> MixResult:
        """Mix a detection batch: ``images, targets = mixer(images, targets)`` (or the pair packed).

        Raises:
            TypeError, ValueError: bad images or targets (:func:`check_detection_targets`), before
                anything is written.
        """
        images, targets = unpack_batch(images, targets)
        batch = read_detection_batch(images, targets, self.need_masks)
        b = batch.batch_size
        boxes = mask = None
        if b < 2 or self.p == 0.0:
            index, mixed = torch.arange(b), torch.zeros(b, dtype=torch.bool)
            out_images, lam = batch.images, torch.ones(b)
            out_targets = [sanitize(t, self.min_size) for t in batch.targets]
        else:
            index = pair_index(b, self.pairing, self.generator)
            mixed = rand((b,), self.generator) < self.p if self.p < 1.0 else torch.ones(b, dtype=torch.bool)
            params = self.make_params(batch, index, mixed)
            out_images, lam, out_targets, mask = self.mix(batch, index, mixed, params)
            boxes = params.get("boxes")
        images_out, targets_out = batch.write(out_images, out_targets)
        index = torch.where(mixed, index, torch.arange(b))
        return MixResult(images_out, targets_out, lam, index, list(targets), mask=mask, boxes=boxes)

    def _hyper_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._hyper_repr()
        return (f"{type(self).__name__}({extra + ', ' if extra else ''}p={self.p}, pairing={self.pairing!r}, "
                f"max_occlusion={self.max_occlusion}, min_size={self.min_size})")


def sanitize(target: dict, min_size: float) -> dict:
    """An unmixed target: boxes of zero area (or below ``min_size``) removed."""
    boxes = target["boxes"]
    return select_instances(target, keep_visible(boxes, boxes.new_ones(boxes.shape[0]), 1.0, min_size))


class DetectionCutMix(DetectionMixer):
    """CutMix for detection (Yun et al. 2019's box, on box targets).

    Per image, λ ~ Beta(α, α) and a box of area fraction 1 - λ (CutMix's: side √(1-λ) of each
    image side, uniform centre, clipped; :func:`mixlab.core.boxes.rand_boxes`) is cut from the
    partner and pasted at the same place. The partner's instances inside the box are kept, clipped
    to it (:func:`crop_instances`); the image's own instances under it are dropped when occluded
    above ``max_occlusion`` (:func:`hide_instances`). ``lam`` is the exact kept pixel fraction.

    Args:
        alpha: α of Beta(α, α) (default 1.0, CutMix's).
        **kwargs: ``p``, ``pairing``, ``max_occlusion`` (default 0.8), ``min_size``,
            ``generator`` (:class:`DetectionMixer`).

    Example:
        >>> images, targets = DetectionCutMix()(images, targets)  # doctest: +SKIP
    """

    name = "detection-cutmix"

    def __init__(self, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, batch: DetectionBatch, index: Tensor, mixed: Tensor) -> dict:
        b, h, w = batch.batch_size, *batch.images.shape[-2:]
        lam = sample_lambda(b, self.alpha, "elem", generator=self.generator)
        boxes = rand_boxes(torch.where(mixed, 1.0 - lam.double(), 0.0), h, w, generator=self.generator)
        return {"boxes": boxes}

    def mix(self, batch: DetectionBatch, index: Tensor, mixed: Tensor, params: dict):
        images, boxes = batch.images, params["boxes"]
        out = cutmix_images(images, index.to(images.device), boxes.to(images.device))

        def targets(own: dict, partner: dict, i: int) -> dict:
            rect = boxes[i].tolist()
            return concat_instances(hide_instances(own, rect, self.max_occlusion, self.min_size),
                                    crop_instances(partner, rect, self.max_occlusion, self.min_size))

        return out, kept_fraction(boxes, *images.shape[-2:]), self.each_target(batch, index, mixed, targets), None

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"


class DetectionResizeMix(DetectionMixer):
    """ResizeMix for detection (Qin et al. 2020): the whole partner image is resized into a box.

    Per image, the side scale τ ~ U(τ_min, τ_max) and the box as :class:`~mixlab.mixers.ResizeMix`
    draws it (``box="clip"``: openmixup's box, clipped, so the partner is squeezed into what is
    left; ``"inside"``: the box lies fully inside). The partner's boxes are scaled by the box's
    sides over the image's and shifted to its corner, ``x' = x1 + x·(x2-x1)/W``, exactly where the
    resize puts their pixels (masks resized by nearest neighbour); own instances under the box
    are dropped when occluded above ``max_occlusion``.

    Args:
        scale: (τ_min, τ_max) in (0, 1] (default (0.1, 0.8), the paper's).
        box: ``"clip"`` (default) or ``"inside"``.
        interpolation: the image resize, ``"bilinear"`` (default), ``"nearest"`` or
            ``"nearest-legacy"`` (:data:`mixlab.core.boxes.RESIZE_MODES`).
        **kwargs: ``p``, ``pairing``, ``max_occlusion`` (default 0.8), ``min_size``, ``generator``.
    """

    name = "detection-resizemix"

    def __init__(self, scale: tuple[float, float] = (0.1, 0.8), box: str = "clip", interpolation: str = "bilinear",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = check_range(scale, "scale", 0.0, 1.0)
        if self.scale[0] <= 0.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        self.box = check_choice(box, "box", ("clip", "inside"))
        self.interpolation = check_choice(interpolation, "interpolation", ("bilinear", "nearest", "nearest-legacy"))

    def make_params(self, batch: DetectionBatch, index: Tensor, mixed: Tensor) -> dict:
        b, h, w = batch.batch_size, *batch.images.shape[-2:]
        tau = self.scale[0] + (self.scale[1] - self.scale[0]) * rand((b,), self.generator)
        tau = torch.where(mixed, tau, 0.0)
        draw = clipped_boxes if self.box == "clip" else rand_boxes_inside
        return {"boxes": draw(tau, h, w, generator=self.generator)}

    def mix(self, batch: DetectionBatch, index: Tensor, mixed: Tensor, params: dict):
        images, boxes = batch.images, params["boxes"]
        h, w = images.shape[-2:]
        partner_images = partner_of(images, index.to(images.device), self.pairing)
        out = resize_paste(images, partner_images, boxes.to(images.device), self.interpolation)

        def targets(own: dict, partner: dict, i: int) -> dict:
            rect = x1, y1, x2, y2 = boxes[i].tolist()
            placed = transform_instances(partner, ((x2 - x1) / w, (y2 - y1) / h), (x1, y1), (h, w), rect,
                                         self.interpolation)
            return concat_instances(hide_instances(own, rect, self.max_occlusion, self.min_size),
                                    crop_instances(placed, rect, self.max_occlusion, self.min_size))

        return out, kept_fraction(boxes, h, w), self.each_target(batch, index, mixed, targets), None

    def _hyper_repr(self) -> str:
        return f"scale={self.scale}, box={self.box!r}, interpolation={self.interpolation!r}"


class DetectionMixup(DetectionMixer):
    """Mixup for detection, as the YOLO family does it (YOLOv5/ultralytics ``MixUp``, YOLOX): the
    images are blended, ``λ·x_i + (1-λ)·x_j``, and the targets are the union of both images'
    instances, each with a loss weight in ``"weights"``: λ for the image's own boxes, 1 - λ for the
    partner's (times any weights they had; Zhang et al. 2019, "Bag of Freebies for Training Object
    Detection Neural Networks", weight the boxes' losses so). Instances of weight 0 (the partner of
    an unmixed image) are dropped. Every output target has ``"weights"``.

    Args:
        alpha: λ ~ Beta(α, α); default 32.0, ultralytics' (λ ≈ 0.5 ± 0.06; YOLOX uses 0.5).
        **kwargs: ``p``, ``pairing``, ``min_size``, ``generator`` (:class:`DetectionMixer`;
            ``max_occlusion`` does not apply: nothing is hidden).
    """

    name = "detection-mixup"

    def __init__(self, alpha: float = 32.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, batch: DetectionBatch, index: Tensor, mixed: Tensor) -> dict:
        lam = sample_lambda(batch.batch_size, self.alpha, "elem", generator=self.generator)
        return {"lam": torch.where(mixed, lam, 1.0)}

    def mix(self, batch: DetectionBatch, index: Tensor, mixed: Tensor, params: dict):
        images = batch.images
        lam = params["lam"].to(images.dtype).float() if images.is_floating_point() else params["lam"]
        out = mixup_images(images, index.to(images.device), lam.to(images.device))

        def targets(own: dict, partner: dict, i: int) -> dict:
            parts = []
            for t, weight in ((own, float(lam[i])), (partner, 1.0 - float(lam[i]))):
                t = dict(t)
                t["weights"] = _weights(t) * weight
                parts.append(select_instances(t, keep_visible(t["boxes"], t["weights"].double(), 1.0, self.min_size)))
            return concat_instances(*parts)

        return out, lam, self.each_target(batch, index, mixed, targets), None

    def __call__(self, images: Any, targets: Any = None) -> MixResult:
        result = super().__call__(images, targets)
        for t in result.targets:  # unmixed images too: one format for the whole batch
            t.setdefault("weights", _weights(t))
        return result

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"


def _weights(target: dict) -> Tensor:
    """A target's per-box weights (1 where it has none)."""
    boxes = target["boxes"]
    return target.get("weights", torch.ones(boxes.shape[0], dtype=torch.float32, device=boxes.device))
