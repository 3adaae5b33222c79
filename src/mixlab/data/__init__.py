"""Datasets as decoded ``uint8`` tensors in memory, standard transforms and sampling helpers.

Every dataset is an :class:`ImageTensorDataset`: ``uint8 (N, C, H, W)`` images decoded once,
``int64`` labels, ``classes``, ``mean``/``std``; ``dataset[i] = (transform(image), label)``.

>>> train = build_dataset("synthetic", "train", num_per_class=100)
>>> train = train.with_transform(cifar_train_transform(train.mean, train.std))

Names in :data:`DATASETS` (``build_dataset(name, split, root=None, **kwargs)``):

=============  ==============================================================================
synthetic      :class:`SyntheticShapes` (generated; ``root`` is ignored)
cifar10        :func:`load_cifar10`: ``root`` holds ``cifar-10-batches-py`` (``download=True``)
cifar100       :func:`load_cifar100`: ``root`` holds ``cifar-100-python``
imagefolder    :class:`ImageFolder`: ``root`` is a directory or ``.zip`` of ``<split>/<class>/<img>``
cub200         :func:`load_cub`: ``root`` holds ``CUB_200_2011`` (``download=True``), with boxes
=============  ==============================================================================
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

from .cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, load_cifar, load_cifar10, load_cifar100
from .cub import CUB_MEAN, CUB_STD, load_cub
from .folder import ImageFolder, cache_dir
from .recipes import cifar_train_transform, denormalize, eval_transform, normalize_on_device, to_float_normalized
from .sampling import class_balanced_subset, eval_loader, seed_worker
from .synthetic import SHAPES, SYNTHETIC_MEAN, SYNTHETIC_STD, SyntheticShapes
from .tensor_dataset import EncodedImages, ImageTensorDataset

__all__ = [
    "DATASETS", "build_dataset",
    "ImageTensorDataset", "EncodedImages", "ImageFolder", "SyntheticShapes", "SHAPES",
    "load_cifar", "load_cifar10", "load_cifar100", "load_cub", "cache_dir",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "SYNTHETIC_MEAN", "SYNTHETIC_STD",
    "CUB_MEAN", "CUB_STD",
    "cifar_train_transform", "eval_transform", "to_float_normalized", "denormalize", "normalize_on_device",
    "class_balanced_subset", "seed_worker", "eval_loader",
]


def _need_root(name: str, root: str | os.PathLike | None, what: str) -> str | os.PathLike:
    if root is None:
        raise ValueError(f"root is required for dataset {name!r}: {what}")
    return root


def _synthetic(split: str, root=None, **kwargs) -> ImageTensorDataset:
    return SyntheticShapes(split, **kwargs)


def _cifar10(split: str, root=None, **kwargs) -> ImageTensorDataset:
    return load_cifar10(_need_root("cifar10", root, "the folder holding cifar-10-batches-py"), split, **kwargs)


def _cifar100(split: str, root=None, **kwargs) -> ImageTensorDataset:
    return load_cifar100(_need_root("cifar100", root, "the folder holding cifar-100-python"), split, **kwargs)


def _imagefolder(split: str, root=None, **kwargs) -> ImageTensorDataset:
    root = _need_root("imagefolder", root, "a directory or .zip of <split>/<class>/<image>")
    return ImageFolder(root, split, **kwargs)


def _cub200(split: str, root=None, **kwargs) -> ImageTensorDataset:
    return load_cub(_need_root("cub200", root, "the folder holding CUB_200_2011"), split, **kwargs)


DATASETS: dict[str, Callable[..., ImageTensorDataset]] = {
    "synthetic": _synthetic,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "imagefolder": _imagefolder,
    "cub200": _cub200,
}


def build_dataset(name: str, split: str, root: str | os.PathLike | None = None, **kwargs) -> ImageTensorDataset:
    """Build a dataset from :data:`DATASETS` by name.

    Args:
        name: one of ``DATASETS`` (case-insensitive).
        split: ``"train"``/``"test"`` (ImageFolder: any split folder name).
        root: data location (not used by ``synthetic``).
        **kwargs: passed to the dataset (``num_per_class``, ``seed``, ``download``, ``transform``, ...).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown ``name`` (lists the valid names and the nearest one), or a missing ``root``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(DATASETS)}, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in DATASETS:
        near = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(sorted(DATASETS))}{hint}")
    return DATASETS[key](split, root, **kwargs)
