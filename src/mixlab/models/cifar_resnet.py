"""CIFAR-style ResNets: ResNet-18/34, PreActResNet-18 and the small fast ``resnet_small``.

CIFAR convention: a 3x3 stride-1 stem with no max-pool, four stages with strides 1, 2, 2, 2, so
a 32x32 input gives 32, 16, 8, 4 pixel maps (any H, W works; H != W too). This is the ResNet of
the AutoMix / RecursiveMix CIFAR tables (ResNet-18: 11.17M parameters with 10 classes).

References:
    He et al. 2016, "Deep Residual Learning for Image Recognition" (BasicBlock, post-activation).
    He et al. 2016, "Identity Mappings in Deep Residual Networks" (pre-activation block).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .staged import StagedNet

__all__ = [
    "BasicBlock",
    "PreActBlock",
    "CifarResNet",
    "init_weights",
    "resnet18",
    "resnet34",
    "preactresnet18",
    "resnet_small",
]


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's init: Kaiming normal (fan_out, relu) convs, BN weight 1 / bias 0.

    With ``zero_init_residual`` every block's ``zero_init_last()`` is called, so each residual
    branch starts at zero and each block starts as the identity (Goyal et al. 2017).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if hasattr(m, "zero_init_last"):
                m.zero_init_last()


class BasicBlock(nn.Module):
    """Post-activation block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class PreActBlock(nn.Module):
    """Pre-activation block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut(x).

    The projection shortcut (when the shape changes) takes the pre-activated input, as in the
    identity-mappings paper.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut

    def zero_init_last(self) -> None:
        # No BN ends a pre-activation branch: zero its last conv instead.
        nn.init.zeros_(self.conv2.weight)


class CifarResNet(StagedNet):
    """ResNet with a 3x3 stride-1 stem and no max-pool, one stage per entry of ``layers``.

    Args:
        block: :class:`BasicBlock` or :class:`PreActBlock`.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        widths: channels of each stage, e.g. (64, 128, 256, 512).
        strides: stride of the first block of each stage.
        num_classes: K.
        in_chans: input channels.
        drop_rate: dropout before the linear classifier.
        zero_init_residual: zero the last BN (conv for pre-activation) of every residual branch.

    With pre-activation blocks the stem is a bare conv and the final BN+ReLU is appended to the
    last stage, so ``forward_features`` returns activated features as for post-activation nets.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[PreActBlock],
        layers: Sequence[int],
        widths: Sequence[int],
        strides: Sequence[int] = (1, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if not len(layers) == len(widths) == len(strides):
            raise ValueError("layers, widths and strides must have the same length")
        preact = block is PreActBlock
        stem: list[nn.Module] = [conv3x3(in_chans, widths[0])]
        if not preact:
            stem += [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)

        stages, c_in = [], widths[0]
        for n, c_out, stride in zip(layers, widths, strides):
            blocks: list[nn.Module] = [block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                       for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        if preact:  # final BN+ReLU of the pre-activation net, folded into the last stage
            stages[-1].append(nn.BatchNorm2d(c_in))
            stages[-1].append(nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(widths)
        self._build_head(num_classes, drop_rate)
        init_weights(self, zero_init_residual)


def resnet18(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-18 (BasicBlock, [2, 2, 2, 2], widths 64..512): 11.17M params at K=10."""
    return CifarResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes=num_classes, **kwargs)


def resnet34(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-34 (BasicBlock, [3, 4, 6, 3], widths 64..512): 21.28M params at K=10."""
    return CifarResNet(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), num_classes=num_classes, **kwargs)


def preactresnet18(num_classes: int = 10, **kwargs) -> CifarResNet:
    """Pre-activation ResNet-18 (He et al. 2016, identity mappings), same stage layout."""
    return CifarResNet(PreActBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes=num_classes, **kwargs)


def resnet_small(num_classes: int = 10, width: int = 16, **kwargs) -> CifarResNet:
    """Small fast ResNet for CPU runs: one BasicBlock per stage, widths ``width * (1, 2, 4, 8)``.

    About 0.31M params at ``width=16``, K=10.
    """
    widths = tuple(width * m for m in (1, 2, 4, 8))
    return CifarResNet(BasicBlock, (1, 1, 1, 1), widths, num_classes=num_classes, **kwargs)
