"""The result type every mixer returns."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mixlab.core.boxes import boxes_to_mask
from mixlab.core.checks import is_label_map

__all__ = ["MixResult"]

_FIELDS = ("images", "targets", "lam", "index", "source_targets", "mask", "boxes", "partner_targets")


class MixResult(tuple):
    """A mixed batch: the pair ``(images, targets)``, as torchvision v2 and timm return, with the
    mixing's bookkeeping as attributes.

    It is a tuple of length 2, so ``images, targets = mixer(images, labels)``, ``out[0]``,
    ``out[1]`` and ``len(out) == 2`` work as with torchvision and timm; a ``collate_fn`` may
    return it as is.

    Convention for every mixer: output i is built from image i (weight ``lam[i]``) and its partner
    ``index[i]`` (weight ``1 - lam[i]``), and ``lam[i]`` is the *exact* fraction of output i that
    comes from image i (the pixel fraction, for masks and boxes).

    Attributes:
        images: mixed images (B, C, H, W), same dtype, device, memory format and tensor subclass
            (``tv_tensors.Image``) as the input. Read-only, as ``targets`` (it is ``self[0]``);
            :meth:`replace` makes a changed copy.
        targets: class labels in: dense soft targets (B, K), float32 unless the mixer was given
            another dtype. Label maps in (segmentation, see below): (B, H, W) maps, the input's
            dtype and tensor subclass (``tv_tensors.Mask``). Detection mixers
            (:mod:`mixlab.mixers.detection`): one target dict per image.
        lam: (B,) float32, the weight of image i in output i.
        index: (B,) int64 partner index.
        source_targets: the un-mixed (smoothed) targets (B, K) (label maps: (B, H, W)); ``targets``
            mixes them.
        partner_targets: (B, K) targets of each output's partner when the partner is not in the
            batch (RecursiveMix's history; then ``index`` is the identity); ``None`` means
            ``source_targets[index]``. Always set for label maps (below).
        boxes: (B, 4) int64 ``(x1, y1, x2, y2)`` of the region pasted from the partner (half-open
            pixel ranges), for box mixers; ``None`` otherwise.
        mask: (B, 1, H, W) weight of image i at each pixel (1 = pixel from image i) for mask and
            box mixers, ``None`` for global mixes such as Mixup. Box mixers build it on first
            access from ``boxes``, so it costs nothing when unused.

    Label maps (segmentation targets, (B, H, W) class indices): every output pixel p of sample i
    has two labels, ``targets[i, p]`` with weight ``lam[i]`` and ``partner_targets[i, p]`` with
    weight ``1 - lam[i]`` (:meth:`pairs`). Box and mask mixers copy pixels, so for them both are
    the same exact mixed map (each pixel's class is the class of the source pixel now there; the
    plain cross-entropy applies); Mixup blends every pixel, so ``targets`` is each image's own map
    and ``partner_targets`` its partner's. :func:`mixlab.core.losses.mixed_segmentation_loss` and
    :func:`mixlab.core.targets.dense_soft_targets` read this form.
    """

    def __new__(
        cls,
        images: Tensor,
        targets: Tensor,
        lam: Tensor,
        index: Tensor,
        source_targets: Tensor,
        mask: Tensor | None = None,
        boxes: Tensor | None = None,
        partner_targets: Tensor | None = None,
    ) -> MixResult:
        self = tuple.__new__(cls, (images, targets))
        self.lam = lam
        self.index = index
        self.source_targets = source_targets
        self.boxes = boxes
        self.partner_targets = partner_targets
        self._mask = mask
        return self

    @property
    def images(self) -> Tensor:
        return self[0]

    @property
    def targets(self) -> Tensor:
        return self[1]

    @property
    def mask(self) -> Tensor | None:
        if self._mask is None and self.boxes is not None:
            images = self[0] if isinstance(self[0], Tensor) else self[0][0]  # a batch, or a list of images
            h, w = images.shape[-2:]
            dtype = images.dtype if images.is_floating_point() else torch.float32  # uint8 images: a float mask
            inside = boxes_to_mask(self.boxes, h, w, device=images.device, dtype=dtype)
            self._mask = 1 - inside
        return self._mask

    def fields(self) -> dict[str, Any]:
        """Every field by name (``mask`` as stored: ``None`` if not built yet)."""
        return {"images": self[0], "targets": self[1], "lam": self.lam, "index": self.index,
                "source_targets": self.source_targets, "mask": self._mask, "boxes": self.boxes,
                "partner_targets": self.partner_targets}

    def replace(self, **changes: Any) -> MixResult:
        """A copy with some fields replaced, e.g. ``result.replace(images=normalize(result.images))``.

        Raises:
            TypeError: an unknown field name.
        """
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise TypeError(f"replace() takes fields among {list(_FIELDS)}, got {unknown}")
        fields = self.fields()
        if "boxes" in changes and "mask" not in changes:
            fields["mask"] = None  # rebuilt from the new boxes on access
        fields.update(changes)
        return type(self)(**fields)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """The ``(targets_a, targets_b, lam)`` view for ``λ·CE(y_a) + (1-λ)·CE(y_b)`` losses: the
        un-mixed targets of both sources for class targets; for label maps the two per-pixel maps
        ``(targets, partner_targets)`` (see the class docstring).

        See :func:`mixlab.core.losses.mixed_cross_entropy` and
        :func:`~mixlab.core.losses.mixed_segmentation_loss`.
        """
        partner = self.partner_targets if self.partner_targets is not None else self.source_targets[self.index]
        if is_label_map(self[1]):
            return self[1], partner, self.lam
        return self.source_targets, partner, self.lam

    def pin_memory(self) -> MixResult:
        """A copy with every tensor field in pinned memory: a ``DataLoader(pin_memory=True)``
        calls this on each batch a ``MixCollate(return_result=True)`` returns."""
        return type(self)(**{k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in self.fields().items()})

    def __reduce__(self):  # pickling (DataLoader workers): rebuild from the fields
        return (_rebuild, (type(self), self.fields()))

    def __repr__(self) -> str:
        return (
            f"MixResult(images={tuple(self[0].shape)}, targets={tuple(self[1].shape)}, "
            f"lam={self.lam.tolist() if self.lam.numel() <= 8 else '...'}, boxes={self.boxes is not None})"
        )


def _rebuild(cls: type, fields: dict[str, Any]) -> MixResult:
    return cls(**fields)
