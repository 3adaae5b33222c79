"""Segmentation and detection models for ``mixlab train --task`` and ``mixlab transfer``.

Two ways to get one (:func:`build_dense_model`), both with random weights (torchvision's
``weights=None, weights_backbone=None``):

* **on a classification backbone** (any staged model of :mod:`mixlab.models`: ``resnet_small``,
  ``resnet18``, the staged ``timm:`` ResNets): :class:`StagedBackbone` runs its stem and stages
  and hands the last ``levels`` stage outputs to torchvision's ``FeaturePyramidNetwork``;
  :class:`FPNSegmenter` classifies the pixels of the finest pyramid level (a semantic-FPN head,
  Kirillov et al. 2019, reduced to one level) and upsamples the logits bilinearly to the input;
  :func:`fcos_on_backbone` puts torchvision's FCOS (Tian et al. 2019) on the pyramid, one anchor
  size per level equal to its stride (as torchvision's ``fcos_resnet50_fpn``). The classification
  model is kept whole as ``backbone.body`` (so ``model.init`` / ``mixlab transfer`` load a
  classification run's weights into it, :func:`classification_body`); its classifier is frozen
  and unused.
* **torchvision's own** (:data:`TORCHVISION_DENSE`): ``lraspp_mobilenet_v3_large`` (Howard et al.
  2019) and ``fasterrcnn_mobilenet_v3_large_320_fpn``, sized to the images (the detector's
  ``min_size`` / ``max_size`` = the image side, so nothing is resized).

Segmenters map (B, 3, H, W) normalised images to (B, K, H, W) logits. Detectors follow
torchvision's detection API: ``model(images, targets)`` -> loss dict in training, ``model(images)``
-> one ``{"boxes", "scores", "labels"}`` per image in eval mode; they take images in [0, 1] and
normalise with ``image_mean`` / ``image_std`` themselves.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["TORCHVISION_DENSE", "DENSE_TASKS", "StagedBackbone", "FPNSegmenter", "fcos_on_backbone",
           "build_dense_model", "classification_body"]

#: the tasks these models serve
DENSE_TASKS = ("segmentation", "detection")


class StagedBackbone(nn.Module):
    """The last ``levels`` stage outputs of a staged classification model through a feature
    pyramid: ``forward(x) -> OrderedDict {"0": finest, ...}`` of ``out_channels`` maps each
    (torchvision's backbone protocol, ``out_channels`` attribute included).

    Args:
        body: a staged model (:mod:`mixlab.models.staged`); its classifier is frozen (never used).
        levels: how many of the last stages feed the pyramid (1..num_stages).
        out_channels: channels of every pyramid level.

    Raises:
        TypeError: ``body`` has no stages.
        ValueError: ``levels`` out of range.
    """

    def __init__(self, body: nn.Module, levels: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        from mixlab.models.staged import has_stages

        if not has_stages(body):
            raise TypeError(f"a dense model needs a staged classification model (mixlab's ResNets/WRNs, a staged "
                            f"timm: ResNet) as its backbone, got {type(body).__name__} without stages")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= body.num_stages:
            raise ValueError(f"levels must be an int in [1, {body.num_stages}] (the stages of the backbone), "
                             f"got {levels!r}")
        self.body, self.levels, self.out_channels = body, levels, out_channels
        for p in body.get_classifier().parameters():
            p.requires_grad_(False)
        self.fpn = FeaturePyramidNetwork(list(body.stage_channels[-levels:]), out_channels)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        h = self.body.forward_stem(x)
        maps = []
        for stage in self.body.stages:
            h = stage(h)
            maps.append(h)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps[-self.levels:])))

    def strides(self, image_size: int) -> list[int]:
        """The stride of each pyramid level on ``image_size`` inputs (one dry run on the CPU)."""
        was = self.training
        self.eval()
        with torch.no_grad():
            device = next(self.parameters()).device
            maps = self(torch.zeros(1, 3, image_size, image_size, device=device))
        self.train(was)
        return [max(1, image_size // m.shape[-1]) for m in maps.values()]


class FPNSegmenter(nn.Module):
    """Per-pixel logits from the finest level of a :class:`StagedBackbone`: 3x3 conv + BN + ReLU,
    1x1 classifier, bilinear upsampling to the input size. ``forward(x) -> (B, K, H, W)``."""

    def __init__(self, backbone: StagedBackbone, num_classes: int) -> None:
        super().__init__()
        c = backbone.out_channels
        self.backbone = backbone
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        finest = next(iter(self.backbone(x).values()))
        logits = self.classifier(self.head(finest))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _OutLogits(nn.Module):
    """torchvision's segmenters return ``{"out": logits, ...}``: this returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def fcos_on_backbone(backbone: StagedBackbone, num_classes: int, image_size: int, mean: Sequence[float],
                     std: Sequence[float], head_convs: int = 2) -> nn.Module:
    """torchvision's FCOS on ``backbone``'s pyramid, for ``image_size`` square images (no resize),
    one anchor per location of size = the level's stride, ``num_classes`` with the background, and
    ``head_convs`` convolutions in each head branch (FCOS has 4; 2 halve the head's cost)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    strides = backbone.strides(image_size)
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=head_convs)
    return FCOS(backbone, num_classes, min_size=image_size, max_size=image_size, image_mean=list(mean),
                image_std=list(std), anchor_generator=anchors, head=head, detections_per_img=50)


def _lraspp(num_classes: int, image_size: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return _OutLogits(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes))


def _fasterrcnn(num_classes: int, image_size: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                                 min_size=image_size, max_size=image_size, image_mean=list(mean),
                                                 image_std=list(std))


#: task -> torchvision model name -> builder ``(num_classes, image_size, mean, std)``
TORCHVISION_DENSE: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "segmentation": {"lraspp_mobilenet_v3_large": _lraspp},
    "detection": {"fasterrcnn_mobilenet_v3_large_320_fpn": _fasterrcnn},
}


def build_dense_model(task: str, name: str, num_classes: int, *, image_size: int, mean: Sequence[float] = (0.5,) * 3,
                      std: Sequence[float] = (0.25,) * 3, levels: int | None = None, fpn_channels: int = 64,
                      head_convs: int = 2, **kwargs: Any) -> nn.Module:
    """The ``task`` model called ``name``: a name of :data:`TORCHVISION_DENSE`, or a classification
    model name (:func:`mixlab.models.create_model`, ``kwargs`` its arguments) whose stages become the
    backbone (:class:`FPNSegmenter` / :func:`fcos_on_backbone`).

    Args:
        task: ``"segmentation"`` or ``"detection"``.
        num_classes: K, background included (segmentation: the label maps' classes; detection:
            the objects' classes + 1).
        image_size: the side of the square training images (the detectors do not resize).
        mean, std: the images' statistics (the detectors normalise [0, 1] inputs with them).
        levels, fpn_channels: the pyramid of a classification backbone: how many of its last stages
            (default 3 for segmentation, whose head reads the finest level, 2 for detection) and
            the channels of each level (ignored by torchvision's models).
        head_convs: convolutions per FCOS head branch (detection on a classification backbone).

    Raises:
        ValueError: an unknown task or name, or kwargs for one of torchvision's models.
    """
    from mixlab.models import create_model

    if task not in DENSE_TASKS:
        raise ValueError(f"task must be one of {', '.join(DENSE_TASKS)}, got {task!r}")
    if name in TORCHVISION_DENSE[task]:
        if kwargs:
            raise ValueError(f"model {name!r} takes no model.kwargs (torchvision's, built with weights=None), "
                             f"got {sorted(kwargs)}")
        return TORCHVISION_DENSE[task][name](num_classes, image_size, mean, std)
    for other, names in TORCHVISION_DENSE.items():
        if name in names:
            raise ValueError(f"model {name!r} is a {other} model; for task {task!r} use "
                             f"{', '.join(TORCHVISION_DENSE[task])} or a classification backbone (resnet_small, ...)")
    levels = levels if levels is not None else 3 if task == "segmentation" else 2
    backbone = StagedBackbone(create_model(name, num_classes=1, **kwargs), levels, fpn_channels)
    if task == "segmentation":
        return FPNSegmenter(backbone, num_classes)
    return fcos_on_backbone(backbone, num_classes, image_size, mean, std, head_convs)


def classification_body(model: nn.Module) -> nn.Module | None:
    """The classification model inside a dense model built on one (``None`` for torchvision's):
    where ``model.init`` / ``mixlab transfer`` load a classification run's weights."""
    backbone = getattr(model, "backbone", None)
    return backbone.body if isinstance(backbone, StagedBackbone) else None
