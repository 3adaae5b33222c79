"""The result type every mixer returns."""

from __future__ import annotations

from typing import Iterator

from torch import Tensor

from mixlab.core.boxes import boxes_to_mask

__all__ = ["MixResult"]


class MixResult:
    """A mixed batch. Unpacks as ``images, targets = mixer(images, labels)``.

    Convention for every mixer: output i is built from image i (weight ``lam[i]``) and its partner
    ``index[i]`` (weight ``1 - lam[i]``), and ``lam[i]`` is the *exact* fraction of output i that
    comes from image i (the pixel fraction, for masks and boxes).

    Attributes:
        images: mixed images (B, C, H, W), same dtype, device and memory format as the input.
        targets: dense soft targets (B, K), float32 unless the mixer was given another dtype.
        lam: (B,) float32, the weight of image i in output i.
        index: (B,) int64 partner index.
        source_targets: the un-mixed (smoothed) targets (B, K); ``targets`` mixes them.
        partner_targets: (B, K) targets of each output's partner when the partner is not in the
            batch (RecursiveMix's history; then ``index`` is the identity); ``None`` means
            ``source_targets[index]``.
        boxes: (B, 4) int64 ``(x1, y1, x2, y2)`` of the region pasted from the partner (half-open
            pixel ranges), for box mixers; ``None`` otherwise.
        mask: (B, 1, H, W) weight of image i at each pixel (1 = pixel from image i) for mask and
            box mixers, ``None`` for global mixes such as Mixup. Box mixers build it on first
            access from ``boxes``, so it costs nothing when unused.
    """

    __slots__ = ("images", "targets", "lam", "index", "source_targets", "boxes", "partner_targets", "_mask")

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        lam: Tensor,
        index: Tensor,
        source_targets: Tensor,
        mask: Tensor | None = None,
        boxes: Tensor | None = None,
        partner_targets: Tensor | None = None,
    ) -> None:
        self.images = images
        self.targets = targets
        self.lam = lam
        self.index = index
        self.source_targets = source_targets
        self.boxes = boxes
        self.partner_targets = partner_targets
        self._mask = mask

    @property
    def mask(self) -> Tensor | None:
        if self._mask is None and self.boxes is not None:
            h, w = self.images.shape[-2:]
            inside = boxes_to_mask(self.boxes, h, w, device=self.images.device, dtype=self.images.dtype)
            self._mask = 1.0 - inside
        return self._mask

    def __iter__(self) -> Iterator[Tensor]:
        yield self.images
        yield self.targets

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """The ``(targets_a, targets_b, lam)`` view for ``λ·CE(y_a) + (1-λ)·CE(y_b)`` losses.

        See :func:`mixlab.core.losses.mixed_cross_entropy`.
        """
        partner = self.partner_targets if self.partner_targets is not None else self.source_targets[self.index]
        return self.source_targets, partner, self.lam

    def __repr__(self) -> str:
        return (
            f"MixResult(images={tuple(self.images.shape)}, targets={tuple(self.targets.shape)}, "
            f"lam={self.lam.tolist() if self.lam.numel() <= 8 else '...'}, boxes={self.boxes is not None})"
        )
