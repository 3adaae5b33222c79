"""Manifold Mixup: Mixup of hidden states at a randomly chosen stage.

Verma, Lamb, Beckham, Najafi, Mitliagkas, Lopez-Paz & Bengio 2019, "Manifold Mixup: Better
Representations by Interpolating Hidden States" (ICML 2019, arXiv:1806.05236), §2, Eq. 1-2. Each
step draws a stage k from ``stages`` (default {0, 1, 2}), λ ~ Beta(α, α) (α = 2) and a partner,
runs the model to stage k on the clean batch, continues from ``λ h_i + (1 − λ) h_j`` and trains
against ``λ y_i + (1 − λ) y_j``. The model must expose its stages (``forward_stem``, ``stages``,
``num_stages``, ``forward_head``: every mixlab model, or :class:`mixlab.models.StagedNet`).

The defaults and their source, the choices where the paper and the code differ, and a ten-line
model of your own: docs/methods/manifold-mixup.md.

Usage in any training loop (the trainer does the same)::

    mm = ManifoldMixup(num_classes=10)                  # alpha=2, stages (0, 1, 2)
    mm.setup(model, torch.Generator().manual_seed(0))   # checks the model's stages
    for images, labels in loader:
        loss = mm.training_step(model, (images, labels), 0.0).loss
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mixlab.core.checks import check_alpha, check_choice
from mixlab.core.lam import GRANULARITIES, sample_lambda
from mixlab.core.losses import soft_cross_entropy
from mixlab.core.pairing import PAIRINGS, pair_index
from mixlab.core.random import randint
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.methods.base import Method, StepOutput
from mixlab.models.staged import check_stage, forward_from, forward_until

__all__ = ["ManifoldMixup", "mix_hidden"]


def mix_hidden(hidden: Tensor, index: Tensor, lam: Tensor) -> Tensor:
    """Eq. 1's mixed hidden state ``λ_i h_i + (1 − λ_i) h_index[i]``, a new tensor (``hidden`` is
    not modified, so autograd sees both operands).

    Args:
        hidden: (B, ...) hidden states (or images at stage 0), any float dtype and memory format.
        index: (B,) int64 partner index.
        lam: (B,) weights of the own state, float.

    Returns:
        (B, ...) mixed states, ``hidden``'s dtype and (for 4-D states) memory format.
    """
    weight = lam.to(device=hidden.device, dtype=hidden.dtype).view(-1, *([1] * (hidden.ndim - 1)))
    return torch.lerp(hidden[index], hidden, weight)


class ManifoldMixup(Method):
    """Manifold Mixup (docs/methods/manifold-mixup.md has the equations and every choice made).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets, applied before mixing.
        alpha: α of λ ~ Beta(α, α), > 0. Default 2 (the paper's CIFAR value, the AutoMix tables').
        stages: the stages k to draw from uniformly, distinct ints >= 0 (0 = the input image, k = the
            output of the k-th stage); each must be <= the model's number of stages (checked in
            :meth:`setup`). Default ``(0, 1, 2)``.
        pairing: partner draw, one of :data:`mixlab.core.pairing.PAIRINGS`; default ``"random"``
            (a random derangement per step).
        granularity: ``"batch"`` (one λ per step, default, as the code), ``"pair"`` (needs
            ``pairing="flip"``) or ``"elem"``.

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "manifold-mixup"

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        *,
        alpha: float = 2.0,
        stages: tuple[int, ...] | list[int] = (0, 1, 2),
        pairing: str = "random",
        granularity: str = "batch",
    ) -> None:
        super().__init__(num_classes, label_smoothing)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for Manifold Mixup, got {num_classes}")
        self.alpha = check_alpha(alpha)
        if not isinstance(stages, (tuple, list)) or not stages:
            raise TypeError(f"stages must be a non-empty tuple or list of ints >= 0 (0 = the input), got {stages!r}")
        for k in stages:
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"stages must hold ints >= 0 (0 = the input image, k = the output of stage k), "
                                 f"got {stages!r}")
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct (each is drawn with probability 1 / len(stages)), "
                             f"got {stages!r}")
        self.stages = tuple(int(k) for k in stages)
        self.pairing = check_choice(pairing, "pairing", PAIRINGS)
        self.granularity = check_choice(granularity, "granularity", GRANULARITIES)
        if granularity == "pair" and pairing != "flip":
            raise ValueError("granularity='pair' needs pairing='flip' (a pairing that is its own inverse)")

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Check that ``model`` runs stage by stage up to the largest listed stage.

        Raises:
            TypeError: the model lacks the staged protocol (:mod:`mixlab.models.staged`).
            ValueError: a listed stage beyond the model's number of stages.
        """
        super().setup(model, generator)
        check_stage(model, 0, "ManifoldMixup")  # the protocol itself: TypeError naming what is missing
        n = model.num_stages
        if max(self.stages) > n:
            raise ValueError(f"stages must be in 0..{n} for {type(model).__name__} ({n} stages; 0 = the input), "
                             f"got {self.stages}")

    # ------------------------------------------------------------------ sampling, then application
    def draw(self, batch_size: int, device: torch.device) -> tuple[int, Tensor, Tensor]:
        """The stage k, the partner index (B,) and λ (B,) of one step, from the method's generator."""
        stage = self.stages[int(randint(len(self.stages), (1,), self.generator))]
        return (stage, *self._pair(batch_size, device))

    def _pair(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The partner index and λ, both (B,) on ``device`` (drawn on the generator's device)."""
        index = pair_index(batch_size, self.pairing, self.generator)
        lam = sample_lambda(batch_size, self.alpha, self.granularity, index=index, generator=self.generator,
                            device=device)
        return index.to(device, non_blocking=True), lam

    def forward_mixed(self, model: nn.Module, images: Tensor, stage: int, index: Tensor, lam: Tensor) -> Tensor:
        """Logits of the batch mixed at ``stage`` (Eq. 1): ``f_k(λ g_k(x_i) + (1 − λ) g_k(x_j))``."""
        hidden = forward_until(model, images, stage)  # (B, C_k, h_k, w_k); the images at k = 0
        return forward_from(model, mix_hidden(hidden, index, lam), stage)

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        stage, index, lam = self.draw(images.shape[0], images.device)
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(images.device)
        mixed_targets = mix_targets(targets, index, lam)  # Eq. 2: the same λ and partner
        logits = self.forward_mixed(model, images, stage, index, lam)
        loss = soft_cross_entropy(logits, mixed_targets)
        mixed = None
        if stage == 0:  # input Mixup: an image batch to draw
            mixed = MixResult(mix_hidden(images.detach(), index, lam), mixed_targets, lam, index, targets)
        logs = {"lam": lam.mean(), "stage": float(stage)}
        return StepOutput(loss=loss, logits=logits, logs=logs, mixed=mixed,
                          targets=None if mixed is not None else mixed_targets.detach())

    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult | None:
        """The input-space mix of the steps that draw stage 0 (hidden states are not images), with
        the step's λ and partner draw; ``None`` when 0 is not among the stages."""
        if 0 not in self.stages:
            return None
        index, lam = self._pair(images.shape[0], images.device)
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(images.device)
        return MixResult(mix_hidden(images, index, lam), mix_targets(targets, index, lam), lam, index, targets)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, stages={self.stages}, "
                f"pairing={self.pairing!r}, granularity={self.granularity!r}")
