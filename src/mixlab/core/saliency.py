"""Static saliency maps of OpenCV contrib's ``saliency`` module, in torch: batched, on the images'
device, without host-device syncs, compile-friendly (the only loop is over the six scales).

SaliencyMix (Uddin et al., ICLR 2021) centres its box on the peak of a saliency map. Both of the
authors' training scripts (github.com/SaliencyMix/SaliencyMix, ``SaliencyMix_CIFAR/saliencymix.py``
and ``SaliencyMix-ImageNet/train.py``, ``saliency_bbox``) and openmixup's
``openmixup/models/augments/saliencymix.py`` call ``cv2.saliency.StaticSaliencyFineGrained_create()``
(Montabone & Soto 2010, "Human detection using a mobile platform and novel features derived from a
visual saliency mechanism"): :func:`fine_grained_saliency`. :func:`spectral_residual_saliency`
(Hou & Zhang, CVPR 2007; OpenCV's ``StaticSaliencySpectralResidual``) is the other static detector.

**Input convention.** Both OpenCV detectors are written for 8-bit images; OpenCV reads a 3-channel
image as BGR. Here images are (B, C, H, W) tensors in torchvision's RGB order, C = 1 or 3:

* ``uint8`` images are the 8-bit input as they are (the result is OpenCV's on the same image in
  BGR order, bit for bit for the fine-grained detector);
* float images are first quantised to it: ``value_range=(lo, hi)`` maps lo..hi to 0..255, rounded
  (half to even, as OpenCV's ``saturate_cast``) and clamped; the default ``None`` maps each image's
  own min..max, which also suits normalised batches (mean/std normalisation is affine per channel).

The grayscale is OpenCV's 8-bit ``COLOR_BGR2GRAY``: ``(3735·B + 19235·G + 9798·R + 2¹⁴) >> 15``
(``RGB2Gray<uchar>`` of ``color_rgb.simd.hpp``, 15-bit fixed point; checked against
opencv-contrib-python 5.1. Older OpenCV used 14-bit coefficients, one gray level apart at a few
pixels in a thousand).

**What the authors' scripts actually compute** (paper vs code). They pass the partner of image 0,
``images[rand_index[0]]``, as a float32 (H, W, 3) array: the *normalised* tensor (ToTensor +
Normalize; ImageNet adds colour jitter and lighting), in RGB order, so ``COLOR_BGR2GRAY`` swaps the
red and blue weights. For a float image OpenCV's ``calcIntensityChannel`` blurs and integrates the
float gray, but reads every centre pixel as ``gray.at<uchar>(y, x)``: byte x of row y of the
float32 buffer (the first W bytes of each row, i.e. the bytes of its first W/4 floats); the on/off
contrast of a byte against the tiny float mean can pass 255 and wrap in the ``(uchar)`` cast. The map
the scripts use is thus a function of the floats' byte patterns, not of the image's local contrast
(``tests/test_saliency.py`` reproduces OpenCV's float output exactly from this reading). On 2000
CIFAR-10 test images its peak is the 8-bit image's fine-grained peak for 0.1 % of them, as often as a
uniformly random pixel (``benchmarks/saliency_fidelity.py``). This module computes what the paper
describes, the fine-grained saliency of the image, by OpenCV's algorithm on its 8-bit input.

Ties: the fine-grained map scales its on and off parts to 255 separately, so several pixels often
share the top level; the authors' ``np.argmax`` takes the first in row-major order, as
``torch.argmax`` of the flattened map does.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.checks import check_choice

__all__ = ["fine_grained_saliency", "spectral_residual_saliency", "saliency_map", "SALIENCY_DETECTORS"]

#: half-sizes n of the centre-surround windows of ``StaticSaliencyFineGrained`` (``neighborhoods``)
FINE_GRAINED_SCALES = (12, 24, 48, 28, 56, 112)
#: OpenCV's ``StaticSaliencySpectralResidual`` works at this size (``resImWidth``, ``resImHeight``)
SPECTRAL_RESIDUAL_SIZE = 64


def _check(images: Tensor, value_range: tuple[float, float] | None, min_side: int) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    if images.shape[-2] < min_side or images.shape[-1] < min_side:
        raise ValueError(f"images must be at least {min_side}x{min_side} pixels, got {tuple(images.shape[-2:])}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    if value_range is None:
        return
    if images.dtype == torch.uint8:
        raise ValueError("value_range applies to float images only; uint8 images are OpenCV's 8-bit input "
                         f"already, got value_range={value_range!r}")
    if (not isinstance(value_range, (tuple, list)) or len(value_range) != 2
            or not all(isinstance(v, Real) and not isinstance(v, bool) for v in value_range)
            or not float(value_range[0]) < float(value_range[1])):
        raise ValueError(f"value_range must be None or a pair (lo, hi) of numbers with lo < hi, got {value_range!r}")


def _gray_levels(images: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    """(B, H, W) int32 gray levels 0..255: OpenCV's 8-bit input and its ``COLOR_BGR2GRAY``."""
    if images.dtype == torch.uint8:
        q = images.to(torch.int32)
    else:
        x = images.float()
        if value_range is None:
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            scale = 255.0 / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)  # flat image: all 0
        else:
            lo, scale = float(value_range[0]), 255.0 / (float(value_range[1]) - float(value_range[0]))
        q = ((x - lo) * scale).round().clamp(0, 255).to(torch.int32)
    if q.shape[1] == 1:
        return q[:, 0]
    r, g, b = q[:, 0], q[:, 1], q[:, 2]
    return (b * 3735 + g * 19235 + r * 9798 + (1 << 14)) >> 15


def _blur121(gray: Tensor) -> Tensor:
    """OpenCV's 8-bit ``GaussianBlur(ksize=(3, 3), sigma=0)``: the [1, 2, 1]/4 kernel on both axes,
    BORDER_REFLECT_101, rounded half up (its bit-exact fixed-point path). (B, H, W) float32 levels."""
    p = F.pad(gray.unsqueeze(1), (1, 1, 1, 1), mode="reflect").squeeze(1)
    rows = p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]
    s = rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]  # 16 × the blurred value, an exact integer
    return torch.floor((s + 8) / 16)


def _normalise_u8(total: Tensor) -> Tensor:
    """``mixScales``' ``(uchar)(255. * (float)(v / (float)max))`` per image; 0 where max = 0."""
    top = total.amax(dim=(1, 2), keepdim=True).double()
    ratio = (total.double() / top).float()  # the float quotient (a double quotient rounds the same)
    out = (255.0 * ratio.double()).trunc()
    return torch.where(top > 0, out, torch.zeros_like(out))


def fine_grained_saliency(images: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
    """OpenCV contrib's ``StaticSaliencyFineGrained`` (Montabone & Soto 2010), batched.

    The recipe of ``staticSaliencyFineGrained.cpp`` with its integer arithmetic: 8-bit gray, two
    3×3 Gaussian blurs, one integral image; at each of six scales n (12, 24, 48, 28, 56, 112) the
    mean of the window rows y−n+1..y+n, columns x−n+1..x+n (clipped to the image) without the
    centre pixel, the "on" contrast ``trunc(gray − mean)`` where positive and the "off" contrast
    ``trunc(mean − gray)`` where positive; on and off are each summed over the scales and scaled
    to 0..255 by their maximum (truncated), then ``trunc(255·(on + off) / max(max on, max off))``
    as an 8-bit value. The last step wraps modulo 256 where on + off exceeds 255, as OpenCV's
    ``(uchar)`` cast does (rare: a pixel both brighter than its small and darker than its large
    surround); the result is divided by 255.

    Bit-exact to OpenCV on 8-bit input while the integral image stays below 2²⁴ (H·W·255 < 2²⁴,
    e.g. up to 256×256): OpenCV accumulates it in float32, exact up to there; beyond, it rounds
    and this module does not.

    Args:
        images: (B, C, H, W) uint8 or float images, C = 1 or 3 (RGB), H, W >= 2; see the module
            docstring for how float images are quantised.
        value_range: for float images, the values mapped to 0 and 255 (default: each image's min
            and max).

    Returns:
        (B, H, W) float32 maps in [0, 1], multiples of 1/255, on the images' device.

    Raises:
        TypeError: ``images`` not a tensor, or not uint8 / floating point.
        ValueError: not (B, 1 or 3, H, W), a side below 2, or a bad ``value_range``.

    Example:
        >>> sal = fine_grained_saliency(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
        >>> peak = sal.flatten(1).argmax(1)          # row-major, first maximum, as np.argmax
    """
    _check(images, value_range, min_side=2)
    b, _, h, w = images.shape
    gray = _blur121(_blur121(_gray_levels(images, value_range).float()))  # (B, H, W) levels
    # integral image (B, H+1, W+1): exact integers, then float32 as OpenCV's CV_32F sums
    integral = F.pad(gray.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0)).float()
    ys = torch.arange(h, device=images.device)
    xs = torch.arange(w, device=images.device)
    on_total = torch.zeros_like(gray)
    off_total = torch.zeros_like(gray)
    for n in FINE_GRAINED_SCALES:
        y1, y2 = (ys - n + 1).clamp(min=0), (ys + n + 1).clamp(max=h)
        x1, x2 = (xs - n + 1).clamp(min=0), (xs + n + 1).clamp(max=w)
        top, bottom = integral[:, y1], integral[:, y2]  # (B, H, W+1)
        # getMean's float32 sum in OpenCV's order, then (sum - centre) / (area - 1)
        window = ((bottom[:, :, x2] + top[:, :, x1]) - bottom[:, :, x1]) - top[:, :, x2]
        count = ((y2 - y1)[:, None] * (x2 - x1)[None, :] - 1).double()
        mean = ((window - gray).double() / count).float()
        on_total += (gray - mean).clamp_min(0).trunc()  # <= 255 on 8-bit input: no (uchar) wrap here
        off_total += (mean - gray).clamp_min(0).trunc()
    on, off = _normalise_u8(on_total), _normalise_u8(off_total)  # mixScales
    top = torch.maximum(on.amax(dim=(1, 2), keepdim=True), off.amax(dim=(1, 2), keepdim=True))
    mixed = (255.0 * (on + off) / top).trunc()  # mixOnOff, in double as OpenCV
    mixed = torch.where(top > 0, mixed, torch.zeros_like(mixed)).remainder(256)  # the (uchar) cast wraps
    return mixed.float() * (1.0 / 255.0)  # convertTo(CV_32F, 1/255): times the float32 of 1/255


def _gaussian_blur_5x5_sigma8(x: Tensor) -> Tensor:
    """OpenCV's ``GaussianBlur(ksize=(5, 5), sigma=8)`` in double, BORDER_REFLECT_101. (B, s, s)."""
    t = torch.arange(5, device=x.device, dtype=x.dtype) - 2
    k = torch.exp(-(t * t) / (2 * 8.0 ** 2))
    k = k / k.sum()
    p = F.pad(x.unsqueeze(1), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(F.conv2d(p, k.view(1, 1, 1, 5)), k.view(1, 1, 5, 1)).squeeze(1)


def spectral_residual_saliency(images: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
    """OpenCV contrib's ``StaticSaliencySpectralResidual`` (Hou & Zhang, CVPR 2007), batched.

    ``staticSaliencySpectralResidual.cpp``'s order: 8-bit gray, resized to 64×64 (bilinear at
    pixel centres, rounded to 8 bits: ``INTER_LINEAR_EXACT``); DFT; ``log(|F| + 1)`` minus its 3×3
    box mean (BORDER_REFLECT_101); ``exp`` of that residual with the original phase, inverse DFT,
    magnitude; *then* the 5×5 Gaussian blur (σ = 8), *then* the square; divided by its maximum;
    resized bilinearly back to (H, W). In double precision, as OpenCV, until the float32 map.

    Args:
        images: (B, C, H, W) uint8 or float images, C = 1 or 3 (RGB); float images are quantised
            as in the module docstring.
        value_range: for float images, the values mapped to 0 and 255 (default: each image's min
            and max).

    Returns:
        (B, H, W) float32 maps in [0, 1] (maximum 1 per image), on the images' device.

    Raises:
        TypeError, ValueError: as :func:`fine_grained_saliency`.
    """
    _check(images, value_range, min_side=1)
    h, w = images.shape[-2:]
    s = SPECTRAL_RESIDUAL_SIZE
    gray = _gray_levels(images, value_range).float().unsqueeze(1)
    # INTER_LINEAR_EXACT: the weights of a resize to 64 are multiples of 1/128, exact in float32
    small = torch.floor(F.interpolate(gray, size=(s, s), mode="bilinear", align_corners=False) + 0.5)
    spectrum = torch.fft.fft2(small.squeeze(1).double())
    log_amp = torch.log(spectrum.abs() + 1)
    box = F.avg_pool2d(F.pad(log_amp.unsqueeze(1), (1, 1, 1, 1), mode="reflect"), 3, stride=1).squeeze(1)
    sal = torch.fft.ifft2(torch.polar(torch.exp(log_amp - box), torch.angle(spectrum))).abs()
    sal = _gaussian_blur_5x5_sigma8(sal)
    sal = sal * sal
    sal = (sal / sal.amax(dim=(1, 2), keepdim=True)).float()
    if (h, w) != (s, s):
        sal = F.interpolate(sal.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
    return sal


#: the detectors by name, for a ``detector=`` argument
SALIENCY_DETECTORS: dict[str, Callable[..., Tensor]] = {
    "fine_grained": fine_grained_saliency,
    "spectral_residual": spectral_residual_saliency,
}


def saliency_map(images: Tensor, detector: str = "fine_grained",
                 value_range: tuple[float, float] | None = None) -> Tensor:
    """(B, H, W) saliency maps by ``detector``: ``"fine_grained"`` (default, the SaliencyMix
    authors' choice) or ``"spectral_residual"``; arguments as :func:`fine_grained_saliency`."""
    check_choice(detector, "detector", tuple(SALIENCY_DETECTORS))
    return SALIENCY_DETECTORS[detector](images, value_range)
