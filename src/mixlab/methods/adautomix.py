"""AdAutoMix: an adversarial generator that mixes N images, trained through AutoMix's momentum pipeline.

Qin, Jin, Jiang, El-Yacoubi & Gao, "Adversarial AutoMixup" (ICLR 2024, arXiv:2312.11954). A
generator mixes N = 3 images with per-pixel softmax weights (labels by each image's exact pixel
fraction); it is trained every other step *against* the momentum classifier (−β·its mixed loss,
β = 0.3) with a cosine term that keeps the mixed sample close to its sources; the classifier also
sees a plain N-image Mixup. The rest follows the authors' code (JinXins/Adversarial-AutoMixup).

Which facts come from the code, where mixlab departs from it, and what is left out:
docs/methods/adautomix.md.

Example::

    ada = AdAutoMix(num_classes=10)                           # N = 3
    ada.setup(model, torch.Generator().manual_seed(0))
    loss = ada.training_step(model, (images, labels), progress).loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_bool, check_choice, check_real
from mixlab.core.lam import sample_lambda
from mixlab.core.losses import soft_cross_entropy
from mixlab.core.pairing import pair_index
from mixlab.core.result import MixResult
from mixlab.core.targets import soft_targets
from mixlab.methods.momentum_pipeline import (
    UPSAMPLING,
    MomentumPipeline,
    PipelineLosses,
    lam_channels,
    mix_images,
    preserved_buffers,
    row_attention,
    upsample_to,
)
from mixlab.models.staged import forward_from

__all__ = ["AdAutoMix", "AdaptiveMaskGenerator", "SIMILARITY", "mixed_targets"]

SIMILARITY = ("paper", "code")


def mixed_targets(targets: Tensor, sources: Tensor, fractions: Tensor) -> Tensor:
    """``Σ_n fractions[:, n] · targets[sources[:, n]]``: (B, K) targets of N-image mixes."""
    w = fractions.to(targets.dtype)
    return torch.einsum("bn,bnk->bk", w, targets[sources])


class AdaptiveMaskGenerator(nn.Module):
    """AdAutoMix's generator M_φ (docs/methods/adautomix.md has its equations).

    Args:
        in_channels: channels C_l of θk's feature map at stage l.
        reduction: query/key width ``max(C_l // reduction, 1)``. Default 2.
        lam_concat: append λ_n to image n's map as one constant channel. Default False (CIFAR config).
        upsampling: ``"bilinear"`` (default) or ``"nearest"``.

    Shape:
        ``forward(features (B, C_l, h, w), sources (B, N), lam (B, N), size (H, W)) -> weights
        (B, N, H, W)``, float32, non-negative, summing to 1 over N at every pixel.
    """

    def __init__(self, in_channels: int, reduction: int = 2, lam_concat: bool = False,
                 upsampling: str = "bilinear") -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("reduction", reduction)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.in_channels, self.reduction = in_channels, reduction
        self.lam_concat = check_bool(lam_concat, "lam_concat")
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        self.inter_channels = max(in_channels // reduction, 1)
        c_in = in_channels + int(lam_concat)
        self.query = nn.Conv2d(c_in, self.inter_channels, 1)
        self.key = nn.Conv2d(c_in, self.inter_channels, 1)
        self.value = nn.Conv2d(c_in, 1, 1)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference's init: weights N(0, 0.01²), biases 0 (uniform 1/N masks at first)."""
        device = generator.device if generator is not None else "cpu"
        with torch.no_grad():
            for conv in (self.query, self.key, self.value):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, device=device) * 0.01)
                conv.bias.zero_()

    def forward(self, features: Tensor, sources: Tensor, lam: Tensor, size: tuple[int, int]) -> Tensor:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"the AdAutoMix generator needs a (B, {self.in_channels}, h, w) feature map, got shape "
                             f"{tuple(features.shape)}")
        b, _, h, w = features.shape
        n = sources.shape[1]
        with torch.autocast(features.device.type, enabled=False):
            z = features.float()
            maps = [z[sources[:, m]] for m in range(n)]  # f_n, (B, C_l, h, w) each
            if self.lam_concat:
                maps = lam_channels(maps, [lam[:, m] for m in range(n)])
            stacked = torch.cat(maps)  # (N B, C, h, w): one convolution for all N
            q = self.query(stacked).flatten(2).view(n, b, self.inter_channels, h * w)
            k = self.key(stacked).flatten(2).view(n, b, self.inter_channels, h * w)
            v = self.value(stacked).flatten(2).view(n, b, 1, h * w)
            others = k.sum(dim=0, keepdim=True) - k  # Σ_{m≠n} k_m: the attention logits are linear in k
            p = row_attention(q.flatten(0, 1), others.flatten(0, 1))  # (N B, hw, hw)
            logits = (p @ v.flatten(0, 1).transpose(1, 2)).view(n, b, h, w).permute(1, 0, 2, 3)  # (B, N, h, w)
            return upsample_to(logits, size, self.upsampling).softmax(dim=1)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
                f"lam_concat={self.lam_concat}, upsampling={self.upsampling!r}")


class AdAutoMix(MomentumPipeline):
    """AdAutoMix (docs/methods/adautomix.md has its objective and every choice made).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets.
        alpha: α of each λ_n ~ Beta(α, α), > 0. Default 1 (the CIFAR config).
        num_mix: N, the images per mixed sample, an int >= 2. Default 3 (``mix_samples``).
        stage: the feature stage l; ``None`` (default): S - 1 (stage 3 of a 4-stage ResNet).
        momentum: m_0 of θk, in [0, 1]. Default 0.999 (rising to 1 by a cosine).
        momentum_schedule: ``"cosine"`` (default) or ``"constant"``.
        beta: β of the adversarial step, in [0, 1]. Default 0.3 (``beta_radio``).
        mixup_weight: r, the plain N-image Mixup's share of the classifier's clean term (N > 2), in
            [0, 1]. Default 0.5 (``mixup_radio``).
        adv_interval: the generator's step is adversarial every ``adv_interval``-th step, an int >= 1
            (1: always). Default 2.
        similarity: ``"paper"`` (default: minimise 1 - Σ ρ_n cos) or ``"code"`` (add + Σ ρ_n cos).
        lam_margin: the classifier's masks become the constant λ when some λ_n <= lam_margin, in
            [0, 0.5). Default 0.03.
        lam_concat: the generator sees λ_n (default False, the CIFAR config).
        upsampling: ``"bilinear"`` (default) or ``"nearest"``.
        reduction: query/key width reduction, an int >= 1. Default 2.
        pairing: how each partner column is drawn; default ``"random"`` (derangements).
        clean_loss: the classifier's clean cross-entropy (default True).
        mix_block_lr_scale: the generator's lr as a multiple of the model's, > 0. Default 1.

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "adautomix"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, *, alpha: float = 1.0, num_mix: int = 3,
                 stage: int | None = None, momentum: float = 0.999, momentum_schedule: str = "cosine",
                 beta: float = 0.3, mixup_weight: float = 0.5, adv_interval: int = 2, similarity: str = "paper",
                 lam_margin: float = 0.03, lam_concat: bool = False, upsampling: str = "bilinear",
                 reduction: int = 2, pairing: str = "random", clean_loss: bool = True,
                 mix_block_lr_scale: float = 1.0) -> None:
        super().__init__(num_classes, label_smoothing, alpha=alpha, stage=stage, momentum=momentum,
                         momentum_schedule=momentum_schedule, lam_margin=lam_margin, pairing=pairing,
                         clean_loss=clean_loss, mix_block_lr_scale=mix_block_lr_scale)
        for name, value, low in (("num_mix", num_mix, 2), ("adv_interval", adv_interval, 1),
                                 ("reduction", reduction, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.num_mix, self.adv_interval, self.reduction = num_mix, adv_interval, reduction
        self.beta = check_real(beta, "beta", 0.0, 1.0)
        self.mixup_weight = check_real(mixup_weight, "mixup_weight", 0.0, 1.0)
        self.similarity = check_choice(similarity, "similarity", SIMILARITY)
        self.lam_concat = check_bool(lam_concat, "lam_concat")
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        # optimizer steps taken, which decide the adversarial steps: a buffer for the checkpoint, read
        # on the host only when a checkpoint is loaded; `steps` is its host copy
        self.register_buffer("adv_steps", torch.zeros((), dtype=torch.int64))
        self.steps = 0

    def build_mix_block(self, channels: int) -> AdaptiveMaskGenerator:
        """M_φ: an :class:`AdaptiveMaskGenerator` on C_l channels."""
        return AdaptiveMaskGenerator(channels, self.reduction, self.lam_concat, self.upsampling)

    # ------------------------------------------------------------------ state
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.steps = int(self.adv_steps)  # the host copy of the loaded counter

    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """Eq. 12's momentum update, and the step counter of the adversarial alternation."""
        super().after_optimizer_step(model, progress)
        self.adv_steps += 1
        self.steps += 1

    def adversarial_now(self) -> bool:
        """Whether this step's generator loss is the adversarial one (every ``adv_interval``-th step)."""
        return self.steps % self.adv_interval == 0

    # ------------------------------------------------------------------ draws and mixes
    def draw_mix(self, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(λ (B, N) summing to 1 per row, sources (B, N))``: for N = 2, (λ, 1 - λ) with λ ~ Beta(α, α);
        for N > 2, N Beta(α, α) draws normalised to sum 1 (one set per batch, as the code); column 0
        of ``sources`` is ``arange(B)``, then N - 1 partner draws (``pairing``)."""
        n = self.num_mix
        if n == 2:  # λ ~ Beta(α, α) and 1 - λ, as AutoMix (the code's two-image branch)
            first = sample_lambda(b, self.alpha, "batch", generator=self.generator, device=device)
            lam = torch.stack([first, 1 - first], dim=1)
        else:
            raw = torch.stack([sample_lambda(b, self.alpha, "batch", generator=self.generator, device=device)
                               for _ in range(n)], dim=1)  # (B, N), equal rows
            lam = raw / raw.sum(dim=1, keepdim=True)
        partners = [pair_index(b, self.pairing, self.generator, device=device) for _ in range(n - 1)]
        sources = torch.stack([torch.arange(b, device=device), *partners], dim=1)
        return lam, sources

    def margin_weights(self, weights: Tensor, lam: Tensor) -> Tensor:
        """The classifier's weights: the constant λ_n where some λ_n <= ``lam_margin`` (N = 2:
        λ <= m or λ >= 1 - m, AutoMix's rule), else ``weights``."""
        if self.lam_margin <= 0:
            return weights
        edge = (lam <= self.lam_margin).any(dim=1)  # (B,); for N = 2 this is λ <= m or 1 - λ <= m
        b, n = lam.shape
        return torch.where(edge.view(b, 1, 1, 1), lam.view(b, n, 1, 1).to(weights.dtype), weights)

    def similarity_loss(self, logits_mix: Tensor, logits_clean: Tensor, sources: Tensor, fractions: Tensor) -> Tensor:
        """``1 - Σ_n ρ_n cos(θk(x_mix), θk(x_{sources_n}))`` averaged over the batch (``"paper"``), or
        ``+Σ_n ρ_n cos`` (``"code"``)."""
        cos = F.cosine_similarity(logits_mix.float().unsqueeze(1), logits_clean.float()[sources], dim=-1)  # (B, N)
        weighted = (fractions.float() * cos).sum(dim=1).mean()
        return 1 - weighted if self.similarity == "paper" else weighted

    # ------------------------------------------------------------------ the step's losses
    def losses(self, model: nn.Module, images: Tensor, labels: Tensor, progress: float) -> PipelineLosses:
        """The classifier's and the generator's losses for one batch (the equations of docs/methods/adautomix.md).

        Args:
            model: the classifier f_θq.
            images: (B, C, H, W) float batch (normalised, on the training device).
            labels: (B,) class indices or (B, K) soft targets.
            progress: training fraction in [0, 1] (unused: AdAutoMix has no schedule of its own).
        """
        block, encoder = self._ready()
        b, size = images.shape[0], images.shape[-2:]
        device = images.device
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(device)
        lam_q, sources_q = self.draw_mix(b, device)  # the classifier's draw
        lam_k, sources_k = self.draw_mix(b, device)  # the generator's draw
        adversarial = self.adversarial_now()
        with torch.no_grad():
            features = self.features(images)  # f_θk at stage l, (B, C_l, h, w)
            weights_q = self.margin_weights(block(features, sources_q, lam_q, size), lam_q)
            mixed_q = mix_images(images, weights_q, sources_q)
            clean_k = forward_from(encoder, features, self.feature_stage) if adversarial else None  # θk(x)

        # classification, gradients to θq only
        fractions_q = weights_q.float().mean(dim=(2, 3))  # ρ_n: exact pixel fractions, (B, N)
        targets_q = mixed_targets(targets, sources_q, fractions_q)
        logits_q = model(mixed_q)
        loss_mix = soft_cross_entropy(logits_q, targets_q)
        zero = logits_q.new_zeros(()).float()
        loss_clean = soft_cross_entropy(model(images), targets) if self.clean_loss else zero
        loss_mixup = zero
        if self.num_mix > 2:  # the code's re-weighting with a plain N-image Mixup of the same sources
            plain = mix_images(images, lam_q.view(b, -1, 1, 1).expand(-1, -1, *size), sources_q)
            loss_mixup = soft_cross_entropy(model(plain), mixed_targets(targets, sources_q, lam_q))
            classification = loss_mix + (1 - self.mixup_weight) * loss_clean + self.mixup_weight * loss_mixup
        else:
            classification = loss_mix + loss_clean

        # the generator, through f_θk (stop-gradient on θk), gradients to φ only
        weights_k = block(features, sources_k, lam_k, size)
        fractions_k = weights_k.detach().float().mean(dim=(2, 3))  # the label weights, data to φ
        logits_k = encoder(mix_images(images, weights_k, sources_k))
        loss_gen = soft_cross_entropy(logits_k, mixed_targets(targets, sources_k, fractions_k))
        if adversarial:
            loss_sim = self.similarity_loss(logits_k, clean_k, sources_k, fractions_k)
            generation = -self.beta * loss_gen + (1 - self.beta) * loss_sim
        else:
            loss_sim = zero
            generation = loss_gen

        mixed = MixResult(mixed_q, targets_q, fractions_q[:, 0], sources_q[:, 1], targets, mask=weights_q[:, :1])
        logs = {"loss_ce": loss_clean.detach(), "loss_mix": loss_mix.detach(), "loss_mixup": loss_mixup.detach(),
                "loss_gen": loss_gen.detach(), "loss_sim": loss_sim.detach(), "own_fraction": fractions_k[:, 0].mean()}
        return PipelineLosses(classification, generation, logits_q, mixed, weights_k, fractions_k[:, 0], sources_k,
                              logs)

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """The generator's N-image mix of the batch from θk's features (``mask`` = the weight of
        image i, ``index`` = its first partner, ``lam`` = its pixel fraction); θk's and the
        generator's buffers are put back afterwards (the generator moves)."""
        block, encoder = self._ready()
        b, device = images.shape[0], images.device
        lam, sources = self.draw_mix(b, device)
        with preserved_buffers(encoder, block):
            weights = block(self.features(images), sources, lam, images.shape[-2:])
        fractions = weights.float().mean(dim=(2, 3))
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(device)
        return MixResult(mix_images(images, weights, sources), mixed_targets(targets, sources, fractions),
                         fractions[:, 0], sources[:, 1], targets, mask=weights[:, :1])

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, num_mix={self.num_mix}, stage={self.stage}, "
                f"momentum={self.momentum}, momentum_schedule={self.momentum_schedule!r}, beta={self.beta}, "
                f"mixup_weight={self.mixup_weight}, adv_interval={self.adv_interval}, "
                f"similarity={self.similarity!r}, lam_margin={self.lam_margin}, lam_concat={self.lam_concat}, "
                f"upsampling={self.upsampling!r}, reduction={self.reduction}, pairing={self.pairing!r}, "
                f"clean_loss={self.clean_loss}, mix_block_lr_scale={self.mix_block_lr_scale}")
