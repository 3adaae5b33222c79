"""SAMix for self-supervised pre-training: MoCo v2 whose key encoder is also the Mixer's θk.

Li, Liu, Wang, Wu, Liu & Li, "Boosting Discriminative Visual Representation Learning with
Scenario-Agnostic Mixup" (arXiv:2111.15454). Its SSL text could not be read here beyond the
abstract; everything below follows the authors' code, ``MoCoSAMix`` of Westlake-AI/openmixup
(``openmixup/models/selfsup/moco_samix.py``), at its constructor's defaults: the repository ships
no SSL config for it, so the Mixer's own settings are those of SAMix's CIFAR classification config
(:mod:`mixlab.methods.samix`).

Each image gives a query view x_q and a key view x_k (MoCo v2's views, :class:`~mixlab.ssl.mocov2.MoCoV2`).
The key encoder θk (the momentum copy of the backbone and projector) encodes both views, with
shuffle-BN, into keys k(x_q), k(x_k) (unit, 128-d, no gradient) and into its stage-l feature maps
z_q, z_k, from the same pass. Two draws per step, λ_b, λ_m ~ Beta(α, α) (one per batch each) and
partners j_b, j_m (random permutations, as the code: an image may be its own partner), give
two mixes of the query view of image i with the key view of image j::

    x_mix[i] = s ⊙ x_q[i] + (1 − s) ⊙ x_k[j],     s = M_φ(z_q[i], z_k[j], λ)   (SAMix's Mixer, s_i)

Each part of x_mix has its own positive, the key of the other view of the same image: k(x_k[i])
for the λ part, k(x_q[j]) for the 1 − λ part. The **mixup InfoNCE** of a unit embedding m of
x_mix against the queue {k_1 … k_K} is the λ-weighted sum of two MoCo InfoNCE terms::

    ℓ_NCE(m, λ) = λ · NCE(m; k(x_k[i])) + (1 − λ) · NCE(m; k(x_q[j])),
    NCE(m; k₊) = −log exp(m·k₊/τ) / (exp(m·k₊/τ) + Σ_n exp(m·k_n/τ))

The step's loss (every weight 1 but the mask loss's 0.1, the code's defaults)::

    L = L_MoCo(q, k(x_k))                  MoCo v2's InfoNCE of the query view          → θq, g_q
      + ℓ_NCE(g_q(f_q(x_mix_b)), λ_b)      the backbone on the Mixer's detached mix     → θq, g_q
      + ℓ_mixer(g_k(f_k(x_mix_m)), λ_m)    the Mixer's mix through θk (stop-gradient)   → φ only
      + 0.1 · mask_loss(s_m, λ_m)          SAMix's L1 + variance mask loss              → φ only

ℓ_mixer is ℓ_NCE, or with ``eta`` = η the η-balanced ``ℓ_local + η ℓ_NCE``; the backbone's mask
is pulled back to mean λ_b beyond a margin of 0.1; θk follows θq by momentum after the optimiser
step and the keys k(x_k) enter the queue. The Mixer is :class:`~mixlab.methods.samix.SAMixBlock`
at stage S − 1. Every choice and where it differs from the code (partners within each process,
no clustering variant, no pre-Mixer heads): ``docs/guide/samix-ssl.md``.

Example::

    method = SAMixSSL(hidden_dim=512, queue_size=1024)
    method.setup(model, torch.Generator().manual_seed(0))     # projector, θk, queue, Mixer
    loss = method.training_step(model, ([x_q, x_k], labels), progress).loss
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_alpha, check_choice, check_real
from mixlab.core.lam import sample_lambda
from mixlab.core.random import randperm
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets
from mixlab.methods.base import StepOutput
from mixlab.methods.momentum_pipeline import UPSAMPLING, preserved_buffers, resolve_stage
from mixlab.methods.samix import SAMixBlock, mask_loss
from mixlab.models.staged import forward_from, forward_until
from mixlab.ssl.base import embed, positive_int
from mixlab.ssl.mocov2 import MoCoV2

__all__ = ["SAMixSSL", "mixup_infonce", "two_instance_loss", "adjust_mask_mean"]


def _weighted(ce: Tensor, lam: Tensor) -> Tensor:
    """Batch mean of ``λ · ce[:, 0] + (1 − λ) · ce[:, 1]``."""
    lam = lam.to(ce.dtype)
    return (lam * ce[:, 0] + (1 - lam) * ce[:, 1]).mean()


def mixup_infonce(m: Tensor, first: Tensor, second: Tensor, lam: Tensor, queue: Tensor,
                  temperature: float) -> Tensor:
    """ℓ_NCE: ``λ · NCE(m; first) + (1 − λ) · NCE(m; second)``, batch mean, each NCE MoCo's
    InfoNCE of the unit embeddings ``m`` (B, d) with one positive against the ``queue`` (K, d).

    Args:
        m: (B, d) embeddings of the mixed images.
        first, second: (B, d) the positives of the λ part and of the 1 − λ part.
        lam: (B,) λ of each mix.
        queue: (K, d) the negatives.
        temperature: τ.
    """
    positive = torch.stack([(m * first).sum(1), (m * second).sum(1)], dim=1).float() / temperature  # (B, 2)
    negative = torch.logsumexp((m @ queue.T).float() / temperature, dim=1, keepdim=True)  # (B, 1)
    return _weighted(torch.logaddexp(positive, negative) - positive, lam)


def two_instance_loss(m: Tensor, first: Tensor, second: Tensor, lam: Tensor, temperature: float) -> Tensor:
    """ℓ_local: the cross-entropy of ``softmax(m·first/τ, m·second/τ)`` against ``(λ, 1 − λ)``,
    batch mean (the mix between its two instances, no negatives)."""
    logits = torch.stack([(m * first).sum(1), (m * second).sum(1)], dim=1).float() / temperature
    return _weighted(-F.log_softmax(logits, dim=1), lam)


def adjust_mask_mean(mask: Tensor, lam: Tensor, margin: float, eps: float = 1e-10) -> Tensor:
    """The code's ``mask_adjust="auto"``: masks s (B, 1, H, W) whose mean strays from their λ (B,)
    by more than ``margin`` are rescaled to mean λ: ``s λ / mean`` above, ``1 − (1 − s)(1 − λ) /
    (1 − mean)`` below (s clamped to [eps, 1 − eps] first); the others are returned as they are."""
    b = mask.shape[0]
    s = mask.clamp(eps, 1 - eps)
    mean = s.mean(dim=(1, 2, 3), keepdim=True)
    lam = lam.to(mask.dtype).view(b, 1, 1, 1)
    lowered = s * (lam / mean)
    raised = 1 - (1 - s) * ((1 - lam) / (1 - mean))
    return torch.where(mean > lam + margin, lowered, torch.where(mean < lam - margin, raised, mask))


class SAMixSSL(MoCoV2):
    """SAMix's self-supervised variant on MoCo v2 (the module docstring has the equations; docs/guide/samix-ssl.md the choices).

    Args:
        dim, hidden_dim, queue_size, temperature, momentum, scale, shuffle_bn, bn_splits, image_size:
            as :class:`~mixlab.ssl.mocov2.MoCoV2` (standard views: the Mixer mixes the query view of
            one image with the key view of another).
        alpha: α of λ ~ Beta(α, α), > 0. Default 2.
        stage: the stage l of θk's feature map the Mixer reads; ``None`` (default): S − 1.
        eta: ``None`` (default): the Mixer's loss is the mixup InfoNCE; a number η >= 0: the
            η-balanced ``ℓ_local + η ℓ_NCE``.
        mask_loss: weight of the L1 + variance mask loss, >= 0. Default 0.1.
        mask_margin: the L1 term's margin, in [0, 1). Default 0.1.
        mask_adjust: the margin of the backbone's mask mean adjustment, in [0, 1); ``None``: off.
            Default 0.1.
        lam_rescale: k of the Mixer's λ rescaling (>= 0) or ``None``. Default 0.25.
        upsampling: ``"bilinear"`` (default) or ``"nearest"``.
        reduction: the Mixer's query/key width reduction, an int >= 1. Default 2.
        mix_block_lr_scale: the Mixer's lr as a multiple of the model's, > 0. Default 1.

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "samix-ssl"

    def __init__(self, dim: int = 128, hidden_dim: int = 2048, queue_size: int = 4096, temperature: float = 0.2,
                 momentum: float = 0.999, scale: tuple[float, float] = (0.2, 1.0), shuffle_bn: bool = True,
                 bn_splits: int = 4, image_size: int | None = None, *, alpha: float = 2.0, stage: int | None = None,
                 eta: float | None = None, mask_loss: float = 0.1, mask_margin: float = 0.1,
                 mask_adjust: float | None = 0.1, lam_rescale: float | None = 0.25, upsampling: str = "bilinear",
                 reduction: int = 2, mix_block_lr_scale: float = 1.0) -> None:
        super().__init__(dim, hidden_dim, queue_size, temperature, momentum, "standard", scale, shuffle_bn, bn_splits,
                         image_size)
        self.alpha = check_alpha(alpha)
        if stage is not None and (isinstance(stage, bool) or not isinstance(stage, int) or stage < 1):
            raise ValueError(f"stage must be None (the second-to-last stage) or an int >= 1, got {stage!r}")
        self.stage = stage
        self.eta = None if eta is None else check_real(eta, "eta", 0.0, math.inf, high_open=True)
        self.mask_loss = check_real(mask_loss, "mask_loss", 0.0, math.inf, high_open=True)
        self.mask_margin = check_real(mask_margin, "mask_margin", 0.0, 1.0, high_open=True)
        self.mask_adjust = None if mask_adjust is None else check_real(mask_adjust, "mask_adjust", 0.0, 1.0,
                                                                       high_open=True)
        self.lam_rescale = None if lam_rescale is None else check_real(lam_rescale, "lam_rescale", 0.0, 10.0)
        self.upsampling = check_choice(upsampling, "upsampling", UPSAMPLING)
        self.reduction = positive_int(reduction, "reduction")
        self.mix_block_lr_scale = check_real(mix_block_lr_scale, "mix_block_lr_scale", 0.0, math.inf,
                                             low_open=True, high_open=True)
        self.feature_stage: int | None = None  # l, resolved by setup()
        self.mix_block: SAMixBlock | None = None  # M_φ, built by setup()

    # ------------------------------------------------------------------ setup
    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """MoCo v2's projector, key encoder and queue, then the Mixer on θk's stage-l channels
        (initialised from ``generator``).

        Raises:
            TypeError: the model does not implement the staged protocol (``mixlab.models.staged``).
            ValueError: ``stage`` larger than the model's number of stages.
        """
        stage = resolve_stage(model, self.stage, type(self).__name__)
        super().setup(model, generator)
        self.feature_stage = stage
        block = SAMixBlock(model.stage_channels[stage - 1], self.reduction, self.lam_rescale, self.upsampling)
        block.reset_parameters(generator)
        self.mix_block = block.to(next(model.parameters()).device)

    def _mixer(self) -> SAMixBlock:
        if self.mix_block is None or self.feature_stage is None:
            raise RuntimeError("SAMixSSL.setup(model) must be called before training (the trainer does it)")
        return self.mix_block

    def param_groups(self, base_lr: float) -> list[dict]:
        """The projector with the backbone's lr; the Mixer with ``mix_block_lr_scale`` times it."""
        return [*super().param_groups(base_lr),
                {"params": list(self._mixer().parameters()), "lr_scale": self.mix_block_lr_scale}]

    # ------------------------------------------------------------------ the key encoder
    @torch.no_grad()
    def encode_views(self, x_q: Tensor, x_k: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """θk on both views in one shuffle-BN pass (:meth:`MoCoV2.keys`), no gradient.

        Returns:
            ``(k(x_q), k(x_k))`` (B, dim) each, ``(z_q, z_k)`` θk's stage-l maps (B, C_l, h, w)
            each, and the keys of every process's key views, for the queue (world·B, dim).
        """
        _, encoder, projector = self._ready()
        stage, b = self.feature_stage, x_q.shape[0]
        shape: list[torch.Size] = []

        def keys_and_maps(images: Tensor) -> Tensor:  # rows: [key | flattened stage-l map]
            z = forward_until(encoder, images, stage)
            shape[:] = [z.shape[1:]]
            k = F.normalize(projector(forward_from(encoder, z, stage, pre_logits=True)), dim=1)
            return torch.cat([k, z.flatten(1).to(k.dtype)], dim=1)

        own, every = self.keys(torch.cat([x_q, x_k]), encode=keys_and_maps)  # rows of [x_q; x_k] per process
        keys, maps = own[:, :self.dim], own[:, self.dim:].view(2 * b, *shape[0])
        every_key = every[:, :self.dim].view(-1, 2, b, self.dim)[:, 1].reshape(-1, self.dim)  # each rank's x_k
        return keys[:b], keys[b:], maps[:b], maps[b:], every_key

    def key_embedding(self, images: Tensor) -> Tensor:
        """g_k(f_k(x)) / ‖·‖ (B, dim) *with* gradient to the input (θk's own parameters take none)."""
        _, encoder, projector = self._ready()
        return F.normalize(projector(embed(encoder, images)), dim=1)

    # ------------------------------------------------------------------ the mixes
    def draw(self, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """λ ~ Beta(α, α) (one per batch, (B,)) and a random permutation of partners (B,)."""
        lam = sample_lambda(b, self.alpha, "batch", generator=self.generator, device=device)
        return lam, randperm(b, self.generator, device=device)

    @staticmethod
    def mix(x_q: Tensor, x_k: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        """``s ⊙ x_q + (1 − s) ⊙ x_k[index]`` in the views' dtype."""
        partner = x_k[index]
        return partner + mask.to(x_q.dtype) * (x_q - partner)

    # ------------------------------------------------------------------ the step
    def losses(self, model: nn.Module, x_q: Tensor, x_k: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The four terms of the step's loss, with their graphs, and detached statistics.

        Returns:
            ``({"loss_moco", "loss_mix", "loss_mixer", "loss_mask"}, {"contrast_acc", "lam",
            "mask_gap"})``: MoCo's InfoNCE and the backbone's mixup InfoNCE (gradients to θq and
            g_q), the Mixer's loss and its mask loss (gradients to φ only, unweighted).
        """
        if x_q.shape != x_k.shape:
            raise ValueError(f"the query and key views must have one shape, got {tuple(x_q.shape)} and "
                             f"{tuple(x_k.shape)}")
        block = self._mixer()
        b, size, device = x_q.shape[0], x_q.shape[-2:], x_q.device
        k_q, k_k, z_q, z_k, every_key = self.encode_views(x_q, x_k)
        if self.training:
            self._new_keys = every_key  # enqueued after the optimiser step

        # MoCo v2: the query view against its key and the queue (θq, g_q)
        loss_moco, logits = self.contrastive(self.query(model, x_q), k_k)

        # the backbone on the Mixer's mix, detached and mean-adjusted (θq, g_q)
        lam_b, index_b = self.draw(b, device)
        with torch.no_grad():
            mask_b = block.mask(z_q, z_k[index_b], lam_b, size)
            if self.mask_adjust is not None:
                mask_b = adjust_mask_mean(mask_b, lam_b, self.mask_adjust)
            mixed_b = self.mix(x_q, x_k, mask_b, index_b)
        loss_mix = mixup_infonce(self.query(model, mixed_b), k_k, k_q[index_b], lam_b, self.queue, self.temperature)

        # the Mixer through θk (stop-gradient on θk: φ only)
        lam_m, index_m = self.draw(b, device)
        mask_m = block.mask(z_q, z_k[index_m], lam_m, size)
        m = self.key_embedding(self.mix(x_q, x_k, mask_m, index_m))
        loss_mixer = mixup_infonce(m, k_k, k_q[index_m], lam_m, self.queue, self.temperature)
        if self.eta is not None:
            loss_mixer = two_instance_loss(m, k_k, k_q[index_m], lam_m, self.temperature) + self.eta * loss_mixer

        terms = {"loss_moco": loss_moco, "loss_mix": loss_mix, "loss_mixer": loss_mixer,
                 "loss_mask": mask_loss(mask_m, lam_m, self.mask_margin)}
        stats = {"contrast_acc": (logits.detach().argmax(dim=1) == 0).float().mean() * 100, "lam": lam_b.mean(),
                 "mask_gap": (mask_m.detach().float().mean(dim=(1, 2, 3)) - lam_m).abs().mean()}  # |mean s − λ_m|
        return terms, stats

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        """``L_MoCo + ℓ_NCE(backbone) + ℓ_mixer + mask_loss · L_mask`` (:meth:`losses`)."""
        views = self.unpack(batch)
        if len(views) != 2:
            raise ValueError(f"SAMix SSL takes two views per image (query, key), got {len(views)}")
        terms, stats = self.losses(model, *views)
        loss = terms["loss_moco"] + terms["loss_mix"] + terms["loss_mixer"]
        if self.mask_loss > 0:
            loss = loss + self.mask_loss * terms["loss_mask"]
        logs = {**stats, **{name: term.detach() for name, term in terms.items()}}
        return StepOutput(loss=loss, logs=logs)  # samples.png: mix_preview, with the batch's class labels

    # ------------------------------------------------------------------ preview
    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """The backbone's mix of one batch used as both views (``samples.png``, ``mixlab show``):
        θk's maps, a drawn λ and partners, the Mixer's mean-adjusted mask; labels mixed by λ. The
        BatchNorm statistics of θk and the Mixer are put back afterwards (the generator moves)."""
        block = self._mixer()
        _, encoder, _ = self._ready()
        b, device = images.shape[0], images.device
        lam, index = self.draw(b, device)
        with preserved_buffers(encoder, block):
            z = forward_until(encoder, images, self.feature_stage)
            mask = block.mask(z, z[index], lam, images.shape[-2:])
        if self.mask_adjust is not None:
            mask = adjust_mask_mean(mask, lam, self.mask_adjust)
        source = F.one_hot(labels.long(), int(labels.max()) + 1).float()
        return MixResult(self.mix(images, images, mask, index), mix_targets(source, index, lam), lam, index, source,
                         mask=mask)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, alpha={self.alpha}, stage={self.stage}, eta={self.eta}, "
                f"mask_loss={self.mask_loss}, mask_margin={self.mask_margin}, mask_adjust={self.mask_adjust}, "
                f"lam_rescale={self.lam_rescale}, upsampling={self.upsampling!r}, reduction={self.reduction}, "
                f"mix_block_lr_scale={self.mix_block_lr_scale}")
