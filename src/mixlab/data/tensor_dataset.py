"""The in-memory dataset every reader in :mod:`mixlab.data` produces.

Small-image datasets (CIFAR, the synthetic shapes, a zip of 32x32 JPEGs) are decoded *once* into
one ``uint8`` tensor ``(N, C, H, W)`` plus ``int64`` labels ``(N,)``; an item is a view of that
tensor, so ``__getitem__`` costs an index and the transform, nothing else. Transforms are
``torchvision.transforms.v2`` transforms working on ``uint8`` CHW tensors (see
:mod:`mixlab.data.recipes`).

Folders whose images differ in size cannot be stacked: they keep the *encoded* bytes in an
:class:`EncodedImages` list and decode one image per ``__getitem__`` (a size-fixing transform such as
``RandomResizedCrop`` is then needed before batching).
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageTensorDataset", "EncodedImages", "decode_rgb", "decode_rgb_batch", "decode_batch", "quiet_decoders"]

_JPEG_MAGIC = b"\xff\xd8\xff"


def _is_jpeg(data: Tensor) -> bool:
    return data.numel() >= 3 and bytes(data[:3].tolist()) == _JPEG_MAGIC


@contextmanager
def quiet_decoders():
    """Silence torchvision 0.29's deprecation warning of its decoders (superseded by torchcodec).

    ``warnings`` filters are process-global before Python 3.14: enter this in the calling thread,
    around any thread pool that decodes, never inside the pool's threads.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def decode_rgb(data: Tensor, name: str) -> Tensor:
    """Decode one encoded image (1-D ``uint8`` bytes) to a ``uint8`` RGB tensor ``(3, H, W)``.

    Uses ``torchvision.io.decode_image`` (JPEG, PNG, GIF, WebP); formats it does not know (BMP,
    TIFF, ...) go through PIL. Grayscale and palette images become 3 channels, alpha is dropped,
    16-bit PNGs are scaled to 8 bit.

    Args:
        data: the file's bytes as a 1-D ``uint8`` tensor.
        name: the file's path, used in the error message.

    Raises:
        ValueError: the bytes are not a decodable image (the message names ``name``).
    """
    with quiet_decoders():
        return _decode_one(data, name)


def decode_rgb_batch(datas: Sequence[Tensor], names: Sequence[str],
                     device: torch.device | str | None = None) -> list[Tensor]:
    """Decode many encoded images: JPEGs in one ``decode_jpeg`` call, the others one by one.

    Args:
        device: where the images go; a CUDA device decodes the JPEGs there (nvJPEG, one batched
            call), the other formats on the CPU and are copied. Default: the CPU.

    Raises:
        ValueError: an image cannot be decoded (the message names its path).
    """
    with quiet_decoders():
        return decode_batch(datas, names, device)


def _decode_one(data: Tensor, name: str) -> Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        img = decode_image(data, mode=ImageReadMode.RGB)
        if img.dtype != torch.uint8:  # 16-bit PNG
            img = (img.to(torch.float32) * (255.0 / 65535.0)).round_().to(torch.uint8)
        return img
    except Exception as tv_err:
        try:
            import numpy as np
            from PIL import Image

            with Image.open(io.BytesIO(data.numpy().tobytes())) as pil:
                arr = np.asarray(pil.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        except Exception as pil_err:
            raise ValueError(f"cannot decode image {name}: {tv_err} / PIL: {pil_err}") from None


def decode_batch(datas: Sequence[Tensor], names: Sequence[str], device: torch.device | str | None = None
                 ) -> list[Tensor]:
    """:func:`decode_rgb_batch` without silencing the decoders' warnings: for callers that hold
    :func:`quiet_decoders` around many calls (its warning filters are process-global)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[Tensor | None] = [None] * len(datas)
    jpeg_idx = [i for i, d in enumerate(datas) if _is_jpeg(d)]
    if jpeg_idx:
        try:
            on = torch.device(device) if device is not None else torch.device("cpu")
            decoded = decode_jpeg([datas[i] for i in jpeg_idx], mode=ImageReadMode.RGB,
                                  device=on if on.type == "cuda" else "cpu")
            for i, img in zip(jpeg_idx, decoded):
                out[i] = img
        except Exception:  # the batch call gives no partial result: find the culprit one by one
            pass
    return [img.to(device) if device is not None else img for img in
            (img if img is not None else _decode_one(datas[i], names[i]) for i, img in enumerate(out))]


class EncodedImages(Sequence):
    """A list of encoded images decoded on access: ``images[i]`` is a ``uint8`` ``(3, H, W)`` tensor.

    Used for folders whose images differ in size. Corrupt files then surface at access time, with
    the file's path in the ``ValueError``.

    Args:
        data: encoded bytes, one 1-D ``uint8`` tensor per image.
        names: a path per image, for error messages.
    """

    def __init__(self, data: Sequence[Tensor], names: Sequence[str]) -> None:
        if len(data) != len(names):
            raise ValueError(f"data and names must have the same length, got {len(data)} and {len(names)}")
        self.data, self.names = list(data), list(names)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return decode_rgb(self.data[int(i)], self.names[int(i)])

    def select(self, indices: Sequence[int]) -> EncodedImages:
        """The sub-list at ``indices`` (bytes shared, not copied)."""
        return EncodedImages([self.data[int(i)] for i in indices], [self.names[int(i)] for i in indices])


class ImageTensorDataset(Dataset):
    """Decoded ``uint8`` images + ``int64`` labels in memory.

    ``dataset[i]`` is ``(transform(images[i]) if transform else images[i], int(labels[i]))``.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``, or :class:`EncodedImages` (decoded per item).
        labels: integer tensor ``(N,)`` (stored as ``int64``), values in ``[0, len(classes))``.
        classes: class names; ``labels`` index into it.
        transform: applied to each ``uint8`` CHW image (``torchvision.transforms.v2``).
        mean, std: per-channel statistics in [0, 1] units for normalisation; computed from the
            images on first access when not given.

    Attributes:
        boxes: ``None``, or (N, 4) int64 object boxes ``(x1, y1, x2, y2)`` in pixels, one per image,
            for datasets with localization labels (synthetic shapes, CUB-200-2011); ``subset``
            keeps them aligned with the images.

    Raises:
        TypeError: ``images`` is not a ``uint8`` tensor / ``EncodedImages``, or ``labels`` is not an
            integer tensor.
        ValueError: wrong shapes, mismatched lengths or labels out of range.
    """

    def __init__(
        self,
        images: Tensor | EncodedImages,
        labels: Tensor,
        classes: Sequence[str],
        transform: Callable[[Tensor], object] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(images, Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise TypeError(
                    f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} of shape {tuple(images.shape)}"
                )
        elif not isinstance(images, EncodedImages):
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W) or EncodedImages, got {type(images).__name__}")
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor (N,), got {type(labels).__name__}"
                            f"{'' if not isinstance(labels, Tensor) else ' of dtype ' + str(labels.dtype)}")
        if labels.dim() != 1 or labels.numel() != len(images):
            raise ValueError(f"labels must have shape ({len(images)},) to match images, got {tuple(labels.shape)}")
        classes = [str(c) for c in classes]
        if len(classes) == 0:
            raise ValueError("classes must name at least one class, got an empty list")
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}) for {len(classes)} classes, "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images
        self.labels = labels
        self.boxes: Tensor | None = None
        self.classes = classes
        self.transform = transform
        self._mean = None if mean is None else tuple(float(m) for m in mean)
        self._std = None if std is None else tuple(float(s) for s in std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_lazy(self) -> bool:
        """True when images are kept encoded and decoded per item (mixed image sizes)."""
        return isinstance(self.images, EncodedImages)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[object, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])

    def with_transform(self, transform: Callable[[Tensor], object] | None) -> ImageTensorDataset:
        """A view with another transform; images and labels share storage with ``self``."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def with_classes(self, classes: Sequence[str]) -> ImageTensorDataset:
        """A view labelled with ``classes``' class-to-index map: each item keeps its class name, its
        label becomes that name's index in ``classes`` (e.g. a test split labelled as its training
        split, which may have classes the test split lacks). Images and transform are shared.

        Raises:
            ValueError: a class of this dataset that ``classes`` lacks (named, with ``classes``).
        """
        classes = [str(c) for c in classes]
        if classes == self.classes:
            return copy.copy(self)
        index = {c: i for i, c in enumerate(classes)}
        missing = [c for c in self.classes if c not in index]
        if missing:
            shown = ", ".join(map(repr, classes[:12])) + (", ..." if len(classes) > 12 else "")
            raise ValueError(f"class(es) {', '.join(map(repr, missing[:12]))} of this dataset are not among the "
                             f"{len(classes)} classes it is to be labelled with ({shown})")
        view = copy.copy(self)
        remap = torch.tensor([index[c] for c in self.classes], dtype=torch.int64)
        view.labels, view.classes = remap[self.labels], classes
        return view

    def subset(self, indices: Tensor | Sequence[int]) -> ImageTensorDataset:
        """The items at ``indices`` (e.g. from :func:`~mixlab.data.class_balanced_subset`), same
        classes, transform and mean/std. Decoded images are copied (a compact tensor)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        view = copy.copy(self)
        view.images = self.images.select(idx.tolist()) if self.is_lazy else self.images[idx]
        view.labels = self.labels[idx]
        if self.boxes is not None:
            view.boxes = self.boxes[idx]
        return view

    # -- normalisation statistics -------------------------------------------------------------
    @property
    def stats_known(self) -> bool:
        """Whether :attr:`mean` and :attr:`std` are known without reading the images (given by the
        dataset, such as CIFAR's fixed statistics, or computed already)."""
        return self._mean is not None and self._std is not None

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean in [0, 1] units (given, or computed once from the images)."""
        if self._mean is None:
            self._mean, self._std = self._compute_mean_std()
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation in [0, 1] units (given, or computed once)."""
        if self._std is None:
            self._mean, self._std = self._compute_mean_std()
        return self._std

    def _compute_mean_std(self, max_lazy: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Exact over a stacked tensor (chunked, float64 sums); over ``max_lazy`` evenly spaced
        images when images are decoded lazily."""
        if self.is_lazy:
            n = len(self.images)
            picks = torch.linspace(0, n - 1, min(n, max_lazy)).round().long().unique().tolist()
            chunks = [self.images[i].reshape(3, -1) for i in picks]
        else:
            chunks = (c.transpose(0, 1).reshape(c.shape[1], -1) for c in self.images.split(4096))
        s = s2 = None
        count = 0
        for c in chunks:
            c = c.to(torch.float64) / 255.0
            s = c.sum(1) if s is None else s + c.sum(1)
            s2 = (c * c).sum(1) if s2 is None else s2 + (c * c).sum(1)
            count += c.shape[1]
        if s is None:
            raise ValueError("cannot compute mean/std of an empty dataset")
        mean = s / count
        std = (s2 / count - mean * mean).clamp_min(0).sqrt()
        return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)

    def __repr__(self) -> str:
        kind = "encoded, decoded per item" if self.is_lazy else f"uint8 {tuple(self.images.shape[1:])}"
        return (f"{type(self).__name__}(n={len(self)}, classes={self.num_classes}, images={kind}, "
                f"transform={self.transform!r})")
