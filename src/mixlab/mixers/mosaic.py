"""Mosaic (Bochkovskiy et al. 2020, "YOLOv4"; as YOLOX's ``MosaicDetection`` and ultralytics'
``Mosaic`` build it): four images on a 2×2 canvas around a random centre.

On an output canvas of (H, W), the centre ``(xc, yc)`` is uniform in
``[c0·W, c1·W) × [c0·H, c1·H)`` (``center_range = (c0, c1)``, default (0.25, 0.75): ultralytics'
``uniform(s/2, 3s/2)`` and YOLOX's ``uniform(0.5·h, 1.5·h)`` on their 2s canvas). Each image is
resized to fit half the canvas, ``r = min(H/2 / h, W/2 / w)`` (their tile of side s on a 2s
canvas; bilinear, antialiased), and placed with a corner on the centre: the first image (the one
the output is built on) top-left (its bottom-right corner at the centre), then top-right,
bottom-left, bottom-right; what falls outside the canvas is cut, uncovered canvas is ``fill``
(114 grey, theirs). Boxes are scaled by the resize and shifted with their tile,
``x' = ox + x·tw/w``, clipped to the canvas, and kept when at least ``1 - max_occlusion`` of each
is still on it (ultralytics' ``box_candidates`` area ratio 0.1: ``max_occlusion=0.9``) with sides
of at least ``min_size`` pixels (:func:`mixlab.mixers.detection.crop_instances`); instance masks
move with their pixels (nearest neighbour). Unlike YOLOX and ultralytics, the canvas is the output
size itself (their 2s canvas, which a random affine crop then brings back to s, is left out: add
any v2 affine after it).

:class:`Mosaic` is the batch operation (each image with three random others of the batch);
:class:`MosaicDataset` wraps a dataset of ``(image, target)`` samples and draws the three others
from the whole dataset, as YOLOX and ultralytics do.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mixlab.core.checks import check_bool, check_choice, check_nonnegative, check_probability, check_range
from mixlab.core.random import rand, randint
from mixlab.core.result import MixResult
from mixlab.mixers.base import unpack_batch
from mixlab.mixers.detection import (
    concat_instances,
    crop_instances,
    read_detection_batch,
    resize_image,
    sanitize,
    transform_instances,
)

__all__ = ["Mosaic", "MosaicDataset", "mosaic", "mosaic_layout", "MOSAIC_FILL"]

#: the grey of uncovered canvas (YOLOX's and ultralytics' 114, in uint8 units)
MOSAIC_FILL = 114.0


def mosaic_layout(sizes: Sequence[tuple[int, int]], center: tuple[int, int], canvas: tuple[int, int]
                  ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the four tiles go: for each image size (h, w), its resized size ``(th, tw)`` and the
    canvas position ``(ox, oy)`` of its top-left corner (module docstring)."""
    hc, wc = canvas
    xc, yc = center
    out = []
    for k, (h, w) in enumerate(sizes):
        r = min(hc / 2 / h, wc / 2 / w)
        th, tw = max(1, round(h * r)), max(1, round(w * r))
        ox = xc - tw if k in (0, 2) else xc
        oy = yc - th if k in (0, 1) else yc
        out.append(((th, tw), (ox, oy)))
    return out


def mosaic(images: Sequence[Tensor], targets: Sequence[dict], center: tuple[int, int], canvas: tuple[int, int],
           fill: float, max_occlusion: float = 0.9, min_size: float = 1.0, interpolation: str = "bilinear"
           ) -> tuple[Tensor, dict, Tensor]:
    """Functional Mosaic of four plain images and their plain targets (XYXY float boxes).

    Args:
        images: four (C, h_k, w_k) tensors (any sizes), top-left first.
        targets: their target dicts (:class:`~mixlab.mixers.detection.DetectionBatch` form).
        center: ``(xc, yc)`` integer canvas position of the shared corner.
        canvas: output ``(H, W)``.
        fill: value of uncovered pixels.
        max_occlusion, min_size: the filter of :func:`~mixlab.mixers.detection.keep_visible`.
        interpolation: ``"bilinear"`` (antialiased) or ``"nearest"``.

    Returns:
        ``(image (C, H, W), target, regions (4, 4) int64)``: the regions are the canvas rectangles
        ``(x1, y1, x2, y2)`` each tile covers.
    """
    hc, wc = canvas
    c = images[0].shape[0]
    out = torch.full((c, hc, wc), fill, dtype=images[0].dtype, device=images[0].device)
    layout = mosaic_layout([tuple(im.shape[-2:]) for im in images], center, canvas)
    merged, regions = None, []
    for image, target, ((th, tw), (ox, oy)) in zip(images, targets, layout):
        tile = resize_image(image, (th, tw), interpolation)
        x1, y1, x2, y2 = max(ox, 0), max(oy, 0), min(ox + tw, wc), min(oy + th, hc)
        if x2 > x1 and y2 > y1:
            out[:, y1:y2, x1:x2] = tile[:, y1 - oy:y2 - oy, x1 - ox:x2 - ox]
        regions.append((x1, y1, max(x2, x1), max(y2, y1)))
        h, w = image.shape[-2:]
        placed = transform_instances(target, (tw / w, th / h), (ox, oy), canvas, (ox, oy, ox + tw, oy + th),
                                     interpolation)
        seen = crop_instances(placed, regions[-1], max_occlusion, min_size)
        merged = seen if merged is None else concat_instances(merged, seen)
    return out, merged, torch.tensor(regions, dtype=torch.long)


def _check_center_range(center_range: Any) -> tuple[float, float]:
    lo, hi = check_range(center_range, "center_range", 0.0, 1.0)
    if hi <= lo:
        raise ValueError(f"center_range must satisfy 0 <= min < max <= 1, got {(lo, hi)}")
    return lo, hi


def _default_fill(image: Tensor, fill: float | None) -> float:
    if fill is not None:
        return fill
    return MOSAIC_FILL if not image.is_floating_point() else MOSAIC_FILL / 255.0


class _MosaicOptions:
    """The arguments :class:`Mosaic` and :class:`MosaicDataset` share, checked once."""

    def _set_options(self, p: float, center_range: Any, fill: float | None, max_occlusion: float,
                     min_size: float, interpolation: str) -> None:
        self.p = check_probability(p, "p")
        self.center_range = _check_center_range(center_range)
        if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float))):
            raise TypeError(f"fill must be a number or None (114 grey), got {type(fill).__name__}")
        self.fill = None if fill is None else float(fill)
        self.max_occlusion = check_probability(max_occlusion, "max_occlusion")
        self.min_size = check_nonnegative(min_size, "min_size")
        self.interpolation = check_choice(interpolation, "interpolation", ("bilinear", "nearest"))

    def _center(self, u: Sequence[float], canvas: tuple[int, int]) -> tuple[int, int]:
        lo, hi = self.center_range
        return int(canvas[1] * (lo + (hi - lo) * u[0])), int(canvas[0] * (lo + (hi - lo) * u[1]))


class Mosaic(_MosaicOptions):
    """Mosaic as a batch operation: output i is the mosaic of image i (top-left) and three images
    drawn uniformly from the rest of the batch (module docstring), on the batch's own (H, W).

    Args:
        p: probability that an image is turned into a mosaic (per image; default 1).
        center_range: ``(c0, c1)``, the centre's range as fractions of each side (default (0.25, 0.75)).
        fill: value of uncovered pixels (default 114 for uint8 images, 114/255 for float ones).
        max_occlusion: boxes with more than this fraction of their area cut off are dropped
            (default 0.9, ultralytics').
        min_size: the smallest box side kept, in pixels (default 1).
        interpolation: the tiles' resize, ``"bilinear"`` (default, antialiased) or ``"nearest"``.
        generator: ``torch.Generator`` for all draws (default: the global torch seed).

    Returns (on call): a :class:`~mixlab.core.result.MixResult` ``(images, targets)`` in the input's
    types; ``index`` (B, 4) the four source images, ``lam`` (B, 4) the canvas fraction each covers.
    A batch of one passes through.
    """

    name = "mosaic"

    def __init__(self, *, p: float = 1.0, center_range: tuple[float, float] = (0.25, 0.75), fill: float | None = None,
                 max_occlusion: float = 0.9, min_size: float = 1.0, interpolation: str = "bilinear",
                 generator: torch.Generator | None = None) -> None:
        self._set_options(p, center_range, fill, max_occlusion, min_size, interpolation)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def __call__(self, images: Any, targets: Any = None) -> MixResult:
        images, targets = unpack_batch(images, targets)
        batch = read_detection_batch(images, targets)
        x, b = batch.images, batch.batch_size
        canvas = tuple(x.shape[-2:])
        index = torch.arange(b).view(-1, 1).repeat(1, 4)
        lam = torch.zeros(b, 4)
        lam[:, 0] = 1.0
        out_images, out_targets = x.clone(), []
        if b < 2 or self.p == 0.0:
            mixed = torch.zeros(b, dtype=torch.bool)
        else:
            mixed = rand((b,), self.generator) < self.p
            index[:, 1:] = (index[:, 1:] + 1 + randint(b - 1, (b, 3), self.generator)) % b
            u = rand((b, 2), self.generator).tolist()
        fill = _default_fill(x, self.fill)
        for i in range(b):
            if not bool(mixed[i]):
                out_targets.append(sanitize(batch.targets[i], self.min_size))
                continue
            srcs = index[i].tolist()
            image, target, regions = mosaic([x[k] for k in srcs], [batch.targets[k] for k in srcs],
                                            self._center(u[i], canvas), canvas, fill, self.max_occlusion,
                                            self.min_size, self.interpolation)
            out_images[i] = image
            out_targets.append(target)
            area = (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1])
            lam[i] = area.float() / float(canvas[0] * canvas[1])
        index = torch.where(mixed.view(-1, 1), index, torch.arange(b).view(-1, 1))
        images_out, targets_out = batch.write(out_images, out_targets)
        return MixResult(images_out, targets_out, lam, index, list(targets))

    def __repr__(self) -> str:
        return (f"Mosaic(p={self.p}, center_range={self.center_range}, fill={self.fill}, "
                f"max_occlusion={self.max_occlusion}, min_size={self.min_size}, interpolation={self.interpolation!r})")


class MosaicDataset(Dataset, _MosaicOptions):
    """A dataset of ``(image, target)`` detection samples whose items are mosaics: item i is the
    mosaic of sample i (top-left) and three samples drawn uniformly from the whole dataset (YOLOX's
    ``MosaicDetection``, ultralytics' ``Mosaic``), on a canvas of ``size``.

    Samples may differ in size; images may be tensors, ``tv_tensors.Image`` or PIL images (PIL
    images are read as ``tv_tensors.Image``, mosaic or not); targets are torchvision's detection
    dicts (``wrap_dataset_for_transforms_v2`` of ``CocoDetection`` gives them). Draws come from the
    global torch RNG, as torchvision's transforms (each DataLoader worker has its own seed). An item
    not turned into a mosaic (``p``, or ``enabled = False``: YOLOX turns Mosaic off for its last
    epochs) is the sample itself, boxes of zero area removed; give ``transforms`` a resize
    (``v2.Resize``) when items must batch.

    Args:
        dataset: any map-style dataset of ``(image, target)``.
        size: the canvas ``(H, W)`` (or an int for a square).
        transforms: applied to every item after the mosaic, ``transforms(image, target)`` (e.g. a
            ``v2.Compose`` ending in ``v2.SanitizeBoundingBoxes()``).
        p, center_range, fill, max_occlusion, min_size, interpolation: as :class:`Mosaic`.

    Raises:
        TypeError, ValueError: bad arguments; bad samples when read (:func:`~mixlab.mixers.detection.check_detection_targets`).
    """

    def __init__(self, dataset: Any, size: int | tuple[int, int], *, p: float = 1.0,
                 center_range: tuple[float, float] = (0.25, 0.75), fill: float | None = None,
                 max_occlusion: float = 0.9, min_size: float = 1.0, interpolation: str = "bilinear",
                 transforms: Callable | None = None) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style dataset of (image, target), got {type(dataset).__name__}")
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError(f"size must be a positive int or a pair (H, W) of them, got {size!r}")
        if transforms is not None and not callable(transforms):
            raise TypeError(f"transforms must be callable or None, got {type(transforms).__name__}")
        self._set_options(p, center_range, fill, max_occlusion, min_size, interpolation)
        self.dataset, self.size, self.transforms = dataset, (int(size[0]), int(size[1])), transforms
        self.enabled = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, dict]:
        first = _read_sample(*self.dataset[i])
        if self.enabled and float(torch.rand(())) < self.p:
            others = torch.randint(len(self.dataset), (3,)).tolist()
            u = torch.rand(2).tolist()
            batches = [first] + [_read_sample(*self.dataset[k]) for k in others]
            fill = _default_fill(first.images, self.fill)
            out, merged, _ = mosaic([bt.images[0] for bt in batches], [bt.targets[0] for bt in batches],
                                    self._center(u, self.size), self.size, fill, self.max_occlusion, self.min_size,
                                    self.interpolation)
        else:
            out, merged = first.images[0], sanitize(first.targets[0], self.min_size)
        images, targets = first.write(out.unsqueeze(0), [merged])
        image, target = images[0], targets[0]
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def set_enabled(self, enabled: bool) -> None:
        """Turn the mosaic on or off (YOLOX's ``close_mosaic`` for the last epochs)."""
        self.enabled = check_bool(enabled, "enabled")

    def __repr__(self) -> str:
        return (f"MosaicDataset(n={len(self)}, size={self.size}, p={self.p}, center_range={self.center_range}, "
                f"max_occlusion={self.max_occlusion}, min_size={self.min_size}, enabled={self.enabled})")


def _read_sample(image: Any, target: Any):
    """One sample as a one-image :class:`~mixlab.mixers.detection.DetectionBatch` (PIL images are
    read as ``tv_tensors.Image``)."""
    if not isinstance(image, Tensor):
        import PIL.Image

        if isinstance(image, PIL.Image.Image):
            from torchvision.transforms.v2 import functional as TF

            image = TF.to_image(image)
    return read_detection_batch([image], [target])
