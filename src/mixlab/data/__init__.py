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

Dense targets (``build_dataset(name, split, root, task=...)``; items in torchvision's v2 formats,
:mod:`mixlab.data.dense`):

============  ==========  ========================================================================
task          name        dataset
============  ==========  ========================================================================
segmentation  synthetic   :meth:`SyntheticShapes.segmentation`: semantic maps, background 0
segmentation  voc         :func:`load_voc_segmentation`: ``root`` holds ``VOCdevkit/VOC2012``
detection     synthetic   :meth:`SyntheticShapes.detection` (``objects=4`` for several per image)
detection     coco        :func:`load_coco_detection`: ``root`` holds ``<split>2017/`` and
                          ``annotations/`` (needs pycocotools: ``mixlab[detection]``)
============  ==========  ========================================================================
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
    "DATASETS", "DENSE_DATASETS", "TASKS", "build_dataset",
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

#: what ``build_dataset(..., task=)`` builds
TASKS = ("classification", "segmentation", "detection")


def _synthetic_segmentation(split: str, root=None, transforms=None, **kwargs):
    return SyntheticShapes(split, **kwargs).segmentation(transforms)


def _synthetic_detection(split: str, root=None, transforms=None, with_masks: bool = True, **kwargs):
    return SyntheticShapes(split, **kwargs).detection(transforms, with_masks)


def _voc(split: str, root=None, **kwargs):
    from .voc import load_voc_segmentation

    return load_voc_segmentation(_need_root("voc", root, "the folder holding VOCdevkit/VOC2012"), split, **kwargs)


def _coco(split: str, root=None, **kwargs):
    from .coco import load_coco_detection

    return load_coco_detection(_need_root("coco", root, "the folder holding <split>2017/ and annotations/"), split,
                               **kwargs)


#: task -> name -> constructor of the datasets with dense targets (:mod:`mixlab.data.dense`)
DENSE_DATASETS: dict[str, dict[str, Callable]] = {
    "segmentation": {"synthetic": _synthetic_segmentation, "voc": _voc},
    "detection": {"synthetic": _synthetic_detection, "coco": _coco},
}


def build_dataset(name: str, split: str, root: str | os.PathLike | None = None, task: str = "classification",
                  **kwargs):
    """Build a dataset from :data:`DATASETS` (``task="classification"``, an
    :class:`ImageTensorDataset`) or :data:`DENSE_DATASETS` (``"segmentation"``, ``"detection"``:
    items in torchvision's v2 formats, :mod:`mixlab.data.dense`) by name.

    Args:
        name: a name of the task's registry (case-insensitive).
        split: ``"train"``/``"test"`` (ImageFolder: any split folder name; VOC/COCO: ``"val"`` too).
        root: data location (not used by ``synthetic``).
        task: ``"classification"`` (default), ``"segmentation"`` or ``"detection"``.
        **kwargs: passed to the dataset (``num_per_class``, ``seed``, ``download``, ``transform``;
            dense datasets: ``transforms``, and ``objects`` for the synthetic shapes, ...).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown ``task`` or ``name`` (lists the valid names and the nearest one), or a
            missing ``root``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    registry = DATASETS if task == "classification" else DENSE_DATASETS[task]
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(registry)}, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in registry:
        near = difflib.get_close_matches(key, registry, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        what = "dataset name" if task == "classification" else f"{task} dataset name"
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(sorted(registry))}{hint}")
    return registry[key](split, root, **kwargs)
