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
    "RESIZE_MODES",
    "box_tensors",
    "clipped_box",
    "clipped_boxes",
    "rand_box",
    "rand_boxes",
    "rand_boxes_inside",
    "box_area_fraction",
    "kept_fraction",
    "boxes_to_mask",
    "paste_boxes",
    "resize_into_boxes",
    "resize_paste",
    "resize_paste_labels",
    "label_resize_mode",
    "mask_boxes",
]


def rand_boxes(
    area: Tensor,
    height: int,
    width: int,
    centers: Tensor | None = None,
    generator: torch.Generator | None = None,
    exact_side: bool = False,
) -> Tensor:
    """CutMix boxes: side √area of each image side, uniform centre, clipped to the image.

    Args:
        area: (B,) target area fractions in [0, 1] (CutMix: 1 - λ).
        height, width: image size; boxes scale each side (H ≠ W is fine).
        centers: optional (B, 2) float ``(cx, cy)`` pixel centres (SaliencyMix); default uniform.
        generator: randomness for the centres.
        exact_side: see :func:`clipped_boxes`.

    Returns:
        (B, 4) int64 boxes on ``area``'s device. Clipping can make the box smaller than asked;
        use :func:`box_area_fraction` for the exact fraction.
    """
    return clipped_boxes(area.double().clamp(0, 1).sqrt(), height, width, centers, generator, exact_side)


def clipped_boxes(
    side: Tensor,
    height: int,
    width: int,
    centers: Tensor | None = None,
    generator: torch.Generator | None = None,
    exact_side: bool = False,
) -> Tensor:
    """Boxes of ``int(side·H) × int(side·W)`` pixels around uniform integer centres, clipped to the image.

    The CutMix reference code's box (Yun et al. 2019), also openmixup's ResizeMix box (``side`` = τ):
    ``[c - cut//2, c + cut//2)``, so an odd ``cut`` loses one pixel. ``exact_side=True`` is timm's
    ``rand_bbox``: ``[c - cut//2, c + (cut+1)//2)``, ``cut`` pixels before clipping. Computed in
    float64, exactly as :func:`rand_box`'s Python arithmetic.

    Args:
        side: (B,) side fractions in [0, 1].
        centers: optional (B, 2) float ``(cx, cy)`` pixel centres; default uniform, drawn with
            ``generator``.

    Returns:
        (B, 4) int64 boxes on ``side``'s device.
    """
    b = side.shape[0]
    ratio = side.double()
    cut_h = (height * ratio).long()  # int() truncation, as the reference code
    cut_w = (width * ratio).long()
    if centers is None:
        u = rand((b, 2), generator, device=side.device).double()
        cx = (u[:, 0] * width).long()
        cy = (u[:, 1] * height).long()
    else:
        cx, cy = centers[:, 0].long(), centers[:, 1].long()
    up_w = (cut_w + 1) // 2 if exact_side else cut_w // 2
    up_h = (cut_h + 1) // 2 if exact_side else cut_h // 2
    x1 = (cx - cut_w // 2).clamp(0, width)
    x2 = (cx + up_w).clamp(0, width)
    y1 = (cy - cut_h // 2).clamp(0, height)
    y2 = (cy + up_h).clamp(0, height)
    return torch.stack([x1, y1, x2, y2], dim=1)


def clipped_box(
    side: float, height: int, width: int, generator: torch.Generator | None = None, exact_side: bool = False
) -> tuple[int, int, int, int]:
    """One :func:`clipped_boxes` box ``(x1, y1, x2, y2)`` as Python ints, from the same draws with
    the same float64 arithmetic, done in Python (a batch-level box needs no tensor ops)."""
    ratio = float(side)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    u = rand((2,), generator).tolist()
    cx, cy = int(u[0] * width), int(u[1] * height)
    up_w, up_h = ((cut_w + 1) // 2, (cut_h + 1) // 2) if exact_side else (cut_w // 2, cut_h // 2)
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return clip(cx - cut_w // 2, width), clip(cy - cut_h // 2, height), clip(cx + up_w, width), clip(cy + up_h, height)


def rand_box(area: float, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """One CutMix box ``(x1, y1, x2, y2)`` as Python ints: :func:`rand_boxes` for a single box
    (``area`` a Python float or a one-element tensor, read as float64)."""
    return clipped_box(math.sqrt(min(max(float(area), 0.0), 1.0)), height, width, generator)


def box_tensors(box: tuple[int, int, int, int], batch_size: int, height: int, width: int,
                device=None) -> tuple[Tensor, Tensor]:
    """A batch's one box of Python ints as a mixer reports it: (B,) float32 kept fraction (its
    exact λ, :func:`kept_fraction`) and (B, 4) int64 boxes, on ``device`` without a host wait."""
    x1, y1, x2, y2 = box
    lam = torch.full((batch_size,), 1.0 - max(x2 - x1, 0) * max(y2 - y1, 0) / float(height * width), device=device)
    boxes = torch.tensor(box).to(device, non_blocking=True).expand(batch_size, 4)
    return lam, boxes


def rand_boxes_inside(
    side: Tensor, height: int, width: int, generator: torch.Generator | None = None
) -> Tensor:
    """Boxes of side ``side`` × each image side, placed uniformly so they lie fully inside.

    Args:
        side: (B,) side fractions in [0, 1] (ResizeMix's scale τ).

    Returns:
        (B, 4) int64 boxes with sides ``max(1, round(τ·H))`` × ``max(1, round(τ·W))``, and
        empty boxes where τ = 0.
    """
    b = side.shape[0]
    some = side > 0
    h = torch.where(some, (side.float() * height).round().long().clamp(1, height), 0)
    w = torch.where(some, (side.float() * width).round().long().clamp(1, width), 0)
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


def kept_fraction(boxes: Tensor, height: int, width: int) -> Tensor:
    """(B,) float32 fraction of the image outside each box, ``1 - area / (H·W)`` rounded once
    (computed in float64): a box mixer's exact λ."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    return (1.0 - area.double() / float(height * width)).float()


def boxes_to_mask(
    boxes: Tensor, height: int, width: int, device=None, dtype: torch.dtype = torch.bool
) -> Tensor:
    """(B, 1, H, W) mask, True (1) inside each box."""
    device = boxes.device if device is None else device
    boxes = boxes.to(device)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    x1, y1, x2, y2 = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    inside = ((ys >= y1) & (ys < y2)) & ((xs >= x1) & (xs < x2))  # (B, H, 1) & (B, 1, W) -> (B, H, W)
    return inside.unsqueeze(1).to(dtype)


def paste_boxes(
    images: Tensor, source: Tensor, boxes: tuple[int, int, int, int] | Tensor, out: Tensor | None = None
) -> Tensor:
    """``images`` with box region(s) taken from ``source``, written to ``out`` (may be ``images``).

    ``boxes`` is one ``(x1, y1, x2, y2)`` of Python ints shared by the batch, with ``source`` the
    (B, C, y2-y1, x2-x1) patch (only the box is written); or (B, 4) per-sample boxes (or (1, 4),
    one box for all), with ``source`` a full (B, C, H, W) batch whose pixels inside each box are
    taken. Any dtype; keeps the memory format (channels_last). Differentiable when ``out`` is
    ``None``.
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
        return torch.where(mask, source, images)
    return torch.where(mask, source, images, out=out)


#: how :func:`resize_into_boxes` and :func:`resize_paste` resample: ``F.interpolate``'s
#: ``"nearest-exact"``, its legacy ``"nearest"``, ``"bilinear"`` with ``align_corners=False`` or with
#: ``align_corners=True`` (RecursiveMix's authors' ResizeFill)
RESIZE_MODES = ("nearest", "nearest-legacy", "bilinear", "bilinear-align-corners")


def _nearest_sources(dst: Tensor, start: Tensor, size: Tensor, n_src: int, mode: str) -> Tensor:
    """Source index of each canvas pixel ``dst`` for boxes starting at ``start`` of ``size`` pixels
    (B, N): pixel centres (``F.interpolate``'s ``"nearest-exact"``) or its legacy ``"nearest"``,
    ``floor(i · (in/out))`` in float32 as its kernel computes it."""
    offset = dst - start
    if mode == "nearest":
        src = ((offset + 0.5) * n_src / size).floor()
    else:
        scale = torch.full_like(size, n_src, dtype=torch.float32) / size  # float32 in/out, as the kernel
        src = (offset.float() * scale).floor()
    return src.long().clamp(0, n_src - 1)


def resize_into_boxes(source: Tensor, boxes: Tensor, height: int, width: int, mode: str = "bilinear") -> Tensor:
    """Each whole ``source[i]`` resized into ``boxes[i]`` of an (H, W) canvas, vectorised.

    Every sample may have a different box size: ``"bilinear"`` is one ``grid_sample`` call with a
    per-sample affine grid, ``"nearest"``/``"nearest-legacy"`` two integer gathers. Values
    outside the boxes are unspecified (combine with :func:`boxes_to_mask`). The sampling matches
    ``F.interpolate`` of the source to the box size: ``"bilinear"`` (``align_corners=False``),
    ``"nearest"`` is its ``"nearest-exact"`` (pixel centres), ``"nearest-legacy"`` its
    ``"nearest"``. Integer images are resampled in float32 and rounded.

    Args:
        source: (B, C, h, w) images to shrink or enlarge.
        boxes: (B, 4) target boxes in the (H, W) canvas.
        mode: one of :data:`RESIZE_MODES`.

    Returns:
        (B, C, H, W) canvas.
    """
    b, c, h_src, w_src = source.shape
    if mode in ("nearest", "nearest-legacy"):  # integer gathers, no ties to break
        bx = boxes.to(device=source.device)
        ys = torch.arange(height, device=source.device).view(1, -1)
        xs = torch.arange(width, device=source.device).view(1, -1)
        bh = (bx[:, 3] - bx[:, 1]).clamp_min(1).view(-1, 1)
        bw = (bx[:, 2] - bx[:, 0]).clamp_min(1).view(-1, 1)
        src_y = _nearest_sources(ys, bx[:, 1:2], bh, h_src, mode)  # (B, H)
        src_x = _nearest_sources(xs, bx[:, 0:1], bw, w_src, mode)  # (B, W)
        rows = source.gather(2, src_y.view(b, 1, height, 1).expand(b, c, height, w_src))
        return rows.gather(3, src_x.view(b, 1, 1, width).expand(b, c, height, width))
    if mode == "bilinear-align-corners":
        return _resize_align_corners(source, boxes, height, width)
    if mode != "bilinear":
        raise ValueError(f"mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    bx = boxes.to(device=source.device, dtype=torch.float32)
    # box corners in normalised [-1, 1] canvas coordinates (align_corners=False)
    x1 = 2 * bx[:, 0] / width - 1
    x2 = 2 * bx[:, 2] / width - 1
    y1 = 2 * bx[:, 1] / height - 1
    y2 = 2 * bx[:, 3] / height - 1
    hw = ((x2 - x1) / 2).clamp_min(1e-6)
    hh = ((y2 - y1) / 2).clamp_min(1e-6)
    zero = torch.zeros_like(hw)
    theta = torch.stack([torch.stack([1 / hw, zero, -(x1 + x2) / 2 / hw], 1),
                         torch.stack([zero, 1 / hh, -(y1 + y2) / 2 / hh], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
    src = source if source.dtype in (torch.float32, torch.float64) else source.float()
    out = F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return _to_dtype(out, source.dtype)


def _resize_align_corners(source: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Bilinear with ``align_corners=True``, one ``grid_sample`` with per-sample grids: output pixel
    r of a box of side s reads source position r·(h − 1)/(s − 1) (0 when s = 1), as
    ``F.interpolate(source[i], size=box, mode="bilinear", align_corners=True)``."""
    b, c = source.shape[:2]
    bx = boxes.to(device=source.device, dtype=torch.float32)

    def axis(n: int, lo: Tensor, hi: Tensor) -> Tensor:  # (B, n) grid coordinates in [-1, 1]
        t = torch.arange(n, device=source.device, dtype=torch.float32)[None] - lo[:, None]
        side = (hi - lo)[:, None]
        return torch.where(side > 1, 2 * t / (side - 1).clamp_min(1) - 1, torch.full_like(t, -1.0))

    gx, gy = axis(width, bx[:, 0], bx[:, 2]), axis(height, bx[:, 1], bx[:, 3])
    grid = torch.stack([gx[:, None, :].expand(b, height, width), gy[:, :, None].expand(b, height, width)], dim=-1)
    src = source if source.dtype in (torch.float32, torch.float64) else source.float()
    out = F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return _to_dtype(out, source.dtype)


def _to_dtype(resampled: Tensor, dtype: torch.dtype) -> Tensor:
    """Float resampling results back in ``dtype`` (integer images: rounded)."""
    if not dtype.is_floating_point:
        resampled = resampled.round()
    return resampled.to(dtype)


def resize_paste(
    images: Tensor, source: Tensor, boxes: tuple[int, int, int, int] | Tensor, mode: str = "nearest",
    out: Tensor | None = None,
) -> Tensor:
    """``images`` with each whole ``source[i]`` resized into box i (ResizeMix's paste, RecursiveMix's
    ResizeFill), written to ``out`` (may be ``images``).

    ``boxes`` is one ``(x1, y1, x2, y2)`` of Python ints shared by the batch (one ``interpolate``
    call) or (B, 4) int64 per-sample boxes (:func:`resize_into_boxes`), with the same sampling on
    both paths (``mode`` as there). An empty box pastes nothing. Differentiable when ``out`` is
    ``None``.
    """
    h, w = images.shape[-2:]
    if isinstance(boxes, tuple):
        x1, y1, x2, y2 = boxes
        if x2 <= x1 or y2 <= y1:  # nothing to paste (interpolate cannot produce an empty image)
            return images.clone() if out is None else out if out is images else out.copy_(images)
        if mode not in RESIZE_MODES:
            raise ValueError(f"mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
        torch_mode = {"nearest": "nearest-exact", "nearest-legacy": "nearest"}.get(mode, "bilinear")
        corners = {"align_corners": mode == "bilinear-align-corners"} if torch_mode == "bilinear" else {}
        bilinear_int = torch_mode == "bilinear" and not source.is_floating_point()
        small = F.interpolate(source.float() if bilinear_int else source, size=(y2 - y1, x2 - x1),
                              mode=torch_mode, **corners)
        if bilinear_int:
            small = _to_dtype(small, source.dtype)
        return paste_boxes(images, small, boxes, out)
    return paste_boxes(images, resize_into_boxes(source, boxes, h, w, mode=mode), boxes, out)


def label_resize_mode(mode: str) -> str:
    """The nearest-neighbour mode that moves a label map with images resampled by ``mode``: the
    legacy ``"nearest-legacy"`` for it, ``"nearest"`` (pixel centres, the geometry of bilinear with
    ``align_corners=False``) for every other mode. Classes are never blended."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    return "nearest-legacy" if mode == "nearest-legacy" else "nearest"


def resize_paste_labels(
    maps: Tensor, source: Tensor, boxes: tuple[int, int, int, int] | Tensor, mode: str = "nearest"
) -> Tensor:
    """Label maps ``maps`` (B, H, W) with each whole ``source[i]`` (B, h, w) resized into box i by
    nearest neighbour (ResizeMix's and RecursiveMix's paste, for segmentation targets).

    The same sampling as :func:`resize_paste` in the same ``mode`` (``"nearest"`` or
    ``"nearest-legacy"``): a label map pasted with an image's nearest mode sits pixel for pixel under
    the pasted image. Any integer dtype (``F.interpolate`` has no int64 kernel: the map is gathered).
    Returns a new tensor.

    Args:
        maps: (B, H, W) the label maps pasted into.
        source: (B, h, w) the maps to resize into the boxes.
        boxes: one box ``(x1, y1, x2, y2)`` of Python ints for the batch, or (B, 4) int64 (or (1, 4)).
        mode: ``"nearest"`` (pixel centres) or ``"nearest-legacy"``; see :func:`label_resize_mode`.
    """
    if mode not in ("nearest", "nearest-legacy"):
        raise ValueError(f"label maps are resized by nearest neighbour: mode must be 'nearest' or "
                         f"'nearest-legacy', got {mode!r}")
    b, h, w = maps.shape
    if isinstance(boxes, tuple):
        boxes = torch.tensor(boxes).to(maps.device, non_blocking=True).view(1, 4)
    boxes = boxes.to(maps.device).expand(b, 4)
    canvas = resize_into_boxes(source.unsqueeze(1), boxes, h, w, mode=mode).squeeze(1)
    return torch.where(boxes_to_mask(boxes, h, w, device=maps.device).squeeze(1), canvas, maps)


def mask_boxes(mask: Tensor) -> Tensor:
    """Bounding boxes (n, 4) int64 ``(x1, y1, x2, y2)``, half-open, of the True pixels of each
    (n, H, W) mask; ``(0, 0, 0, 0)`` for an empty mask."""
    n, h, w = mask.shape
    byte = mask.view(torch.uint8) if mask.dtype == torch.bool else mask.ne(0).view(torch.uint8)
    rows, cols = byte.amax(dim=2) > 0, byte.amax(dim=1) > 0  # (n, H), (n, W); uint8 max: a fast "any"
    y1 = rows.to(torch.uint8).argmax(dim=1)
    y2 = h - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x1 = cols.to(torch.uint8).argmax(dim=1)
    x2 = w - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).long()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
