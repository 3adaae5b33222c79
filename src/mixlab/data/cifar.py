"""CIFAR-10 / CIFAR-100 through ``torchvision.datasets``, converted to :class:`ImageTensorDataset`.

``root`` is the folder that holds ``cifar-10-batches-py`` / ``cifar-100-python`` (the python-pickle
release). With ``download=True`` torchvision fetches the official archive and checks its md5.

Integrity: torchvision checks the md5 of *every* batch file and of the meta file each time a
dataset object is built (``CIFAR10.__init__`` -> ``_check_integrity`` and ``_load_meta`` ->
``datasets.utils.check_integrity(path, md5)``), not only on download. ``verify=False`` builds the
dataset from a subclass whose file lists carry ``md5=None``, for which ``check_integrity`` only
checks that each file exists -- meant for re-packed copies and for tests with tiny fake files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import datasets as tvd

from .tensor_dataset import ImageTensorDataset

__all__ = ["load_cifar", "load_cifar10", "load_cifar100",
           "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _without_md5(cls: type) -> type:
    """A subclass of a torchvision CIFAR class whose integrity check only tests file existence."""
    return type(cls.__name__ + "NoMD5", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def load_cifar(
    num_classes: int,
    root: str | os.PathLike,
    split: str = "train",
    download: bool = False,
    verify: bool = True,
    transform=None,
) -> ImageTensorDataset:
    """CIFAR-10 or CIFAR-100 as ``uint8`` ``(N, 3, 32, 32)`` + ``int64`` labels, standard mean/std.

    Args:
        num_classes: 10 or 100.
        root: folder containing (or to receive) ``cifar-10-batches-py`` / ``cifar-100-python``.
        split: ``"train"`` (50 000 images) or ``"test"`` (10 000).
        download: fetch the official archive (md5-checked) when the files are missing.
        verify: check every file's md5 (torchvision's default); ``False`` only checks they exist.
        transform: per-item transform (``transforms.v2`` on ``uint8`` CHW).

    Raises:
        ValueError: bad ``num_classes``/``split``, or files failing the md5 check.
        FileNotFoundError: the files are missing and ``download`` is False.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for CIFAR-{num_classes}, got {split!r}")
    base = tvd.CIFAR10 if num_classes == 10 else tvd.CIFAR100
    folder = Path(root).expanduser() / base.base_folder
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found: {folder} does not exist. Pass download=True "
            f"(build_dataset('cifar{num_classes}', split, root=..., download=True)) to fetch the official "
            f"archive (~170 MB, md5-checked) into {Path(root).expanduser()}, or point root at the folder that "
            f"contains {base.base_folder}/"
        )
    tv_cls = base if verify else _without_md5(base)
    try:
        ds = tv_cls(str(Path(root).expanduser()), train=(split == "train"), download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        files = [name for name, _ in base.train_list + base.test_list] + [base.meta["filename"]]
        raise ValueError(
            f"CIFAR-{num_classes} files in {folder} are missing or fail torchvision's md5 check "
            f"(expected {files}): {err}. Delete the folder and pass download=True, or pass verify=False "
            f"to skip the md5 check for a trusted re-packed copy"
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    return ImageTensorDataset(images, labels, list(ds.classes), transform, mean, std)


def load_cifar10(root: str | os.PathLike, split: str = "train", download: bool = False, verify: bool = True,
                 transform=None) -> ImageTensorDataset:
    """CIFAR-10; see :func:`load_cifar`."""
    return load_cifar(10, root, split, download, verify, transform)


def load_cifar100(root: str | os.PathLike, split: str = "train", download: bool = False, verify: bool = True,
                  transform=None) -> ImageTensorDataset:
    """CIFAR-100 (fine labels); see :func:`load_cifar`."""
    return load_cifar(100, root, split, download, verify, transform)
