"""CUB-200-2011 (Wah et al. 2011, Caltech-UCSD Birds): 11 788 images of 200 bird species, the
official train/test split (5 994 / 5 794) and one bounding box per image, for fine-grained
classification and weakly supervised object localization (:mod:`mixlab.evaluation.wsol`).

``root`` holds the extracted ``CUB_200_2011/`` folder of the official archive:
``images.txt`` (``<id> <path>``), ``image_class_labels.txt`` (``<id> <class 1..200>``),
``train_test_split.txt`` (``<id> <1 = train, 0 = test>``), ``classes.txt`` (``<class> <name>``),
``bounding_boxes.txt`` (``<id> <x> <y> <width> <height>``, pixels) and ``images/<class>/<file>.jpg``.
With ``download=True`` the archive ``CUB_200_2011.tgz`` (1.1 GB) is fetched from CaltechDATA and
its md5 checked (``97eceeb196236b17998738112f37df78``, the checksum every public CUB loader uses)
before it is extracted.

Boxes follow the WSOL benchmark (Choe et al. 2020, ``clovaai/wsolevaluation`` metadata):
``(x0, y0, x1, y1) = (x, y, x + width, y + height)`` as integers. ``image_size=s`` decodes every
image once and resizes it to s x s (bilinear, antialiased, as ``transforms.Resize((s, s))``, the
benchmark's test transform at s = 224; its training transform is ``Resize((256, 256))`` then a
random 224 crop), and scales the boxes as the benchmark's ``resize_bbox`` (:func:`resize_boxes`).
Without it the images stay encoded (decoded per item, sizes differ) and the boxes are in each
image's own pixels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from .tensor_dataset import EncodedImages, ImageTensorDataset, decode_rgb_batch

__all__ = ["CUB_URL", "CUB_MD5", "CUB_FOLDER", "CUB_MEAN", "CUB_STD", "load_cub", "download_cub", "resize_boxes"]

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
CUB_FOLDER = "CUB_200_2011"
_ARCHIVE = "CUB_200_2011.tgz"
_CHUNK = 256  # images decoded at once with image_size
_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")
# ImageNet statistics: CUB models start from ImageNet weights and the WSOL benchmark normalises so
CUB_MEAN, CUB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resize_boxes(boxes: Tensor, image_sizes: Tensor, size: tuple[int, int]) -> Tensor:
    """Scale ``(x0, y0, x1, y1)`` boxes from each image's size to ``size``, truncating to integers
    (the WSOL benchmark's ``resize_bbox``: ``int(x0 * new_w / w)``, in float64).

    Args:
        boxes: (N, 4) integer boxes.
        image_sizes: (N, 2) ``(width, height)`` of each image.
        size: ``(width, height)`` of the resized images.

    Returns:
        (N, 4) int64 boxes.
    """
    new = torch.tensor([size[0], size[1], size[0], size[1]], dtype=torch.float64)
    old = image_sizes.to(torch.float64)[:, [0, 1, 0, 1]]
    return torch.trunc(boxes.to(torch.float64) * new / old).long()


def download_cub(root: str | os.PathLike) -> Path:
    """Fetch ``CUB_200_2011.tgz`` into ``root`` (skipped if a copy with the right md5 is there),
    check its md5 and extract it; returns ``root/CUB_200_2011``.

    Raises:
        ValueError: the archive's md5 is not :data:`CUB_MD5` (the message gives both checksums).
    """
    from torchvision.datasets.utils import download_url, extract_archive

    root = Path(root).expanduser()
    try:
        download_url(CUB_URL, str(root), _ARCHIVE, CUB_MD5)
    except RuntimeError as err:  # torchvision: "File not found or corrupted."
        archive = root / _ARCHIVE
        got = hashlib.md5(archive.read_bytes()).hexdigest() if archive.is_file() else "no file"
        raise ValueError(f"CUB-200-2011 archive {archive} failed the md5 check: expected {CUB_MD5}, got {got} "
                         f"({err}); delete it and download again") from None
    extract_archive(str(root / _ARCHIVE), str(root))
    return root / CUB_FOLDER


def _table(folder: Path, name: str) -> dict[int, list[str]]:
    """``<id> <fields...>`` lines of a CUB metadata file as {id: fields}."""
    out: dict[int, list[str]] = {}
    for n, line in enumerate((folder / name).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            out[int(parts[0])] = parts[1:]
        except ValueError:
            raise ValueError(f"{folder / name}, line {n}: expected '<id> ...', got {line!r}") from None
    return out


def load_cub(
    root: str | os.PathLike,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    transform=None,
) -> ImageTensorDataset:
    """CUB-200-2011 as an :class:`ImageTensorDataset` with ``boxes`` (N, 4).

    Args:
        root: folder holding (or to receive) ``CUB_200_2011/``.
        split: ``"train"`` (5 994 images) or ``"test"`` (5 794), the official split.
        image_size: decode and resize every image to ``image_size`` squared (boxes scaled to
            match); default keep them encoded at their own sizes.
        download: fetch and extract the md5-checked archive when the folder is missing.
        transform: per-item transform (``transforms.v2`` on ``uint8`` CHW).

    Returns:
        The split's images in ``images.txt`` order; ``classes`` are the species names without
        their number (``Black_footed_Albatross``); labels 0..199; mean/std are ImageNet's.

    Raises:
        ValueError: bad ``split``/``image_size``, inconsistent metadata files, or an md5 mismatch.
        FileNotFoundError: the folder is missing and ``download`` is False.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for CUB-200-2011, got {split!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be None or an int >= 1, got {image_size!r}")
    folder = Path(root).expanduser() / CUB_FOLDER
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(
                f"CUB-200-2011 not found: {folder} does not exist. Pass download=True (build_dataset('cub200', "
                f"split, root=..., download=True)) to fetch the official archive (1.1 GB, md5-checked) into "
                f"{Path(root).expanduser()}, or point root at the folder that contains {CUB_FOLDER}/")
        download_cub(root)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: not an extracted CUB_200_2011 archive")
    paths, labels, is_train, boxes = (_table(folder, name) for name in _FILES[:3] + _FILES[4:])
    classes = _table(folder, "classes.txt")
    class_names = [classes[k][0].split(".", 1)[-1] for k in sorted(classes)]
    ids = [i for i in sorted(paths) if (is_train[i][0] == "1") == (split == "train")]
    try:
        label = torch.tensor([int(labels[i][0]) - 1 for i in ids], dtype=torch.int64)
        box = torch.tensor([[float(v) for v in boxes[i][:4]] for i in ids], dtype=torch.float64).reshape(-1, 4)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{folder}: image_class_labels.txt / bounding_boxes.txt do not cover every image of "
                         f"images.txt with valid numbers ({err!r})") from None
    corners = torch.cat([box[:, :2], box[:, :2] + box[:, 2:]], dim=1).long()  # (x, y, x + w, y + h)
    files = [folder / "images" / paths[i][0] for i in ids]
    data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    file_names = [str(f) for f in files]
    if image_size is None:
        dataset = ImageTensorDataset(EncodedImages(data, file_names), label, class_names, transform, CUB_MEAN, CUB_STD)
        dataset.boxes = corners
        return dataset
    from torchvision.transforms.v2 import functional as TF

    images = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    sizes = torch.empty(len(files), 2, dtype=torch.int64)
    for start in range(0, len(files), _CHUNK):  # decode in chunks: full-size images are large
        for k, img in enumerate(decode_rgb_batch(data[start:start + _CHUNK], file_names[start:start + _CHUNK])):
            sizes[start + k] = torch.tensor([img.shape[2], img.shape[1]])
            images[start + k] = TF.resize(img, [image_size, image_size], antialias=True)
    dataset = ImageTensorDataset(images, label, class_names, transform, CUB_MEAN, CUB_STD)
    dataset.boxes = resize_boxes(corners, sizes, (image_size, image_size))
    return dataset
