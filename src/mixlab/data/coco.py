"""COCO detection (Lin et al. 2014) through ``torchvision.datasets.CocoDetection`` and
``wrap_dataset_for_transforms_v2``.

``root`` holds ``<split><year>/`` (the images) and ``annotations/instances_<split><year>.json``,
COCO's layout (or give ``image_folder`` and ``annotation_file``). torchvision's ``CocoDetection``
reads the annotations with ``pycocotools`` (the extra ``mixlab[detection]``); it has no download
and no checksum for COCO, so none is checked here.

Items are ``(tv_tensors.Image uint8 (3, H, W), target)`` with torchvision's detection target:
``"boxes"`` (BoundingBoxes XYXY), ``"labels"`` (int64 category ids, 1..90 for COCO, 0 left for
the background), ``"masks"`` (Mask uint8 (N, H, W), decoded from the polygons or RLE) unless
``with_masks=False``, and ``"image_id"``. As torchvision's detection references
(``ConvertCocoPolysToMask``), crowd annotations and boxes of zero area are removed; an image
without annotations gets empty (0, 4) boxes, so every target has the same keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .voc import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["COCODetectionData", "load_coco_detection"]


class COCODetectionData(Dataset):
    """The v2-wrapped ``CocoDetection`` with tensor images and uniform targets (module docstring),
    ``transforms(image, target)`` after.

    Attributes:
        classes: index -> category name, ``"background"`` at 0 and ``"N/A"`` for unused ids
            (COCO's ids have gaps, as torchvision's ``COCO_V1`` categories).
        num_classes: ``len(classes)`` (91 for COCO), what a torchvision detector's head takes.
        mean, std: ImageNet statistics.
        dataset: the wrapped torchvision dataset.
    """

    def __init__(self, dataset: Dataset, classes: list[str], with_masks: bool, transforms: Callable | None) -> None:
        self.dataset, self.classes, self.with_masks, self.transforms = dataset, classes, with_masks, transforms
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        image, raw = self.dataset[i]
        image = TF.to_image(image)
        h, w = image.shape[-2:]
        target = {"image_id": raw["image_id"]}
        boxes = raw.get("boxes", tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)))
        labels = raw.get("labels", torch.zeros(0, dtype=torch.int64))
        crowd = torch.as_tensor(raw.get("iscrowd", [0] * len(labels)), dtype=torch.bool)
        keep = ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target["boxes"], target["labels"] = tv_tensors.wrap(boxes[keep], like=boxes), labels[keep].to(torch.int64)
        if self.with_masks:
            masks = raw.get("masks", torch.zeros(0, h, w, dtype=torch.uint8))
            target["masks"] = tv_tensors.Mask(masks[keep].to(torch.uint8))
        return self.transforms(image, target) if self.transforms is not None else (image, target)

    def __repr__(self) -> str:
        return f"COCODetectionData(n={len(self)}, classes={self.num_classes}, masks={self.with_masks})"


def load_coco_detection(root: str | os.PathLike, split: str = "train", year: str = "2017",
                        transforms: Callable | None = None, with_masks: bool = True,
                        image_folder: str | os.PathLike | None = None,
                        annotation_file: str | os.PathLike | None = None) -> COCODetectionData:
    """COCO detection of ``split`` (``"train"``, ``"val"``; ``"test"`` reads val: COCO's test
    split has no public annotations, and mixlab's engine asks for ``"test"``) from ``root``
    (module docstring).

    Raises:
        ValueError: the image folder or the annotation file is missing (both paths named).
        ImportError: ``pycocotools`` is not installed (``pip install mixlab[detection]``).
    """
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    split = "val" if split == "test" else split
    images = Path(image_folder) if image_folder is not None else Path(root) / f"{split}{year}"
    ann = Path(annotation_file) if annotation_file is not None else Path(root) / "annotations" / f"instances_{split}{year}.json"
    if not images.is_dir() or not ann.is_file():
        raise ValueError(f"COCO {split}{year} needs the image folder {images} and the annotation file {ann}; "
                         f"found {'the folder' if images.is_dir() else 'no folder'} and "
                         f"{'the file' if ann.is_file() else 'no file'}")
    try:
        import pycocotools  # noqa: F401  (CocoDetection and its mask decoding need it)
    except ImportError as err:
        raise ImportError("COCO detection reads its annotations with pycocotools: pip install 'mixlab[detection]' "
                          "(or pycocotools)") from err
    keys = {"image_id", "boxes", "labels", "iscrowd"} | ({"masks"} if with_masks else set())
    ds = wrap_dataset_for_transforms_v2(CocoDetection(str(images), str(ann)), target_keys=keys)
    cats = ds.coco.cats  # type: ignore[attr-defined]
    classes = ["N/A"] * (max(cats, default=0) + 1)
    classes[0] = "background"
    for cid, cat in cats.items():
        classes[cid] = cat["name"]
    return COCODetectionData(ds, classes, with_masks, transforms)
