"""RegMixup: Mixup as a regulariser of the clean cross-entropy.

Pinto, Yang, Lim, Torr & Dokania, "Using Mixup as a Regularizer Can Surprisingly Improve Accuracy and
Out Distribution Robustness" (NeurIPS 2022, arXiv:2206.14502); the authors' code is
FrancescoPinto/RegMixup (``models/regmixup.py``, ``models/regularizers/mixup.py``, ``commands.sh``).

Every step trains on the clean batch *and* on its Mixup (:class:`mixlab.mixers.Mixup`, one
λ ~ Beta(α, α) per batch, a random partner), in one forward pass of the concatenated batch
``[x; x̃]`` (so BatchNorm normalises both halves together, as the code's ``torch.cat([x, mixup_x])``)::

    loss = CE(f(x), y) + η · CE(f(x̃), λ y + (1 - λ) y_j)

with a large α, so that λ is near 1/2 and the mixed samples lie between the classes: the paper's
point is that Mixup with such λ hurts as the *only* objective (a label-mismatched, high-entropy
training distribution) but regularises well next to the clean loss, improving accuracy, calibration
under shift and out-of-distribution detection.

Facts from the code: α = β = 20 for CIFAR-10 and α = β = 10 for CIFAR-100 (``commands.sh``; 20 is
the argument's default), so this class defaults to α = 20 and the registry to the CIFAR-10 value;
``randperm`` partners (self-pairs possible; mixlab draws a derangement, ``pairing="random"``).

Deviation: the code averages its cross-entropy over the 2B samples of the concatenated batch,
``(CE + MCE) / 2``; mixlab writes the paper's sum ``CE + η MCE`` (η = 1), twice the code's loss
(its gradients are twice as large at the same learning rate).

``decouple=η`` adds DecoupleMix's regulariser to the Mixup term
(:func:`mixlab.core.losses.decouple_term`).

Example::

    reg = RegMixup(num_classes=10)                    # α = 20, η = 1
    loss = reg.training_step(model, (images, labels), progress).loss
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.core.checks import check_real
from mixlab.core.losses import decouple_term, soft_cross_entropy
from mixlab.core.result import MixResult
from mixlab.methods.base import Method, StepOutput
from mixlab.mixers import Mixup

__all__ = ["RegMixup"]


class RegMixup(Method):
    """RegMixup (the module docstring has the loss and the choices made).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets (both terms).
        alpha: α of λ ~ Beta(α, α), > 0. Default 20 (the code's CIFAR-10 setting).
        eta: weight η of the Mixup term, >= 0. Default 1 (the paper).
        pairing: partner draw of the Mixup, one of :data:`mixlab.core.pairing.PAIRINGS`; default
            ``"random"``.
        decouple: η of DecoupleMix's regulariser on the Mixup term, >= 0. Default 0 (off).

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "regmixup"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, *, alpha: float = 20.0, eta: float = 1.0,
                 pairing: str = "random", decouple: float = 0.0) -> None:
        super().__init__(num_classes, label_smoothing)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for RegMixup, got {num_classes}")
        self.mixer = Mixup(num_classes, alpha=alpha, label_smoothing=label_smoothing, pairing=pairing)
        self.alpha = self.mixer.alpha
        self.eta = check_real(eta, "eta", 0.0, math.inf, high_open=True)
        self.decouple = check_real(decouple, "decouple", 0.0, math.inf, high_open=True)

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        super().setup(model, generator)
        self.mixer.generator = generator

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        mixed = self.mixer(images, labels)
        b = images.shape[0]
        logits = model(torch.cat([images, mixed.images]))  # one pass: BatchNorm sees both halves
        clean, mix = logits[:b], logits[b:]
        loss_clean = soft_cross_entropy(clean, mixed.source_targets)
        loss_mix = soft_cross_entropy(mix, mixed.targets)
        if self.decouple:
            loss_mix = loss_mix + self.decouple * decouple_term(mix, mixed)
        loss = loss_clean + self.eta * loss_mix
        # the clean half's logits for the running train accuracy (against the labels, not the mixed targets)
        return StepOutput(loss=loss, logits=clean, logs={"loss_ce": loss_clean.detach(), "loss_mix": loss_mix.detach(),
                                                         "lam": mixed.lam.mean()})

    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        return self.mixer(images, labels)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, eta={self.eta}, pairing={self.mixer.pairing!r}, "
                f"decouple={self.decouple}")
