"""AutoMix: a learned Mix Block trained through a momentum pipeline.

Liu, Li, Wu, Liu, Chen, Wu & Li 2022, "AutoMix: Unveiling the Power of Mixup for Stronger
Classifiers" (ECCV 2022, arXiv:2103.13027). The paper is the specification (§3.1-3.2, Eq. 4-12,
appendix A.3-A.4); facts it leaves out come from the authors' code in Westlake-AI/openmixup
(``openmixup/models/classifiers/automix.py``: ``AutoMixup``; ``openmixup/models/heads/pmix_block.py``:
``PixelMixBlock``; ``openmixup/core/hooks/momentum_hook.py``: ``CosineScheduleHook``; the CIFAR
configs ``configs/classification/cifar100/automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py`` and
its ResNeXt / WRN siblings).

**Mix Block** M_φ (:class:`MixBlock`, Eq. 4-6). From the momentum encoder's feature map z at stage
l, for a pair (x_i, x_j = x[index[i]]) and a ratio λ:

* λ embedding: ``z_{i,λ} = concat(z_i, λ)`` and ``z_{j,1-λ} = concat(z_j, 1 - λ)``, one constant
  channel each.
* Eq. 6: ``P = softmax((W_P z_{i,λ})ᵀ (W_P z_{j,1-λ}) / C)``, row-normalised over the positions
  of z_j, with one shared 1×1 convolution W_P (query and key) to ``C_l / 2`` channels and
  ``C = sqrt(C_l / 2)``, the square root of the projection width (the code's ``use_scale``).
* Eq. 5: ``s_i = U(σ(P · W_Z z_{i,λ}))``: the value W_Z is a 1×1 convolution to one channel; the
  sigmoid mask at feature resolution is upsampled to the image (``"nearest"``, as the reference's
  CIFAR configs; ``"bilinear"`` selectable). ``s_j = 1 - s_i``.
* Eq. 4: ``x_mix = s_i ⊙ x_i + (1 - s_i) ⊙ x_j``; its label is ``λ y_i + (1 - λ) y_j`` with the
  drawn λ (Eq. 2), not the mask's mean: ``MixResult.lam`` is that label weight here.

**Momentum pipeline** (Eq. 8, 10-12; Fig. 5, 11; Algorithm 1). Each step draws two ratios
``λ_q, λ_k ~ Beta(α, α)`` (one per batch each) and two partner permutations, computes the
momentum encoder f_θk's stage-l features of the clean batch once (no gradient), and from them
two masks:

* classification (θq): the classifier (the model being trained) sees the Mix Block's images for
  ``λ_q``, *detached* (no gradient reaches φ), with the mixup cross-entropy of Eq. 2, plus the
  one-hot cross-entropy on the clean images (ℓ_CE of Eq. 8): ``ℓ_CE + ℓ_MCE^cls``.
* generation (φ): the momentum encoder classifies the Mix Block's images for ``λ_k``; their
  mixup cross-entropy back-propagates *through* f_θk (whose parameters have
  ``requires_grad=False``: stop-gradient) into the mask and φ, plus ℓ_λ (Eq. 7):
  ``ℓ_λ = γ max(|λ - mean_hw s_i| - ε, 0)`` per sample, averaged over the batch, with γ = 0.1
  decaying linearly to 0 over training and ε = 0.1: ``ℓ_MCE^gen + ℓ_λ``.
* The trainer back-propagates the sum (Eq. 8) and steps θq and φ; then (Eq. 12, in
  :meth:`AutoMix.after_optimizer_step`) ``θk ← m θk + (1 - m) θq`` over the parameters, with
  ``m = 1 - (1 - m_0)(cos(π t) + 1) / 2`` rising from m_0 = 0.999 to 1 over the training
  fraction t. θk starts as a copy of θq (built in :meth:`AutoMix.setup`).

The pipeline (θk, its stage-l features, the momentum schedule, the mixing of images by a mask,
the λ embedding, the two draws, the classifier's losses) is
:class:`mixlab.methods.momentum_pipeline.PairPipeline`, which SAMix (:mod:`mixlab.methods.samix`)
shares; AdAutoMix (:mod:`mixlab.methods.adautomix`) shares its base. ``decouple=η`` adds
DecoupleMix's regulariser to the classifier's ℓ_MCE^cls (:func:`mixlab.core.losses.decouple_term`).

The deployed model is θq alone; the Mix Block and the momentum copy are submodules of the method,
so they are in its ``state_dict`` (the checkpoint) and never in the model's.

Facts taken from the reference code where the paper is silent:

* The value, query/key projections are plain 1×1 convolutions with a bias, no normalisation or
  activation (``att_norm_cfg=None``), initialised N(0, 0.01²) with zero biases, so a new Mix Block
  produces masks of 0.5 everywhere. The attention and the mask are computed in float32 (the
  code forces fp32 there; here autocast is switched off inside the Mix Block).
* θk runs in training mode, like the code's ``backbone_k``: its BatchNorm layers use batch
  statistics and keep their own running statistics; the momentum update moves parameters only.
* Classifier masks near the ends of the λ range are replaced by the plain Mixup weight λ_q
  (``lam_margin = 0.08``: when λ_q <= 0.08 or λ_q >= 0.92), as the reference's configs do (CIFAR,
  Tiny-ImageNet, ImageNet); the Mix Block's own training is unchanged.
* The Mix Block is optimised with the model's optimizer, learning rate and schedule and weight
  decay on all of its parameters: the reference's CIFAR ResNet configs put it in the single SGD
  group (lr 0.1, momentum 0.9, weight decay 1e-4, cosine). ``mix_block_lr_scale`` changes the ratio
  (the WRN config drops the Mix Block's SGD momentum; the Tiny-ImageNet / ImageNet configs give it
  its own lr and a cosine to 1e-3). The CIFAR configs end the cosine at ``min_lr = 0.05`` (half the
  base lr) for the model and the Mix Block alike; here ``optim.min_lr`` sets it for the run.

Where the paper and the reference differ, this follows the paper:

* λ embedding on (``lam_concat=True``); the reference's CIFAR configs switch it off (its masks
  then cannot depend on λ; its ImageNet configs switch it on). Fig. 9 ablates it.
* Eq. 5 takes the value from z_{i,λ} and gives s_i; the code takes it from z_{j,1-λ}, gives s_j
  and sets ``s_i = 1 - s_j`` (the paper mentions this symmetric form after Eq. 6).
  ``value="partner"`` computes the code's form.
* Eq. 5 upsamples the sigmoid mask; the code applies the sigmoid after upsampling (the same for
  ``"nearest"``, the default).
* ℓ_λ is computed per sample (Eq. 7's s_i); the code compares λ with the mean over the whole
  batch. γ decays linearly to 0 as the paper says; the reference's CIFAR configs keep it at 0.1
  (its ImageNet configs decay it with a cosine).
* m rises from 0.999 to 1 by a cosine over the whole run; the code's CIFAR hook holds 0.999 for
  the first 10 % of the iterations, then follows the cosine (of the iteration count) to 0.999999.
* f_θq is one network with one classifier for both of its losses; the code gives θq (and θk) two
  linear heads, one for the mixup loss and one for the one-hot loss, and evaluates θk's one-hot
  head. Appendix A.3 also says the paper uses encoder k for inference; mixlab deploys θq (the
  model being trained), as the issue asks (``model.ema_decay`` gives an EMA model to compare).

Choices where both are silent:

* Partners: two independent random derangements per step (:func:`mixlab.core.pair_index` with
  ``"random"``: no image is paired with itself); the code draws plain ``randperm`` (self-pairs
  possible, its ``mix_shuffle_no_repeat`` option avoids them).
* Stage: ``stage=None`` takes the second-to-last stage, l = S - 1: the paper's l = 3 on mixlab's
  4-stage ResNets and ViT, the stage the reference's WRN-28-8 config uses on the 3-stage WRN.
  The masks are upsampled to any image size with ``F.interpolate(size=...)`` (the code assumes a
  power-of-two factor).
* The two classifier passes (clean and mixed) are separate forward passes, as in the code (so
  BatchNorm statistics are never shared between clean and mixed images); the momentum encoder's
  feature pass stops at stage l (the code runs the whole backbone and keeps stage l).

Not implemented (off in the reference's defaults): ``mask_adjust`` (rescales the classifier's mask
mean to λ with some probability), ``pre_one_loss`` / ``pre_mix_loss`` (an extra head on the Mix
Block's input), ``switch_off`` (skip Mix Block updates at random), ``head_one_mix``, ``frozen``
(a fixed Mix Block), ``mask_up_override``, and ``debug`` / ``save`` (they only save pictures of
the value map and attention: ``mixlab show --method automix --checkpoint RUN`` draws the masks).

Ablation switches (paper Fig. 9 and Table 10): ``lam_concat=False`` (no λ embedding),
``gamma=0`` (no ℓ_λ), ``momentum=0, momentum_schedule="constant"`` ("MP (m = 0)": θk is a copy
of θq after every step), ``clean_loss=False`` (no ℓ_CE, Table 10's "+MP" row).

Notes: m_0 = 0.999 averages θq over ~1000 steps, a small lag in the paper's CIFAR runs (400 000
steps) but most of a short run (the ``cifar10-quick`` protocol has 1 500), where θk, which trains
φ, stays close to its random initialisation for a long time. The N(0, 0.01²) init makes the
attention P nearly uniform at first, so early masks are constant over each image (Mixup-like)
until W_P grows. A step costs three network passes with backward (θq clean and mixed, θk on the
Mix Block's images, down to the input only) plus θk's partial forward: about 3× vanilla on a CPU.

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
import torch.nn.functional as F
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
            if (h, w) != tuple(size):
                mask = F.interpolate(mask, size=tuple(size), mode=self.upsampling,
                                     **({"align_corners": False} if self.upsampling == "bilinear" else {}))
            return mask if self.value_from == "own" else 1 - mask  # s_i

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
                f"lam_concat={self.lam_concat}, value={self.value_from!r}, upsampling={self.upsampling!r}")


class AutoMix(PairPipeline):
    """AutoMix (the module docstring has the equations and every choice made; the momentum
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
