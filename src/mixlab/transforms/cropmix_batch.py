"""CropMix on a whole batch, on the batch's device (beyond the paper).

The paper's CropMix (:class:`mixlab.transforms.CropMix`) is a per-image DataLoader transform.
This module does the same operation on a batch (B, C, H, W) of images already on the device,
with no per-image Python loop (the trainer's ``data.device_augment`` path, and the previews):

* crop boxes: RandomResizedCrop's rejection sampling, vectorised
  (:func:`~mixlab.transforms.batched.sample_crop_boxes`): 10 attempts for every (image, crop)
  drawn at once, the first valid one taken, torchvision's centre-crop fallback otherwise; each
  crop's area fraction comes from its own sub-range of ``scale`` (§3.2); images may differ in size
  (a zero-padded batch with each image's size);
* resampling: :func:`~mixlab.transforms.batched.resized_crops`: uint8 batches on the CPU crop by
  crop through ATen's uint8 kernel (the per-image views exactly), otherwise two batched matrix
  products with ATen's interpolation weights, antialiased like the per-image transform
  (``antialias=True``): ``v2.functional.resized_crop`` up to float rounding;
* N per image (``num_crops=(2, 3, 4)``): views are drawn for N_max = max(N) and mixing step t only
  acts on the images with t < N; Mixup's λ ~ Beta(α/N, α/N) is drawn once per distinct N;
* mixing: Mixup with channel permutations (the classification setting) is linear in the views, so
  the whole chain is one per-sample (C, C·N) matrix (tiny algebra) applied in one ``bmm``;
  otherwise N_max - 1 vectorised steps (Mixup as a per-sample weighted sum, CutMix boxes as
  masks), the weaker operand chosen per sample with ``torch.where``, channel permutations by
  ``gather``, flips by ``where``, colour jitter with per-sample factors and order
  (:func:`~mixlab.transforms.batched.color_jitter`).

All randomness goes through ``generator`` (default: the global torch RNG), drawn on the
generator's device (the CPU for ``None``) and then moved to the images' device, so a seed gives
identical batches on CPU and GPU up to the resampling arithmetic.

Differences from the per-image :class:`~mixlab.transforms.CropMix`, which is the reference:

* uint8 batches are mixed in float [0, 1] and rounded once at the end (or kept float:
  ``transform(..., keep_float=True)``), as the per-image version mixes; their views are rounded to
  uint8 on the CPU, as the per-image version's are, and kept in float on other devices;
* crop positions are drawn for every attempt and RNG streams differ, so the two versions agree in
  distribution (tested with KS tests), not draw for draw; given the same parameters they agree on
  the pixels up to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mixlab.core.boxes import boxes_to_mask, rand_boxes
from mixlab.core.checks import check_bool
from mixlab.core.random import beta_sample, generator_device
from mixlab.transforms.batched import apply_to, color_jitter, permute_channels, resized_crops, sample_crop_boxes
from mixlab.transforms.cropmix import JITTER, check_config, check_size, set_config

__all__ = ["CropMixBatch", "cropmix_batch", "augment_batch", "mixup_matrices"]


# ------------------------------------------------------------------------------ kernels
def augment_batch(x: Tensor, params: dict[str, Tensor] | None) -> Tensor:
    """Per-sample intermediate augmentations of a batch (B, C, H, W): permute, flips, jitter.

    Args:
        params: ``{"perm": (B, C) int64, "hflip": (B,) bool, "vflip": (B,) bool,
            "jitter_order": (B, 4), "jitter_factors": (B, 4)}`` (missing keys: not applied).
    """
    if not params:
        return x
    if "perm" in params:
        x = permute_channels(x, params["perm"])
    if "hflip" in params:
        x = apply_to(x, params["hflip"], lambda t: t.flip(-1))
    if "vflip" in params:
        x = apply_to(x, params["vflip"], lambda t: t.flip(-2))
    if "jitter_order" in params:
        x = color_jitter(x, params["jitter_order"], params["jitter_factors"])
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
    order = params["order"].to(device, non_blocking=True)
    n = order.shape[1]
    rows = torch.arange(b, device=device)
    lam_all = params["lam"].to(device=device, dtype=dtype, non_blocking=True)
    active = params["active"].to(device, non_blocking=True)
    aug = params["aug"] if params["aug"] and "perm" in params["aug"] else None
    a = torch.zeros(b, n, c, c, device=device, dtype=dtype)
    a[rows, order[:, 0]] = eye
    for t in range(1, n):
        lam = lam_all[:, t - 1].view(b, 1, 1)
        perm = None if aug is None else aug["perm"][:, t - 1].to(device, non_blocking=True)
        p = eye[perm] if perm is not None else eye.expand(b, c, c)  # P x = x[perm]
        second_weaker = lam > 0.5
        w1 = torch.where(second_weaker, lam * eye, lam * p)  # the running result's weight
        w2 = torch.where(second_weaker, (1.0 - lam) * p, (1.0 - lam) * eye)  # the next view's
        act = active[:, t - 1].view(b, 1, 1)
        a = torch.matmul(torch.where(act, w1, eye).unsqueeze(1), a)
        a[rows, order[:, t]] = torch.where(act, w2, 0.0)  # that view's entry was still zero
    after = params["after"]
    if after and "perm" in after:
        a = torch.matmul(eye[after["perm"].to(device, non_blocking=True)].unsqueeze(1), a)
    return a


# ------------------------------------------------------------------------------ the class
class CropMixBatch:
    """CropMix (Han et al. 2022) on a batch on its device; see the module docstring.

    The arguments are :class:`~mixlab.transforms.CropMix`'s, plus ``generator``.

    Args:
        size: output ``(h, w)`` or int; ``None`` (default) keeps the input size.
        scale: as :class:`~mixlab.transforms.CropMix` (same defaults, same checks), as are
            ``ratio``, ``num_crops``, ``mix``, ``alpha``, ``interpolation``, ``inter_aug``,
            ``placement``, ``multi_scale`` and ``antialias``.
        generator: ``torch.Generator`` for all randomness (default: the global torch RNG);
            :meth:`make_params` also takes one per call.

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
        antialias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        cfg = check_config(scale=scale, ratio=ratio, num_crops=num_crops, mix=mix, alpha=alpha,
                           interpolation=interpolation, inter_aug=inter_aug, placement=placement,
                           multi_scale=multi_scale)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.size = check_size(size)
        set_config(self, {**cfg, "interpolation": cfg["interpolation"].value})  # resized_crops' mode name
        self.antialias: bool = check_bool(antialias, "antialias")
        self.generator = generator

    # ------------------------------------------------------------------ sampling
    def _aug_params(self, shape: tuple[int, ...], channels: int, g: torch.Generator | None) -> dict[str, Tensor]:
        dev = generator_device(g)
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

    def make_params(self, batch_size: int, height: int | Tensor, width: int | Tensor, channels: int = 3,
                    generator: torch.Generator | None = None) -> dict[str, Any]:
        """Draw everything random for a batch, on the generator's device.

        Args:
            batch_size, channels: of the images.
            height, width: their size, or (B,) integer tensors, each image's own (a zero-padded
                batch of images of several sizes; ``size`` must then be set).
            generator: this call's randomness (default: the instance's ``generator``).

        Returns:
            ``{"size": (h, w), "num_crops": (B,) int64 N per image, "crops": (B, N_max, 4) int64
            (top, left, h, w) (crop k from sub-range k of the image's N; k >= N unused),
            "order": (B, N_max) mixing order (the image's N views first), "lam": (B, N_max-1)
            float64 λ of each step, "active": (B, N_max-1) bool (step t, 1-based, acts on the
            images with t < N), for CutMix "boxes": (B, N_max-1, 4) (x1, y1, x2, y2) and
            "patch_from_second": (B, N_max-1) bool, "aug": per-step augmentation tensors with
            leading dims (B, N_max-1) or None, "after": (B, ...) or None}``.
        """
        g = generator if generator is not None else self.generator
        dev = generator_device(g)
        b = batch_size
        if self.size is None and (isinstance(height, Tensor) or isinstance(width, Tensor)):
            raise ValueError("CropMixBatch needs an output size for images of several sizes; pass size=...")
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
        params["aug"] = self._aug_params((b, steps), channels, g) if before else None
        after = self.placement in ("after", "both") and bool(self.inter_aug)
        params["after"] = self._aug_params((b,), channels, g) if after else None
        return params

    # ------------------------------------------------------------------ application
    def transform(self, images: Tensor, params: dict[str, Any], keep_float: bool = False) -> Tensor:
        """Apply :meth:`make_params`'s draws to ``images`` (B, C, H, W); deterministic.

        Mixup with at most a channel permutation is linear in the views: the output is
        ``Σ_k A_k · view_k`` with per-sample (C, C) matrices ``A_k`` (:func:`mixup_matrices`),
        applied in one ``bmm``. Other settings run the N_max - 1 steps with per-sample masks.

        Args:
            keep_float: uint8 images come out as float32 in [0, 1] instead of rounded uint8.
        """
        dev, dtype = images.device, images.dtype
        b, c = images.shape[:2]
        x = images if dtype in (torch.uint8, torch.float32, torch.float64) else images.float()
        views = resized_crops(x, params["crops"], params["size"], self.interpolation,
                              self.antialias)  # (B, N, C, h, w), in [0, 1] for uint8
        n, (h, w) = views.shape[1], views.shape[-2:]
        if self.mix == "mixup" and set(self.inter_aug) <= {"permute"}:
            a = mixup_matrices(params, b, c, dev, views.dtype)  # (B, N, C, C)
            stacked = views.reshape(b, n * c, h * w)  # (B, N·C, h·w), no copy
            out = torch.bmm(a.transpose(1, 2).reshape(b, c, n * c), stacked).view(b, c, h, w)
        else:
            out = self._mix_steps(views, params)
        if dtype == torch.uint8:
            return out.contiguous() if keep_float else out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return out.to(dtype).contiguous()

    def _mix_steps(self, views: Tensor, params: dict[str, Any]) -> Tensor:
        """The general path: N_max - 1 vectorised mixing steps, then the "after" augmentation."""
        b, dev = views.shape[0], views.device
        rows = torch.arange(b, device=dev)
        order = params["order"].to(dev, non_blocking=True)
        active = params["active"].to(dev, non_blocking=True)
        lam_all = params["lam"].to(device=dev, dtype=views.dtype, non_blocking=True)
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
                from_second = params["patch_from_second"][:, t - 1].to(dev, non_blocking=True).view(b, 1, 1, 1)
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
                f"inter_aug={self.inter_aug}, placement={self.placement!r}, multi_scale={self.multi_scale}, "
                f"antialias={self.antialias})")


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
    antialias: bool = True,
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
                        multi_scale=multi_scale, antialias=antialias, generator=generator)(images)
