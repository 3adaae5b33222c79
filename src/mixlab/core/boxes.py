"""Boxes and masks.

Boxes are int64 tensors (B, 4) of half-open pixel ranges ``(x1, y1, x2, y2)``: rows y1..y2-1 and
columns x1..x2-1. Masks are (B, 1, H, W) tensors built on the images' device by comparing
coordinate ramps with the box corners, never by a loop over the batch.

The *corrected* λ of a box mixer is computed from the clipped integer box, so it is the exact
fraction of pixels each source contributes (Yun et al. 2019's CutMix code does the same).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.random import rand

__all__ = [
    "rand_box",
    "rand_boxes",
    "rand_boxes_inside",
    "box_area_fraction",
    "boxes_to_mask",
    "paste_boxes",
    "resize_into_boxes",
    "resize_paste",
]


def rand_boxes(
    area: Tensor,
    height: int,
    width: int,
    centers: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """CutMix boxes: side √area of each image side, uniform centre, clipped to the image.

    Args:
        area: (B,) target area fractions in [0, 1] (CutMix: 1 - λ).
        height, width: image size; boxes scale each side (H ≠ W is fine).
        centers: optional (B, 2) float ``(cx, cy)`` pixel centres (SaliencyMix); default uniform.
        generator: randomness for the centres.

    Returns:
        (B, 4) int64 boxes on ``area``'s device. Clipping can make the box smaller than asked;
        use :func:`box_area_fraction` for the exact fraction.
    """
    b = area.shape[0]
    ratio = area.float().clamp(0, 1).sqrt()
    cut_h = (height * ratio).long()  # int() truncation, as the reference code
    cut_w = (width * ratio).long()
    if centers is None:
        u = rand((b, 2), generator, device=area.device)
        cx = (u[:, 0] * width).long()
        cy = (u[:, 1] * height).long()
    else:
        cx, cy = centers[:, 0].long(), centers[:, 1].long()
    x1 = (cx - cut_w // 2).clamp(0, width)
    x2 = (cx + cut_w // 2).clamp(0, width)
    y1 = (cy - cut_h // 2).clamp(0, height)
    y2 = (cy + cut_h // 2).clamp(0, height)
    return torch.stack([x1, y1, x2, y2], dim=1)


def rand_box(area: float, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """One CutMix box ``(x1, y1, x2, y2)`` as Python ints: :func:`rand_boxes` for a single box,
    with the arithmetic done in Python (a batch-level box needs no tensor ops)."""
    ratio = math.sqrt(min(max(float(area), 0.0), 1.0))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    u = rand((2,), generator).tolist()
    cx, cy = int(u[0] * width), int(u[1] * height)
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return clip(cx - cut_w // 2, width), clip(cy - cut_h // 2, height), clip(cx + cut_w // 2, width), clip(cy + cut_h // 2, height)


def rand_boxes_inside(
    side: Tensor, height: int, width: int, generator: torch.Generator | None = None
) -> Tensor:
    """Boxes of side ``side`` × each image side, placed uniformly so they lie fully inside.

    Args:
        side: (B,) side fractions in (0, 1] (ResizeMix's scale τ).

    Returns:
        (B, 4) int64 boxes with sides ``max(1, round(τ·H))`` × ``max(1, round(τ·W))``.
    """
    b = side.shape[0]
    h = (side.float() * height).round().long().clamp(1, height)
    w = (side.float() * width).round().long().clamp(1, width)
    u = rand((b, 2), generator, device=side.device)
    x1 = (u[:, 0] * (width - w + 1)).long().clamp(max=width - 1)
    y1 = (u[:, 1] * (height - h + 1)).long().clamp(max=height - 1)
    x1 = torch.minimum(x1, width - w)
    y1 = torch.minimum(y1, height - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def box_area_fraction(boxes: Tensor, height: int, width: int) -> Tensor:
    """Exact fraction (B,) float32 of the image each box covers."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    return area.float() / float(height * width)


def boxes_to_mask(
    boxes: Tensor, height: int, width: int, device=None, dtype: torch.dtype = torch.bool
) -> Tensor:
    """(B, 1, H, W) mask, True (1) inside each box."""
    device = boxes.device if device is None else device
    boxes = boxes.to(device)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    x1, y1, x2, y2 = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    inside = (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)  # (B, H, W)
    return inside.unsqueeze(1).to(dtype)


def paste_boxes(
    images: Tensor, source: Tensor, boxes: tuple[int, int, int, int] | Tensor, out: Tensor | None = None
) -> Tensor:
    """``images`` with box region(s) taken from ``source``, written to ``out`` (may be ``images``).

    ``boxes`` is one ``(x1, y1, x2, y2)`` of Python ints shared by the batch, with ``source`` the
    (B, C, y2-y1, x2-x1) patch (only the box is written); or (B, 4) per-sample boxes, with
    ``source`` a full (B, C, H, W) batch whose pixels inside each box are taken. Keeps the memory
    format (channels_last).
    """
    if isinstance(boxes, tuple):
        x1, y1, x2, y2 = boxes
        if out is None:
            out = images.clone()
        elif out is not images:
            out.copy_(images)
        out[:, :, y1:y2, x1:x2] = source
        return out
    mask = boxes_to_mask(boxes, images.shape[-2], images.shape[-1], device=images.device)
    if out is None:
        out = torch.empty_like(images)
    return torch.where(mask, source, images, out=out)


def resize_into_boxes(source: Tensor, boxes: Tensor, height: int, width: int, mode: str = "bilinear") -> Tensor:
    """Each whole ``source[i]`` resized into ``boxes[i]`` of an (H, W) canvas, vectorised.

    Every sample may have a different box size: ``"bilinear"`` is one ``grid_sample`` call with a
    per-sample affine grid, ``"nearest"`` two integer gathers. Values outside the boxes are
    unspecified (combine with :func:`boxes_to_mask`). The sampling matches ``F.interpolate`` of
    the source to the box size (``"bilinear"``, ``align_corners=False``; ``"nearest-exact"``).

    Args:
        source: (B, C, h, w) images to shrink or enlarge.
        boxes: (B, 4) target boxes in the (H, W) canvas.
        mode: ``"nearest"`` or ``"bilinear"``.

    Returns:
        (B, C, H, W) canvas.
    """
    b, c, h_src, w_src = source.shape
    if mode == "nearest":  # integer gathers: exactly F.interpolate(mode="nearest-exact"), no ties to break
        bx = boxes.to(device=source.device)
        ys = torch.arange(height, device=source.device).view(1, -1)
        xs = torch.arange(width, device=source.device).view(1, -1)
        bh = (bx[:, 3] - bx[:, 1]).clamp_min(1).view(-1, 1)
        bw = (bx[:, 2] - bx[:, 0]).clamp_min(1).view(-1, 1)
        src_y = ((ys - bx[:, 1:2] + 0.5) * h_src / bh).floor().long().clamp(0, h_src - 1)  # (B, H)
        src_x = ((xs - bx[:, 0:1] + 0.5) * w_src / bw).floor().long().clamp(0, w_src - 1)  # (B, W)
        rows = source.gather(2, src_y.view(b, 1, height, 1).expand(b, c, height, w_src))
        return rows.gather(3, src_x.view(b, 1, 1, width).expand(b, c, height, width))
    if mode != "bilinear":
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    bx = boxes.to(device=source.device, dtype=torch.float32)
    # box corners in normalised [-1, 1] canvas coordinates (align_corners=False)
    x1 = 2 * bx[:, 0] / width - 1
    x2 = 2 * bx[:, 2] / width - 1
    y1 = 2 * bx[:, 1] / height - 1
    y2 = 2 * bx[:, 3] / height - 1
    hw = ((x2 - x1) / 2).clamp_min(1e-6)
    hh = ((y2 - y1) / 2).clamp_min(1e-6)
    theta = torch.zeros(b, 2, 3, device=source.device, dtype=torch.float32)
    theta[:, 0, 0] = 1 / hw
    theta[:, 0, 2] = -(x1 + x2) / 2 / hw
    theta[:, 1, 1] = 1 / hh
    theta[:, 1, 2] = -(y1 + y2) / 2 / hh
    grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
    src = source if source.dtype in (torch.float32, torch.float64) else source.float()
    out = F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(source.dtype)


def resize_paste(
    images: Tensor, source: Tensor, boxes: tuple[int, int, int, int] | Tensor, mode: str = "nearest",
    out: Tensor | None = None,
) -> Tensor:
    """``images`` with each whole ``source[i]`` resized into box i (ResizeMix's paste, RecursiveMix's
    ResizeFill), written to ``out`` (may be ``images``).

    ``boxes`` is one ``(x1, y1, x2, y2)`` of Python ints shared by the batch (one ``interpolate``
    call) or (B, 4) int64 per-sample boxes (:func:`resize_into_boxes`). ``"nearest"`` samples at
    pixel centres (``F.interpolate``'s ``"nearest-exact"``) on both paths; ``"bilinear"`` uses
    ``align_corners=False``. An empty box pastes nothing.
    """
    h, w = images.shape[-2:]
    if isinstance(boxes, tuple):
        x1, y1, x2, y2 = boxes
        if x2 <= x1 or y2 <= y1:  # nothing to paste (interpolate cannot produce an empty image)
            return images.clone() if out is None else out if out is images else out.copy_(images)
        small = F.interpolate(source, size=(y2 - y1, x2 - x1), mode="nearest-exact" if mode == "nearest" else mode)
        return paste_boxes(images, small, boxes, out)
    return paste_boxes(images, resize_into_boxes(source, boxes, h, w, mode=mode), boxes, out)
