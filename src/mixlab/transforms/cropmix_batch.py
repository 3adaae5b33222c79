"""CropMix on a whole batch, on the batch's device (beyond the paper).

The paper's CropMix (:class:`mixlab.transforms.CropMix`) is a per-image DataLoader transform.
This module does the same operation on a batch (B, C, H, W) of same-sized images already on the
device, with no per-image Python loop:

* crop boxes: RandomResizedCrop's rejection sampling, vectorised: 10 attempts for every
  (image, crop) drawn at once, the first valid one taken, torchvision's centre-crop fallback
  otherwise; each crop's area fraction comes from its own sub-range of ``scale`` (§3.2);
* resampling: per-crop axis-aligned affine sampling grids (scale + shift, built directly from the
  boxes: separable, cheaper than ``F.affine_grid``) and one ``F.grid_sample`` call for all B×N
  crops (the N crops of an image are stacked along the output height, so the source images are
  never copied); ``"nearest"`` is two integer gathers instead;
* N per image (``num_crops=(2, 3, 4)``): views are drawn for N_max = max(N) and mixing step t only
  acts on the images with t < N; Mixup's λ ~ Beta(α/N, α/N) is drawn once per distinct N;
* mixing: Mixup with channel permutations (the classification setting) is linear in the views, so
  the whole chain is one per-sample (C, C·N) matrix (tiny algebra) applied in one ``bmm``;
  otherwise N_max - 1 vectorised steps (Mixup as a per-sample weighted sum, CutMix boxes as
  masks), the weaker operand chosen per sample with ``torch.where``, channel permutations by
  ``gather``, flips by ``where``, colour jitter with per-sample factors and order.

All randomness goes through ``generator`` (default: the global torch RNG), drawn on the
generator's device (the CPU for ``None``) and then moved to the images' device, so a seed gives
identical batches on CPU and GPU up to the resampling arithmetic.

Differences from the per-image :class:`~mixlab.transforms.CropMix`, which is the reference:

* ``grid_sample`` does not antialias: a crop larger than the output is point-sampled (bilinear
  or bicubic between the nearest source pixels), where ``v2.functional.resized_crop(antialias=True)``
  averages over the footprint. Downscaled crops are therefore sharper (aliased); upscaled crops
  (the usual case on 32×32 CIFAR with scale < 1) match ``resized_crop`` up to float rounding for
  ``"bilinear"``; ``"nearest"`` (never antialiased) matches exactly at any scale; ``"bicubic"``
  differs in a band about one source pixel wide along the crop's edges (its outer taps read the
  pixels just outside the crop, where resizing the extracted crop repeats the edge pixel).
* uint8 batches are resampled and mixed in float [0, 1] and rounded once at the end; the
  per-image version resamples uint8 views in uint8 (each view rounded) before mixing them in float.
* Crop positions are drawn for every attempt and RNG streams differ, so the two versions agree in
  distribution (tested with KS tests), not draw for draw.
* Colour jitter is a vectorised re-implementation of ``v2.ColorJitter(0.4, 0.4, 0.4, 0.1)`` for
  float images in [0, 1] (equal to torchvision's kernels up to float rounding; tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.boxes import boxes_to_mask, rand_boxes
from mixlab.core.random import beta_sample, generator_device
from mixlab.transforms.cropmix import ATTEMPTS, JITTER, check_config, check_size, fallback_crop_size, set_config

__all__ = ["CropMixBatch", "cropmix_batch", "sample_crop_boxes", "resized_crops", "augment_batch",
           "color_jitter_batch", "mixup_matrices"]



# ------------------------------------------------------------------------------ kernels
def sample_crop_boxes(
    lo: Tensor, hi: Tensor, height: int, width: int, ratio: tuple[float, float],
    generator: torch.Generator | None = None, attempts: int = ATTEMPTS,
) -> Tensor:
    """RandomResizedCrop parameters for M crops at once, each with its own scale range.

    torchvision's sampler, vectorised: ``attempts`` tries per crop, each an area fraction
    U(lo, hi) and a log-uniform aspect ratio; the first try with 0 < w <= W and 0 < h <= H wins
    and is placed uniformly; a crop with no valid try falls back to the centred crop of the whole
    image clipped to ``ratio``.

    Args:
        lo, hi: (M,) float scale bounds (area fractions).
        height, width: source image size.
        ratio: aspect-ratio range (width / height).
        generator: randomness (default: the global torch RNG); draws happen on its device.

    Returns:
        (M, 4) int64 ``(top, left, h, w)`` on the generator's device.
    """
    dev = generator_device(generator)
    m = lo.shape[0]
    lo = lo.to(dev, torch.float64).view(m, 1)
    hi = hi.to(dev, torch.float64).view(m, 1)
    u = torch.rand(m, attempts, 2, generator=generator, device=dev, dtype=torch.float64)
    target = (height * width) * (lo + (hi - lo) * u[..., 0])  # (M, attempts) pixels
    log_r0, log_r1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_r0 + (log_r1 - log_r0) * u[..., 1])
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid attempt
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1).long()
    h = h.gather(1, first).squeeze(1).long()
    fh, fw = fallback_crop_size(height, width, ratio)  # torchvision's fallback, centred
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    pos = torch.rand(m, 2, generator=generator, device=dev, dtype=torch.float64)
    top = torch.minimum((pos[:, 0] * (height - h + 1)).long(), height - h)
    left = torch.minimum((pos[:, 1] * (width - w + 1)).long(), width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: Tensor, crops: Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> Tensor:
    """Crop N boxes of every image and resize each to ``size``, in one ``grid_sample`` call.

    The sampling is ``F.interpolate`` of the extracted crop (``align_corners=False``, no
    antialiasing): exactly so for ``"bilinear"`` (sample points are clamped to the crop's edge
    pixels) and ``"nearest"`` (integer gathers, no ``grid_sample``); ``"bicubic"``'s outer taps
    near the crop's edge read the pixels just outside it where ``F.interpolate`` repeats the edge
    pixel.

    Args:
        images: (B, C, H, W) float.
        crops: (B, N, 4) ``(top, left, h, w)`` integer boxes inside the images.
        size: output ``(h, w)``.
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.

    Returns:
        (B, N, C, h, w), a view of a (B, C, N·h, w) tensor.
    """
    b, c, height, width = images.shape
    n = crops.shape[1]
    oh, ow = size
    if interpolation == "nearest":  # two gathers: F.interpolate's src = floor(dst · in/out), exactly
        top, left, ch, cw = crops.to(device=images.device, dtype=torch.long).unbind(-1)  # (B, N) each
        ys = torch.arange(oh, device=images.device, dtype=torch.float32)
        xs = torch.arange(ow, device=images.device, dtype=torch.float32)
        rows = top.unsqueeze(-1) + (ys * (ch.unsqueeze(-1).float() / oh)).long().minimum(ch.unsqueeze(-1) - 1)
        cols = left.unsqueeze(-1) + (xs * (cw.unsqueeze(-1).float() / ow)).long().minimum(cw.unsqueeze(-1) - 1)
        src = images.unsqueeze(1).expand(b, n, c, height, width)
        picked = src.gather(3, rows.view(b, n, 1, oh, 1).expand(b, n, c, oh, width))
        return picked.gather(4, cols.view(b, n, 1, 1, ow).expand(b, n, c, oh, ow))
    top, left, ch, cw = crops.to(device=images.device, dtype=images.dtype).unbind(-1)  # (B, N) each

    def axis(start: Tensor, length: Tensor, out: int, full: int) -> Tensor:
        """Normalised source coordinates (B, N, out) of the output pixel centres along one axis:
        ``start + (j + 0.5)·length/out - 0.5``, clamped to the crop's first/last pixel centres (as
        resizing the extracted crop does), then mapped to [-1, 1] (``align_corners=False``)."""
        j = torch.arange(out, device=images.device, dtype=images.dtype) + 0.5
        src = start.unsqueeze(-1) + j * (length / out).unsqueeze(-1) - 0.5
        src = torch.minimum(torch.maximum(src, start.unsqueeze(-1)), (start + length - 1).unsqueeze(-1))
        return (2 * src + 1) / full - 1

    xs, ys = axis(left, cw, ow, width), axis(top, ch, oh, height)  # (B, N, w), (B, N, h)
    grid = torch.stack([xs.unsqueeze(2).expand(b, n, oh, ow), ys.unsqueeze(3).expand(b, n, oh, ow)], dim=-1)
    out = F.grid_sample(images, grid.view(b, n * oh, ow, 2), mode=interpolation, padding_mode="border",
                        align_corners=False)  # (B, C, N·h, w): the N crops stacked along the height
    return out.view(b, c, n, oh, ow).transpose(1, 2)


def _gray(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of (B, C, H, W), torchvision's weights (C = 3) or the image (C = 1)."""
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` (B,) turns.

    RGB -> HSV (H in turns), H += shift, then the closed form HSV -> RGB:
    channel_n = V - V·S·clamp(min(k, 4 - k), 0, 1) with k = (n + 6H) mod 6, n = 5, 3, 1 for R, G, B.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, 1.0), 0.0)
    d = torch.where(delta > 0, delta, 1.0)
    h = torch.where(maxc == r, ((g - b) / d).remainder(6.0),
                    torch.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    h = (torch.where(delta > 0, h / 6.0, 0.0) + shift.view(-1, 1, 1)).remainder(1.0)
    offsets = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # R, G, B
    k = (offsets + 6.0 * h.unsqueeze(1)).remainder(6.0)
    v = maxc.unsqueeze(1)
    return v - v * s.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def color_jitter_batch(x: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """``v2.ColorJitter`` with per-sample factors and order, for float images in [0, 1].

    Args:
        x: (B, C, H, W) float, C = 1 or 3 (saturation and hue leave C = 1 unchanged, as torchvision).
        order: (B, 4) int64, a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) per sample.
        factors: (B, 4) brightness, contrast, saturation factors and the hue shift.

    Returns:
        a new tensor.
    """
    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {c}")
    f = factors.to(device=x.device, dtype=x.dtype)
    order = order.to(x.device)
    fb, fc, fs = (f[:, i].view(-1, 1, 1, 1) for i in range(3))
    for pos in range(4):
        op = order[:, pos].view(-1, 1, 1, 1)
        for fn in range(4):
            if fn == 0:
                y = (x * fb).clamp(0.0, 1.0)
            elif fn == 1:
                mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
                y = (fc * x + (1 - fc) * mean).clamp(0.0, 1.0)
            elif c == 1:  # saturation and hue: no-ops on one channel
                continue
            elif fn == 2:
                y = (fs * x + (1 - fs) * _gray(x)).clamp(0.0, 1.0)
            else:
                y = _adjust_hue(x, f[:, 3])
            x = torch.where(op == fn, y, x)
    return x


def augment_batch(x: Tensor, params: dict[str, Tensor] | None) -> Tensor:
    """Per-sample intermediate augmentations of a batch (B, C, H, W): permute, flips, jitter.

    Args:
        params: ``{"perm": (B, C) int64, "hflip": (B,) bool, "vflip": (B,) bool,
            "jitter_order": (B, 4), "jitter_factors": (B, 4)}`` (missing keys: not applied).
    """
    if not params:
        return x
    b, c, h, w = x.shape
    if "perm" in params:
        x = x.gather(1, params["perm"].to(x.device).view(b, c, 1, 1).expand(b, c, h, w))
    if "hflip" in params:
        x = torch.where(params["hflip"].to(x.device).view(b, 1, 1, 1), x.flip(-1), x)
    if "vflip" in params:
        x = torch.where(params["vflip"].to(x.device).view(b, 1, 1, 1), x.flip(-2), x)
    if "jitter_order" in params:
        x = color_jitter_batch(x, params["jitter_order"], params["jitter_factors"])
    return x


def mixup_matrices(params: dict[str, Any], b: int, c: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """CropMix-Mixup with channel permutations as one linear map per sample: (B, N, C, C) ``A``
    with ``output = Σ_k A[:, k] @ view_k`` (views in sub-range order, channels as rows).

    Step t mixes the running result R with view v = ``order[:, t]``: R <- W1·R + W2·v, where
    W1 = λ·I, W2 = (1-λ)·P when λ > 0.5 (the second operand is weaker), else W1 = λ·P,
    W2 = (1-λ)·I, with P the step's permutation matrix (I without ``"permute"``); W1 = I, W2 = 0
    where the image has fewer views than t + 1. The ``"after"`` permutation left-multiplies the result.

    Args:
        params: :meth:`CropMixBatch.make_params`'s draws (Mixup).
        b, c: batch size and channels.
        device, dtype: of the result.
    """
    eye = torch.eye(c, device=device, dtype=dtype)
    order = params["order"].to(device)
    n = order.shape[1]
    rows = torch.arange(b, device=device)
    lam_all = params["lam"].to(device=device, dtype=dtype)
    active = params["active"].to(device)
    aug = params["aug"] if params["aug"] and "perm" in params["aug"] else None
    a = torch.zeros(b, n, c, c, device=device, dtype=dtype)
    a[rows, order[:, 0]] = eye
    for t in range(1, n):
        lam = lam_all[:, t - 1].view(b, 1, 1)
        p = eye[aug["perm"][:, t - 1].to(device)] if aug is not None else eye.expand(b, c, c)  # P x = x[perm]
        second_weaker = lam > 0.5
        w1 = torch.where(second_weaker, lam * eye, lam * p)  # the running result's weight
        w2 = torch.where(second_weaker, (1.0 - lam) * p, (1.0 - lam) * eye)  # the next view's
        act = active[:, t - 1].view(b, 1, 1)
        a = torch.matmul(torch.where(act, w1, eye).unsqueeze(1), a)
        a[rows, order[:, t]] = torch.where(act, w2, 0.0)  # that view's entry was still zero
    after = params["after"]
    if after and "perm" in after:
        a = torch.matmul(eye[after["perm"].to(device)].unsqueeze(1), a)
    return a


# ------------------------------------------------------------------------------ the class
class CropMixBatch:
    """CropMix (Han et al. 2022) on a batch on its device; see the module docstring.

    The arguments are :class:`~mixlab.transforms.CropMix`'s (``antialias`` excepted: there is
    none), plus ``generator``.

    Args:
        size: output ``(h, w)`` or int; ``None`` (default) keeps the input size.
        scale, ratio, num_crops, mix, alpha, interpolation, inter_aug, placement, multi_scale:
            as :class:`~mixlab.transforms.CropMix` (same defaults, same checks).
        generator: ``torch.Generator`` for all randomness (default: the global torch RNG).

    Raises:
        TypeError, ValueError: bad arguments (as ``CropMix``) or images.

    Example:
        >>> import torch
        >>> from mixlab.transforms import CropMixBatch
        >>> g = torch.Generator().manual_seed(0)
        >>> images = torch.rand(8, 3, 32, 32)
        >>> CropMixBatch(num_crops=(2, 3, 4), generator=g)(images).shape
        torch.Size([8, 3, 32, 32])
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        *,
        scale: tuple[float, float] = (0.01, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        num_crops: int | Sequence[int] = 2,
        mix: str = "mixup",
        alpha: float | None = None,
        interpolation: str = "bilinear",
        inter_aug: Sequence[str] = ("permute",),
        placement: str = "before",
        multi_scale: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        cfg = check_config(scale=scale, ratio=ratio, num_crops=num_crops, mix=mix, alpha=alpha,
                           interpolation=interpolation, inter_aug=inter_aug, placement=placement,
                           multi_scale=multi_scale)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.size = check_size(size)
        set_config(self, {**cfg, "interpolation": cfg["interpolation"].value})  # grid_sample's mode name
        self.generator = generator

    # ------------------------------------------------------------------ sampling
    def _aug_params(self, shape: tuple[int, ...], channels: int) -> dict[str, Tensor]:
        g, dev = self.generator, generator_device(self.generator)
        out: dict[str, Tensor] = {}
        if "permute" in self.inter_aug:
            out["perm"] = torch.rand(*shape, channels, generator=g, device=dev).argsort(dim=-1)
        if "hflip" in self.inter_aug:
            out["hflip"] = torch.rand(shape, generator=g, device=dev) < 0.5
        if "vflip" in self.inter_aug:
            out["vflip"] = torch.rand(shape, generator=g, device=dev) < 0.5
        if "colorjitter" in self.inter_aug:
            out["jitter_order"] = torch.rand(*shape, 4, generator=g, device=dev).argsort(dim=-1)
            b, c, s, hue = JITTER
            low = torch.tensor([1 - b, 1 - c, 1 - s, -hue], device=dev)
            high = torch.tensor([1 + b, 1 + c, 1 + s, hue], device=dev)
            out["jitter_factors"] = low + (high - low) * torch.rand(*shape, 4, generator=g, device=dev)
        return out

    def make_params(self, batch_size: int, height: int, width: int, channels: int = 3) -> dict[str, Any]:
        """Draw everything random for a batch, on the generator's device.

        Returns:
            ``{"size": (h, w), "num_crops": (B,) int64 N per image, "crops": (B, N_max, 4) int64
            (top, left, h, w) (crop k from sub-range k of the image's N; k >= N unused),
            "order": (B, N_max) mixing order (the image's N views first), "lam": (B, N_max-1)
            float64 λ of each step, "active": (B, N_max-1) bool (step t, 1-based, acts on the
            images with t < N), for CutMix "boxes": (B, N_max-1, 4) (x1, y1, x2, y2) and
            "patch_from_second": (B, N_max-1) bool, "aug": per-step augmentation tensors with
            leading dims (B, N_max-1) or None, "after": (B, ...) or None}``.
        """
        g, dev = self.generator, generator_device(self.generator)
        b = batch_size
        size = self.size or (height, width)
        choices = torch.tensor(self.num_crops, device=dev)
        nmax = max(self.num_crops)
        steps = nmax - 1
        n = choices.expand(b) if len(self.num_crops) == 1 else choices[
            torch.randint(len(self.num_crops), (b,), generator=g, device=dev)]
        k = torch.arange(nmax, device=dev, dtype=torch.float64).view(1, nmax)
        s0, s1 = self.scale
        if self.multi_scale:  # §3.2's sub-ranges, the same arithmetic as scale_ranges()
            d = (s1 - s0) / n.to(torch.float64).view(b, 1)
            lo = (s0 + k * d).clamp(max=s1)
            hi = torch.where(k >= n.view(b, 1) - 1, s1, s0 + (k + 1) * d)
        else:
            lo = torch.full((b, nmax), s0, device=dev, dtype=torch.float64)
            hi = torch.full((b, nmax), s1, device=dev, dtype=torch.float64)
        crops = sample_crop_boxes(lo.reshape(-1), hi.reshape(-1), height, width, self.ratio, g).view(b, nmax, 4)
        used = k < n.view(b, 1)
        keys = torch.rand(b, nmax, generator=g, device=dev).masked_fill(~used, 2.0)
        order = keys.argsort(dim=1)  # a random order of the image's own views, unused ones last
        lam = torch.ones(b, steps, device=dev, dtype=torch.float64)
        params: dict[str, Any] = dict(size=size, num_crops=n, crops=crops, order=order)
        if steps:
            if self.mix == "mixup":  # λ ~ Beta(α/N, α/N): one draw per distinct N
                for v in self.num_crops:
                    if v > 1:
                        a = self.alpha / v
                        draw = beta_sample(a, a, b * steps, g, dtype=torch.float64).view(b, steps)
                        lam = torch.where((n == v).view(b, 1), draw, lam)
            else:
                lam = beta_sample(self.alpha, self.alpha, b * steps, g, dtype=torch.float64).view(b, steps)
                boxes = rand_boxes((1.0 - lam).reshape(-1), size[0], size[1], generator=g)
                params["boxes"] = boxes.view(b, steps, 4)
                params["patch_from_second"] = torch.rand(b, steps, generator=g, device=dev) > 0.5
        params["lam"] = lam
        params["active"] = torch.arange(1, nmax, device=dev).view(1, steps) < n.view(b, 1)
        before = self.placement in ("before", "both") and bool(self.inter_aug) and steps > 0
        params["aug"] = self._aug_params((b, steps), channels) if before else None
        after = self.placement in ("after", "both") and bool(self.inter_aug)
        params["after"] = self._aug_params((b,), channels) if after else None
        return params

    # ------------------------------------------------------------------ application
    def transform(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        """Apply :meth:`make_params`'s draws to ``images`` (B, C, H, W); deterministic.

        Mixup with at most a channel permutation is linear in the views: the output is
        ``Σ_k A_k · view_k`` with per-sample (C, C) matrices ``A_k`` (:func:`mixup_matrices`),
        applied in one ``bmm``. Other settings run the N_max - 1 steps with per-sample masks.
        """
        dev, dtype = images.device, images.dtype
        b, c = images.shape[:2]
        unit = "colorjitter" in self.inter_aug  # jitter needs [0, 1]; otherwise uint8 mixes in [0, 255]
        if dtype == torch.uint8:
            x = images.float().div_(255.0) if unit else images.float()
        else:
            x = images if dtype in (torch.float32, torch.float64) else images.float()
        views = resized_crops(x, params["crops"], params["size"], self.interpolation)  # (B, N, C, h, w)
        n, (h, w) = views.shape[1], views.shape[-2:]
        if self.mix == "mixup" and set(self.inter_aug) <= {"permute"}:
            a = mixup_matrices(params, b, c, dev, x.dtype)  # (B, N, C, C)
            stacked = views.transpose(1, 2).reshape(b, c * n, h * w)  # (B, C·N, h·w), no copy
            out = torch.bmm(a.permute(0, 2, 3, 1).reshape(b, c, c * n), stacked).view(b, c, h, w)
        else:
            out = self._mix_steps(views, params)
        if dtype == torch.uint8:
            return (out.mul_(255.0) if unit else out).round_().clamp_(0, 255).to(torch.uint8)
        return out.to(dtype).contiguous()

    def _mix_steps(self, views: Tensor, params: dict[str, Any]) -> Tensor:
        """The general path: N_max - 1 vectorised mixing steps, then the "after" augmentation."""
        b, dev = views.shape[0], views.device
        rows = torch.arange(b, device=dev)
        order = params["order"].to(dev)
        active = params["active"].to(dev)
        lam_all = params["lam"].to(device=dev, dtype=views.dtype)
        aug = params["aug"]
        out = views[rows, order[:, 0]]  # (B, C, h, w)
        for t in range(1, order.shape[1]):
            nxt = views[rows, order[:, t]]
            step_aug = None if aug is None else {key: v[:, t - 1] for key, v in aug.items()}
            if self.mix == "mixup":
                lam = lam_all[:, t - 1].view(b, 1, 1, 1)
                second_weaker = lam > 0.5  # the operand with the smaller weight is augmented
                strong = torch.where(second_weaker, out, nxt)
                weak = augment_batch(torch.where(second_weaker, nxt, out), step_aug)
                w = torch.where(second_weaker, lam, 1.0 - lam)  # weight of the strong operand
                mixed = strong * w + weak * (1.0 - w)
            else:
                from_second = params["patch_from_second"][:, t - 1].to(dev).view(b, 1, 1, 1)
                base = torch.where(from_second, out, nxt)
                source = augment_batch(torch.where(from_second, nxt, out), step_aug)
                inside = boxes_to_mask(params["boxes"][:, t - 1], out.shape[-2], out.shape[-1], device=dev)
                mixed = torch.where(inside, source, base)
            out = torch.where(active[:, t - 1].view(b, 1, 1, 1), mixed, out)
        return augment_batch(out, params["after"])

    def __call__(self, images: Tensor) -> Tensor:
        """CropMix every image of ``images`` (B, C, H, W) uint8 or float; same dtype and device out.

        Raises:
            TypeError, ValueError: not a 4-D uint8/float tensor.
        """
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must have 4 dims (B, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        b, c, h, w = images.shape
        return self.transform(images, self.make_params(b, h, w, c))

    def __repr__(self) -> str:
        n = self.num_crops[0] if len(self.num_crops) == 1 else self.num_crops
        return (f"CropMixBatch(size={self.size}, scale={self.scale}, ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g}), "
                f"num_crops={n}, mix={self.mix!r}, alpha={self.alpha}, interpolation={self.interpolation!r}, "
                f"inter_aug={self.inter_aug}, placement={self.placement!r}, multi_scale={self.multi_scale})")


def cropmix_batch(
    images: Tensor,
    size: int | Sequence[int] | None = None,
    *,
    scale: tuple[float, float] = (0.01, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    num_crops: int | Sequence[int] = 2,
    mix: str = "mixup",
    alpha: float | None = None,
    interpolation: str = "bilinear",
    inter_aug: Sequence[str] = ("permute",),
    placement: str = "before",
    multi_scale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """CropMix every image of a batch: ``CropMixBatch(size, ...)(images)``.

    Args:
        images: (B, C, H, W) uint8 or float, on any device.
        size, ...: see :class:`CropMixBatch`.

    Returns:
        (B, C, h, w) of ``images``' dtype and device.

    Example:
        >>> import torch
        >>> from mixlab.transforms import cropmix_batch
        >>> out = cropmix_batch(torch.rand(4, 3, 32, 32), 24, generator=torch.Generator().manual_seed(0))
        >>> out.shape
        torch.Size([4, 3, 24, 24])
    """
    return CropMixBatch(size, scale=scale, ratio=ratio, num_crops=num_crops, mix=mix, alpha=alpha,
                        interpolation=interpolation, inter_aug=inter_aug, placement=placement,
                        multi_scale=multi_scale, generator=generator)(images)
