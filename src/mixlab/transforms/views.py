"""Multi-view augmentation for self-supervised learning: BYOL's two asymmetric views, DINO's
multi-crop (built from torchvision ``transforms.v2``) and the one-view wrapper of MAE.

SDMP (§4.1) follows BYOL's augmentation (Grill et al. 2020, Table 6): random resized crop, flip,
colour jitter, grayscale, Gaussian blur and solarisation, with two *asymmetric* views (view 1
always blurred and never solarised; view 2 blurred with p = 0.1 and solarised with p = 0.2).
Sized for small images: the blur kernel is about 10 % of the image side, odd, at least 3 (23 px at
224 in BYOL, 3 px at 32 here), σ ~ U(0.1, 2.0). Inputs and outputs are ``uint8`` C×H×W tensors
(the engine normalises on the device) or PIL images; randomness follows the torch seed, as every
v2 transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision.transforms import v2

__all__ = ["byol_view", "OneView", "TwoViews", "MultiCrop", "blur_kernel_size"]

#: BYOL Table 6: colour jitter strengths (brightness, contrast, saturation, hue) and probabilities
JITTER = (0.4, 0.4, 0.2, 0.1)
JITTER_P, GRAY_P = 0.8, 0.2
BLUR_P = (1.0, 0.1)  # view 1, view 2
SOLARIZE_P = (0.0, 0.2)


def blur_kernel_size(size: int) -> int:
    """An odd Gaussian-blur kernel of about 10 % of the image side, at least 3 (23 at 224)."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 else k + 1


def byol_view(size: int, view: int, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """One of BYOL's two augmentation pipelines (``view`` 1 or 2) for ``size``×``size`` outputs.

    Raises:
        ValueError: ``view`` not 1 or 2, ``size`` < 8, or ``scale`` outside (0, 1].
    """
    if view not in (1, 2):
        raise ValueError(f"view must be 1 or 2 (BYOL's two asymmetric pipelines), got {view!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale!r}")
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
