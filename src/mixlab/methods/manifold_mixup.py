"""Manifold Mixup: Mixup of hidden states at a randomly chosen stage.

Verma, Lamb, Beckham, Najafi, Mitliagkas, Lopez-Paz & Bengio 2019, "Manifold Mixup: Better
Representations by Interpolating Hidden States" (ICML 2019, arXiv:1806.05236). The paper is the
specification (§2, Eq. 1-2); facts it leaves out come from the authors' code
(github.com/vikasverma1077/manifold_mixup, ``supervised/models/preresnet.py`` and
``supervised/utils.py``), which the PuzzleMix code (snu-mllab/PuzzleMix) and the AutoMix tables
(OpenMixup, ``manifoldmix=dict(layer=(0, 3))``) reuse.

Each step (Eq. 1-2), for a network f = f_k ∘ g_k split after stage k:

* draw a stage k uniformly from the set S (default {0, 1, 2}: the input, the output of the first
  stage, the output of the second: the paper's CIFAR choice for PreAct ResNets, and the code's
  ``layer_mix = randint(0, 2)``); k = 0 is input Mixup;
* draw λ ~ Beta(α, α) (α = 2, the paper's and the AutoMix tables' CIFAR value) and a partner
  index j = index[i];
* run the model to stage k on the clean batch, h = g_k(x), mix the hidden states
  ``h̃_i = λ h_i + (1 − λ) h_j`` and continue from there, ``logits = f_k(h̃)``;
* the loss is the cross-entropy against the targets mixed with the same λ and partner,
  ``λ y_i + (1 − λ) y_j``.

Gradients flow through both h_i and h_j into the stages before k (the code does not detach).

Choices where the paper and the code are silent or differ (documented so they can be argued with):

* Stage indices are :mod:`mixlab.models.staged`'s: 0 is the input image, k >= 1 the output of the
  k-th stage (the stem folded into stage 1), exactly the code's "after ``conv1`` + ``layer1``" for
  k = 1 on PreAct ResNets. Any stage 0..S of the model may be listed (S: the final feature map).
* The loss is the soft-target cross-entropy of every mixlab method; the code trains with a binary
  cross-entropy on the softmax (``BCELoss(softmax(z), y_mix)``), which the paper does not mention.
* Partners: a random derangement per step (:func:`mixlab.core.pair_index` ``"random"``, no image
  mixed with itself); the code draws ``np.random.permutation`` (self-pairs possible). One λ per
  batch as the code (``granularity="elem"`` draws one per image).
* Draw order from the method's generator: the stage, the partner index, then λ.
* Only steps that draw stage 0 return their mixed batch (``StepOutput.mixed``, for
  ``samples.png``); the trainer's running train accuracy then compares with the mixed targets'
  argmax, on hidden-stage steps with the labels.
* The whole batch takes one forward pass: BatchNorm layers before stage k see the clean batch, the
  ones after it the mixed hidden states, as in the code.

What a model needs: the staged protocol of :mod:`mixlab.models.staged` (``forward_stem``,
``stages`` as an ``nn.ModuleList``, ``num_stages``, ``forward_head``), which every mixlab model and
``timm:<name>`` ResNet-like model has. A model without it gets a ``TypeError`` from :meth:`setup`,
before training. Your own model plugs in by exposing those four members::

    class MyNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.stages = nn.ModuleList([block(16, 32), block(32, 64), block(64, 128)])
            self.num_stages = len(self.stages)
            self.fc = nn.Linear(128, num_classes)

        def forward_stem(self, x):                      # (B, 3, H, W) -> (B, 16, H, W)
            return self.stem(x)

        def forward_head(self, features, pre_logits=False):
            pooled = features.mean(dim=(2, 3))
            return pooled if pre_logits else self.fc(pooled)

        def forward(self, x):
            h = self.forward_stem(x)
            for stage in self.stages:
                h = stage(h)
            return self.forward_head(h)

(or subclass :class:`mixlab.models.StagedNet`, which provides all but the stem and the stages).

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
    """Manifold Mixup (the module docstring has the equations and every choice made).

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
