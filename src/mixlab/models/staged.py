"""The staged-model protocol shared by every model in :mod:`mixlab.models`, and its helpers.

Mixing methods need more than ``model(x)``: AutoMix mixes the feature maps at stage ``l``,
Manifold Mixup mixes hidden states and continues from there, RecursiveMix and attentive mixes
use the final feature map before pooling. Every model built here is an ``nn.Module`` with:

=================================  ================================================================
``num_classes: int``               K, the number of logits
``num_stages: int``                number of stages S (4 for the ResNets and the ViT, 3 for WRN)
``stage_channels: list[int]``      channels after each stage, ``len == num_stages``
``forward_stem(x)``                the stem: (B, 3, H, W) -> (B, C0, h0, w0) (3x3 conv (+BN+ReLU)
                                   for CIFAR ResNets, patch + position embedding for the ViT)
``stages: nn.ModuleList``          ``len == num_stages``; ``stages[k]`` maps the feature map after
                                   stage k to the one after stage k + 1
``forward_features(x)``            final feature map (B, C, h, w) BEFORE pooling (as in timm);
                                   equals ``stages[-1](...stages[0](forward_stem(x)))``
``forward_head(f, pre_logits)``    global average pool + (dropout) + linear -> logits (B, K); with
                                   ``pre_logits=True`` the pooled (B, C) vector (as in timm)
``forward(x)``                     ``forward_head(forward_features(x))``
``get_classifier()``               the final linear layer (as in timm)
=================================  ================================================================

Stage indexing (used by :func:`forward_until`, :func:`forward_from` and every method that takes a
stage ``l``)::

    stage 0          the INPUT IMAGE itself, (B, 3, H, W)
    stage k, 1..S    the output of the k-th stage, (B, stage_channels[k-1], h_k, w_k)
    stage S          the final feature map == forward_features(x)

The stem is folded into stage 1's input: there is no index for the stem output alone. Anything
that sits between the last stage and pooling (the final BN+ReLU of pre-activation nets, the final
LayerNorm of the ViT) is part of the last stage, so ``forward_until(m, x, S) ==
m.forward_features(x)`` and ``forward_from(m, h, l) == m.forward_head(stages[l:](h))``.
Every intermediate value is a spatial map (B, C, h, w), the ViT's tokens included.

The invariant, checked by the tests for every model in eval mode::

    forward_from(m, forward_until(m, x, l), l) == m(x)     for l in 0..S
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = [
    "StagedModel",
    "StagedNet",
    "forward_until",
    "forward_from",
    "has_stages",
    "check_stage",
    "check_num_classes",
]


@runtime_checkable
class StagedModel(Protocol):
    """Structural type of a staged model (see the module docstring)."""

    num_classes: int
    num_stages: int
    stage_channels: list[int]
    stages: nn.ModuleList

    def forward_stem(self, x: Tensor) -> Tensor: ...

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor: ...

    def get_classifier(self) -> nn.Module: ...


_REQUIRED = ("num_stages", "stages", "forward_stem", "forward_head")


def _missing(model: nn.Module) -> list[str]:
    """Names of the protocol members that ``forward_until`` / ``forward_from`` need and lack."""
    missing = [name for name in _REQUIRED if not hasattr(model, name)]
    if not missing:
        if not isinstance(model.stages, nn.ModuleList):
            missing.append("stages (an nn.ModuleList)")
        elif model.num_stages != len(model.stages):
            missing.append("num_stages == len(stages)")
    return missing


def has_stages(model: nn.Module) -> bool:
    """True if ``model`` can be run stage by stage with :func:`forward_until` / :func:`forward_from`."""
    return not _missing(model)


def check_stage(model: nn.Module, stage: int, caller: str = "forward_until") -> None:
    """Raise ``TypeError`` if ``model`` lacks the protocol, ``ValueError`` if ``stage`` is out of range."""
    missing = _missing(model)
    if missing:
        raise TypeError(
            f"{caller}: {type(model).__name__} does not implement the staged-model protocol "
            f"(missing: {', '.join(missing)}); see mixlab.models.staged"
        )
    n = model.num_stages
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= n:
        raise ValueError(
            f"{caller}: stage must be an int in 0..{n} for {type(model).__name__} "
            f"(0 = input image, {n} = final feature map), got {stage!r}"
        )


def forward_until(model: nn.Module, x: Tensor, stage: int) -> Tensor:
    """Feature map after stage ``stage`` (0 returns ``x`` unchanged)."""
    check_stage(model, stage, "forward_until")
    if stage == 0:
        return x
    h = model.forward_stem(x)
    for k in range(stage):
        h = model.stages[k](h)
    return h


def forward_from(model: nn.Module, h: Tensor, stage: int, pre_logits: bool = False) -> Tensor:
    """Continue from the feature map after stage ``stage`` to logits (or pooled features).

    ``forward_from(model, x, 0) == model(x)``.
    """
    check_stage(model, stage, "forward_from")
    if stage == 0:
        h = model.forward_stem(h)
    for k in range(stage, model.num_stages):
        h = model.stages[k](h)
    return model.forward_head(h, pre_logits=pre_logits)


def check_num_classes(num_classes: int) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is an int >= 1."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


class StagedNet(nn.Module):
    """Base class of the models defined here: stem + stages + pooled linear head.

    Subclasses build ``self.stem`` (a module), ``self.stages`` (``nn.ModuleList``) and call
    :meth:`_build_head`; everything else of the protocol comes from here.
    """

    num_classes: int
    num_stages: int
    stage_channels: list[int]
    stem: nn.Module
    stages: nn.ModuleList
    head_drop: nn.Module
    fc: nn.Linear

    def _build_head(self, num_classes: int, drop_rate: float = 0.0) -> None:
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.num_stages = len(self.stages)
        self.num_features = self.head_hidden_size = self.stage_channels[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, h, w)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        x = features.mean(dim=(2, 3))  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)  # (B, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc
