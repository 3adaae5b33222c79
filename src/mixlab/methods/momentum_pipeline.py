"""AutoMix's momentum pipeline, the part AutoMix, SAMix and AdAutoMix share.

Liu et al. 2022, "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers" (ECCV 2022,
arXiv:2103.13027), §3.2, Eq. 8 and 10-12; its successors SAMix (Li et al. 2021, arXiv:2111.15454)
and AdAutoMix (Qin et al., ICLR 2024) keep it and change the mixer and the losses. One learned mixer
M_φ (AutoMix's Mix Block, SAMix's Mixer, AdAutoMix's generator) draws masks from the stage-l
feature map of a momentum copy θk of the classifier θq:

* :meth:`MomentumPipeline.setup`: resolves l (default S - 1), builds the mixer through
  :meth:`~MomentumPipeline.build_mix_block` (the subclass's: ``C_l`` input channels), initialises it
  from the run's generator, and copies θq into θk with ``requires_grad=False`` (stop-gradient).
* :meth:`~MomentumPipeline.features`: θk's stage-l map of the clean batch (no gradient), computed
  once per step and used by every mask of the step.
* :meth:`~MomentumPipeline.after_optimizer_step`: Eq. 12, ``θk ← m θk + (1 - m) θq`` over the
  parameters with ``m = 1 - (1 - m_0)(cos(π t) + 1) / 2`` (or a constant m); θk's BatchNorm
  statistics are its own (it runs in training mode, as the reference's ``backbone_k``).
* :meth:`~MomentumPipeline.draw`: λ ~ Beta(α, α), one per batch, and a partner derangement.
* :func:`mix_images`: Eq. 4 for N images, ``x_mix = Σ_n w_n ⊙ x_{sources_n}``; the two-image form
  ``s ⊙ x_i + (1 - s) ⊙ x_j`` is :meth:`MomentumPipeline._mix`.
* :func:`lam_channels`: the λ embedding by concatenation (AutoMix's ``z_{i,λ} = concat(z_i, λ)``).
* :meth:`PairPipeline.losses`: the two-image pipeline of Eq. 8 (AutoMix and SAMix). Two
  draws per step: the classifier's (λ_q, idx_q) and the mixer's (λ_k, idx_k). The classifier is
  trained on the mixer's images for λ_q, detached, with the mixed cross-entropy (plus DecoupleMix's
  regulariser with ``decouple`` > 0) and the clean cross-entropy; the mixer is trained through θk on
  its images for λ_k with the subclass's :meth:`PairPipeline.generation_loss`. Masks near the
  ends of the λ range (``lam_margin``) become the constant λ_q for the classifier. AdAutoMix
  (:class:`MomentumPipeline` directly) has its own N-image adversarial :meth:`~MomentumPipeline.losses`.

Every parameter of θq and φ receives a gradient on every step and no method runs a backward pass
of its own (θk, whose parameters do not require gradients, is only differentiated through), so
:attr:`MomentumPipeline.ddp_find_unused_parameters` is False for the whole family.

Every choice shared by the three methods, and where the papers and the reference code
(Westlake-AI/openmixup) differ, is told in :mod:`mixlab.methods.automix`'s docstring; the
successors' own choices in theirs.
"""

from __future__ import annotations

import abc
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_alpha, check_bool, check_choice, check_real
from mixlab.core.lam import sample_lambda
from mixlab.core.losses import decouple_term, soft_cross_entropy
from mixlab.core.momentum import cosine_momentum, frozen_copy, momentum_update_
from mixlab.core.pairing import PAIRINGS, pair_index
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.methods.base import Method, StepOutput
from mixlab.models.staged import check_stage, forward_until

__all__ = ["MomentumPipeline", "PairPipeline", "PipelineLosses", "MOMENTUM_SCHEDULES", "UPSAMPLING", "upsample_to", "mix_images",
           "lam_channels", "row_attention", "preserved_buffers", "resolve_stage"]

MOMENTUM_SCHEDULES = ("cosine", "constant")
UPSAMPLING = ("nearest", "bilinear")


def mix_images(images: Tensor, weights: Tensor, sources: Tensor) -> Tensor:
    """Eq. 4 for N images: output i is ``Σ_n weights[i, n] ⊙ images[sources[i, n]]``.

    Args:
        images: (B, C, H, W).
        weights: (B, N, H, W) per-pixel weights (summing to 1 over N for a convex mix).
        sources: (B, N) int64 indices into the batch (column 0 is usually ``arange(B)``).

    Returns:
        (B, C, H, W) in the images' dtype and memory format.
    """
    w = weights.to(images.dtype)
    out = images[sources[:, 0]] * w[:, :1]
    for n in range(1, sources.shape[1]):
        out = out + images[sources[:, n]] * w[:, n:n + 1]
    return out


def lam_channels(maps: list[Tensor], lams: list[Tensor]) -> list[Tensor]:
    """The λ embedding by concatenation: ``concat(z_n, λ_n)``, one constant channel per map
    (AutoMix's ``z_{i,λ}`` and ``z_{j,1-λ}``). ``maps`` are (B, C, h, w), ``lams`` (B,)."""
    out = []
    for z, lam in zip(maps, lams):
        b, _, h, w = z.shape
        lam_map = lam.to(device=z.device, dtype=z.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
        out.append(torch.cat([z, lam_map], dim=1))
    return out


def resolve_stage(model: nn.Module, stage: int | None, caller: str) -> int:
    """The feature stage l of ``model`` a mixer reads: ``stage``, or S - 1 for ``None`` (at least 1).

    Raises:
        TypeError: the model does not implement the staged protocol (``mixlab.models.staged``).
        ValueError: ``stage`` larger than the model's number of stages S.
    """
    check_stage(model, 0, caller)  # the protocol itself
    n = model.num_stages
    resolved = stage if stage is not None else max(n - 1, 1)
    if resolved > n:
        raise ValueError(f"stage must be in 1..{n} for {type(model).__name__} ({n} stages), got {resolved}")
    return resolved


def row_attention(q: Tensor, k: Tensor) -> Tensor:
    """AutoMix's Eq. 6: the row-stochastic ``softmax(qᵀ k / sqrt(d))`` (B, hw_q, hw_k) between the
    projections q (B, d, hw_q) and k (B, d, hw_k)."""
    logits = q.transpose(1, 2) @ k / math.sqrt(q.shape[1])
    return logits.softmax(dim=-1)


def upsample_to(maps: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """The Mix Blocks' maps (B, C, h, w) resized to ``size`` with ``mode`` in :data:`UPSAMPLING`
    (bilinear without corner alignment, as the reference); returned as they are at that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


@contextlib.contextmanager
def preserved_buffers(*modules: nn.Module) -> Iterator[None]:
    """The modules' buffers (BatchNorm statistics) as they were before the block, put back after it
    (a preview that runs θk or a mixer with BatchNorm in training mode changes nothing)."""
    buffers = [t for m in modules for t in m.buffers()]
    saved = [t.clone() for t in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(buffers, saved):
                t.copy_(s)


@dataclass
class PipelineLosses:
    """The two halves of Eq. 8 for one batch, before they are summed.

    Attributes:
        classification: the classifier's loss (mixed and clean cross-entropy); its gradient reaches
            θq only.
        generation: the mixer's loss; its gradient reaches φ only (through the mixed images and θk).
        logits: (B, K) the classifier's logits on its mixed batch.
        mixed: the classifier's mixed batch (``mask`` = the weight of image i, ``lam`` = its label
            weight).
        gen_mask: the mixer's mask for its own batch (with its graph to φ): (B, 1, H, W) s_i for
            two images, (B, N, H, W) for N.
        gen_lam: (B,) λ_k of the mixer's batch (two images), or the weight of image i (N images).
        gen_index: its partners: (B,) for two images, (B, N) sources for N.
        logs: detached scalars for the trainer's log.
    """

    classification: Tensor
    generation: Tensor
    logits: Tensor
    mixed: MixResult
    gen_mask: Tensor
    gen_lam: Tensor
    gen_index: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class MomentumPipeline(Method, abc.ABC):
    """Base of the learned mixers trained through a momentum encoder (the module docstring says
    what it does). Subclasses implement :meth:`build_mix_block` and :meth:`losses`
    (:class:`PairPipeline` implements the two-image one).

    Args:
        num_classes, label_smoothing: as :class:`~mixlab.methods.base.Method`.
        alpha: α of λ ~ Beta(α, α), > 0.
        stage: the feature stage l (1..S), ``None``: S - 1.
        momentum: m_0 of θk, in [0, 1].
        momentum_schedule: ``"cosine"`` (m_0 -> 1) or ``"constant"``.
        lam_margin: the classifier's masks become the constant λ near the ends of the λ range, in
            [0, 0.5).
        pairing: partner draw, one of :data:`mixlab.core.pairing.PAIRINGS`.
        clean_loss: include the clean cross-entropy in the classifier's loss.
        mix_block_lr_scale: the mixer's lr as a multiple of the model's, > 0.
        decouple: η of DecoupleMix's regulariser on the classifier's mixed loss, >= 0 (0: off).

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    #: the DDP wrapper's switch (``find_unused_parameters``): every trainable parameter gets a gradient
    #: on every step (the module docstring)
    ddp_find_unused_parameters = False

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, *, alpha: float, stage: int | None,
                 momentum: float, momentum_schedule: str, lam_margin: float, pairing: str, clean_loss: bool,
                 mix_block_lr_scale: float, decouple: float = 0.0) -> None:
        super().__init__(num_classes, label_smoothing)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for {type(self).__name__}, got {num_classes}")
        self.alpha = check_alpha(alpha)
        if stage is not None and (isinstance(stage, bool) or not isinstance(stage, int) or stage < 1):
            raise ValueError(f"stage must be None (the second-to-last stage) or an int >= 1 (1 = the first "
                             f"stage's output; the input image, stage 0, has no features), got {stage!r}")
        self.stage = stage
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0)
        self.momentum_schedule = check_choice(momentum_schedule, "momentum_schedule", MOMENTUM_SCHEDULES)
        self.lam_margin = check_real(lam_margin, "lam_margin", 0.0, 0.5, high_open=True)
        self.pairing = check_choice(pairing, "pairing", PAIRINGS)
        self.clean_loss = check_bool(clean_loss, "clean_loss")
        self.mix_block_lr_scale = check_real(mix_block_lr_scale, "mix_block_lr_scale", 0.0, math.inf,
                                             low_open=True, high_open=True)
        self.decouple = check_real(decouple, "decouple", 0.0, math.inf, high_open=True)
        self.feature_stage: int | None = None  # l, resolved by setup()
        self.mix_block: nn.Module | None = None  # M_φ, built by setup()
        self.momentum_model: nn.Module | None = None  # f_θk, built by setup()

    # ------------------------------------------------------------------ what subclasses say
    @abc.abstractmethod
    def build_mix_block(self, channels: int) -> nn.Module:
        """The mixer M_φ for a feature map of ``channels`` channels, with a
        ``reset_parameters(generator)`` method (called by :meth:`setup`)."""

    @abc.abstractmethod
    def losses(self, model: nn.Module, images: Tensor, labels: Tensor, progress: float) -> PipelineLosses:
        """Both halves of the step's loss for one batch (:meth:`training_step` sums them)."""

    # ------------------------------------------------------------------ setup
    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Resolve the stage l, build the mixer (C_l channels, initialised from ``generator``, on
        the model's device) and the momentum encoder θk (a deep copy of the model, with
        ``requires_grad=False``).

        Raises:
            TypeError: the model does not implement the staged protocol (``mixlab.models.staged``).
            ValueError: ``stage`` larger than the model's number of stages.
        """
        super().setup(model, generator)
        stage = self.feature_stage = resolve_stage(model, self.stage, type(self).__name__)
        device = next(model.parameters()).device
        block = self.build_mix_block(model.stage_channels[stage - 1])
        block.reset_parameters(generator)
        self.mix_block = block.to(device)
        self.momentum_model = frozen_copy(model)
        self.momentum_model.train(self.training)

    def _ready(self) -> tuple[nn.Module, nn.Module]:
        if self.mix_block is None or self.momentum_model is None:
            raise RuntimeError(f"{type(self).__name__}.setup(model, generator) must be called before training or "
                               f"previewing")
        return self.mix_block, self.momentum_model

    def param_groups(self, base_lr: float) -> list[dict]:
        """φ with the model's lr (times ``mix_block_lr_scale``), schedule and weight decay."""
        block, _ = self._ready()
        return [{"params": list(block.parameters()), "lr_scale": self.mix_block_lr_scale}]

    # ------------------------------------------------------------------ the momentum encoder
    def momentum_at(self, progress: float) -> float:
        """m = 1 - (1 - m_0)(cos(π t) + 1) / 2 at training fraction t: m_0 at t = 0, 1 at t = 1
        (m_0 throughout with ``momentum_schedule="constant"``)."""
        if self.momentum_schedule == "constant":
            return self.momentum
        return cosine_momentum(self.momentum, progress)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """Eq. 12 over the parameters: ``θk ← m θk + (1 - m) θq`` with the m of ``progress``."""
        _, encoder = self._ready()
        momentum_update_(encoder.parameters(), model.parameters(), self.momentum_at(progress))

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """θk's stage-l feature map (B, C_l, h, w) of the batch, without gradient."""
        _, encoder = self._ready()
        return forward_until(encoder, images, self.feature_stage)

    # ------------------------------------------------------------------ draws and mixing
    def draw(self, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """λ ~ Beta(α, α) (one per batch, (B,)) and a partner index (B,) from the method's generator."""
        lam = sample_lambda(b, self.alpha, "batch", generator=self.generator, device=device)
        index = pair_index(b, self.pairing, self.generator, device=device)
        return lam, index

    @staticmethod
    def _mix(images: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        """Eq. 4: ``s ⊙ x_i + (1 - s) ⊙ x_j``, in the images' dtype and memory format."""
        partner = images[index]
        return partner + mask.to(images.dtype) * (images - partner)

    def margin_mask(self, mask: Tensor, lam: Tensor) -> Tensor:
        """The classifier's mask: the constant λ where λ <= ``lam_margin`` or λ >= 1 - ``lam_margin``
        (plain Mixup weights near the ends of the range, as the reference's configs), else ``mask``."""
        if self.lam_margin <= 0:
            return mask
        b = mask.shape[0]
        edge = (lam <= self.lam_margin) | (lam >= 1 - self.lam_margin)
        return torch.where(edge.view(b, 1, 1, 1), lam.view(b, 1, 1, 1).to(mask.dtype), mask)

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        out = self.losses(model, images, labels, progress)
        return StepOutput(loss=out.classification + out.generation, logits=out.logits, logs=out.logs,
                          mixed=out.mixed)


class PairPipeline(MomentumPipeline):
    """The two-image pipeline of Eq. 8 (AutoMix, SAMix): :meth:`losses`, with the mixer's own loss
    from the subclass's :meth:`generation_loss`, and the previews at λ = 0.2, 0.5, 0.8. The mixer is
    called as ``mix_block(features (B, C_l, h, w), lam (B,), index (B,), size (H, W)) -> s_i
    (B, 1, H, W)``, the weight of image i at each pixel."""

    preview_lams = (0.2, 0.5, 0.8)  # `mixlab show` draws the masks at these λ (AutoMix's Fig. 4 / 7)

    @abc.abstractmethod
    def generation_loss(self, logits: Tensor, targets: Tensor, index: Tensor, lam: Tensor, mask: Tensor,
                        progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The mixer's loss from θk's ``logits`` (B, K) on the mixer's images (its gradient flows to
        φ through them), the un-mixed ``targets`` (B, K), the pairs ``index`` (B,) and ``lam`` (B,),
        and the mask s_i (B, 1, H, W). Returns ``(loss, logs)``."""

    # ------------------------------------------------------------------ Eq. 8, two images
    def losses(self, model: nn.Module, images: Tensor, labels: Tensor, progress: float) -> PipelineLosses:
        """Both halves of Eq. 8 for one batch (the trainer sums them in :meth:`training_step`).

        Args:
            model: the classifier f_θq.
            images: (B, C, H, W) float batch (normalised, on the training device).
            labels: (B,) class indices or (B, K) soft targets.
            progress: training fraction in [0, 1] (for the schedules).
        """
        block, encoder = self._ready()
        b, size = images.shape[0], images.shape[-2:]
        device = images.device
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(device)
        lam_q, index_q = self.draw(b, device)  # the classifier's pair (λ_q, idx_q)
        lam_k, index_k = self.draw(b, device)  # the mixer's pair (λ_k, idx_k)
        with torch.no_grad():
            features = self.features(images)  # f_θk at stage l, (B, C_l, h, w)
            mask_q = self.margin_mask(block(features, lam_q, index_q, size), lam_q)  # detached: no gradient to φ
            mixed_q = self._mix(images, mask_q, index_q)

        # classification: ℓ_CE + ℓ_MCE^cls (+ η R, DecoupleMix), gradients to θq only
        targets_q = mix_targets(targets, index_q, lam_q)  # label weight λ_q (Eq. 2)
        logits_q = model(mixed_q)
        mixed = MixResult(mixed_q, targets_q, lam_q, index_q, targets, mask=mask_q)
        loss_mix = soft_cross_entropy(logits_q, targets_q)
        if self.decouple:
            loss_mix = loss_mix + self.decouple * decouple_term(logits_q, mixed)
        loss_clean = soft_cross_entropy(model(images), targets) if self.clean_loss else logits_q.new_zeros(()).float()
        classification = loss_clean + loss_mix

        # generation: the subclass's loss through f_θk (stop-gradient on θk), gradients to φ only
        mask_k = block(features, lam_k, index_k, size)
        mixed_k = self._mix(images, mask_k, index_k)
        generation, gen_logs = self.generation_loss(encoder(mixed_k), targets, index_k, lam_k, mask_k, progress)

        gap = (mask_k.detach().float().mean(dim=(1, 2, 3)) - lam_k).abs().mean()  # |mean s_i - λ_k|
        logs = {"loss_ce": loss_clean.detach(), "loss_mix": loss_mix.detach(), **gen_logs, "lam": lam_q.mean(),
                "mask_gap": gap}
        return PipelineLosses(classification, generation, logits_q, mixed, mask_k, lam_k, index_k, logs)

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor, lam: float | None = None) -> MixResult:
        """The mixer's mixed batch from the momentum encoder's features, for a λ drawn from
        Beta(α, α) or the given ``lam``; ``mask`` is s_i. The BatchNorm statistics of θk and of the
        mixer are put back afterwards: nothing in the method changes (the generator moves)."""
        block, encoder = self._ready()
        b, device = images.shape[0], images.device
        drawn, index = self.draw(b, device)
        lam_t = drawn if lam is None else torch.full((b,), check_real(lam, "lam", 0.0, 1.0), device=device)
        with preserved_buffers(encoder, block):
            features = forward_until(encoder, images, self.feature_stage)
            mask = block(features, lam_t, index, images.shape[-2:])
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(device)
        return MixResult(self._mix(images, mask, index), mix_targets(targets, index, lam_t), lam_t, index, targets,
                         mask=mask)
