"""Wide ResNets for CIFAR: WRN-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

3x3 stride-1 stem to 16 channels, three stages of (d - 4) / 6 pre-activation blocks with widths
16k, 32k, 64k and strides 1, 2, 2, dropout between the two convs of each block, final BN+ReLU
(folded into stage 3, see :mod:`mixlab.models.staged`). WRN-28-10: 36.5M params, WRN-28-2: 1.47M.
"""

from __future__ import annotations

from torch import Tensor, nn

from .cifar_resnet import PreActBlock, conv3x3, init_weights
from .staged import StagedNet

__all__ = ["WideBlock", "WideResNet", "wide_resnet", "wrn28_2", "wrn28_10"]


class WideBlock(PreActBlock):
    """Pre-activation block with dropout between the convs: BN-ReLU-conv-BN-ReLU-dropout-conv."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__(c_in, c_out, stride)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(StagedNet):
    """WRN-``depth``-``widen_factor``; 3 stages with channels (16k, 32k, 64k).

    Args:
        depth: total depth d, with (d - 4) % 6 == 0 (28 -> 4 blocks per stage).
        widen_factor: k.
        num_classes: K.
        dropout: dropout rate inside every block (0.3 in the paper's dropout runs).
        in_chans: input channels.
        drop_rate: dropout before the linear classifier.
        zero_init_residual: zero the last conv of every residual branch.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = conv3x3(in_chans, 16)
        stages, c_in = [], 16
        for c_out, stride in zip(widths, (1, 2, 2)):
            blocks = [WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dropout)
                      for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        stages[-1].append(nn.BatchNorm2d(c_in))  # final BN+ReLU, folded into the last stage
        stages[-1].append(nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = widths
        self._build_head(num_classes, drop_rate)
        init_weights(self, zero_init_residual)


def wide_resnet(depth: int = 28, widen_factor: int = 10, num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-``depth``-``widen_factor``; kwargs go to :class:`WideResNet` (``dropout``, ...)."""
    return WideResNet(depth, widen_factor, num_classes=num_classes, **kwargs)


def wrn28_2(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-28-2 (1.47M params at K=10)."""
    return wide_resnet(28, 2, num_classes=num_classes, **kwargs)


def wrn28_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-28-10 (36.5M params at K=10)."""
    return wide_resnet(28, 10, num_classes=num_classes, **kwargs)
