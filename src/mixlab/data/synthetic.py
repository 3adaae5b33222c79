"""``SyntheticShapes``: a generated 10-class image dataset for tests, demos and quick benchmarks.

Each image shows one shape -- the class -- at random scale, position, rotation, aspect and colour,
on a cluttered, textured background: low-frequency colour noise, a random stripe grating, soft
blobs and thin line segments (some of them drawn *over* the shape). Classes differ only by shape,
never by colour or brightness (the foreground colour is drawn relative to the background, with
the same law for every class), so, as on natural images, crops and pastes change what is visible.

Everything is rendered in batches with coordinate grids (no per-pixel or per-image Python loops);
all randomness goes through one ``torch.Generator`` seeded from ``(seed, split)``, so a given
``(split, num_per_class, image_size, seed, num_classes)`` always gives the same tensors.

Each image's object box is exact: ``dataset.boxes[i]`` is the bounding box of the pixels whose
centre lies inside the drawn shape (the shape's rendered opacity > 0.5, before the occluding
segments, which hide parts of the object without changing where it is), for weakly supervised
localization (:mod:`mixlab.evaluation.wsol`).

Dense targets, exact by the same rule: ``instance_masks`` (the shape's pixels, opacity > 0.5),
``semantic_masks`` (class + 1 on the shape, 0 = background; the thin occluding segments do not
change it), ``instance_boxes``; :meth:`SyntheticShapes.segmentation` and
:meth:`SyntheticShapes.detection` serve them in torchvision's v2 formats. ``objects=M > 1`` is the
multi-object variant (1..M shapes per image, later shapes hidden by earlier ones where they
overlap), for detection and Copy-Paste; it has seeds of its own, so the images of the one-object
splits are unchanged.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from mixlab.core.boxes import mask_boxes

from .tensor_dataset import ImageTensorDataset

__all__ = ["SyntheticShapes", "SHAPES", "SYNTHETIC_MEAN", "SYNTHETIC_STD", "mask_boxes"]

SHAPES = ("disk", "ring", "square", "triangle", "cross", "star", "bar", "crescent", "diamond", "hexagon")
# Per-channel statistics of the train split (seed 0, 32x32, 1000 per class); fixed so that train
# and test normalise identically. They hardly depend on the seed or size.
SYNTHETIC_MEAN = (0.4730, 0.4718, 0.4711)
SYNTHETIC_STD = (0.2768, 0.2772, 0.2766)
_DEFAULT_PER_CLASS = {"train": 1000, "test": 200}
_CHUNK = 1024  # images rendered per batch (bounds memory; fixed so results do not depend on it)


def _derived_seed(seed: int, split: str) -> int:
    digest = hashlib.sha256(f"mixlab.synthetic:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _shape_sdf(cls: int, u: Tensor, v: Tensor) -> Tensor:
    """Approximate signed distance (negative inside) of shape ``cls`` in local units (radius ~1)."""
    rho = torch.sqrt(u * u + v * v)
    phi = torch.atan2(v, u)
    au, av = u.abs(), v.abs()
    name = SHAPES[cls]
    if name == "disk":
        return rho - 0.95
    if name == "ring":
        return (rho - 0.72).abs() - 0.26
    if name == "square":
        return torch.maximum(au, av) - 0.8
    if name == "triangle":  # equilateral; max over the three edge half-planes
        normals = (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        return torch.stack([u * math.cos(a) + v * math.sin(a) for a in normals]).amax(0) - 0.5
    if name == "cross":
        return torch.minimum(torch.maximum(au - 1.0, av - 0.3), torch.maximum(au - 0.3, av - 1.0))
    if name == "star":  # five points: radius goes linearly from 0.42 (notch) to 1.05 (tip)
        t = ((phi * (5 / (2 * math.pi))) % 1.0 - 0.5).abs() * 2.0
        return (rho - (0.42 + 0.63 * t)) * 0.6
    if name == "bar":  # elongated ellipse
        return (torch.sqrt((u / 1.0) ** 2 + (v / 0.36) ** 2) - 1.0) * 0.36
    if name == "crescent":
        return torch.maximum(rho - 0.95, 0.8 - torch.sqrt((u - 0.45) ** 2 + v * v))
    if name == "diamond":  # rhombus, elongated so it is not a rotated square
        return (au / 1.0 + av / 0.55 - 1.0) * 0.48
    if name == "hexagon":
        normals = (0.0, math.pi / 3, 2 * math.pi / 3)
        return torch.stack([(u * math.cos(a) + v * math.sin(a)).abs() for a in normals]).amax(0) - 0.82
    raise AssertionError(name)


def _render(classes: Tensor, size: int, g: torch.Generator, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Render one batch of images (float in [0, 1], ``(n, 3, size, size)``) showing the shapes
    ``classes`` (n, M), and their visible masks (n, M, size, size) bool: the shape's opacity > 0.5,
    minus the shapes drawn over it. Shapes are drawn last to first (shape 0 on top); ``present``
    (n, M) bool leaves shapes out (their draws are made all the same). M = 1 is the classification
    image, drawn exactly as before the masks existed."""
    n, m = classes.shape
    px = 2.0 / size  # one pixel in the [-1, 1] image frame
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) * px - 1.0
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")  # (S, S)

    def U(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    def over(img: Tensor, alpha: Tensor, colour: Tensor) -> Tensor:  # alpha (n,S,S), colour (n,3,[S,S])
        colour = colour if colour.dim() == 4 else colour[:, :, None, None]
        return img.lerp_(colour.expand_as(img), alpha.unsqueeze(1))

    def segments(k: int, width_lo: float, width_hi: float, p: float) -> tuple[Tensor, Tensor]:
        """k random segments per image (each drawn with probability p) -> alphas (n,k,S,S), colours (n,k,3)."""
        a = U(n, k, 2, lo=-1.1, hi=1.1)
        ang, length = U(n, k, lo=0, hi=math.pi), U(n, k, lo=0.4, hi=1.4)
        d = torch.stack([torch.cos(ang), torch.sin(ang)], -1) * length[..., None]
        w = U(n, k, lo=width_lo, hi=width_hi) * px
        on = (U(n, k) < p).float()
        qx, qy = xx - a[..., 0, None, None], yy - a[..., 1, None, None]  # (n,k,S,S)
        dx, dy = d[..., 0, None, None], d[..., 1, None, None]
        t = ((qx * dx + qy * dy) / (dx * dx + dy * dy)).clamp(0, 1)  # projection onto the segment
        dist = torch.sqrt((qx - t * dx) ** 2 + (qy - t * dy) ** 2)
        alpha = ((w[..., None, None] / 2 - dist) / px + 0.5).clamp(0, 1) * on[..., None, None]
        return alpha, U(n, k, 3)

    # 1. background: low-frequency colour noise + a stripe grating
    img = torch.nn.functional.interpolate(U(n, 3, 4, 4), size=(size, size), mode="bicubic", align_corners=False)
    img = img * U(n, 1, 1, 1, lo=0.6, hi=1.2) + U(n, 3, 1, 1, lo=-0.15, hi=0.15)
    ang, freq, phase = U(n, lo=0, hi=math.pi), U(n, lo=2.0, hi=7.0), U(n, lo=0, hi=2 * math.pi)
    along = xx * torch.cos(ang)[:, None, None] + yy * torch.sin(ang)[:, None, None]
    wave = torch.sin(math.pi * freq[:, None, None] * along + phase[:, None, None])
    amp = U(n, lo=0.0, hi=0.35) * (U(n) < 0.6).float()
    img = img + (amp[:, None] * (U(n, 3) * 2 - 1))[:, :, None, None] * wave[:, None]
    # 2. clutter under the shape: soft blobs and thin segments
    bc, bs = U(n, 3, 2, lo=-1, hi=1), U(n, 3, lo=1.5, hi=4.5) * px
    d2 = (xx - bc[..., 0, None, None]) ** 2 + (yy - bc[..., 1, None, None]) ** 2
    blob = torch.exp(-d2 / (2 * bs[..., None, None] ** 2)) * U(n, 3, 1, 1, lo=0.3, hi=0.9)
    bcol = U(n, 3, 3)
    for j in range(3):
        img = over(img, blob[:, j], bcol[:, j])
    alpha, col = segments(3, 0.8, 2.0, 0.5)
    for j in range(alpha.shape[1]):
        img = over(img, alpha[:, j], col[:, j])
    # 3. the shapes: random scale, aspect, rotation, position; colour contrasted with the background
    masks = torch.zeros(n, m, size, size, dtype=torch.bool)
    for j in reversed(range(m)):  # shape 0 last, on top
        labels = classes[:, j]
        r = U(n, lo=0.4, hi=0.75) if m == 1 else U(n, lo=0.25, hi=0.45)
        aspect = torch.exp(U(n, lo=-0.15, hi=0.15))
        theta = U(n, lo=0, hi=2 * math.pi)
        lim = 1.0 - 0.7 * r
        cx, cy = (U(n) * 2 - 1) * lim, (U(n) * 2 - 1) * lim
        dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
        c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        u = (c * dx + s * dy) / (r * aspect)[:, None, None]
        v = (-s * dx + c * dy) / (r / aspect)[:, None, None]
        sdf = torch.empty(n, size, size)
        for k in labels.unique().tolist():
            idx = (labels == k).nonzero().squeeze(1)
            sdf[idx] = _shape_sdf(k, u[idx], v[idx])
        alpha = (0.5 - sdf * (r[:, None, None] / px)).clamp(0, 1)
        if present is not None:
            alpha = alpha * present[:, j, None, None]
        masks[:, j] = alpha > 0.5
        masks[:, j + 1:] &= ~masks[:, j:j + 1]  # shapes under this one lose what it covers
        local = (img * alpha.unsqueeze(1)).sum((2, 3)) / alpha.sum((1, 2)).clamp_min(1e-6)[:, None]  # bg under it
        delta = U(n, 3, lo=0.35, hi=0.7) * torch.where(U(n, 3) < 0.5, -1.0, 1.0)
        fg = local + delta
        fg = torch.where((fg < 0) | (fg > 1), local - delta, fg).clamp(0, 1)
        shade = 1 + U(n, 1, 1, 1, lo=-0.2, hi=0.2) * u.clamp(-1, 1).unsqueeze(1)  # soft gradient on the shape
        img = over(img, alpha, fg[:, :, None, None] * shade)
    # 4. occluders over the shape, then pixel noise
    alpha, col = segments(1, 0.8, 1.5, 0.3)
    for j in range(alpha.shape[1]):
        img = over(img, alpha[:, j], col[:, j])
    img = img + torch.randn(n, 3, size, size, generator=g) * U(n, 1, 1, 1, lo=0.0, hi=0.05)
    return img.clamp_(0, 1), masks


class SyntheticShapes(ImageTensorDataset):
    """Generated shape-classification images as an :class:`ImageTensorDataset`.

    Classes are the shapes in :data:`SHAPES` (first ``num_classes`` of them). Labels are balanced
    (exactly ``num_per_class`` each) in shuffled order. ``boxes`` (N, 4) int64 holds each image's
    exact object box, half-open ``(x1, y1, x2, y2)`` pixels (see the module docstring).
    ``mean``/``std`` are the fixed constants :data:`SYNTHETIC_MEAN` / :data:`SYNTHETIC_STD` so both
    splits normalise alike.

    Dense targets (module docstring): ``instance_masks`` (N, M, S, S) bool, the visible pixels of
    each of up to M = ``objects`` shapes; ``instance_labels`` (N, M) int64 their classes, -1 where
    an image has fewer shapes (or one is hidden entirely); ``instance_boxes`` (N, M, 4) int64 the
    boxes of the visible pixels; ``semantic_masks`` (N, S, S) uint8, 0 = background and class + 1
    on each shape (``semantic_classes`` names them). Shape 0 is drawn on top: it is never hidden,
    its class is the image's label and ``boxes`` is its box.

    Args:
        split: ``"train"`` or ``"test"``; each split has its own seed derived from ``seed``.
        num_per_class: images per class; default 1000 for train, 200 for test.
        image_size: side of the square images, >= 8.
        seed: base seed.
        num_classes: number of shape classes, 2..10.
        transform: per-item transform (``transforms.v2`` on ``uint8`` CHW).
        objects: the most shapes per image, 1..8. 1 (default): the classification images; M > 1:
            1..M shapes (uniform), smaller (radius 0.25..0.45 of the half-side instead of 0.4..0.75),
            the first of class ``label`` (balanced), the others of uniform classes.

    Raises:
        ValueError: ``split`` not train/test, or a size/count out of range.
    """

    def __init__(
        self,
        split: str = "train",
        num_per_class: int | None = None,
        image_size: int = 32,
        seed: int = 0,
        num_classes: int = 10,
        transform=None,
        objects: int = 1,
    ) -> None:
        if split not in _DEFAULT_PER_CLASS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        num_per_class = _DEFAULT_PER_CLASS[split] if num_per_class is None else num_per_class
        for name, val, lo in (("num_per_class", num_per_class, 1), ("image_size", image_size, 8)):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be an int in [2, {len(SHAPES)}], got {num_classes!r}")
        if isinstance(objects, bool) or not isinstance(objects, int) or not 1 <= objects <= 8:
            raise ValueError(f"objects must be an int in [1, 8] (the most shapes per image), got {objects!r}")
        g = torch.Generator().manual_seed(_derived_seed(int(seed), split if objects == 1 else f"{split}:objects={objects}"))
        n = num_per_class * num_classes
        labels = torch.arange(num_classes).repeat_interleave(num_per_class)[torch.randperm(n, generator=g)]
        images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
        masks = torch.empty(n, objects, image_size, image_size, dtype=torch.bool)
        classes = torch.empty(n, objects, dtype=torch.int64)
        for start in range(0, n, _CHUNK):
            first = labels[start:start + _CHUNK]
            k, present = first.numel(), None
            classes[start:start + k, 0] = first
            if objects > 1:  # how many shapes, and the classes of all but the first
                present = torch.arange(objects) < 1 + torch.randint(objects, (k, 1), generator=g)
                classes[start:start + k, 1:] = torch.randint(num_classes, (k, objects - 1), generator=g)
            chunk, masks[start:start + k] = _render(classes[start:start + k], image_size, g, present)
            images[start:start + k] = chunk.mul_(255).round_().to(torch.uint8)
        super().__init__(images, labels, list(SHAPES[:num_classes]), transform, SYNTHETIC_MEAN, SYNTHETIC_STD)
        self.instance_masks = masks  # (N, M, S, S) the visible pixels of each shape
        self.instance_labels = torch.where(masks.flatten(2).any(2), classes, -1)  # (N, M), -1: no shape
        self.instance_boxes = mask_boxes(masks.flatten(0, 1)).view(n, objects, 4)  # (N, M, 4)
        self.boxes = self.instance_boxes[:, 0]  # (N, 4) exact box of the shape of the label, half-open pixels
        self.split, self.seed, self.objects = split, seed, objects

    @property
    def semantic_classes(self) -> list[str]:
        """Names of the semantic-map classes: ``"background"``, then the shapes."""
        return ["background", *self.classes]

    @property
    def semantic_masks(self) -> Tensor:
        """(N, S, S) uint8 label maps: 0 = background, class + 1 on each shape's visible pixels."""
        values = (self.instance_labels + 1).to(torch.uint8)  # 0 where there is no shape
        return (self.instance_masks * values[:, :, None, None]).sum(1, dtype=torch.uint8)  # masks are disjoint

    def subset(self, indices) -> SyntheticShapes:
        view = super().subset(indices)
        idx = torch.as_tensor(indices, dtype=torch.int64)
        view.instance_masks = self.instance_masks[idx]
        view.instance_labels, view.instance_boxes = self.instance_labels[idx], self.instance_boxes[idx]
        return view

    def segmentation(self, transforms=None):
        """These images with their semantic maps: a :class:`~mixlab.data.dense.SegmentationDataset`
        of ``(tv_tensors.Image, tv_tensors.Mask)``, K + 1 classes (background 0)."""
        from .dense import SegmentationDataset

        return SegmentationDataset(self.images, self.semantic_masks, self.semantic_classes, transforms,
                                   self.mean, self.std)

    def detection(self, transforms=None, with_masks: bool = True):
        """These images with their instances: a :class:`~mixlab.data.dense.DetectionDataset` of
        ``(tv_tensors.Image, target)`` (labels = class + 1; masks when ``with_masks``)."""
        from .dense import DetectionDataset

        return DetectionDataset(self.images, self.instance_masks, self.instance_labels, self.instance_boxes,
                                self.classes, transforms, with_masks, self.mean, self.std)
