"""Classification models for mixing methods, all following the staged protocol.

Every model exposes its stem and stages (see :mod:`mixlab.models.staged`), so methods can take
the feature map at stage ``l`` (``forward_until``) or continue from it (``forward_from``)::

    model = create_model("resnet18", num_classes=100)
    h = forward_until(model, x, 2)            # (B, 128, 16, 16) for a 32x32 input
    logits = forward_from(model, h, 2)        # == model(x)

Names: the keys of :data:`MODELS`, or ``"timm:<name>"`` for any timm model (random init unless
``pretrained=True`` is passed).
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from .cifar_resnet import CifarResNet, preactresnet18, resnet18, resnet34, resnet_small
from .inference import fused_for_inference
from .staged import StagedModel, StagedNet, check_num_classes, forward_from, forward_until, has_stages
from .timm_models import StagedTimmModel, TimmModel, timm_model
from .vit import ViT, vit_tiny_patch4
from .wide_resnet import WideResNet, wide_resnet, wrn28_2, wrn28_10

__all__ = [
    "fused_for_inference",
    "MODELS",
    "create_model",
    "count_parameters",
    "forward_until",
    "forward_from",
    "has_stages",
    "StagedModel",
    "StagedNet",
    "CifarResNet",
    "WideResNet",
    "ViT",
    "TimmModel",
    "StagedTimmModel",
    "resnet18",
    "resnet34",
    "preactresnet18",
    "resnet_small",
    "wide_resnet",
    "wrn28_2",
    "wrn28_10",
    "vit_tiny_patch4",
    "timm_model",
]

TIMM_PREFIX = "timm:"

#: CLI name -> constructor taking ``num_classes`` (+ kwargs).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "preactresnet18": preactresnet18,
    "resnet_small": resnet_small,
    "wrn28_2": wrn28_2,
    "wrn28_10": wrn28_10,
    "vit_tiny_patch4": vit_tiny_patch4,
}


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS` or ``"timm:<timm name>"``) with K classes.

    Raises:
        ValueError: unknown name (the message lists the valid names and the nearest match),
            or ``num_classes < 1``.
    """
    check_num_classes(num_classes)
    if name.startswith(TIMM_PREFIX):
        return timm_model(name[len(TIMM_PREFIX):], num_classes, **kwargs)
    if name not in MODELS:
        near = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(sorted(MODELS))}, "
            f"or '{TIMM_PREFIX}<name>' for any timm model."
        )
    return MODELS[name](num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (shared-once) parameters of ``model``; only ``requires_grad`` ones if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
