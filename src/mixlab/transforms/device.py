"""Per-image training pipelines compiled into batched augmenters on the device.

:func:`batched_pipeline` reads a per-image ``torchvision.transforms.v2`` pipeline (the one a
method's ``train_transform`` returns) and builds its batched twin: the same operations, each
image with its own parameters, run on a whole uint8 batch on its device with the kernels of
:mod:`mixlab.transforms.batched`. The per-image pipeline stays the one specification; the twin
follows it op for op:

==========================================  ==================================================
per image (``v2``, mixlab)                  batched
==========================================  ==================================================
``RandomResizedCrop`` (``rrc``)             :class:`ResizedCrop` (boxes, exact resampling)
``RandomCrop(size, padding)`` (CIFAR)       :class:`PaddedCrop` (zero padding, two gathers)
:class:`~mixlab.transforms.CropMix`         :class:`CropMixCrop` (:class:`~mixlab.transforms.CropMixBatch`)
:class:`~mixlab.transforms.MixedQuery`      :class:`MixedQueryCrop` (two crops, CutMix'ed)
``RandomHorizontalFlip``                    :class:`Flip`
``[RandomApply(]ColorJitter[)]``            :class:`Jitter` (per-sample factors and order)
``RandomGrayscale``                         :class:`Grayscale`
``[RandomApply(]GaussianBlur[)]``           :class:`Blur` (per-sample σ)
``RandomSolarize``                          :class:`Solarize`
``TwoViews`` / ``MultiCrop`` / ``OneView``  :class:`BatchedViews` (a list of views)
==========================================  ==================================================

Anything else raises :class:`UnsupportedTransform` naming it (the engine then keeps the
per-image path, or reports it when ``data.device_augment`` is true).

Sampling and application are separate (``make_params(batch_size, height, width, generator)``
draws everything, on the generator's device; ``apply(images, params)`` is deterministic), so the
per-image torchvision functional ops can be run on the very same parameters (tested). The draws
follow torchvision's distributions (crop area, aspect ratio and position, flip and apply
probabilities, U-distributed jitter factors with a uniformly random order, σ ~ U), not its
RNG stream. Outputs are float32 in [0, 1] (never rounded to uint8 between operations, where the
per-image uint8 path rounds after each one): the engine normalises them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.boxes import boxes_to_mask, rand_boxes
from mixlab.core.random import generator_device
from mixlab.transforms.batched import (
    apply_to,
    color_jitter,
    gaussian_blur,
    grayscale,
    resized_crops,
    sample_crop_boxes,
    solarize,
)

__all__ = ["UnsupportedTransform", "Flip", "Jitter", "Grayscale", "Blur", "Solarize", "KeepSize", "ResizedCrop",
           "PaddedCrop", "CropMixCrop", "MixedQueryCrop", "BatchedPipeline", "BatchedViews", "batched_pipeline",
           "to_unit_float"]


class UnsupportedTransform(TypeError):
    """A per-image transform with no batched twin (its name is in the message)."""


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 -> float32 in [0, 1] (x / 255); float images pass unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def _flags(p: float, b: int, g: torch.Generator | None) -> Tensor | None:
    """(B,) bool "apply" draws of probability ``p`` (``None``: every sample, p = 1)."""
    if p >= 1.0:
        return None
    return torch.rand(b, generator=g, device=generator_device(g)) < p


def _uniform(lo: float, hi: float, b: int, g: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=g, device=generator_device(g))


# ------------------------------------------------------------------------------ pixel operations
class Flip:
    """``RandomHorizontalFlip(p)``: params ``{"flags": (B,) bool}``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def make_params(self, b: int, g: torch.Generator | None) -> dict[str, Any]:
        return {"flags": _flags(self.p, b, g)}

    def apply(self, x: Tensor, params: dict[str, Any], inplace: bool = False) -> Tensor:
        return apply_to(x, params["flags"], lambda t: t.flip(-1), inplace=inplace)

    def __repr__(self) -> str:
        return f"Flip(p={self.p})"


class Jitter:
    """``RandomApply([ColorJitter(b, c, s, h)], p)``: per sample an order (torchvision's ``fn_idx``)
    and four factors, brightness/contrast/saturation ~ U(max(0, 1 − x), 1 + x), hue ~ U(−h, h);
    strengths of 0 leave that operation out (factor 1, hue 0). Params ``{"flags", "order": (B, 4),
    "factors": (B, 4)}``."""

    def __init__(self, brightness: Sequence[float] | None, contrast: Sequence[float] | None,
                 saturation: Sequence[float] | None, hue: Sequence[float] | None, p: float = 1.0) -> None:
        self.ranges = [tuple(r) if r is not None else (1.0, 1.0) for r in (brightness, contrast, saturation)]
        self.ranges.append(tuple(hue) if hue is not None else (0.0, 0.0))
        self.p = float(p)

    def make_params(self, b: int, g: torch.Generator | None) -> dict[str, Any]:
        dev = generator_device(g)
        flags = _flags(self.p, b, g)
        order = torch.rand(b, 4, generator=g, device=dev).argsort(dim=1)
        factors = torch.stack([_uniform(lo, hi, b, g) for lo, hi in self.ranges], dim=1)
        return {"flags": flags, "order": order, "factors": factors}

    def apply(self, x: Tensor, params: dict[str, Any], inplace: bool = False) -> Tensor:
        return apply_to(x, params["flags"], color_jitter, params["order"], params["factors"], inplace=inplace)

    def __repr__(self) -> str:
        return f"Jitter(ranges={self.ranges}, p={self.p})"


class Grayscale:
    """``RandomGrayscale(p)`` (every channel the luma): params ``{"flags"}``."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def make_params(self, b: int, g: torch.Generator | None) -> dict[str, Any]:
        return {"flags": _flags(self.p, b, g)}

    def apply(self, x: Tensor, params: dict[str, Any], inplace: bool = False) -> Tensor:
        return apply_to(x, params["flags"], grayscale, inplace=inplace)

    def __repr__(self) -> str:
        return f"Grayscale(p={self.p})"


class Blur:
    """``RandomApply([GaussianBlur(k, sigma)], p)``: σ ~ U(sigma) per sample, reflected borders.
    Params ``{"flags", "sigma": (B,)}``."""

    def __init__(self, kernel_size: int, sigma: Sequence[float], p: float = 1.0) -> None:
        self.kernel_size, self.sigma, self.p = int(kernel_size), (float(sigma[0]), float(sigma[1])), float(p)

    def make_params(self, b: int, g: torch.Generator | None) -> dict[str, Any]:
        flags = _flags(self.p, b, g)
        return {"flags": flags, "sigma": _uniform(*self.sigma, b, g)}

    def apply(self, x: Tensor, params: dict[str, Any], inplace: bool = False) -> Tensor:
        return apply_to(x, params["flags"], gaussian_blur, params["sigma"], self.kernel_size, inplace=inplace)

    def __repr__(self) -> str:
        return f"Blur(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


class Solarize:
    """``RandomSolarize(threshold, p)`` with a uint8 threshold (128: 128/255 on [0, 1] images)."""

    def __init__(self, threshold: float, p: float) -> None:
        self.threshold, self.p = float(threshold), float(p)

    def make_params(self, b: int, g: torch.Generator | None) -> dict[str, Any]:
        return {"flags": _flags(self.p, b, g)}

    def apply(self, x: Tensor, params: dict[str, Any], inplace: bool = False) -> Tensor:
        return apply_to(x, params["flags"], solarize, self.threshold / 255.0, inplace=inplace)

    def __repr__(self) -> str:
        return f"Solarize(threshold={self.threshold:g}, p={self.p})"


# ------------------------------------------------------------------------------ geometry (the first stage)
class KeepSize:
    """No geometric transform: the images as they are (a pipeline of pixel operations only)."""

    def make_params(self, b: int, height: int | Tensor, width: int | Tensor, g: torch.Generator | None) -> dict:
        if isinstance(height, Tensor) or isinstance(width, Tensor):
            raise ValueError("images of several sizes need a crop to a fixed size first (RandomResizedCrop, CropMix)")
        return {}

    def apply(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        return to_unit_float(images)

    def __repr__(self) -> str:
        return "KeepSize()"


class ResizedCrop:
    """``RandomResizedCrop(size, scale, ratio, interpolation, antialias)``: params ``{"boxes": (B, 4)}``
    ``(top, left, h, w)`` (:func:`~mixlab.transforms.batched.sample_crop_boxes`). Bicubic crops are
    clamped to [0, 1], as the per-image path's uint8 resize clamps its overshoot."""

    def __init__(self, size: Sequence[int], scale: Sequence[float], ratio: Sequence[float],
                 interpolation: str = "bilinear", antialias: bool = True) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.interpolation, self.antialias = interpolation, bool(antialias)

    def make_params(self, b: int, height: int | Tensor, width: int | Tensor, g: torch.Generator | None) -> dict:
        dev = generator_device(g)
        lo = torch.full((b,), self.scale[0], dtype=torch.float64, device=dev)
        hi = torch.full((b,), self.scale[1], dtype=torch.float64, device=dev)
        return {"boxes": sample_crop_boxes(lo, hi, height, width, self.ratio, g)}

    def apply(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        out = resized_crops(images, params["boxes"].unsqueeze(1), self.size, self.interpolation,
                            self.antialias)[:, 0]
        return out.clamp_(0.0, 1.0) if self.interpolation == "bicubic" else out

    def __repr__(self) -> str:
        return (f"ResizedCrop(size={self.size}, scale={self.scale}, ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g}), "
                f"interpolation={self.interpolation!r}, antialias={self.antialias})")


class PaddedCrop:
    """``RandomCrop(size, padding)`` with zero padding (the CIFAR recipe): the top-left corner
    uniform over the padded image. Params ``{"corner": (B, 2) int64 (top, left)}`` in padded pixels."""

    def __init__(self, size: Sequence[int], padding: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.padding = tuple(int(p) for p in padding)  # left, top, right, bottom (v2's order)

    def make_params(self, b: int, height: int | Tensor, width: int | Tensor, g: torch.Generator | None) -> dict:
        if isinstance(height, Tensor) or isinstance(width, Tensor):
            raise ValueError("RandomCrop's batched twin needs images of one size")
        left, top, right, bottom = self.padding
        span = torch.tensor([height + top + bottom - self.size[0] + 1, width + left + right - self.size[1] + 1])
        if bool((span < 1).any()):
            raise ValueError(f"RandomCrop size {self.size} is larger than the padded image "
                             f"({height + top + bottom}, {width + left + right})")
        u = torch.rand(b, 2, generator=g, device=generator_device(g), dtype=torch.float64)
        return {"corner": (u * span.to(u.device)).long()}

    def apply(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        b, c = images.shape[:2]
        h, w = self.size
        padded = F.pad(images, self.padding)  # zero fill
        corner = params["corner"].to(images.device, non_blocking=True)
        rows = corner[:, :1] + torch.arange(h, device=images.device)  # (B, h)
        cols = corner[:, 1:] + torch.arange(w, device=images.device)
        out = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, padded.shape[-1]))
        return to_unit_float(out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w)))

    def __repr__(self) -> str:
        return f"PaddedCrop(size={self.size}, padding={self.padding})"


class CropMixCrop:
    """:class:`~mixlab.transforms.CropMix` through :class:`~mixlab.transforms.CropMixBatch` (same
    arguments); params are ``CropMixBatch.make_params``'s."""

    def __init__(self, cropmix: Any) -> None:
        from mixlab.transforms.cropmix_batch import CropMixBatch

        self.size = cropmix.size
        self.batch = CropMixBatch(cropmix.size, scale=cropmix.scale, ratio=cropmix.ratio, num_crops=cropmix.num_crops,
                                  mix=cropmix.mix, alpha=cropmix.alpha, interpolation=cropmix.interpolation,
                                  inter_aug=cropmix.inter_aug, placement=cropmix.placement,
                                  multi_scale=cropmix.multi_scale, antialias=cropmix.antialias)

    def make_params(self, b: int, height: int | Tensor, width: int | Tensor, g: torch.Generator | None) -> dict:
        return self.batch.make_params(b, height, width, 3, generator=g)

    def apply(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        return to_unit_float(self.batch.transform(images, params, keep_float=True))

    def __repr__(self) -> str:
        return f"CropMixCrop({self.batch!r})"


class MixedQueryCrop:
    """:class:`~mixlab.transforms.MixedQuery`: a base crop and a patch crop of each image (bilinear,
    antialiased), each through the pixel operations of ``augment`` with its own draws, then the
    patch view's CutMix box (λ ~ U(0, 1), side √(1 − λ)) pasted into the base view. Params
    ``{"boxes": (B, 2, 4) crops, "augment": the 2B views' params (base views first),
    "paste": (B, 4) (x1, y1, x2, y2)}``."""

    def __init__(self, query: Any, augment: BatchedPipeline) -> None:
        self.size = (query.size, query.size)
        self.base_scale, self.patch_scale, self.ratio = query.base_scale, query.patch_scale, query.ratio
        self.augment = augment

    def make_params(self, b: int, height: int | Tensor, width: int | Tensor, g: torch.Generator | None) -> dict:
        dev = generator_device(g)
        lo = torch.tensor([self.base_scale[0], self.patch_scale[0]], dtype=torch.float64, device=dev).repeat(b)
        hi = torch.tensor([self.base_scale[1], self.patch_scale[1]], dtype=torch.float64, device=dev).repeat(b)
        if isinstance(height, Tensor) or isinstance(width, Tensor):
            height = torch.as_tensor(height).repeat_interleave(2)
            width = torch.as_tensor(width).repeat_interleave(2)
        boxes = sample_crop_boxes(lo, hi, height, width, self.ratio, g).view(b, 2, 4)
        lam = torch.rand(b, generator=g, device=dev, dtype=torch.float64)
        paste = rand_boxes(1.0 - lam, self.size[0], self.size[1], generator=g)
        return {"boxes": boxes, "augment": self.augment.make_ops_params(2 * b, g), "paste": paste}

    def apply(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        b = images.shape[0]
        views = resized_crops(images, params["boxes"], self.size, "bilinear", True)  # (B, 2, C, h, w)
        views = views.transpose(0, 1).reshape(2 * b, *views.shape[2:])  # a copy: the operations may write into it
        views = self.augment.apply_ops(views, params["augment"], inplace=True)
        base, patch = views[:b], views[b:]
        inside = boxes_to_mask(params["paste"], self.size[0], self.size[1], device=images.device)
        return torch.where(inside, patch, base)

    def __repr__(self) -> str:
        return f"MixedQueryCrop(size={self.size}, base_scale={self.base_scale}, patch_scale={self.patch_scale})"


# ------------------------------------------------------------------------------ pipelines
class BatchedPipeline:
    """One view: a geometric first stage (crop to the output size) then pixel operations in order.

    ``pipeline(images, generator)`` augments a (B, C, H, W) uint8 (or [0, 1] float) batch on its
    device: float32 [0, 1] (B, C, h, w) out. ``sizes`` (B, 2) gives each image's (H, W) in a
    zero-padded batch of images of several sizes (the first stage must then crop: RRC, CropMix).
    """

    def __init__(self, geometry: Any, ops: Sequence[Any]) -> None:
        self.geometry, self.ops = geometry, list(ops)

    def make_ops_params(self, b: int, g: torch.Generator | None) -> list[dict[str, Any]]:
        return [op.make_params(b, g) for op in self.ops]

    def apply_ops(self, x: Tensor, params: list[dict[str, Any]], inplace: bool = False) -> Tensor:
        """The pixel operations; ``inplace``: they may write into ``x`` (a buffer of the caller's own)."""
        for op, p in zip(self.ops, params):
            x = op.apply(x, p, inplace=inplace)
        return x

    def make_params(self, b: int, height: int | Tensor, width: int | Tensor,
                    generator: torch.Generator | None = None) -> dict[str, Any]:
        """Every draw of the batch: ``{"geometry": ..., "ops": [one dict per operation]}``."""
        return {"geometry": self.geometry.make_params(b, height, width, generator),
                "ops": self.make_ops_params(b, generator)}

    def apply(self, images: Tensor, params: dict[str, Any]) -> Tensor:
        """Deterministic: ``images`` with ``params`` (:meth:`make_params`)."""
        x = self.geometry.apply(images, params["geometry"])
        owned = x.untyped_storage().data_ptr() != images.untyped_storage().data_ptr()  # not the caller's pixels
        return self.apply_ops(x, params["ops"], inplace=owned)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None
                 ) -> Tensor:
        b, _, h, w = images.shape
        height, width = (h, w) if sizes is None else (sizes[:, 0], sizes[:, 1])
        return self.apply(images, self.make_params(b, height, width, generator))

    def __repr__(self) -> str:
        return f"BatchedPipeline({self.geometry!r}, ops={self.ops!r})"


class BatchedViews:
    """Several views of every image (``TwoViews``, ``MultiCrop``, ``OneView``): a list out, one
    (B, C, h, w) float [0, 1] tensor per view, drawn view after view from the generator."""

    def __init__(self, views: Sequence[BatchedPipeline]) -> None:
        self.views = list(views)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None
                 ) -> list[Tensor]:
        return [v(images, generator, sizes) for v in self.views]

    def __repr__(self) -> str:
        return f"BatchedViews({self.views!r})"


def _interpolation(mode: Any) -> str:
    value = getattr(mode, "value", mode)
    if value not in ("nearest", "bilinear", "bicubic"):
        raise UnsupportedTransform(f"interpolation {value!r} has no batched twin (nearest, bilinear, bicubic)")
    return value


def _pixel_op(t: Any, p: float = 1.0) -> Any:
    """The batched twin of one per-image pixel operation (inside ``RandomApply`` with ``p``)."""
    from torchvision.transforms import v2

    if isinstance(t, v2.RandomApply):
        if len(t.transforms) != 1:
            raise UnsupportedTransform(f"RandomApply of {len(t.transforms)} transforms has no batched twin (one)")
        return _pixel_op(t.transforms[0], p * t.p)
    if isinstance(t, v2.ColorJitter):
        return Jitter(t.brightness, t.contrast, t.saturation, t.hue, p)
    if isinstance(t, v2.GaussianBlur):
        if t.kernel_size[0] != t.kernel_size[1]:
            raise UnsupportedTransform(f"GaussianBlur with a non-square kernel {t.kernel_size} has no batched twin")
        return Blur(t.kernel_size[0], t.sigma, p)
    if p == 1.0:
        if isinstance(t, v2.RandomHorizontalFlip):
            return Flip(t.p)
        if isinstance(t, v2.RandomGrayscale):
            return Grayscale(t.p)
        if isinstance(t, v2.RandomSolarize):
            return Solarize(t.threshold, t.p)
    raise UnsupportedTransform(f"{type(t).__name__} has no batched twin (supported: RandomResizedCrop, RandomCrop "
                               f"with zero padding, CropMix, MixedQuery, RandomHorizontalFlip, ColorJitter, "
                               f"RandomGrayscale, GaussianBlur, RandomSolarize, RandomApply of one of these)")


def _geometry(t: Any) -> Any | None:
    """The batched first stage for ``t``, or ``None`` when ``t`` is not geometric."""
    from torchvision.transforms import v2

    from mixlab.transforms.cropmix import CropMix
    from mixlab.transforms.views import MixedQuery

    if isinstance(t, v2.RandomResizedCrop):
        return ResizedCrop(t.size, t.scale, t.ratio, _interpolation(t.interpolation), t.antialias)
    if isinstance(t, v2.RandomCrop):
        if t.pad_if_needed or t.padding_mode != "constant" or t.fill != 0:
            raise UnsupportedTransform("RandomCrop has a batched twin with zero constant padding only "
                                       f"(got padding_mode={t.padding_mode!r}, fill={t.fill!r}, "
                                       f"pad_if_needed={t.pad_if_needed})")
        return PaddedCrop(t.size, t.padding or (0, 0, 0, 0))
    if isinstance(t, CropMix):
        _interpolation(t.interpolation)
        return CropMixCrop(t)
    if isinstance(t, MixedQuery):
        augment = batched_pipeline(t.augment)
        if not isinstance(augment, BatchedPipeline) or not isinstance(augment.geometry, KeepSize):
            raise UnsupportedTransform("MixedQuery's augment must be pixel operations only (no crop, one view)")
        return MixedQueryCrop(t, augment)
    return None


def batched_pipeline(transform: Callable | None) -> BatchedPipeline | BatchedViews:
    """The batched twin of a per-image training transform (see the module docstring's table).

    Args:
        transform: a ``v2`` transform or ``v2.Compose`` of them (one view), a multi-view wrapper
            (``TwoViews``, ``MultiCrop``, ``OneView``), or ``None`` (the images as they are).

    Returns:
        a :class:`BatchedPipeline` (one view) or :class:`BatchedViews` (a list of views).

    Raises:
        UnsupportedTransform: an operation with no batched twin, or a crop after the first operation.
    """
    from torchvision.transforms import v2

    from mixlab.transforms.views import MultiCrop, OneView, TwoViews

    if isinstance(transform, TwoViews):
        return BatchedViews([_single(transform.first), _single(transform.second)])
    if isinstance(transform, MultiCrop):
        return BatchedViews([*(_single(t) for t in transform.globals),
                             *(_single(transform.local) for _ in range(transform.num_local))])
    if isinstance(transform, OneView):
        return BatchedViews([_single(transform.transform)])
    if transform is None or isinstance(transform, (v2.Transform, v2.Compose)):
        return _single(transform)
    raise UnsupportedTransform(f"{type(transform).__name__} has no batched twin")


def _single(transform: Callable | None) -> BatchedPipeline:
    from torchvision.transforms import v2

    if transform is None:
        return BatchedPipeline(KeepSize(), [])
    stack = [transform]
    flat: list[Any] = []
    while stack:  # nested Compose flattened in order
        t = stack.pop(0)
        if isinstance(t, v2.Compose):
            stack = list(t.transforms) + stack
        else:
            flat.append(t)
    geometry = _geometry(flat[0]) if flat else None
    rest = flat[1:] if geometry is not None else flat
    for t in rest:
        if _geometry_like(t):
            raise UnsupportedTransform(f"{type(t).__name__} after the first operation has no batched twin "
                                       f"(the crop must come first)")
    return BatchedPipeline(geometry if geometry is not None else KeepSize(), [_pixel_op(t) for t in rest])


def _geometry_like(t: Any) -> bool:
    try:
        return _geometry(t) is not None
    except UnsupportedTransform:
        return True
