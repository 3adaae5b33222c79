"""Multi-view augmentation for self-supervised learning: BYOL's two asymmetric views, DINO's
multi-crop, MoCo v2's views (built from torchvision ``transforms.v2``) and the one-view wrapper of
MAE (:class:`OneView`).

SDMP (§4.1) follows BYOL's augmentation (Grill et al. 2020, Table 6): random resized crop, flip,
colour jitter, grayscale, Gaussian blur and solarisation, with two *asymmetric* views (view 1
always blurred and never solarised; view 2 blurred with p = 0.1 and solarised with p = 0.2).
Sized for small images: the blur kernel is about 10 % of the image side, odd, at least 3 (23 px at
224 in BYOL, 3 px at 32 here), σ ~ U(0.1, 2.0). Inputs and outputs are ``uint8`` C×H×W tensors
(the engine normalises on the device) or PIL images; randomness follows the torch seed, as every
v2 transform.

MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning", its
``--aug-plus``): random resized crop at scale (0.2, 1), colour jitter (0.4, 0.4, 0.4, 0.1) with
p = 0.8, grayscale p = 0.2, Gaussian blur σ ~ U(0.1, 2.0) with p = 0.5, horizontal flip, in that
order, the same pipeline for both views (:func:`mocov2_view`). :class:`MixedQuery` is CropMix's
contrastive query (Han et al. 2022, §5): two such views of one image from two scale ranges, the
second's CutMix patch pasted into the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mixlab.core.boxes import rand_box
from mixlab.transforms.cropmix import ATTEMPTS, check_ratio, check_scale, crop_from_uniforms, cutmix_views

__all__ = ["byol_view", "mocov2_view", "mocov2_augment", "MixedQuery", "OneView", "TwoViews", "MultiCrop",
           "blur_kernel_size"]

#: BYOL Table 6: colour jitter strengths (brightness, contrast, saturation, hue) and probabilities
JITTER = (0.4, 0.4, 0.2, 0.1)
JITTER_P, GRAY_P = 0.8, 0.2
BLUR_P = (1.0, 0.1)  # view 1, view 2
SOLARIZE_P = (0.0, 0.2)
#: MoCo v2's colour jitter (SimCLR's strengths, saturation 0.4 where BYOL has 0.2) and blur probability
MOCO_JITTER = (0.4, 0.4, 0.4, 0.1)
MOCO_BLUR_P = 0.5


def blur_kernel_size(size: int) -> int:
    """An odd Gaussian-blur kernel of about 10 % of the image side, at least 3 (23 at 224)."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 else k + 1


def _check_view_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    return size


def _check_view_scale(scale: Any) -> tuple[float, float]:
    if not (isinstance(scale, (tuple, list)) and len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale!r}")
    return float(scale[0]), float(scale[1])


def byol_view(size: int, view: int, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """One of BYOL's two augmentation pipelines (``view`` 1 or 2) for ``size``×``size`` outputs.

    Raises:
        ValueError: ``view`` not 1 or 2, ``size`` < 8, or ``scale`` outside (0, 1].
    """
    if view not in (1, 2):
        raise ValueError(f"view must be 1 or 2 (BYOL's two asymmetric pipelines), got {view!r}")
    _check_view_size(size)
    _check_view_scale(scale)
    ops: list[Any] = [
        v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAY_P),
    ]
    blur_p, solarize_p = BLUR_P[view - 1], SOLARIZE_P[view - 1]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # uint8 images: threshold 0.5 of 255
    return v2.Compose(ops)


class OneView:
    """``image -> [transform(image)]``: the one-view batch of a single-view framework (MAE)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> list[Any]:
        return [self.transform(image)]

    def __repr__(self) -> str:
        return f"OneView({self.transform!r})"


def mocov2_augment(size: int) -> v2.Compose:
    """MoCo v2's augmentation after the crop, for ``size``×``size`` views: colour jitter
    (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, Gaussian blur (kernel
    :func:`blur_kernel_size`, σ ~ U(0.1, 2.0)) with p = 0.5, horizontal flip.

    Raises:
        ValueError: ``size`` < 8.
    """
    _check_view_size(size)
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(*MOCO_JITTER)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAY_P),
        v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=MOCO_BLUR_P),
        v2.RandomHorizontalFlip(),
    ])


def mocov2_view(size: int, scale: tuple[float, float] = (0.2, 1.0)) -> v2.Compose:
    """MoCo v2's view: ``RandomResizedCrop(size, scale)`` (bilinear, as MoCo's torchvision default),
    then :func:`mocov2_augment`.

    Raises:
        ValueError: ``size`` < 8, or ``scale`` outside (0, 1].
    """
    scale = _check_view_scale(scale)
    crop = v2.RandomResizedCrop(_check_view_size(size), scale=scale, antialias=True)
    return v2.Compose([crop, *mocov2_augment(size).transforms])


class MixedQuery(v2.Transform):
    """CropMix's query view for contrastive learning (Han et al. 2022, §5 and Appendix B.2).

    Two random resized crops of one image, crop 1 (the base) with its area fraction drawn from
    ``base_scale`` and crop 2 (the patch source) from ``patch_scale``, each resized to ``size``
    and given its own draw of ``augment`` (MoCo v2's full augmentation); then CutMix
    (Appendix A): with λ ~ U(0, 1), a box of side ⌊√(1 − λ) · side⌋, uniform centre, clipped to
    the image, is copied from view 2 into view 1, which keeps the fraction λ (up to the clipping).
    CropMix uses ``base_scale=(0.2, 0.6), patch_scale=(0.6, 1.0)`` (the patch comes from the
    large-scale view, as the authors' code); ScaleMix (Wang et al. 2022) draws both crops from
    (0.2, 1).

    One image in (``uint8`` or float C×H×W tensor, ``tv_tensors.Image`` or PIL image), one
    ``size``×``size`` image of the same type out; everything else in the sample passes through.
    Randomness comes from the global torch RNG (``torch.manual_seed``, the engine's per-image
    seeds). :meth:`make_params` draws the two crops (torchvision's RandomResizedCrop sampler,
    :func:`~mixlab.transforms.cropmix.crop_from_uniforms`), λ and the box; each view's
    augmentation draws its own parameters when applied.

    Args:
        size: output side (>= 8).
        base_scale, patch_scale: area-fraction ranges of crop 1 and crop 2, 0 < min <= max <= 1.
        ratio: aspect-ratio range (width / height) of both crops, log-uniform. Default (3/4, 4/3).
        augment: the per-view transform after the crop; default :func:`mocov2_augment` (``size``).

    Raises:
        ValueError, TypeError: a bad size, scale or ratio.

    Example:
        >>> query = MixedQuery(32, (0.2, 0.6), (0.6, 1.0))
        >>> query(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, F.is_pure_tensor)

    def __init__(self, size: int, base_scale: tuple[float, float] = (0.2, 0.6),
                 patch_scale: tuple[float, float] = (0.6, 1.0), *,
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0), augment: Callable | None = None) -> None:
        super().__init__()
        self.size = _check_view_size(size)
        self.base_scale = check_scale(base_scale, "base_scale")
        self.patch_scale = check_scale(patch_scale, "patch_scale")
        self.ratio = check_ratio(ratio)
        self.augment = augment if augment is not None else mocov2_augment(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """``{"crops": [base crop, patch crop] as dicts (top, left, height, width), "lam": λ,
        "box": (x1, y1, x2, y2) of the patch}``."""
        _, height, width = v2.query_chw(flat_inputs)
        k = 2 * ATTEMPTS + 2
        u = torch.rand(2 * k, dtype=torch.float64).tolist()
        crops = [crop_from_uniforms(u[:k], *self.base_scale, height, width, self.ratio),
                 crop_from_uniforms(u[k:], *self.patch_scale, height, width, self.ratio)]
        lam = float(torch.rand((), dtype=torch.float64))
        return {"crops": crops, "lam": lam, "box": rand_box(1.0 - lam, self.size, self.size)}

    def _mix(self, image: Tensor, params: dict[str, Any]) -> Tensor:
        base, patch = (self.augment(F.resized_crop(image, **crop, size=[self.size, self.size], antialias=True))
                       for crop in params["crops"])
        return cutmix_views(base, patch, params["box"], patch_from_second=True)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return F.to_pil_image(self._mix(F.pil_to_tensor(inpt), params), mode=inpt.mode)
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(self._mix(inpt.as_subclass(Tensor), params), like=inpt)
        return self._mix(inpt, params)

    def extra_repr(self) -> str:
        return (f"size={self.size}, base_scale={self.base_scale}, patch_scale={self.patch_scale}, "
                f"ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g})")


class TwoViews:
    """``image -> [view1(image), view2(image)]``; default BYOL's asymmetric pair at ``size``.

    Args:
        size: output side (ignored when both transforms are given).
        first, second: the two per-view transforms (default :func:`byol_view` 1 and 2).
    """

    def __init__(self, size: int = 32, first: Callable | None = None, second: Callable | None = None) -> None:
        self.first = first if first is not None else byol_view(size, 1)
        self.second = second if second is not None else byol_view(size, 2)

    def __call__(self, image: Any) -> list[Any]:
        return [self.first(image), self.second(image)]

    def __repr__(self) -> str:
        return f"TwoViews(first={self.first!r}, second={self.second!r})"


class MultiCrop:
    """DINO's multi-crop: ``image -> [global 1, global 2, local 1, ..., local n]``.

    The two global views are BYOL's pipelines at ``global_size`` over ``global_scale``; the local
    views use view 2's pipeline at ``local_size`` over ``local_scale`` (DINO: (0.4, 1) and
    (0.05, 0.4), 224 and 96 px; for 32 px inputs 32 and 16 px).

    Raises:
        ValueError: ``num_local`` < 0, or bad sizes / scales (as :func:`byol_view`).
    """

    def __init__(self, global_size: int = 32, local_size: int = 16, num_local: int = 6,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4)) -> None:
        if isinstance(num_local, bool) or not isinstance(num_local, int) or num_local < 0:
            raise ValueError(f"num_local must be an int >= 0, got {num_local!r}")
        self.globals: Sequence[Callable] = (byol_view(global_size, 1, global_scale),
                                            byol_view(global_size, 2, global_scale))
        self.local = byol_view(local_size, 2, local_scale)
        self.num_local = num_local

    def __call__(self, image: Any) -> list[Any]:
        return [t(image) for t in self.globals] + [self.local(image) for _ in range(self.num_local)]

    def __repr__(self) -> str:
        return f"MultiCrop(globals=2, num_local={self.num_local}, local={self.local!r})"
