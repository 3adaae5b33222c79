"""Input validation shared by every mixer and method.

Every check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, wrong value)
with a message that names the argument, the accepted form and what was received, *before* any
output is produced.
"""

from __future__ import annotations

import math
import sys
from numbers import Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IncompatibleModelError",
    "check_alpha",
    "check_bool",
    "check_nonnegative",
    "check_probability",
    "check_range",
    "check_real",
    "check_images",
    "check_labels",
    "check_label_maps",
    "check_choice",
    "check_ignore_index",
    "is_label_map",
    "reads_values",
]


class IncompatibleModelError(TypeError, ValueError):
    """A model a method cannot train (MAE given a CNN): a ``TypeError`` (the wrong kind of model),
    and a ``ValueError`` too, so that the commands report it as a bad input, not a crash."""


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """A concentration parameter: a finite real number > 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"{name} must be a real number > 0, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {alpha}")
    return alpha


def check_real(value: Any, name: str, low: float, high: float, low_open: bool = False,
               high_open: bool = False) -> float:
    """A finite real number in the interval from ``low`` to ``high`` (open ends as told), as a float.

    Raises:
        TypeError: not a real number (bools refused), naming ``name`` and the interval.
        ValueError: outside the interval or not finite, naming ``name``, the interval and the value.
    """
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number in {interval}, got {type(value).__name__}")
    value = float(value)
    ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok or not math.isfinite(value):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_nonnegative(value: float, name: str) -> float:
    """A finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__}")
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_probability(p: float, name: str = "p") -> float:
    """A probability in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def check_range(
    value: tuple[float, float], name: str, low: float = 0.0, high: float = 1.0
) -> tuple[float, float]:
    """An interval ``(a, b)`` with ``low <= a <= b <= high``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (min, max), got {value!r}")
    a, b = (float(v) for v in value)
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got ({a}, {b})")
    return a, b


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool; ``TypeError`` naming ``name`` otherwise (1 and "yes" are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def reads_values(tensor: Tensor, check: bool | None) -> bool:
    """Whether a check may read ``tensor``'s values: always if ``check`` is True, never if False;
    if None, only when it lives on the CPU and no ``torch.compile`` trace is running (reading a
    device tensor waits for the device; reading any tensor breaks a compiled graph)."""
    if check is None:
        return tensor.device.type == "cpu" and not torch.compiler.is_compiling()
    return check


def check_images(images: Tensor, check_finite: bool = False, min_batch: int = 1) -> None:
    """A batch (B, C, H, W) of floating-point or uint8 images with B >= ``min_batch``.

    ``check_finite`` also rejects NaN/inf (a full reduction, read on the host).
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have 4 dims (B, C, H, W), got {images.ndim} dims with shape {tuple(images.shape)}")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise TypeError(
            f"images must be floating-point (float32/float16/bfloat16/float64) or uint8, got {images.dtype}; "
            "convert with transforms.v2.ToDtype(torch.float32, scale=True)"
        )
    if images.shape[0] < min_batch:
        raise ValueError(f"images must hold a batch of at least {min_batch} images, got batch size {images.shape[0]}")
    if check_finite and images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values (check_finite=True)")


def check_labels(
    labels: Tensor, batch_size: int, num_classes: int, check_finite: bool = False, check_values: bool | None = None
) -> None:
    """Integer labels (B,) in [0, K), or float labels (B, K) >= 0: probabilities, or multi-hot /
    multi-label targets whose rows need not sum to 1.

    Shapes and dtypes are always checked. The values (labels in range, no negative entry) are
    checked as :func:`reads_values` says for ``check_values`` (default: on the CPU, outside
    ``torch.compile``); ``check_finite`` also rejects NaN/inf in float labels.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (B,) or (B, K), got {type(labels).__name__}")
    if labels.ndim not in (1, 2):
        raise ValueError(f"labels must be (B,) class indices, (B, K) float targets or (B, H, W) label maps, "
                         f"got shape {tuple(labels.shape)}")
    if labels.shape[0] != batch_size:
        raise ValueError(f"labels length must match the batch size of the images: {labels.shape[0]} != {batch_size}")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"(B,) labels must be integer class indices, got {labels.dtype}")
        if batch_size and reads_values(labels, check_values):
            lo, hi = torch.aminmax(labels)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"labels must be class indices in [0, {num_classes}) for num_classes={num_classes}, "
                    f"got values in [{lo}, {hi}]"
                )
        return
    if not labels.is_floating_point():
        raise TypeError(f"(B, K) labels must be floating-point targets, got {labels.dtype}")
    if labels.shape[1] != num_classes:
        raise ValueError(f"(B, K) labels must have width num_classes={num_classes}, got {labels.shape[1]}")
    if check_finite and not bool(torch.isfinite(labels).all()):
        raise ValueError("labels contain NaN or infinite values (check_finite=True)")
    if reads_values(labels, check_values) and bool((labels < 0).any()):
        raise ValueError("(B, K) labels must be non-negative")


def is_label_map(labels: Any) -> bool:
    """Whether ``labels`` are per-pixel label maps (segmentation targets) rather than class labels:
    a ``tv_tensors.Mask``, or any tensor with 3 dims (B, H, W).

    The one place that decides "labels are dense": the mixers, :class:`~mixlab.core.result.MixResult`
    and the losses all ask it. A ``tv_tensors.Mask`` is recognised without importing torchvision
    (if one exists, torchvision is imported already).
    """
    if not isinstance(labels, Tensor):
        return False
    if labels.ndim == 3:
        return True
    tv_tensors = sys.modules.get("torchvision.tv_tensors")
    return tv_tensors is not None and isinstance(labels, tv_tensors.Mask)


def check_ignore_index(ignore_index: Any, num_classes: int) -> int:
    """The label-map value that marks pixels without a class: an int outside [0, K) (255, VOC's,
    or -1, ...)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index must lie outside the classes [0, {num_classes}) (e.g. 255 or -1), "
                         f"got {ignore_index}")
    return ignore_index


def check_label_maps(
    maps: Tensor, images: Tensor, num_classes: int, ignore_index: int, check_values: bool | None = None
) -> None:
    """Per-pixel class indices (B, H, W) of an integer dtype, one map per image of ``images``
    (B, C, H, W), each value in [0, K) or ``ignore_index``.

    Shapes and dtypes are always checked; values as :func:`reads_values` says for ``check_values``.

    Raises:
        TypeError: not an integer tensor.
        ValueError: a shape that is not the images' (B, H, W), or a value outside the classes.
    """
    expected = (images.shape[0], *images.shape[-2:])
    if maps.ndim != 3:
        raise ValueError(f"label maps must be (B, H, W) class indices, one per image: expected {expected}, "
                         f"got shape {tuple(maps.shape)}" + (" (squeeze the channel dim)" if maps.ndim == 4 else ""))
    if tuple(maps.shape) != expected:
        raise ValueError(f"label maps must have the images' batch size and size (B, H, W) = {expected}, "
                         f"got shape {tuple(maps.shape)}")
    if maps.is_floating_point() or maps.is_complex() or maps.dtype == torch.bool:
        raise TypeError(f"label maps must hold integer class indices (uint8, int32, int64), got {maps.dtype}")
    check_ignore_index(ignore_index, num_classes)
    if maps.numel() and reads_values(maps, check_values):
        lo, hi = (int(v) for v in torch.aminmax(maps))
        if lo >= 0 and hi < num_classes:  # one pass when no pixel is ignored
            return
        if lo >= 0 and hi < 1 << 16:  # one counting pass over the map
            present = torch.bincount(maps.flatten(), minlength=hi + 1).nonzero().squeeze(1)
            bad = present[(present >= num_classes) & (present != ignore_index)]
        else:
            outside = ((maps < 0) | (maps >= num_classes)) & (maps != ignore_index)
            bad = maps[outside].unique()
        if bad.numel():
            raise ValueError(f"label maps must hold class indices in [0, {num_classes}) or ignore_index="
                             f"{ignore_index}, got the values {bad[:8].tolist()}")
