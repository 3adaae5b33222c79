"""Datasets with dense targets, in torchvision's v2 formats, and the detection collate.

* Segmentation items are ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask (H, W))``: class
  indices with 0 = background and ``ignore_index`` (255) for pixels without a class.
* Detection items are ``(tv_tensors.Image, target)`` with torchvision's detection target
  ``{"boxes": BoundingBoxes XYXY float32, "labels": int64 (N,), "masks": Mask uint8 (N, H, W),
  "image_id": int}``; labels count from 1 (0 is the detectors' background).

Both take ``transforms``, called as ``transforms(image, target)`` (a ``v2.Compose``), and carry
``classes`` (index -> name, background first), ``num_classes``, ``mean``/``std`` (for normalising
on the device) and, for segmentation, ``ignore_index``. Mixing happens after batching:
``mixlab.CutMix(num_classes)(images, masks)`` for segmentation, the detection mixers
(:mod:`mixlab.mixers.detection`) on :func:`detection_collate`'s lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

__all__ = ["SegmentationDataset", "DetectionDataset", "detection_collate"]


def detection_collate(batch: Sequence[tuple]) -> tuple[list, list]:
    """``(images, targets)`` lists from a list of ``(image, target)`` samples (torchvision's
    detection references' ``tuple(zip(*batch))``, as lists): what the detection models and
    :mod:`mixlab.mixers.detection` take."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class SegmentationDataset(Dataset):
    """In-memory segmentation pairs: uint8 images (N, C, H, W) and label maps (N, H, W).

    Args:
        images: uint8 (N, C, H, W).
        masks: integer (N, H, W) class indices in [0, K) or ``ignore_index``.
        classes: the K class names, background first.
        transforms: ``transforms(image, mask)`` on ``tv_tensors`` (optional).
        mean, std: per-channel statistics in [0, 1] units.
        ignore_index: the value of pixels without a class.

    Raises:
        TypeError, ValueError: mismatched shapes or dtypes.
    """

    def __init__(self, images: Tensor, masks: Tensor, classes: Sequence[str], transforms: Callable | None = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                 ignore_index: int = 255) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {getattr(images, 'dtype', type(images))}")
        if not isinstance(masks, Tensor) or masks.is_floating_point() or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"masks must be integer (N, H, W) = {(images.shape[0], *images.shape[2:])}, got "
                             f"{tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__}")
        self.images, self.masks, self.classes = images, masks, list(classes)
        self.transforms, self.mean, self.std, self.ignore_index = transforms, tuple(mean), tuple(std), ignore_index

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple:
        image, mask = tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.masks[i])
        return self.transforms(image, mask) if self.transforms is not None else (image, mask)

    def __repr__(self) -> str:
        return f"SegmentationDataset(n={len(self)}, classes={self.num_classes}, size={tuple(self.images.shape[2:])})"


class DetectionDataset(Dataset):
    """In-memory detection samples: uint8 images (N, C, H, W) and up to M instances per image.

    Args:
        images: uint8 (N, C, H, W).
        instance_masks: bool (N, M, H, W) visible masks.
        instance_labels: int64 (N, M) class indices in [0, K) of the instances, -1 where none.
        instance_boxes: int64 (N, M, 4) half-open ``(x1, y1, x2, y2)`` pixel boxes.
        classes: the K object class names (the items' labels are index + 1; ``classes`` of the
            dataset then lists ``"background"`` first).
        transforms: ``transforms(image, target)`` on ``tv_tensors`` (optional).
        with_masks: include the instance masks in the targets (Copy-Paste needs them).
        mean, std: per-channel statistics in [0, 1] units.
    """

    def __init__(self, images: Tensor, instance_masks: Tensor, instance_labels: Tensor, instance_boxes: Tensor,
                 classes: Sequence[str], transforms: Callable | None = None, with_masks: bool = True,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)) -> None:
        n, m = instance_labels.shape
        if instance_masks.shape != (n, m, *images.shape[2:]) or instance_boxes.shape != (n, m, 4) or images.shape[0] != n:
            raise ValueError(f"instance arrays must be (N, M, H, W), (N, M), (N, M, 4) for N = {images.shape[0]} images "
                             f"of {tuple(images.shape[2:])}, got {tuple(instance_masks.shape)}, {(n, m)}, "
                             f"{tuple(instance_boxes.shape)}")
        self.images, self.instance_masks = images, instance_masks
        self.instance_labels, self.instance_boxes = instance_labels, instance_boxes
        self.classes = ["background", *classes]
        self.transforms, self.with_masks, self.mean, self.std = transforms, with_masks, tuple(mean), tuple(std)

    @property
    def num_classes(self) -> int:
        """Classes of the detectors' head, background included."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def target(self, i: int) -> dict:
        """Item i's target (before ``transforms``)."""
        keep = self.instance_labels[i] >= 0
        h, w = self.images.shape[2:]
        t = {"boxes": tv_tensors.BoundingBoxes(self.instance_boxes[i][keep].float(), format="XYXY", canvas_size=(h, w)),
             "labels": self.instance_labels[i][keep] + 1, "image_id": i}
        if self.with_masks:
            t["masks"] = tv_tensors.Mask(self.instance_masks[i][keep].to(torch.uint8))
        return t

    def __getitem__(self, i: int) -> tuple:
        image, target = tv_tensors.Image(self.images[i]), self.target(i)
        return self.transforms(image, target) if self.transforms is not None else (image, target)

    def __repr__(self) -> str:
        return (f"DetectionDataset(n={len(self)}, classes={self.num_classes}, max_instances="
                f"{self.instance_labels.shape[1]}, size={tuple(self.images.shape[2:])})")
