"""SAMix: AutoMix's Mix Block made scenario-agnostic, for classification.

Li, Liu, Wu, Liu & Li, "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic
Mixup" (arXiv:2111.15454). The method keeps AutoMix's momentum pipeline
(:class:`~mixlab.methods.momentum_pipeline.PairPipeline`: θk's stage-l features, two draws per
step, the classifier on the Mixer's detached images with mixed and clean cross-entropy, the Mixer
trained through θk, Eq. 12's momentum update) and changes the mixer and its loss. The paper's text
could not be read here beyond its abstract; the parts below follow the authors' code, the
``PixelMixBlock`` of Westlake-AI/openmixup (``openmixup/models/heads/pmix_block.py``) inside
``AutoMixup`` (``openmixup/models/classifiers/automix.py``) as the SAMix CIFAR config sets it
(``configs/classification/cifar100/samix/basic/r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py``).

Mixer M_φ (:class:`SAMixBlock`): adaptive λ encoding of θk's maps, query and key of both images,
a non-linear value of the partner's map, ``s_j = σ(U(P · v))``, ``s_i = 1 - s_j``. Its loss, through
θk: the η-balanced mixup loss ``ℓ_local + η ℓ_global`` (η = 0.5) plus :func:`mask_loss` (L1 +
variance, margin 0.1, weight 0.1). The classifier's loss and the pipeline are AutoMix's. The
equations, the reference's settings and what is left out: ``docs/methods/samix.md``.

**SSL**: SAMix's self-supervised variant (openmixup's ``MoCoSAMix``) is
:class:`mixlab.ssl.samix.SAMixSSL` (``mixlab pretrain --framework samix-ssl``): MoCo v2 whose key
encoder is the Mixer's θk, this :class:`SAMixBlock` mixing one image's query view with another's key
view, the mixup InfoNCE for the backbone and the Mixer, and :func:`mask_loss`.

Example::

    sam = SAMix(num_classes=10)
    sam.setup(model, torch.Generator().manual_seed(0))        # Mixer + momentum copy
    loss = sam.training_step(model, (images, labels), progress).loss
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_choice, check_real
from mixlab.core.losses import soft_cross_entropy
from mixlab.core.targets import mix_targets
from mixlab.methods.momentum_pipeline import (
    UPSAMPLING,
    PairPipeline,
    row_attention,
    upsample_to,
)

__all__ = ["SAMix", "SAMixBlock", "rescale_lam", "pair_global_loss", "mask_loss"]


def rescale_lam(lam: Tensor, k: float | None) -> Tensor:
    """SAMix's λ rescaling: ``(4/3 λ³ - 2 λ² + (k + 1) λ) / (k + 1 - 2/3)`` (λ itself for ``None``)."""
    if k is None:
        return lam
    k1 = k + 1.0
    return (4.0 / 3.0 * lam ** 3 - 2.0 * lam ** 2 + k1 * lam) / (k1 - 2.0 / 3.0)


def mask_loss(mask: Tensor, lam: Tensor, margin: float) -> Tensor:
    """SAMix's L1 + variance mask loss of s_j = 1 - ``mask`` (``mask``: s_i, (B, 1, H, W)) for the
    batch's λ (B,): ``max(|1 - mean(s_j) - mean(λ)| - margin, 0) - 2 Var(s_j)``, the mean and
    variance over every pixel of the batch. A float32 scalar."""
    s_j = 1 - mask.float()
    mean = s_j.mean()
    l1 = (torch.abs(1 - mean - lam.float().mean()) - margin).clamp_min(0.0)
    return l1 - 2 * ((s_j - mean) ** 2).mean()


def pair_global_loss(logits: Tensor, classes_a: Tensor, classes_b: Tensor) -> Tensor:
    """The global term of the mixup cross-entropy per sample: ``-log(p_a + p_b)`` (``-log p_a``
    where a == b), with p = softmax(logits). (B,) float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    lp_a = logp.gather(1, classes_a.long().unsqueeze(1)).squeeze(1)
    lp_b = logp.gather(1, classes_b.long().unsqueeze(1)).squeeze(1)
    both = torch.logaddexp(lp_a, lp_b)
    return -torch.where(classes_a == classes_b, lp_a, both)


class SAMixBlock(nn.Module):
    """SAMix's Mixer M_φ (docs/methods/samix.md has its equations).

    Args:
        in_channels: channels C_l of θk's feature map at stage l.
        reduction: query/key width ``max(C_l // reduction, 1)``. Default 2.
        lam_rescale: k of the λ rescaling (>= 0), or ``None`` for λ itself. Default 0.25 (CIFAR).
        upsampling: ``"bilinear"`` (default, SAMix's configs) or ``"nearest"``.

    Shape:
        ``forward(features (B, C_l, h, w), lam (B,), index (B,), size (H, W)) -> s_i (B, 1, H, W)``,
        float32 in (0, 1): the weight of image i at each pixel of output i.
    """

    def __init__(self, in_channels: int, reduction: int = 2, lam_rescale: float | None = 0.25,
                 upsampling: str = "bilinear") -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("reduction", reduction)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.in_channels, self.reduction = in_channels, reduction
        self.lam_rescale = None if lam_rescale is None else check_real(lam_rescale, "lam_rescale", 0.0, 10.0)
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        self.inter_channels = max(in_channels // reduction, 1)
        hidden = max(in_channels // 2, 1)
        self.query = nn.Conv2d(2 * in_channels, self.inter_channels, 1)
        self.key = nn.Conv2d(2 * in_channels, self.inter_channels, 1)
        self.value = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ELU(),
                                   nn.Conv2d(hidden, 1, 1, bias=False))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference's init: every convolution N(0, 0.01²) with zero biases, BatchNorm (1, 0)."""
        device = generator.device if generator is not None else "cpu"
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator, device=device) * 0.01)
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.BatchNorm2d):
                    m.reset_parameters()

    def forward(self, features: Tensor, lam: Tensor, index: Tensor, size: tuple[int, int]) -> Tensor:
        return self.mask(features, features[index], lam, size)

    def mask(self, first: Tensor, second: Tensor, lam: Tensor, size: tuple[int, int]) -> Tensor:
        """s_i (B, 1, H, W) for the pairs of maps (``first`` z_i, ``second`` z_j), both (B, C_l, h, w):
        :meth:`forward` with the partner's map given (SAMix's SSL pairs the query view of image i with
        the key view of another image: :class:`mixlab.ssl.samix.SAMixSSL`)."""
        for name, z in (("first", first), ("second", second)):
            if z.ndim != 4 or z.shape[1] != self.in_channels or z.shape != first.shape:
                raise ValueError(f"the SAMix Mixer needs two (B, {self.in_channels}, h, w) feature maps of one shape, "
                                 f"got {name} of shape {tuple(z.shape)} (first: {tuple(first.shape)})")
        b, _, h, w = first.shape
        with torch.autocast(first.device.type, enabled=False):
            lam_t = rescale_lam(lam.to(device=first.device, dtype=torch.float32), self.lam_rescale).view(b, 1, 1, 1)
            z_i, z_j = first.float() * (1 + lam_t), second.float() * (2 - lam_t)  # adaptive λ encoding, residual
            pair = torch.cat([z_i, z_j], dim=1)  # (B, 2 C_l, h, w): query and key see both images
            p = row_attention(self.query(pair).flatten(2), self.key(pair).flatten(2))  # (B, hw, hw)
            v = self.value(z_j).flatten(2).transpose(1, 2)  # (B, hw, 1), non-linear value of x_j
            logits = (p @ v).transpose(1, 2).reshape(b, 1, h, w)
            return 1 - torch.sigmoid(upsample_to(logits, size, self.upsampling))  # s_i = 1 - s_j

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
                f"lam_rescale={self.lam_rescale}, upsampling={self.upsampling!r}")


class SAMix(PairPipeline):
    """SAMix for classification (docs/methods/samix.md has its equations and choices).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets.
        alpha: α of λ ~ Beta(α, α), > 0. Default 2 (SAMix's configs).
        stage: the feature stage l; ``None`` (default): S - 1 (``mask_layer=2``: stage 3 of 4).
        momentum: m_0 of θk, in [0, 1]. Default 0.999.
        momentum_schedule: ``"cosine"`` (default) or ``"constant"``.
        eta: η of the η-balanced mixup loss, >= 0. Default 0.5 (the CIFAR config's ``neg_weight``);
            1 gives AutoMix's mixup cross-entropy.
        mask_loss: weight of the L1 + variance mask loss, >= 0. Default 0.1.
        mask_margin: the L1 term's margin, in [0, 1). Default 0.1.
        lam_margin: classifier masks become the constant λ_q near the ends, in [0, 0.5). Default 0.08.
        lam_rescale: k of the λ rescaling (>= 0) or ``None``. Default 0.25 (CIFAR).
        upsampling: ``"bilinear"`` (default) or ``"nearest"``.
        reduction: query/key width reduction, an int >= 1. Default 2.
        pairing: partner draw; default ``"random"``.
        clean_loss: the classifier's clean cross-entropy (default True).
        mix_block_lr_scale: the Mixer's lr as a multiple of the model's, > 0. Default 1.
        decouple: η of DecoupleMix on the classifier's mixed loss, >= 0. Default 0.

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "samix"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, *, alpha: float = 2.0,
                 stage: int | None = None, momentum: float = 0.999, momentum_schedule: str = "cosine",
                 eta: float = 0.5, mask_loss: float = 0.1, mask_margin: float = 0.1, lam_margin: float = 0.08,
                 lam_rescale: float | None = 0.25, upsampling: str = "bilinear", reduction: int = 2,
                 pairing: str = "random", clean_loss: bool = True, mix_block_lr_scale: float = 1.0,
                 decouple: float = 0.0) -> None:
        super().__init__(num_classes, label_smoothing, alpha=alpha, stage=stage, momentum=momentum,
                         momentum_schedule=momentum_schedule, lam_margin=lam_margin, pairing=pairing,
                         clean_loss=clean_loss, mix_block_lr_scale=mix_block_lr_scale, decouple=decouple)
        self.eta = check_real(eta, "eta", 0.0, math.inf, high_open=True)
        self.mask_loss = check_real(mask_loss, "mask_loss", 0.0, math.inf, high_open=True)
        self.mask_margin = check_real(mask_margin, "mask_margin", 0.0, 1.0, high_open=True)
        self.lam_rescale = None if lam_rescale is None else check_real(lam_rescale, "lam_rescale", 0.0, 10.0)
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be an int >= 1, got {reduction!r}")
        self.reduction = reduction

    def build_mix_block(self, channels: int) -> SAMixBlock:
        """M_φ: a :class:`SAMixBlock` on C_l channels."""
        return SAMixBlock(channels, self.reduction, self.lam_rescale, self.upsampling)

    def mask_term(self, mask: Tensor, lam: Tensor) -> Tensor:
        """The L1 + variance mask loss of s_j = 1 - ``mask`` for the batch's λ (without its weight)."""
        return mask_loss(mask, lam, self.mask_margin)

    def eta_balanced_loss(self, logits: Tensor, targets: Tensor, index: Tensor, lam: Tensor) -> Tensor:
        """``ℓ_η = ℓ_MCE - (1 - η) ℓ_global`` (batch mean), ℓ_MCE on the λ-mixed ``targets``."""
        loss = soft_cross_entropy(logits, mix_targets(targets, index, lam))
        if self.eta != 1.0:
            classes = targets.argmax(dim=1)
            loss = loss - (1.0 - self.eta) * pair_global_loss(logits, classes, classes[index]).mean()
        return loss

    def generation_loss(self, logits: Tensor, targets: Tensor, index: Tensor, lam: Tensor, mask: Tensor,
                        progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """``ℓ_η(θk(x_mix^k)) + mask_loss · (L1 + variance)``."""
        loss_gen = self.eta_balanced_loss(logits, targets, index, lam)
        loss_mask = self.mask_term(mask, lam)
        generation = loss_gen + self.mask_loss * loss_mask if self.mask_loss > 0 else loss_gen
        return generation, {"loss_gen": loss_gen.detach(), "loss_mask": loss_mask.detach()}

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, stage={self.stage}, momentum={self.momentum}, "
                f"momentum_schedule={self.momentum_schedule!r}, eta={self.eta}, mask_loss={self.mask_loss}, "
                f"mask_margin={self.mask_margin}, lam_margin={self.lam_margin}, lam_rescale={self.lam_rescale}, "
                f"upsampling={self.upsampling!r}, reduction={self.reduction}, pairing={self.pairing!r}, "
                f"clean_loss={self.clean_loss}, mix_block_lr_scale={self.mix_block_lr_scale}, "
                f"decouple={self.decouple}")
