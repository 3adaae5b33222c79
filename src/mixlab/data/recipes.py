"""Standard transforms (``torchvision.transforms.v2`` on ``uint8`` CHW tensors) and normalisation.

Two ways to normalise:

* per item, in the dataset transform (:func:`cifar_train_transform`, :func:`eval_transform`):
  the DataLoader then ships ``float32`` batches;
* on the device (faster, 4x less host-to-device traffic): keep the dataset's items ``uint8`` (only
  geometric augmentation in the transform, e.g. :func:`cifar_train_transform` with
  ``normalize=False``) and call :func:`normalize_on_device` on each batch after ``.to(device)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

__all__ = ["cifar_train_transform", "eval_transform", "to_float_normalized", "denormalize", "normalize_on_device"]


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except TypeError:
        raise TypeError(f"mean and std must be sequences of floats (one per channel), got {mean!r}, {std!r}") from None
    if len(mean) == 0 or len(mean) != len(std):
        raise ValueError(f"mean and std must have one value per channel (same length >= 1), got {mean}, {std}")
    if any(not s > 0 for s in std):
        raise ValueError(f"std values must be > 0, got {std}")
    return mean, std


def to_float_normalized(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """``uint8`` -> ``float32`` in [0, 1] -> ``Normalize(mean, std)``."""
    mean, std = _check_stats(mean, std)
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Evaluation transform: only :func:`to_float_normalized`."""
    return to_float_normalized(mean, std)


def cifar_train_transform(mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          size: int = 32, padding: int = 4, normalize: bool = True,
                          padding_mode: str = "constant") -> v2.Compose:
    """The standard CIFAR augmentation: ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``,
    then ``ToDtype(float32, scale=True)`` + ``Normalize``.

    Args:
        mean, std: per-channel statistics in [0, 1] units (required when ``normalize``).
        size, padding: crop size and padding.
        normalize: False keeps ``uint8`` output, for :func:`normalize_on_device`.
        padding_mode: ``"constant"`` (zeros, default) or ``"reflect"`` (openmixup's CIFAR pipeline).

    Raises:
        ValueError: ``normalize`` without ``mean``/``std``, invalid statistics or ``padding_mode``.
    """
    if padding_mode not in ("constant", "reflect"):
        raise ValueError(f"padding_mode must be 'constant' or 'reflect', got {padding_mode!r}")
    geometric = [v2.RandomCrop(size, padding=padding, padding_mode=padding_mode), v2.RandomHorizontalFlip()]
    if not normalize:
        return v2.Compose(geometric)
    if mean is None or std is None:
        raise ValueError("cifar_train_transform needs mean and std when normalize=True")
    return v2.Compose([*geometric, *to_float_normalized(mean, std).transforms])


def _checked(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = _check_stats(mean, std)
    if x.dim() < 3 or x.shape[-3] != len(mean):
        raise ValueError(f"images must be (..., C, H, W) with C = {len(mean)} channels, got shape {tuple(x.shape)}")
    return mean, std


def _stats_like(x: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return _stats_on(*_checked(x, mean, std), x.device, dtype)


@functools.lru_cache(maxsize=64)
def _stats_on(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
              ) -> tuple[Tensor, Tensor]:
    """(C, 1, 1) ``mean`` and ``std`` on ``device``, made once: a batch normalised per training step
    copies nothing from the host (and so never waits for the device). Not to be changed in place."""
    shape = (len(mean), 1, 1)
    return (torch.tensor(mean, dtype=dtype, device=device).view(shape),
            torch.tensor(std, dtype=dtype, device=device).view(shape))


@functools.lru_cache(maxsize=64)
def _shift_scale(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(255 mean, 1 / (255 std))`` in float32 on ``device``, made once (see :func:`_stats_on`)."""
    m, s = _stats_on(mean, std, device, torch.float32)
    return m * 255.0, 1.0 / (s * 255.0)


def normalize_on_device(images: Tensor, mean: Sequence[float], std: Sequence[float],
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """``(images / 255 - mean) / std`` for a ``uint8`` batch, on the images' device, in ``dtype``.

    The per-channel tensors are made once per ``(mean, std, device)``: a call (once per training
    step) copies nothing from the host, so it never waits for the device.

    Args:
        images: ``uint8`` tensor ``(..., C, H, W)`` (e.g. a batch just moved to the GPU).
        mean, std: per-channel statistics in [0, 1] units.
        dtype: floating output dtype.

    Raises:
        TypeError: ``images`` is not a ``uint8`` tensor or ``dtype`` is not floating.
        ValueError: channel count does not match ``mean``/``std``.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor, got {getattr(images, 'dtype', type(images).__name__)}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    shift, scale = _shift_scale(*_checked(images, mean, std), images.device)
    # (x / 255 - m) / s == (x - 255 m) * (1 / (255 s)): one subtract and one multiply
    return images.to(torch.float32).sub_(shift).mul_(scale).to(dtype)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float], clamp: bool = True) -> Tensor:
    """Inverse of ``Normalize``: ``images * std + mean`` (for plots), optionally clamped to [0, 1].

    Args:
        images: float tensor ``(..., C, H, W)``.

    Raises:
        TypeError: ``images`` is not a floating tensor.
    """
    if not isinstance(images, Tensor) or not images.dtype.is_floating_point:
        raise TypeError(f"images must be a floating tensor, got {getattr(images, 'dtype', type(images).__name__)}")
    m, s = _stats_like(images, mean, std, images.dtype)
    out = images * s + m
    return out.clamp_(0.0, 1.0) if clamp else out
