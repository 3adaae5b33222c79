"""Batched augmentation kernels: every image of a batch with its own parameters, on the batch's device.

The functional twins of the per-image ``torchvision.transforms.v2`` operations the training
recipes use, for (B, C, H, W) batches: random-resized-crop boxes (:func:`sample_crop_boxes`),
crop + resize (:func:`resized_crops`), colour jitter (:func:`color_jitter` and its four
operations), grayscale, Gaussian blur, solarisation, channel permutation, and :func:`apply_to`,
which runs an operation on the samples a per-sample flag selects. Each takes explicit per-sample
parameters and holds no randomness (the samplers of :mod:`mixlab.transforms.device` draw them), so
the per-image path and the batched path can be compared on the same parameters.

Colour operations take float images in [0, 1] and follow torchvision's float kernels
(``v2.functional.adjust_brightness`` ... ``gaussian_blur``), which they equal up to float
rounding (tested). They are written here rather than taken from torchvision because torchvision's
functional ops take one Python number per call (a batch with per-sample factors would be B calls:
``benchmarks/device_augment.py`` measures the difference) and kornia, which has per-sample
factors, is not a dependency. :mod:`mixlab.evaluation.corruptions` takes its HSV conversion and
Gaussian kernels from here.

Resampling. :func:`resized_crops` resizes uint8 crops on the CPU with ATen's uint8 kernel, crop by
crop, and otherwise every crop with separable per-sample weight matrices
built exactly as ATen's ``interpolate`` builds its weights (bilinear, bicubic, with or without
antialiasing; :func:`axis_taps`), applied with two batched matrix products: it equals
``v2.functional.resized_crop`` on float images up to float rounding for every crop size, up- or
downscaled (tested), with no ``roi_align`` / ``grid_sample`` approximation at the crop edges or in
the antialiasing. (``torchvision.ops.roi_align(aligned=True)`` samples bilinearly at the same
points when upscaling but reads the pixels just outside the crop at its edges, where
``resized_crop`` clamps to the crop, and its adaptive box average is not the triangle/cubic
antialiasing filter; ``F.grid_sample`` cannot antialias.) ``"nearest"`` is two integer gathers
(exact).

Randomness never happens here; host-side parameters (the samplers' CPU tensors) let
:func:`apply_to` pick its samples without waiting for the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.random import generator_device
from mixlab.transforms.cropmix import ATTEMPTS

__all__ = [
    "GRAY_WEIGHTS",
    "ATEN_MIN_PIXELS",
    "sample_crop_boxes",
    "axis_taps",
    "resized_crops",
    "apply_to",
    "permute_channels",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "grayscale",
    "solarize",
    "gaussian_kernels",
    "separable_filter",
    "gaussian_blur",
]

#: ITU-R 601 luma weights of torchvision's ``rgb_to_grayscale`` (R, G, B)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
_RESIZE_MODES = ("nearest", "bilinear", "bicubic")
#: uint8 crops on the CPU larger than this (output pixels) go through ATen's kernel crop by crop; the
#: batched matrices are faster below (128 crops, one thread: matrices / ATen 3.2 / 4.6 ms at 32², 14 / 7.5 ms at 64²)
ATEN_MIN_PIXELS = 48 * 48


# ------------------------------------------------------------------------------ crop boxes
def sample_crop_boxes(
    lo: Tensor, hi: Tensor, height: int | Tensor, width: int | Tensor, ratio: tuple[float, float],
    generator: torch.Generator | None = None, attempts: int = ATTEMPTS,
) -> Tensor:
    """RandomResizedCrop parameters for M crops at once, each with its own scale range and image size.

    torchvision's sampler, vectorised: ``attempts`` tries per crop, each an area fraction
    U(lo, hi) of the image and a log-uniform aspect ratio; the first try with 0 < w <= W and
    0 < h <= H wins (sides rounded half to even, as Python's ``round``) and is placed uniformly;
    a crop with no valid try falls back to the centred crop of the whole image clipped to ``ratio``.
    Every try is drawn (torchvision stops at the first valid one), so the two agree in
    distribution, not draw for draw.

    Args:
        lo, hi: (M,) float scale bounds (area fractions).
        height, width: the source image size, one for all crops or (M,) integer tensors (images
            of a padded batch, each its own size).
        ratio: aspect-ratio range (width / height).
        generator: randomness (default: the global torch RNG); draws happen on its device.

    Returns:
        (M, 4) int64 ``(top, left, h, w)`` on the generator's device.
    """
    dev = generator_device(generator)
    m = lo.shape[0]
    lo = lo.to(dev, torch.float64).view(m, 1)
    hi = hi.to(dev, torch.float64).view(m, 1)
    img_h = torch.as_tensor(height, device=dev).to(torch.float64).expand(m).reshape(m, 1)
    img_w = torch.as_tensor(width, device=dev).to(torch.float64).expand(m).reshape(m, 1)
    u = torch.rand(m, attempts, 2, generator=generator, device=dev, dtype=torch.float64)
    target = img_h * img_w * (lo + (hi - lo) * u[..., 0])  # (M, attempts) pixels
    log_r0, log_r1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_r0 + (log_r1 - log_r0) * u[..., 1])
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w >= 1) & (w <= img_w) & (h >= 1) & (h <= img_h)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid attempt
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    img_h, img_w = img_h.squeeze(1), img_w.squeeze(1)
    in_ratio = img_w / img_h  # torchvision's fallback: the whole image clipped to the ratio range
    fh = torch.where(in_ratio < ratio[0], (img_w / ratio[0]).round(), img_h)
    fw = torch.where(in_ratio > ratio[1], (img_h * ratio[1]).round(), img_w)
    w = torch.where(found, w, fw).long()
    h = torch.where(found, h, fh).long()
    img_h, img_w = img_h.long(), img_w.long()
    pos = torch.rand(m, 2, generator=generator, device=dev, dtype=torch.float64)
    top = torch.minimum((pos[:, 0] * (img_h - h + 1)).long(), img_h - h)
    left = torch.minimum((pos[:, 1] * (img_w - w + 1)).long(), img_w - w)
    top = torch.where(found, top, (img_h - h) // 2)
    left = torch.where(found, left, (img_w - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


# ------------------------------------------------------------------------------ resampling
def _cubic(x: Tensor, a: float) -> Tensor:
    """Keys' cubic convolution kernel with parameter ``a`` (ATen: -0.75, its antialiased and PIL's: -0.5)."""
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def axis_taps(length: Tensor, out: int, interpolation: str, antialias: bool) -> tuple[Tensor, Tensor]:
    """The source taps and weights of resizing M segments of ``length`` pixels to ``out`` pixels
    along one axis, as ATen's ``interpolate`` computes them (``align_corners=False``).

    * without antialiasing: bilinear reads ``src = (i + ½)·length/out − ½`` clamped at 0, pixels
      ⌊src⌋ and ⌊src⌋ + 1 (the last pixel repeated at the end); bicubic the 4 pixels around the
      unclamped ``src`` with Keys' a = −0.75, indices clamped to the segment;
    * with antialiasing (``_upsample_*_aa``, PIL's filters): scale s = length/out, support
      ``k/2·max(s, 1)`` (k = 2 bilinear, 4 bicubic), centre c = s·(i + ½), the pixels
      j ∈ [⌊c − support + ½⌋, ⌊c + support + ½⌋) ∩ [0, length) weighted by the triangle (bilinear)
      or Keys a = −0.5 (bicubic) filter of ``(j − c + ½)/max(s, 1)``, normalised to sum 1.

    Args:
        length: (M,) integer segment lengths (>= 1).
        out: output pixels.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        antialias: as ``v2.functional.resize``'s.

    Returns:
        ``(index, weight)``: (M, out, K) int64 tap positions in [0, length) and float64 weights
        (zero for unused taps), on ``length``'s device.
    """
    dev = length.device
    size = length.to(torch.float64).view(-1, 1, 1)  # (M, 1, 1)
    last = length.view(-1, 1, 1).long() - 1
    i = torch.arange(out, device=dev, dtype=torch.float64).view(1, out, 1)
    scale = size / out
    if antialias:
        half = 1.0 if interpolation == "bilinear" else 2.0
        support = torch.where(scale >= 1.0, half * scale, torch.full_like(scale, half))
        span = 2.0 * half * max(float(length.max()) / out, 1.0) if length.numel() else 0.0
        k = int(math.ceil(span)) + 2
        centre = scale * (i + 0.5)
        lo = (centre - support + 0.5).trunc().clamp_min(0.0)
        hi = torch.minimum((centre + support + 0.5).trunc(), size)
        j = lo + torch.arange(k, device=dev, dtype=torch.float64).view(1, 1, k)  # (M, out, K)
        x = (j - centre + 0.5) / torch.where(scale >= 1.0, scale, torch.ones_like(scale))
        w = (1.0 - x.abs()).clamp_min(0.0) if interpolation == "bilinear" else _cubic(x, -0.5)
        w = torch.where(j < hi, w, torch.zeros_like(w))
        total = w.sum(dim=-1, keepdim=True)
        w = w / torch.where(total != 0, total, torch.ones_like(total))
        return torch.minimum(j.long(), last), w
    src = (i + 0.5) * scale - 0.5  # (M, out, 1)
    if interpolation == "bilinear":
        src = src.clamp_min(0.0)
        i0 = src.floor()
        frac = src - i0
        j = i0.long() + torch.arange(2, device=dev).view(1, 1, 2)
        return torch.minimum(j, last), torch.cat([1.0 - frac, frac], dim=-1)
    i0 = src.floor()
    t = src - i0
    j = i0.long() + torch.arange(-1, 3, device=dev).view(1, 1, 4)
    w = torch.cat([_cubic(t + 1.0, -0.75), _cubic(t, -0.75), _cubic(1.0 - t, -0.75), _cubic(2.0 - t, -0.75)], -1)
    return j.clamp(min=0).minimum(last), w


def _resample_matrices(start: Tensor, length: Tensor, out: int, full: int, interpolation: str, antialias: bool,
                       flip: Tensor | None, gain: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(M, out, full) dense matrices: row i of matrix m holds the weights of output pixel i of
    segment m over the ``full`` pixels of its image axis (mirrored rows where ``flip``), times ``gain``."""
    index, weight = axis_taps(length, out, interpolation, antialias)
    index = index + start.view(-1, 1, 1).long()
    if flip is not None:
        mirror = flip.view(-1, 1, 1).to(index.device)
        index = torch.where(mirror, index.flip(1), index)
        weight = torch.where(mirror, weight.flip(1), weight)
    index = index.to(device, non_blocking=True)
    weight = (weight * gain).to(device=device, dtype=dtype, non_blocking=True)
    return torch.zeros(index.shape[0], out, full, device=device, dtype=dtype).scatter_add_(2, index, weight)


def resized_crops(images: Tensor, boxes: Tensor, size: tuple[int, int], interpolation: str = "bilinear",
                  antialias: bool = False, flip: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Crop N boxes of every image and resize each to ``size``: ``v2.functional.resized_crop`` for
    a whole batch, with per-crop boxes and optional horizontal flips.

    Bilinear and bicubic crops are two batched matrix products with :func:`axis_taps`' weights
    (the order, rows or columns first, that costs fewer multiplications; ``backend="matrix"``), or,
    for uint8 images on the CPU, ATen's own vectorised uint8 kernel crop by crop
    (``backend="aten"``, the ``"auto"`` choice there for outputs over :data:`ATEN_MIN_PIXELS`):
    the per-image ``resized_crop`` exactly, each view rounded to uint8 as the per-image transform
    rounds it, and about 4x faster than the dense matrices at 256² -> 224² on one core. ``"nearest"`` (never
    antialiased, as torchvision) is two integer gathers, ``src = ⌊dst·length/out⌋``. Boxes must lie
    inside the images; pixels outside a box are never read (a zero-padded batch of images of
    several sizes is fine).

    Args:
        images: (B, C, H, W) uint8 (read as x / 255) or float.
        boxes: (B, N, 4) integer ``(top, left, h, w)``; host (CPU) tensors build the weights
            without waiting for the device.
        size: output ``(h, w)``.
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        antialias: as ``resized_crop``'s (only bilinear and bicubic downscaling use it).
        flip: optional (B, N) bool: mirror those crops left-right (``v2.functional.hflip`` of the
            result, at no cost).
        backend: ``"auto"`` (``"aten"`` for uint8 images on the CPU and outputs over
            :data:`ATEN_MIN_PIXELS`, else ``"matrix"``),
            ``"matrix"`` or ``"aten"`` (bilinear and bicubic only; one kernel call per crop, with
            the boxes read on the host: meant for the CPU).

    Returns:
        (B, N, C, h, w) float (float32 for uint8 input, else the input dtype; a view of a
        contiguous tensor), in [0, 1] for uint8 input.

    Raises:
        ValueError: a bad ``interpolation`` or a batch of the wrong rank.
    """
    if interpolation not in _RESIZE_MODES:
        raise ValueError(f"interpolation must be one of {list(_RESIZE_MODES)}, got {interpolation!r}")
    if backend not in ("auto", "matrix", "aten"):
        raise ValueError(f"backend must be 'auto', 'matrix' or 'aten', got {backend!r}")
    if images.ndim != 4 or boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != images.shape[0]:
        raise ValueError(f"images must be (B, C, H, W) and boxes (B, N, 4), got {tuple(images.shape)} and "
                         f"{tuple(boxes.shape)}")
    b, c, height, width = images.shape
    n = boxes.shape[1]
    oh, ow = size
    dev = images.device
    dtype = images.dtype if images.is_floating_point() else torch.float32
    gain = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    if interpolation == "nearest":  # F.interpolate's src = floor(dst · in/out), exactly
        top, left, ch, cw = boxes.to(device=dev, dtype=torch.long, non_blocking=True).unbind(-1)  # (B, N) each
        ys = torch.arange(oh, device=dev, dtype=torch.float32)
        xs = torch.arange(ow, device=dev, dtype=torch.float32)
        rows = top.unsqueeze(-1) + (ys * (ch.unsqueeze(-1).float() / oh)).long().minimum(ch.unsqueeze(-1) - 1)
        cols = left.unsqueeze(-1) + (xs * (cw.unsqueeze(-1).float() / ow)).long().minimum(cw.unsqueeze(-1) - 1)
        if flip is not None:
            cols = torch.where(flip.to(dev, non_blocking=True).unsqueeze(-1), cols.flip(-1), cols)
        src = images.unsqueeze(1).expand(b, n, c, height, width)
        picked = src.gather(3, rows.view(b, n, 1, oh, 1).expand(b, n, c, oh, width))
        out = picked.gather(4, cols.view(b, n, 1, 1, ow).expand(b, n, c, oh, ow))
        return out.to(dtype) * gain if gain != 1.0 else out.to(dtype)
    host = boxes.to("cpu", torch.long).reshape(b * n, 4)
    flips = None if flip is None else flip.to("cpu").reshape(b * n)
    if backend == "aten" or (backend == "auto" and dev.type == "cpu" and images.dtype == torch.uint8
                             and oh * ow > ATEN_MIN_PIXELS):
        return _aten_resized_crops(images, host, flips, (oh, ow), interpolation, antialias).view(b, n, c, oh, ow)
    ry = _resample_matrices(host[:, 0], host[:, 2], oh, height, interpolation, antialias, None, gain, dev, dtype)
    rx = _resample_matrices(host[:, 1], host[:, 3], ow, width, interpolation, antialias, flips, 1.0, dev, dtype)
    x = images.to(dtype)
    if height * ow * (width + oh) <= oh * width * (height + ow):  # columns first: (B, C·H, W) @ (B, W, N·w)
        t = torch.bmm(x.reshape(b, c * height, width), rx.view(b, n * ow, width).transpose(1, 2))
        t = t.view(b, c, height, n, ow).permute(0, 3, 2, 1, 4).reshape(b * n, height, c * ow)
        out = torch.bmm(ry, t)  # (B·N, h, C·w)
    else:  # rows first: (B, N·h, H) @ (B, H, C·W)
        t = torch.bmm(ry.view(b, n * oh, height), x.permute(0, 2, 1, 3).reshape(b, height, c * width))
        out = torch.bmm(t.view(b * n, oh * c, width), rx.transpose(1, 2))  # (B·N, h·C, w)
    return out.view(b, n, oh, c, ow).permute(0, 1, 3, 2, 4)


def _aten_resized_crops(images: Tensor, boxes: Tensor, flips: Tensor | None, size: tuple[int, int],
                        interpolation: str, antialias: bool) -> Tensor:
    """:func:`resized_crops` crop by crop through ``F.interpolate`` (``boxes``: (B·N, 4) host),
    each crop converted to float while it is in cache."""
    b, c = images.shape[:2]
    per_image = boxes.shape[0] // b
    uint8 = images.dtype == torch.uint8
    out = torch.empty(boxes.shape[0], c, *size, dtype=torch.float32 if uint8 else images.dtype, device=images.device)
    mirrored = [False] * boxes.shape[0] if flips is None else flips.tolist()
    for i, (top, left, h, w) in enumerate(boxes.tolist()):  # host boxes: no device wait
        crop = images[i // per_image, None, :, top:top + h, left:left + w]
        view = F.interpolate(crop, size=size, mode=interpolation, align_corners=False, antialias=antialias)[0]
        view = view.flip(-1) if mirrored[i] else view
        if uint8:
            torch.mul(view, 1.0 / 255.0, out=out[i])
        else:
            out[i].copy_(view)
    return out


# ------------------------------------------------------------------------------ per-sample selection
def apply_to(x: Tensor, flags: Tensor | None, fn: Callable[..., Tensor], *args: Any, inplace: bool = False) -> Tensor:
    """``fn`` on the samples where ``flags`` is True: ``fn(x[flags], *[a[flags] for a in args])``
    written back at their rows; the others pass unchanged.

    Only the selected samples are computed (a ``RandomApply`` with p = 0.5 costs half a pass).
    ``flags`` on the host picks them without waiting for the device; per-sample ``args`` are
    indexed on their own devices.

    Args:
        x: (B, ...) batch.
        flags: (B,) bool, or ``None`` for every sample.
        fn: ``fn(subset, *subset_args) -> tensor`` of the subset's shape.
        args: per-sample tensors (B, ...), or anything else, passed as it is.
        inplace: write into ``x`` (the caller's own buffer) instead of a copy.
    """
    if flags is None:
        return fn(x, *args)
    idx = flags.nonzero().squeeze(1)  # on the host: no wait
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, *args)
    per_sample = [isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == x.shape[0] for a in args]
    subset_args = [a[idx.to(a.device, non_blocking=True)] if own else a for a, own in zip(args, per_sample)]
    rows = idx.to(x.device, non_blocking=True)
    out = fn(x.index_select(0, rows), *subset_args)
    return x.index_copy_(0, rows, out) if inplace else x.index_copy(0, rows, out)


def permute_channels(x: Tensor, perm: Tensor) -> Tensor:
    """``x[b, perm[b]]`` for each sample: (B, C, H, W) and (B, C) int64 permutations."""
    b, c, h, w = x.shape
    return x.gather(1, perm.to(x.device, non_blocking=True).view(b, c, 1, 1).expand(b, c, h, w))


# ------------------------------------------------------------------------------ colour
def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(..., 1, H, W) luma of (..., 3, H, W) RGB (:data:`GRAY_WEIGHTS`, torchvision's); C = 1 returned as is."""
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """RGB (..., 3, H, W) in [0, 1] to HSV, H, S, V in [0, 1] (H in turns; grey pixels get H = S = 0),
    as ``skimage.color.rgb2hsv`` and torchvision's ``_rgb_to_hsv`` (same ties: red, then green).

    H = ((G − B), 2Δ + (B − R) or 4Δ + (R − G)) / Δ / 6 mod 1 by the largest channel, Δ = max − min
    (a grey pixel's numerator is 0, so H = 0 with Δ read as 1); S = Δ / V (0 where V = 0)."""
    r, g, b = rgb.unbind(dim=-3)
    low, v = torch.aminmax(rgb, dim=-3)
    delta = v - low
    hue = torch.where(r == v, g - b,
                      torch.where(g == v, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0)))
    hue = hue.div_(torch.where(delta == 0, torch.ones_like(delta), delta)).div_(6.0).remainder_(1.0)
    sat = delta.div_(torch.where(v == 0, torch.ones_like(v), v))
    return torch.stack((hue, sat, v), dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel n of (R, G, B) is ``V − V·S·clamp(min(k, 4 − k), 0, 1)``
    with ``k = (n' + 6H) mod 6``, n' = 5, 3, 1."""
    h, s, v = hsv.unsqueeze(-3).unbind(dim=-4)  # (..., 1, H, W) each
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(s).neg_().add_(1.0).mul_(v)


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    return f.to(device=x.device, dtype=x.dtype, non_blocking=True).view(-1, 1, 1, 1)


def _blend(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    """``f·a + (1 − f)·b`` clamped to [0, 1] (torchvision's ``_blend``)."""
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(f·x, 0, 1)`` per sample: (B, C, H, W) in [0, 1], (B,) factors."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean luma: ``clamp(f·x + (1 − f)·mean(gray(x)), 0, 1)`` per sample."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the luma image: ``clamp(f·x + (1 − f)·gray(x), 0, 1)``; one channel is returned as is."""
    if x.shape[-3] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), _per_sample(factor, x))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (B,) turns in [−½, ½] (HSV round trip); one channel is returned as is."""
    if x.shape[-3] == 1:
        return x
    hsv = rgb_to_hsv(x)
    h = (hsv[:, :1] + _per_sample(shift, x)).remainder_(1.0)
    return hsv_to_rgb(torch.cat([h, hsv[:, 1:]], dim=1))


def _blend_step(x: Tensor, op: Tensor, factor: Tensor) -> Tensor:
    """One position of the jitter order for samples whose operation there is brightness (0),
    contrast (1) or saturation (2): all three are ``clamp(f·x + (1 − f)·m, 0, 1)`` with m = 0,
    the mean luma or the luma image, so one pass serves the mix of them."""
    gray = rgb_to_grayscale(x)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    op = op.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    target = torch.where(op == 2, gray, torch.where(op == 1, mean, torch.zeros_like(mean)))
    return _blend(x, target, _per_sample(factor, x))


def color_jitter(x: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """``v2.ColorJitter`` with per-sample factors and order, for float images in [0, 1].

    At each of the 4 positions of the order, the samples whose operation is brightness, contrast
    or saturation take one blend pass together (:func:`_blend_step`) and those whose operation is
    the hue take the HSV round trip.

    Args:
        x: (B, C, H, W) float, C = 1 or 3 (saturation and hue leave one channel unchanged, as torchvision).
        order: (B, 4) int64, per sample a permutation of (0 brightness, 1 contrast, 2 saturation,
            3 hue), torchvision's ``fn_idx``; host tensors select without waiting for the device.
        factors: (B, 4) brightness, contrast, saturation factors and the hue shift.

    Returns:
        a new tensor.

    Raises:
        ValueError: not 1 or 3 channels.
    """
    if x.shape[1] not in (1, 3):
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {x.shape[1]}")
    out = x.clone()
    for pos in range(4):
        op = order[:, pos]
        hue = op == 3
        factor = factors.gather(1, op.clamp(max=2).view(-1, 1).to(factors.device)).squeeze(1)
        out = apply_to(out, ~hue, _blend_step, op, factor, inplace=True)
        out = apply_to(out, hue, adjust_hue, factors[:, 3], inplace=True)
    return out


def grayscale(x: Tensor) -> Tensor:
    """Every channel replaced by the luma (``v2.functional.rgb_to_grayscale(x, num_output_channels=C)``)."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


def solarize(x: Tensor, threshold: float) -> Tensor:
    """``1 − x`` where ``x >= threshold``, else ``x`` (images in [0, 1]; uint8's threshold 128 is 128/255)."""
    return torch.where(x >= threshold, 1.0 - x, x)


# ------------------------------------------------------------------------------ blur
def gaussian_kernels(sigma: Tensor, kernel_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(M, k) normalised Gaussian kernels ``exp(−d²/(2σ²))`` over offsets d = −(k−1)/2 .. (k−1)/2,
    one per σ of ``sigma`` (M,), computed in float64 and cast to ``dtype``, on ``sigma``'s device
    (torchvision's ``_get_gaussian_kernel1d``, scipy's ``gaussian_filter`` taps)."""
    d = torch.arange(kernel_size, dtype=torch.float64, device=sigma.device) - (kernel_size - 1) / 2
    s = sigma.to(torch.float64).view(-1, 1)
    k = torch.exp(-0.5 * (d / s) ** 2)
    return (k / k.sum(dim=1, keepdim=True)).to(dtype)


def separable_filter(x: Tensor, kx: Tensor, ky: Tensor, padding_mode: str = "reflect") -> Tensor:
    """Correlate every channel of (B, C, H, W) with ``ky`` down the rows and ``kx`` along them.

    Args:
        kx, ky: odd-length kernels, (k,) for all samples or (B, k) one per sample.
        padding_mode: ``F.pad``'s mode for the borders (``"reflect"``: torchvision's blur;
            ``"replicate"``: scipy's ``mode="nearest"``).

    Returns:
        a new (B, C, H, W) tensor: the 2-D filter ``outer(ky, kx)`` on the padded image, computed
        as two grouped 1-D convolutions.
    """
    b, c, h, w = x.shape
    kx = kx.to(device=x.device, dtype=x.dtype, non_blocking=True)
    ky = ky.to(device=x.device, dtype=x.dtype, non_blocking=True)
    nx, ny = kx.shape[-1], ky.shape[-1]
    padded = F.pad(x, (nx // 2, nx // 2, ny // 2, ny // 2), mode=padding_mode)
    per_sample = kx.ndim == 2 or ky.ndim == 2
    groups = b * c if per_sample else c
    flat = padded.reshape(1, b * c, *padded.shape[-2:]) if per_sample else padded

    def weight(k: Tensor, shape: tuple[int, int]) -> Tensor:
        k = k.expand(b, -1).repeat_interleave(c, 0) if per_sample else k.expand(c, -1)
        return k.reshape(groups, 1, *shape)

    out = F.conv2d(flat, weight(kx, (1, nx)), groups=groups)
    out = F.conv2d(out, weight(ky, (ny, 1)), groups=groups)
    return out.view(b, c, h, w)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """``v2.functional.gaussian_blur(x[b], kernel_size, sigma[b])`` for every sample: a
    ``kernel_size``² Gaussian of the sample's σ (B,), reflected borders, applied separably."""
    k = gaussian_kernels(sigma, kernel_size, x.dtype)
    return separable_filter(x, k, k, "reflect")
