"""AutoMix: a learned Mix Block trained through a momentum pipeline.

Liu, Li, Wu, Liu, Chen, Wu & Li 2022, "AutoMix: Unveiling the Power of Mixup for Stronger
Classifiers" (ECCV 2022, arXiv:2103.13027), §3.1-3.2, Eq. 4-12; facts the paper leaves out come
from the authors' code (Westlake-AI/openmixup). The Mix Block (:class:`MixBlock`, Eq. 4-6) turns a
cross-attention between the momentum encoder's stage-l features of a pair, with λ embedded by
concatenation, into a pixel mask s_i (s_j = 1 - s_i). Each step (Eq. 8) trains the classifier on
the detached Mix Block images (mixup cross-entropy, Eq. 2) plus the clean cross-entropy, and the
Mix Block through the momentum encoder's mixup cross-entropy plus ℓ_λ (Eq. 7); then the momentum
update θk ← m θk + (1 - m) θq (Eq. 12) with a cosine m from 0.999 to 1. The deployed model is θq.

The defaults and their source, the facts taken from the reference code, every place mixlab departs
from it, and the ablation switches: docs/methods/automix.md.

Usage in any training loop (the trainer does the same)::

    am = AutoMix(num_classes=10).to(device)
    am.setup(model, torch.Generator().manual_seed(0))          # Mix Block + momentum copy
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *am.param_groups(0.1)], lr=0.1)
    for step, (images, labels) in enumerate(loader):
        progress = step / total_steps
        loss = am.training_step(model, (images, labels), progress).loss
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        am.after_optimizer_step(model, progress)               # Eq. 12
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mixlab.core.checks import check_bool, check_choice, check_real
from mixlab.core.losses import soft_cross_entropy
from mixlab.core.targets import mix_targets
from mixlab.methods.momentum_pipeline import (
    MOMENTUM_SCHEDULES,
    UPSAMPLING,
    PairPipeline,
    lam_channels,
    row_attention,
    upsample_to,
)

__all__ = ["AutoMix", "MixBlock", "MOMENTUM_SCHEDULES", "UPSAMPLING", "VALUES"]

VALUES = ("own", "partner")


class MixBlock(nn.Module):
    """The Mix Block M_φ of AutoMix (Eq. 5-6): a λ-embedded cross-attention mask generator.

    Args:
        in_channels: channels C_l of the feature map at stage l.
        reduction: the query/key projection W_P has ``max(C_l // reduction, 1)`` channels
            (2 in the reference); the attention logits are divided by the square root of that.
        lam_concat: concatenate λ (and 1 - λ for the partner) as one constant channel (paper;
            default True).
        value: ``"own"`` (Eq. 5: value W_Z z_{i,λ}, mask s_i) or ``"partner"`` (the reference code:
            value W_Z z_{j,1-λ}, mask s_j, then s_i = 1 - s_j).
        upsampling: ``"nearest"`` (default) or ``"bilinear"``, from the feature map to the image.

    Shape:
        ``forward(features (B, C_l, h, w), lam (B,), index (B,), size (H, W)) -> s_i (B, 1, H, W)``,
        float32 values in (0, 1): the weight of image i at each pixel of output i.
    """

    def __init__(self, in_channels: int, reduction: int = 2, lam_concat: bool = True, value: str = "own",
                 upsampling: str = "nearest") -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("reduction", reduction)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.in_channels, self.reduction = in_channels, reduction
        self.lam_concat = check_bool(lam_concat, "lam_concat")
        self.value_from = check_choice(value, "value", VALUES)
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        self.inter_channels = max(in_channels // reduction, 1)
        c_in = in_channels + int(lam_concat)
        self.proj = nn.Conv2d(c_in, self.inter_channels, 1)  # W_P: shared by query and key
        self.value = nn.Conv2d(c_in, 1, 1)  # W_Z
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference's init: weights N(0, 0.01²), biases 0 (so every mask starts at 0.5)."""
        for conv in (self.proj, self.value):
            with torch.no_grad():
                w = torch.randn(conv.weight.shape, generator=generator,
                                device=generator.device if generator is not None else "cpu") * 0.01
                conv.weight.copy_(w)
                conv.bias.zero_()

    def attention(self, z_i: Tensor, z_j: Tensor) -> Tensor:
        """Eq. 6: (B, hw, hw) row-stochastic P between the λ-embedded maps (B, C, h, w)."""
        return row_attention(self.proj(z_i).flatten(2), self.proj(z_j).flatten(2))  # rows: x_i's positions

    def forward(self, features: Tensor, lam: Tensor, index: Tensor, size: tuple[int, int]) -> Tensor:
        if features.ndim != 4:
            raise ValueError(f"the Mix Block needs a (B, C, h, w) feature map, got shape {tuple(features.shape)}")
        b, c, h, w = features.shape
        if c != self.in_channels:
            raise ValueError(f"the Mix Block was built for {self.in_channels} channels, the feature map has {c}")
        with torch.autocast(features.device.type, enabled=False):
            z = features.float()
            z_i, z_j = z, z[index]
            if self.lam_concat:  # λ embedding: z_{i,λ}, z_{j,1-λ}
                z_i, z_j = lam_channels([z_i, z_j], [lam, 1 - lam])
            p = self.attention(z_i, z_j)  # (B, hw, hw)
            v = self.value(z_i if self.value_from == "own" else z_j).flatten(2).transpose(1, 2)  # (B, hw, 1)
            mask = torch.sigmoid((p @ v).transpose(1, 2).reshape(b, 1, h, w))  # Eq. 5 before U
            mask = upsample_to(mask, size, self.upsampling)
            return mask if self.value_from == "own" else 1 - mask  # s_i

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
                f"lam_concat={self.lam_concat}, value={self.value_from!r}, upsampling={self.upsampling!r}")


class AutoMix(PairPipeline):
    """AutoMix (docs/methods/automix.md has the equations and every choice made; the momentum
    pipeline it runs is :class:`~mixlab.methods.momentum_pipeline.PairPipeline`).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets (applied before mixing and to ℓ_CE).
        alpha: α of λ ~ Beta(α, α), > 0. Default 2 (the paper, every dataset).
        stage: the feature stage l, in 1..S of the model (``forward_until``); ``None`` (default)
            takes S - 1: l = 3 on a 4-stage ResNet, as the paper.
        momentum: m_0 of the momentum encoder, in [0, 1]; m rises to 1 by a cosine. Default 0.999.
            1 freezes θk at its initial weights.
        momentum_schedule: ``"cosine"`` (default, m_0 -> 1) or ``"constant"`` (m = m_0 throughout;
            with ``momentum=0``, θk is a copy of θq after every step: Table 10's "MP (m = 0)").
        gamma: initial weight γ of ℓ_λ, >= 0, decaying linearly to 0. Default 0.1; 0 turns ℓ_λ off.
        epsilon: margin ε of ℓ_λ, in [0, 1). Default 0.1.
        lam_margin: classifier masks become the constant λ_q when λ_q <= lam_margin or
            λ_q >= 1 - lam_margin, in [0, 0.5). Default 0.08 (reference); 0 turns it off.
        lam_concat: λ embedding by concatenation (default True, paper).
        value: ``"own"`` (Eq. 5, default) or ``"partner"`` (the reference's value branch).
        upsampling: ``"nearest"`` (default) or ``"bilinear"``.
        reduction: channel reduction of W_P, an int >= 1. Default 2.
        pairing: partner draw, one of :data:`mixlab.core.pairing.PAIRINGS`; default ``"random"``
            (a random derangement per step and per pipeline).
        clean_loss: include ℓ_CE on the clean images (default True).
        mix_block_lr_scale: the Mix Block's lr as a multiple of the model's, > 0 (it follows the
            main schedule). Default 1.
        decouple: η of DecoupleMix's regulariser added to the classifier's ℓ_MCE^cls, >= 0
            (:func:`mixlab.core.losses.decouple_term`). Default 0 (off).

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "automix"

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        *,
        alpha: float = 2.0,
        stage: int | None = None,
        momentum: float = 0.999,
        momentum_schedule: str = "cosine",
        gamma: float = 0.1,
        epsilon: float = 0.1,
        lam_margin: float = 0.08,
        lam_concat: bool = True,
        value: str = "own",
        upsampling: str = "nearest",
        reduction: int = 2,
        pairing: str = "random",
        clean_loss: bool = True,
        mix_block_lr_scale: float = 1.0,
        decouple: float = 0.0,
    ) -> None:
        super().__init__(num_classes, label_smoothing, alpha=alpha, stage=stage, momentum=momentum,
                         momentum_schedule=momentum_schedule, lam_margin=lam_margin, pairing=pairing,
                         clean_loss=clean_loss, mix_block_lr_scale=mix_block_lr_scale, decouple=decouple)
        self.gamma = check_real(gamma, "gamma", 0.0, math.inf, high_open=True)
        self.epsilon = check_real(epsilon, "epsilon", 0.0, 1.0, high_open=True)
        self.lam_concat = check_bool(lam_concat, "lam_concat")
        self.value = check_choice(value, "value", VALUES)
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be an int >= 1, got {reduction!r}")
        self.reduction = reduction

    def build_mix_block(self, channels: int) -> MixBlock:
        """M_φ: a :class:`MixBlock` on C_l channels."""
        return MixBlock(channels, self.reduction, self.lam_concat, self.value, self.upsampling)

    # ------------------------------------------------------------------ ℓ_λ and the generation loss
    def gamma_at(self, progress: float) -> float:
        """γ decays linearly from ``gamma`` to 0 over training."""
        return self.gamma * (1.0 - min(max(float(progress), 0.0), 1.0))

    def lam_loss(self, mask: Tensor, lam: Tensor) -> Tensor:
        """ℓ_λ of Eq. 7 without γ: ``mean_i max(|λ_i - mean_hw s_i| - ε, 0)``."""
        mean = mask.float().mean(dim=(1, 2, 3))
        return (torch.abs(lam.float() - mean) - self.epsilon).clamp_min(0.0).mean()

    def generation_loss(self, logits: Tensor, targets: Tensor, index: Tensor, lam: Tensor, mask: Tensor,
                        progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """``ℓ_MCE^gen + γ(t) ℓ_λ``: the mixup cross-entropy of θk on the Mix Block's images (label
        weight λ_k), plus Eq. 7."""
        loss_gen = soft_cross_entropy(logits, mix_targets(targets, index, lam))
        gamma = self.gamma_at(progress)
        loss_lam = self.lam_loss(mask, lam)
        generation = loss_gen + gamma * loss_lam if gamma > 0 else loss_gen
        return generation, {"loss_gen": loss_gen.detach(), "loss_lam": loss_lam.detach()}

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, stage={self.stage}, "
                f"momentum={self.momentum}, momentum_schedule={self.momentum_schedule!r}, gamma={self.gamma}, "
                f"epsilon={self.epsilon}, "
                f"lam_margin={self.lam_margin}, lam_concat={self.lam_concat}, value={self.value!r}, "
                f"upsampling={self.upsampling!r}, reduction={self.reduction}, pairing={self.pairing!r}, "
                f"clean_loss={self.clean_loss}, mix_block_lr_scale={self.mix_block_lr_scale}, "
                f"decouple={self.decouple}")
