"""CIFAR-10-C style common corruptions in torch (Hendrycks & Dietterich, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations", ICLR 2019).

Every corruption takes a batch of images in pixel space, floats in [0, 1] of shape (..., C, H, W)
(C = 3 for the colour ones), a severity 1..5 and an optional ``torch.Generator``, and returns a new
tensor of the same shape, dtype and device, clamped to [0, 1]. Batches are processed at once on
the images' device (JPEG excepted, see :func:`jpeg_compression`).

    >>> images = torch.rand(8, 3, 32, 32)
    >>> noisy = corrupt(images, "gaussian_noise", 3, generator=torch.Generator().manual_seed(0))

The severity constants are those of the CIFAR reference script (``make_cifar_c.py`` of
hendrycks/robustness); 12 of its 19 corruptions are here. The table of constants with their
source lines, and how the float batches differ from the reference's uint8 images: the
"Corruptions" section of ``docs/guide/evaluation.md``.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.transforms.batched import gaussian_kernels, hsv_to_rgb, rgb_to_hsv, separable_filter

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_PARAMS",
    "brightness",
    "contrast",
    "corrupt",
    "defocus_blur",
    "disk_kernel",
    "gaussian_blur",
    "gaussian_noise",
    "hsv_to_rgb",
    "impulse_noise",
    "jpeg_compression",
    "pixelate",
    "rgb_to_hsv",
    "saturate",
    "shot_noise",
    "speckle_noise",
    "zoom_blur",
]

SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    # np.arange(1, end, 0.01) for end = 1.06, 1.11, 1.16, 1.21, 1.26: 7, 12, 16, 21, 26 entries,
    # computed as NumPy does, 1 + k·((1 + 0.01) - 1), bit for bit (1.25 -> 1.2500000000000002 matters:
    # 26 px · z rounds to 33, not 32)
    "zoom_blur": tuple(tuple(1.0 + k * ((1.0 + 0.01) - 1.0) for k in range(n)) for n in (7, 12, 16, 21, 26)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}
"""Per-corruption parameters for severities 1..5 (index ``severity - 1``), see the module docstring."""


# ----------------------------------------------------------------------------------------------
# Input handling and random numbers


def _start(images: Tensor, severity: int, name: str, colour: bool = False) -> tuple[Tensor, object]:
    """Validate; return the images as a float (N, C, H, W) working tensor and the ``severity`` params."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be floats in [0, 1] (pixel space), got dtype {images.dtype}")
    if images.ndim < 3:
        raise ValueError(f"images must have shape (..., C, H, W), got {tuple(images.shape)}")
    if colour and images.shape[-3] != 3:
        raise ValueError(f"{name} needs RGB images (C = 3), got C = {images.shape[-3]}")
    if isinstance(severity, bool) or not isinstance(severity, int):
        raise TypeError(f"severity must be an int in 1..5, got {type(severity).__name__}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    work = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    return work.reshape(-1, *images.shape[-3:]), SEVERITY_PARAMS[name][severity - 1]


def _finish(out: Tensor, images: Tensor) -> Tensor:
    return out.clamp(0.0, 1.0).reshape(images.shape).to(images.dtype)


def _random(kind: str, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``torch.rand``/``randn`` like ``x``, drawn on the generator's device, returned on ``x``'s."""
    device = generator.device if generator is not None else x.device
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# ----------------------------------------------------------------------------------------------
# Noise


def gaussian_noise(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Additive Gaussian noise ``x + N(0, c²)`` per value, c = 0.04 .. 0.10.

    Same as the reference but for the random source (torch instead of ``np.random.normal``).

    Args:
        images: (..., C, H, W) floats in [0, 1].
        severity: 1..5.
        generator: source of the noise (default: torch's global generator).
    """
    x, c = _start(images, severity, "gaussian_noise")
    return _finish(x + c * _random("normal", x, generator), images)


def shot_noise(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Poisson (photon) noise ``Poisson(c·x) / c``, c = 500 .. 50 photons per unit intensity.

    Same as the reference (``np.random.poisson``) with ``torch.poisson``; the Poisson draw is made on
    the generator's device.
    """
    x, c = _start(images, severity, "shot_noise")
    device = generator.device if generator is not None else x.device
    counts = torch.poisson(x.clamp(min=0.0).to(device) * c, generator=generator).to(x.device)
    return _finish(counts / c, images)


def impulse_noise(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Salt-and-pepper noise: each value independently becomes 0 or 1 (equally likely) with
    probability ``amount`` = 0.01 .. 0.07.

    The reference calls ``skimage.util.random_noise(mode='s&p', amount=c)``. Current scikit-image
    flips each value with a Bernoulli(amount) draw, as here; scikit-image releases of 2018 instead
    drew ``ceil(amount·size/2)`` salt and as many pepper positions with replacement, which flips
    slightly fewer values (duplicates). Values of different channels are flipped independently,
    as in the reference.
    """
    x, c = _start(images, severity, "impulse_noise")
    flipped = _random("uniform", x, generator) < c
    salted = _random("uniform", x, generator) < 0.5
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return _finish(torch.where(flipped & ~salted, torch.zeros_like(x), out), images)


def speckle_noise(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Multiplicative Gaussian noise ``x + x·N(0, c²)``, c = 0.06 .. 0.2 (as the reference)."""
    x, c = _start(images, severity, "speckle_noise")
    return _finish(x + x * c * _random("normal", x, generator), images)


# ----------------------------------------------------------------------------------------------
# Blur


def _filter2d(x: Tensor, kernel: Tensor, padding_mode: str) -> Tensor:
    """Correlate every channel of (N, C, H, W) with a centred odd (kh, kw) kernel, borders padded
    (the defocus disk, which is not separable; separable filters use
    :func:`~mixlab.transforms.batched.separable_filter`)."""
    kh, kw = kernel.shape
    c = x.shape[1]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=padding_mode)
    weight = kernel.to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def gaussian_blur(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with sigma 0.4 .. 1 pixels, channels blurred separately.

    The reference uses ``skimage.filters.gaussian`` (i.e. ``scipy.ndimage.gaussian_filter``,
    ``truncate=4``, ``mode='nearest'``); here the same separable kernel of radius
    ``int(4·sigma + 0.5)`` is applied with ``conv2d`` on replicate-padded images, which reproduces
    it up to float rounding. ``generator`` is unused (deterministic corruption).
    """
    x, sigma = _start(images, severity, "gaussian_blur")
    sigmas = torch.tensor([sigma], dtype=torch.float64, device=x.device)
    k = gaussian_kernels(sigmas, 2 * int(4.0 * sigma + 0.5) + 1, x.dtype)[0]
    return _finish(separable_filter(x, k, k, "replicate"), images)


def disk_kernel(radius: float, alias_blur: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """The reference's anti-aliased disk: a 0/1 disk ``x² + y² <= radius²`` on a (2L+1)² grid
    (L = 8, or ``radius`` when > 8), normalised to sum 1, then blurred with a 3×3 (5×5 when
    ``radius`` > 8) Gaussian of sigma ``alias_blur`` with reflect-101 borders, like
    ``cv2.GaussianBlur``. Rows and columns that are all zero are trimmed (the result is the same
    filter, with less padding needed).

    Returns:
        (k, k) kernel, k odd.
    """
    if radius <= 8:
        offsets, ksize = torch.arange(-8, 9, dtype=torch.float64), 3
    else:
        offsets, ksize = torch.arange(-radius, radius + 1, dtype=torch.float64), 5
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    disk = (xx.square() + yy.square() <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    sigmas = torch.tensor([alias_blur], dtype=torch.float64)
    g = gaussian_kernels(sigmas, ksize, torch.float64)[0]  # cv2.getGaussianKernel(ksize, sigma)
    disk = separable_filter(disk[None, None], g, g, "reflect")[0, 0]
    centre = disk.shape[0] // 2
    nonzero = (disk != 0).any(dim=0).nonzero()
    half = int((nonzero[:, 0] - centre).abs().max())
    return disk[centre - half: centre + half + 1, centre - half: centre + half + 1].to(dtype=dtype, device=device)


def defocus_blur(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Defocus blur: convolution with an anti-aliased disk (:func:`disk_kernel`) of radius
    0.3 .. 1.5 pixels and alias blur 0.4 .. 0.1.

    The reference builds the disk with NumPy and ``cv2.GaussianBlur`` and filters each channel with
    ``cv2.filter2D`` (reflect-101 borders); here the disk is built in torch and applied with one
    grouped ``conv2d`` on reflect-padded images (torch's ``reflect`` is OpenCV's reflect-101), which
    matches up to float rounding. Images must be larger than the kernel's half width (3 px at
    severity 5). ``generator`` is unused.
    """
    x, (radius, alias_blur) = _start(images, severity, "defocus_blur")
    kernel = disk_kernel(radius, alias_blur, dtype=x.dtype, device=x.device)
    return _finish(_filter2d(x, kernel, "reflect"), images)


def _zoom_axis(n: int, z: float) -> tuple[int, int, int, int]:
    """(crop start, crop length, zoomed length, trim start) of the reference's ``clipped_zoom`` on
    one axis of length ``n``: crop ``ceil(n / z)`` centred, zoom to ``round(crop · z)``, keep the
    central ``n``."""
    crop = math.ceil(n / z)
    zoomed = round(crop * z)
    return (n - crop) // 2, crop, zoomed, (zoomed - n) // 2


@functools.lru_cache(maxsize=16)
def _zoom_blur_operator(h: int, w: int, severity: int) -> Tensor:
    """(H·W, H·W) float64 matrix of the whole zoom blur (identity + every clipped zoom), unscaled.

    Each clipped zoom is separable: ``A_z X B_zᵀ`` with (H, H) / (W, W) matrices holding the two
    corner-aligned bilinear taps of every kept output pixel; on row-major flattened images that is
    ``kron(A_z, B_z)``.
    """
    def axis(n: int, z: float) -> Tensor:
        start, crop, zoomed, trim = _zoom_axis(n, z)
        out = torch.arange(trim, trim + n, dtype=torch.float64)
        src = out * (crop - 1) / (zoomed - 1) if zoomed > 1 else torch.zeros_like(out)
        i0 = src.floor().clamp(max=crop - 1)
        frac = src - i0
        i1 = (i0 + 1).clamp(max=crop - 1)
        rows = torch.arange(n)
        a = torch.zeros(n, n, dtype=torch.float64)
        a.index_put_((rows, (i0 + start).long()), 1.0 - frac, accumulate=True)
        a.index_put_((rows, (i1 + start).long()), frac, accumulate=True)
        return a

    op = torch.eye(h * w, dtype=torch.float64)
    for z in SEVERITY_PARAMS["zoom_blur"][severity - 1]:
        op += torch.kron(axis(h, z), axis(w, z))
    return op


_DENSE_ZOOM_MAX_PIXELS = 32 * 32


def zoom_blur(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Zoom blur: the average of the image and its centre zooms by 1.00, 1.01, .. (up to 1.06 ..
    1.25, see :data:`SEVERITY_PARAMS`).

    Each zoom crops the central ``ceil(H / z) × ceil(W / z)`` window, resizes it bilinearly by
    ``z`` to ``round(side · z)`` (corner-aligned, as ``scipy.ndimage.zoom(order=1)`` in the
    reference's ``clipped_zoom``) and keeps the central H × W. For images of up to 32 × 32 pixels
    the whole blur is one precomputed (H·W, H·W) linear operator applied with a single matmul
    (~50× faster than 26 ``interpolate`` calls on a CPU); larger images use ``F.interpolate`` per
    factor. The reference assumes square images (it crops both axes with the row offset); here each
    axis uses its own. ``generator`` is unused.
    """
    x, factors = _start(images, severity, "zoom_blur")
    h, w = x.shape[-2:]
    if h * w <= _DENSE_ZOOM_MAX_PIXELS:
        op = _zoom_blur_operator(h, w, severity).to(device=x.device, dtype=x.dtype)
        total = (x.reshape(*x.shape[:2], h * w) @ op.T).reshape(x.shape)
    else:
        total = x.clone()
        for z in factors:
            top, ch, oh, t = _zoom_axis(h, z)
            left, cw, ow, l = _zoom_axis(w, z)
            crop = x[..., top: top + ch, left: left + cw]
            zoomed = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
            total += zoomed[..., t: t + h, l: l + w]
    return _finish(total / (len(factors) + 1), images)


# ----------------------------------------------------------------------------------------------
# Colour and contrast


def contrast(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Contrast reduction towards each image's per-channel mean: ``(x - μ)·c + μ``, c = 0.75 .. 0.15.

    As the reference (whose mean is per channel over the image). ``generator`` is unused.
    """
    x, c = _start(images, severity, "contrast")
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return _finish((x - mean) * c + mean, images)


def brightness(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Brightness: ``V ← clamp(V + c, 0, 1)`` in HSV, c = 0.05 .. 0.3.

    The reference converts with ``skimage.color.rgb2hsv``/``hsv2rgb`` per image; here
    :func:`rgb_to_hsv`/:func:`hsv_to_rgb` do the same conversions on the batch in torch. RGB only.
    ``generator`` is unused.
    """
    x, c = _start(images, severity, "brightness", colour=True)
    hsv = rgb_to_hsv(x)
    hsv = torch.cat((hsv[..., :2, :, :], (hsv[..., 2:, :, :] + c).clamp(0.0, 1.0)), dim=-3)
    return _finish(hsv_to_rgb(hsv), images)


def saturate(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Saturation change: ``S ← clamp(S·a + b, 0, 1)`` in HSV, (a, b) = (0.3, 0), (0.1, 0),
    (1.5, 0), (2, 0.1), (2.5, 0.2).

    Note that severities 1-2 *desaturate* and 3-5 oversaturate, so the size of the change is not
    monotone in the severity (severity 2 usually changes an image more than 3). HSV in torch as
    :func:`brightness`; RGB only. ``generator`` is unused.
    """
    x, (scale, shift) = _start(images, severity, "saturate", colour=True)
    hsv = rgb_to_hsv(x)
    hsv = torch.cat((hsv[..., :1, :, :], (hsv[..., 1:2, :, :] * scale + shift).clamp(0.0, 1.0),
                     hsv[..., 2:, :, :]), dim=-3)
    return _finish(hsv_to_rgb(hsv), images)


# ----------------------------------------------------------------------------------------------
# Digital


def _box_resize_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_out, n_in) matrix of PIL's ``BOX`` resampling along one axis.

    PIL maps output pixel ``i`` to the input centre ``c = (i + 0.5)·n_in/n_out`` and averages, with
    equal weights, the input pixels ``j`` whose centre lies in ``(c - s/2, c + s/2]``, where
    ``s = max(n_in/n_out, 1)``; for upsampling (s = 1) this is centre-aligned nearest neighbour.
    """
    scale = n_in / n_out
    support = 0.5 * max(scale, 1.0)
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # (n_out,)
    j = torch.arange(n_in, dtype=torch.float64)  # (n_in,)
    lo = torch.floor(centre - support + 0.5).clamp(min=0)[:, None]
    hi = torch.floor(centre + support + 0.5).clamp(max=n_in)[:, None]
    t = (j[None, :] - centre[:, None] + 0.5) / max(scale, 1.0)
    weights = ((j >= lo) & (j < hi) & (t > -0.5) & (t <= 0.5)).to(torch.float64)
    return (weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)).to(dtype=dtype, device=device)


def pixelate(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Pixelation: resize to ``int(H·c) × int(W·c)`` (c = 0.95 .. 0.65) and back, both with PIL's
    ``BOX`` filter, as the reference.

    Both resizes are linear along each axis, so they are built as PIL-exact (H, H) and (W, W)
    matrices and applied as two matmuls on the batch (downsampling = averaging the input pixels
    whose centres fall in the output pixel, upsampling = centre-aligned nearest neighbour). The
    reference hard-codes 32 px and rounds the small image to uint8 between the two resizes; here
    any size works and nothing is quantised. ``generator`` is unused.
    """
    x, c = _start(images, severity, "pixelate")
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    mh = _box_resize_matrix(sh, h, x.dtype, x.device) @ _box_resize_matrix(h, sh, x.dtype, x.device)  # (H, H)
    mw = _box_resize_matrix(sw, w, x.dtype, x.device) @ _box_resize_matrix(w, sw, x.dtype, x.device)  # (W, W)
    return _finish(mh @ x @ mw.T, images)


def _jpeg_torchvision(pixels: Tensor, quality: int) -> Tensor:
    """JPEG round trip of uint8 (N, C, H, W) CPU images with torchvision's libjpeg bindings."""
    from torchvision.io import decode_jpeg, encode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs in favour of torchcodec
        warnings.filterwarnings("ignore", message=".*image decoding and encoding", category=DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(pixels.unbind(0)), quality=quality), device="cpu")
    return torch.stack(decoded)


def _jpeg_pil(pixels: Tensor, quality: int) -> Tensor:
    """The same round trip with PIL, one image at a time (fallback, and the reference's codec)."""
    from PIL import Image

    out = []
    for image in pixels.permute(0, 2, 3, 1).numpy():  # (H, W, C) uint8 each
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        decoded = torch.from_numpy(np.asarray(Image.open(buffer)).copy())
        out.append(decoded.reshape(*decoded.shape[:2], -1).permute(2, 0, 1))
    return torch.stack(out)


def jpeg_compression(images: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """JPEG round trip at quality 80, 65, 58, 50, 40.

    The images are rounded to uint8, encoded and decoded with ``torchvision.io.encode_jpeg`` /
    ``decode_jpeg`` (libjpeg with default settings: 4:2:0 chroma subsampling, like PIL's
    ``save(..., 'JPEG', quality=q)`` in the reference; on the test images the two are bit-identical)
    on the CPU, and moved back to the images' device. The CPU is used even for CUDA tensors so that
    results do not depend on the device (nvJPEG's encoder is a different implementation). If
    torchvision's codecs are missing (it deprecates them from 0.29 on), PIL is used instead, one
    image at a time. C must be 1 or 3. ``generator`` is unused.
    """
    x, quality = _start(images, severity, "jpeg_compression")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg_compression needs 1 or 3 channels, got C = {x.shape[1]}")
    if x.shape[0] == 0:
        return images.clone()
    pixels = (x.detach() * 255.0).round().clamp(0, 255).to(device="cpu", dtype=torch.uint8)  # (N, C, H, W)
    try:
        decoded = _jpeg_torchvision(pixels, quality)
    except (ImportError, AttributeError, RuntimeError):
        decoded = _jpeg_pil(pixels, quality)
    return _finish(decoded.to(device=x.device, dtype=x.dtype) / 255.0, images)


# ----------------------------------------------------------------------------------------------
# Registry

CORRUPTIONS: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "gaussian_blur": gaussian_blur,
    "zoom_blur": zoom_blur,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
"""Name -> ``fn(images01, severity, generator=None)``, in the reference's listing order."""


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Apply the corruption ``name`` at ``severity`` to pixel-space images.

    Args:
        images: (..., C, H, W) floats in [0, 1] (not normalised); not modified.
        name: a key of :data:`CORRUPTIONS`.
        severity: 1..5.
        generator: random source for the noise corruptions (default: torch's global generator);
            the same seeded generator gives the same output.

    Returns:
        a new tensor of the same shape, dtype and device, in [0, 1].

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), severity outside 1..5,
            wrong shape or channel count.
        TypeError: non-float images, non-int severity.

    Example:
        >>> out = corrupt(torch.rand(4, 3, 32, 32), "defocus_blur", 5)
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}. Valid corruptions are {sorted(CORRUPTIONS)}")
    return CORRUPTIONS[name](images, severity, generator=generator)
