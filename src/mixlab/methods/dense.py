"""Training steps of the dense tasks, through the one :class:`~mixlab.methods.base.Method` interface.

* :class:`SegmentationStep`: ``batch = (images (B, C, H, W), label maps (B, H, W))``; the mixer
  (a :class:`~mixlab.mixers.base.Mixer`: Mixup, CutMix, ResizeMix, FMix, SaliencyMix) moves the
  maps with the pixels, and the loss is :func:`~mixlab.core.losses.mixed_segmentation_loss`: the
  plain per-pixel cross-entropy (``ignore_index`` left out) for the box and mask mixers and for
  un-mixed batches, λ·CE(y_a) + (1 − λ)·CE(y_b) per pixel for Mixup.
* :class:`DetectionStep`: ``batch = (images (B, C, H, W) in [0, 1], targets)`` with torchvision's
  detection targets (one dict per image); the mixer (:mod:`mixlab.mixers.detection`, Mosaic,
  Copy-Paste) mixes images and boxes, and the loss is the sum of the detector's own losses
  (``model(images, targets)`` of a torchvision detector: FCOS's focal, GIoU and centerness
  losses; Faster R-CNN's RPN and box-head losses). DetectionMixup's per-box ``"weights"`` are
  carried in the targets but torchvision's losses do not read them: its boxes count fully, as in
  YOLOX's training (which also keeps the union of both images' boxes unweighted).

Both take ``mixer=None`` for vanilla training. ``mixlab.registry.DENSE_METHODS`` names them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mixlab.core.losses import mixed_segmentation_loss
from mixlab.core.result import MixResult
from mixlab.methods.base import Method, StepOutput

__all__ = ["DenseStep", "SegmentationStep", "DetectionStep"]


class DenseStep(Method):
    """What both dense steps share: an optional mixer, which draws from the method's generator.

    Args:
        mixer: ``mixer(images, targets) -> MixResult``, or ``None`` (vanilla).
        num_classes: K of the model's output, background included.
        label_smoothing: ε of the segmentation cross-entropy (the detectors' losses take none).
        name: the method's name (the registry's).
    """

    #: samples.png draws classification targets; the dense batches have none to show there
    draws_samples = False

    def __init__(self, mixer: Callable[..., MixResult] | None = None, num_classes: int = 0,
                 label_smoothing: float = 0.0, name: str = "vanilla") -> None:
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing)
        self.mixer, self.name = mixer, name

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        super().setup(model, generator)
        if self.mixer is not None and generator is not None:
            self.mixer.generator = generator

    def extra_repr(self) -> str:
        return f"mixer={self.mixer!r}"


class SegmentationStep(DenseStep):
    """Per-pixel cross-entropy on (mixed) label maps (module docstring).

    Args:
        ignore_index: the label of pixels without a class (default 255).
        (the others as :class:`DenseStep`)
    """

    def __init__(self, mixer: Callable[..., MixResult] | None = None, num_classes: int = 0,
                 label_smoothing: float = 0.0, name: str = "vanilla", ignore_index: int = 255) -> None:
        super().__init__(mixer, num_classes, label_smoothing, name)
        self.ignore_index = ignore_index

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, masks = batch  # (B, C, H, W) float, (B, H, W) integer
        if self.mixer is None:
            logits = model(images)  # (B, K, H, W)
            loss = F.cross_entropy(logits.float(), masks.long(), ignore_index=self.ignore_index,
                                   label_smoothing=self.label_smoothing)
            return StepOutput(loss=loss)
        mixed = self.mixer(images, masks)
        logits = model(mixed.images)
        loss = mixed_segmentation_loss(logits, mixed, self.ignore_index, self.label_smoothing)
        return StepOutput(loss=loss, mixed=mixed)


class DetectionStep(DenseStep):
    """The sum of a torchvision detector's losses on a (mixed) batch (module docstring); each loss
    is logged as ``train_<name>`` (``train_classification``, ``train_bbox_regression``, ...)."""

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, targets = batch  # (B, C, H, W) in [0, 1], B dicts
        mixed = self.mixer(images, targets) if self.mixer is not None else None
        if mixed is not None:
            images, targets = mixed.images, mixed.targets
        losses = model(list(images), [{k: v for k, v in t.items() if k != "weights"} for t in targets])
        loss = torch.stack([v for v in losses.values()]).sum()
        return StepOutput(loss=loss, logs={k: v.detach() for k, v in losses.items()}, mixed=mixed)
