"""Tiny-ImageNet-200 (the Stanford CS231n release): 200 ImageNet classes, 64x64 images, 500
training and 50 validation images per class (100 000 / 10 000).

The archive ``tiny-imagenet-200.zip`` holds ``tiny-imagenet-200/``:

* ``wnids.txt``: the 200 WordNet ids, one a line; ``words.txt``: the names of every WordNet id;
* ``train/<wnid>/images/<wnid>_<n>.JPEG`` (and ``train/<wnid>/<wnid>_boxes.txt``, not read);
* ``val/images/val_<n>.JPEG`` in one folder, labelled by ``val/val_annotations.txt``
  (``<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>`` a line);
* ``test/images/``: unlabelled, not read.

The labelled validation split is the test split of the mixup literature (openmixup's Tiny-ImageNet
tables, PuzzleMix): ``split="test"`` (or ``"val"``) reads it. Classes are the sorted WordNet ids
(labels 0..199), the images are decoded once into ``uint8 (N, 3, 64, 64)`` (the few grayscale
JPEGs become 3 channels), mean/std are ImageNet's (openmixup's pipeline normalises so).

``root`` is the zip itself, or a folder holding the extracted ``tiny-imagenet-200/`` or the zip
(read in place, never extracted). With ``download=True`` the zip is fetched from CS231n into
``root`` and its md5 checked (``90528d7ca1a48142e341f4ef8d21d0de``, the checksum the public
Tiny-ImageNet loaders use, e.g. ContinualAI/avalanche's ``TinyImagenet``) before it is read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .folder import IMAGE_EXTENSIONS, SourceTree, decode_images
from .tensor_dataset import ImageTensorDataset

__all__ = ["TINY_IMAGENET_URL", "TINY_IMAGENET_MD5", "TINY_IMAGENET_FOLDER", "TINY_IMAGENET_ARCHIVE",
           "TINY_IMAGENET_MEAN", "TINY_IMAGENET_STD", "load_tiny_imagenet", "download_tiny_imagenet"]

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_ARCHIVE = "tiny-imagenet-200.zip"
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SPLITS = {"train": "train", "test": "val", "val": "val"}


def download_tiny_imagenet(root: str | os.PathLike) -> Path:
    """Fetch ``tiny-imagenet-200.zip`` (248 MB) into ``root`` (skipped if a copy with the right md5
    is there) and check its md5; returns the zip's path.

    Raises:
        ValueError: the archive's md5 is not :data:`TINY_IMAGENET_MD5` (the message gives both checksums).
    """
    from torchvision.datasets.utils import download_url

    root = Path(root).expanduser()
    try:
        download_url(TINY_IMAGENET_URL, str(root), TINY_IMAGENET_ARCHIVE, TINY_IMAGENET_MD5)
    except RuntimeError as err:  # torchvision: "File not found or corrupted."
        archive = root / TINY_IMAGENET_ARCHIVE
        got = hashlib.md5(archive.read_bytes()).hexdigest() if archive.is_file() else "no file"
        raise ValueError(f"Tiny-ImageNet archive {archive} failed the md5 check: expected {TINY_IMAGENET_MD5}, got "
                         f"{got} ({err}); delete it and download again") from None
    return root / TINY_IMAGENET_ARCHIVE


def _locate(root: Path, download: bool) -> Path:
    """The zip or the extracted folder that ``root`` names or holds (downloading the zip if asked)."""
    if root.is_file():
        return root
    for candidate in (root / TINY_IMAGENET_FOLDER, root / TINY_IMAGENET_ARCHIVE):
        if candidate.exists():
            return candidate
    if (root / "wnids.txt").is_file():  # root is the extracted folder itself
        return root
    if download:
        return download_tiny_imagenet(root)
    raise FileNotFoundError(
        f"Tiny-ImageNet not found: {root} is not {TINY_IMAGENET_ARCHIVE} and holds neither {TINY_IMAGENET_FOLDER}/ "
        f"nor {TINY_IMAGENET_ARCHIVE}. Pass download=True (build_dataset('tiny-imagenet', split, root=..., "
        f"download=True), or --download) to fetch the official archive (248 MB, md5-checked) into {root}")


def _val_labels(src: SourceTree, prefix: str, index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Files and labels of ``val/`` from ``val/val_annotations.txt``, sorted by file name."""
    annotations = prefix + "val/val_annotations.txt"
    if annotations not in src.files:
        raise FileNotFoundError(f"{src.name(annotations)} is missing: not a Tiny-ImageNet-200 release")
    present = set(src.files)
    labelled = {}
    for n, line in enumerate(src.read(annotations).numpy().tobytes().decode().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise ValueError(f"{src.name(annotations)}, line {n}: expected '<file>\\t<wnid of wnids.txt>\\t...', "
                             f"got {line!r}")
        rel = f"{prefix}val/images/{parts[0]}"
        if rel not in present:
            folder = src.name(prefix + "val/images/")
            raise ValueError(f"{src.name(annotations)}, line {n}: {parts[0]} is not in {folder}")
        labelled[rel] = index[parts[1]]
    files = sorted(labelled)
    return files, [labelled[f] for f in files]


def _train_labels(src: SourceTree, prefix: str, index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Files and labels of ``train/<wnid>/images/``, sorted by path."""
    files, labels = [], []
    for rel in sorted(src.files):
        parts = rel[len(prefix):].split("/")
        if (rel.startswith(prefix) and len(parts) == 4 and parts[0] == "train" and parts[2] == "images"
                and parts[3].lower().endswith(IMAGE_EXTENSIONS)):
            if parts[1] not in index:
                raise ValueError(f"{src.name(rel)}: class folder {parts[1]!r} is not in wnids.txt")
            files.append(rel)
            labels.append(index[parts[1]])
    return files, labels


def load_tiny_imagenet(root: str | os.PathLike, split: str = "train", download: bool = False,
                       transform=None) -> ImageTensorDataset:
    """Tiny-ImageNet-200 as an :class:`ImageTensorDataset` (see the module docstring for the layout).

    Args:
        root: ``tiny-imagenet-200.zip``, or a folder holding it or the extracted ``tiny-imagenet-200/``.
        split: ``"train"`` (100 000 images) or ``"test"`` / ``"val"`` (the 10 000 labelled
            validation images).
        download: fetch the md5-checked archive into ``root`` when neither the zip nor the folder is there.
        transform: per-item transform (``transforms.v2`` on ``uint8`` CHW).

    Returns:
        The split's images in file order, ``classes`` the sorted WordNet ids, ``files`` the
        paths inside the release; mean/std are ImageNet's.

    Raises:
        ValueError: bad ``split``, a malformed release (a class folder or an annotation with a
            WordNet id missing from ``wnids.txt``, an annotated file that is not there, a split
            without images), an md5 mismatch on download, or an undecodable image.
        FileNotFoundError: nothing at ``root`` and ``download`` is False, or ``wnids.txt`` /
            ``val_annotations.txt`` missing.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train', 'test' or 'val' (test and val: the labelled validation images) "
                         f"for Tiny-ImageNet, got {split!r}")
    src = SourceTree(_locate(Path(root).expanduser(), download))
    try:
        prefix = next((p for p in ("", TINY_IMAGENET_FOLDER + "/") if p + "wnids.txt" in src.files), None)
        if prefix is None:
            raise FileNotFoundError(f"{src.root} has no wnids.txt (at its top or under {TINY_IMAGENET_FOLDER}/): "
                                    f"not a Tiny-ImageNet-200 release")
        wnids = sorted(set(src.read(prefix + "wnids.txt").numpy().tobytes().decode().split()))
        index = {w: i for i, w in enumerate(wnids)}
        reader = _train_labels if _SPLITS[split] == "train" else _val_labels
        files, labels = reader(src, prefix, index)
        if not files:
            raise ValueError(f"no {_SPLITS[split]} images in {src.name(prefix + _SPLITS[split] + '/')}")
        images = decode_images(src, files)
    finally:
        src.close()
    dataset = ImageTensorDataset(images, torch.tensor(labels, dtype=torch.int64), wnids, transform,
                                 TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    dataset.files = [f[len(prefix):] for f in files]
    return dataset
