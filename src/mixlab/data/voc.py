"""Pascal VOC segmentation (Everingham et al. 2010) through ``torchvision.datasets.VOCSegmentation``.

``root`` holds ``VOCdevkit/VOC2012/`` (``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` palette
masks, ``ImageSets/Segmentation/{train,val,trainval}.txt``), as torchvision expects it. With
``download=True`` torchvision fetches the year's archive and checks its md5 (its
``DATASET_YEAR_DICT``: ``6cd6e144f989b92b3379bac3b3de84fd`` for ``VOCtrainval_11-May-2012.tar``);
an archive already in ``root`` is checked against the same md5 before anything is read, so a
truncated download is reported, not half-used.

Items are ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W))`` (torchvision's
``wrap_dataset_for_transforms_v2``): 21 classes, 0 = background, 255 = the "void" outline pixels
(ignore them: ``ignore_index=255``). Images differ in size: give ``transforms`` a crop or resize
before batching.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

__all__ = ["VOC_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "VOCSegmentationData", "load_voc_segmentation"]

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# the statistics torchvision's segmentation and detection references normalise VOC and COCO with
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SPLITS = {"train": "train", "val": "val", "test": "val", "trainval": "trainval"}


class VOCSegmentationData(Dataset):
    """The v2-wrapped ``VOCSegmentation`` with tensor images, ``transforms(image, mask)`` after.

    Attributes:
        classes, num_classes, ignore_index, mean, std: as :class:`~mixlab.data.dense.SegmentationDataset`.
        dataset: the wrapped torchvision dataset.
    """

    def __init__(self, dataset: Dataset, transforms: Callable | None = None) -> None:
        self.dataset, self.transforms = dataset, transforms
        self.classes, self.ignore_index = list(VOC_CLASSES), 255
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        image, mask = self.dataset[i]
        image, mask = TF.to_image(image), tv_tensors.Mask(mask.as_subclass(torch.Tensor).squeeze(0))  # (H, W)
        return self.transforms(image, mask) if self.transforms is not None else (image, mask)

    def __repr__(self) -> str:
        return f"VOCSegmentationData(n={len(self)}, classes={self.num_classes})"


def load_voc_segmentation(root: str | os.PathLike, split: str = "train", year: str = "2012",
                          download: bool = False, transforms: Callable | None = None) -> VOCSegmentationData:
    """VOC segmentation of ``split`` (``"train"``, ``"val"`` (also ``"test"``: VOC's test masks are
    not public), ``"trainval"``) from ``root`` (module docstring).

    Raises:
        ValueError: an unknown split; no ``VOCdevkit/VOC<year>`` under ``root`` (the message says
            what is expected); an archive in ``root`` that fails torchvision's md5.
    """
    from torchvision.datasets import VOCSegmentation, wrap_dataset_for_transforms_v2
    from torchvision.datasets.utils import check_integrity
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)} for VOC segmentation, got {split!r}")
    if year not in DATASET_YEAR_DICT:
        raise ValueError(f"year must be one of {sorted(k for k in DATASET_YEAR_DICT if k.isdigit())}, got {year!r}")
    meta = DATASET_YEAR_DICT[year]
    archive = Path(root) / meta["filename"]
    if archive.is_file() and not check_integrity(str(archive), meta["md5"]):
        raise ValueError(f"VOC archive {archive} fails torchvision's md5 check (expected {meta['md5']}); "
                         "delete it and download again")
    try:
        ds = VOCSegmentation(str(root), year=year, image_set=_SPLITS[split], download=download)
    except RuntimeError as err:
        raise ValueError(f"no VOC {year} under {root}: expected {Path(root) / meta['base_dir']} with JPEGImages/, "
                         f"SegmentationClass/ and ImageSets/Segmentation/ (download=True fetches it): {err}") from None
    return VOCSegmentationData(wrap_dataset_for_transforms_v2(ds), transforms)
