"""Any timm model by name (``create_model("timm:<name>", K)``), wrapped for mixlab.

``timm.create_model(name, pretrained=False, num_classes=K, **kwargs)`` is held as ``.model``
(checkpoint keys are prefixed ``model.``); ``forward_features`` / ``forward_head`` /
``get_classifier`` are timm's own. Nothing is downloaded unless ``pretrained=True`` is passed.

The staged protocol (:mod:`mixlab.models.staged`) is provided only for families whose
``forward_features`` is a plain chain of named submodules, listed in :func:`layouts`: ResNet (and
ResNeXt, SE-ResNet, ResNet-D, ...), ConvNeXt, RegNet, ByobNet (RepVGG, GENet, ...),
EfficientNet and MobileNetV3. There the stem is the family's stem modules, and the stages are
timm's ``feature_info`` levels after the stem (4 for ResNet: layer1..layer4); modules after the
last level (ConvNeXt's ``norm_pre``, EfficientNet's ``conv_head`` + ``bn2``) are folded into the
last stage. Stages are built on access from the timm modules (no parameter is registered twice).
Other models (timm ViTs, Swin, ...) are :class:`TimmModel` only: ``has_stages`` is False and
``forward_until`` raises a ``TypeError``.
"""

from __future__ import annotations

import difflib
import functools

from torch import Tensor, nn

from .staged import check_num_classes

__all__ = ["TimmModel", "StagedTimmModel", "timm_model", "layouts"]


@functools.cache
def layouts() -> dict[type, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """family -> (stem modules, body modules in forward_features order ("x.*" = children of x),
    modules after the body); forward_features(x) == final(body(stem(x))). timm is imported here,
    on first use, not with :mod:`mixlab.models` (it imports torchvision's detection ops and
    torch._dynamo: seconds that a run of mixlab's own models does not need)."""
    from timm.models.byobnet import ByobNet
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.regnet import RegNet
    from timm.models.resnet import ResNet

    return {
        ResNet: (("conv1", "bn1", "act1", "maxpool"), ("layer1", "layer2", "layer3", "layer4"), ()),
        ConvNeXt: (("stem",), ("stages.*",), ("norm_pre",)),
        RegNet: (("stem",), ("s1", "s2", "s3", "s4"), ("final_conv",)),
        ByobNet: (("stem",), ("stages.*",), ("final_conv",)),
        EfficientNet: (("conv_stem", "bn1"), ("blocks.*",), ("conv_head", "bn2")),
        MobileNetV3: (("conv_stem", "bn1"), ("blocks.*",), ()),
    }


class TimmModel(nn.Module):
    """A timm classifier (``.model``) with timm's ``forward_features`` / ``forward_head``; no stages."""

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.num_classes: int = model.num_classes
        self.num_features: int = model.num_features  # channels of forward_features
        self.head_hidden_size: int = getattr(model, "head_hidden_size", model.num_features)  # pre_logits dim

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def no_weight_decay(self) -> set[str]:
        """timm's no-weight-decay parameter names, prefixed with ``model.``."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{n}" for n in names}


class StagedTimmModel(TimmModel):
    """A timm model of a family in :func:`layouts`, runnable stage by stage (see module docstring)."""

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__(model, name)
        plan = _stage_plan(model)
        if plan is None:
            raise TypeError(f"timm model {type(model).__name__} has no known stage layout")
        self._stem_names, self._stage_names, self.stage_channels = plan
        self.num_stages = len(self._stage_names)

    def forward_stem(self, x: Tensor) -> Tensor:
        for name in self._stem_names:
            x = self.model.get_submodule(name)(x)
        return x

    @property
    def stages(self) -> nn.ModuleList:
        """The stages as sequences of the timm model's own modules (rebuilt on each access)."""
        get = self.model.get_submodule
        return nn.ModuleList(nn.Sequential(*[get(n) for n in names]) for names in self._stage_names)


def _stage_plan(model: nn.Module) -> tuple[list[str], list[list[str]], list[int]] | None:
    """(stem module names, module names of each stage, channels after each stage), or None.

    The body + final modules are cut after each ``feature_info`` level; modules after the last
    level join the last stage, whose channels are then ``model.num_features``.
    """
    layout = next((v for cls, v in layouts().items() if isinstance(model, cls)), None)
    if layout is None or not hasattr(model, "feature_info"):
        return None
    stem, body, final = layout
    names: list[str] = []
    for name in body + final:
        if name.endswith(".*"):
            parent = name[:-2]
            names += [f"{parent}.{child}" for child, _ in model.get_submodule(parent).named_children()]
        else:
            names.append(name)
    cuts = {f["module"]: f["num_chs"] for f in model.feature_info}
    groups: list[list[str]] = []
    channels: list[int] = []
    current: list[str] = []
    for name in names:
        current.append(name)
        if name in cuts:
            groups.append(current)
            channels.append(cuts[name])
            current = []
    if not groups:
        return None
    groups[-1] += current  # e.g. ConvNeXt's norm_pre, EfficientNet's conv_head + bn2
    channels[-1] = model.num_features
    return list(stem), groups, channels


def timm_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> TimmModel:
    """``timm.create_model(name, pretrained, num_classes=K, **kwargs)``, wrapped.

    Returns a :class:`StagedTimmModel` when the family has a known stage layout, else a
    :class:`TimmModel`. Raises ``ValueError`` for an unknown timm name or ``num_classes < 1``.
    """
    check_num_classes(num_classes)
    import timm

    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"unknown timm model {name!r}{hint}")
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    cls = StagedTimmModel if _stage_plan(model) is not None else TimmModel
    return cls(model, name)
