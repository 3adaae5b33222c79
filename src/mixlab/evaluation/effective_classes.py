"""The effective class number of a method's training targets (RecursiveMix, Yang et al. 2022, §4.5
and Fig. 7): the average over images of the number of classes whose target weight exceeds a
threshold (10⁻⁴ by default), ``E = mean_i #{k : t_ik > threshold}``.

A plain one-hot target counts 1; Mixup and CutMix of two images of different classes count 2
(for λ strictly between the threshold and 1 minus it); RecursiveMix, whose history carries the
previous mixed batch into the next one, counts more and more classes as the history compounds,
until the oldest weights (products of the λs) fall under the threshold. Label smoothing ε gives
every class ε / K, so with ε / K above the threshold every image counts K.

:func:`measure_effective_classes` runs a method's first N training steps, as the trainer does
(``setup``, ``on_epoch_start`` at each pass over the loader, ``training_step``, with an optimizer
the backward pass and step, then ``after_optimizer_step``), and averages E over them, from
each step's targets: ``StepOutput.targets`` when set (hidden-state mixing), else the mixed batch's
``StepOutput.mixed.targets``, else (nothing mixed) the labels' one-hot, label-smoothed targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.core.targets import soft_targets

__all__ = ["EFFECTIVE_THRESHOLD", "EffectiveClasses", "effective_class_number", "measure_effective_classes"]

EFFECTIVE_THRESHOLD = 1e-4  # RecursiveMix Fig. 7


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            math.isfinite(threshold) and 0 <= threshold < 1):
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    return float(threshold)


def effective_class_number(targets: Tensor, threshold: float = EFFECTIVE_THRESHOLD, reduction: str = "mean") -> Tensor:
    """Number of classes whose weight exceeds ``threshold`` in each target row, averaged over images.

    Args:
        targets: (B, K) dense soft targets (a :class:`~mixlab.core.MixResult`'s ``targets``).
        threshold: weights strictly above it count (compared in ``targets``' dtype); default 10⁻⁴.
        reduction: ``"mean"`` (0-dim float32) or ``"none"`` ((B,) int64 counts).

    Returns:
        A tensor on ``targets``' device (no host synchronisation).

    Raises:
        ValueError: ``targets`` not a 2-D floating tensor, bad threshold or reduction.
    """
    if not isinstance(targets, Tensor) or targets.dim() != 2 or not targets.is_floating_point():
        got = f"{targets.dtype} {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a (B, K) floating tensor of soft targets, got {got}")
    threshold = _check_threshold(threshold)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    counts = (targets > threshold).sum(dim=1)
    return counts if reduction == "none" else counts.float().mean()


@dataclass
class EffectiveClasses:
    """The effective class number over a method's first training steps.

    Attributes:
        per_step: (steps,) float64, the mean over each step's images.
        mean: the mean over all images of all steps.
        images: number of images counted.
        threshold: the weight threshold.
    """

    per_step: Tensor
    mean: float
    images: int
    threshold: float


def measure_effective_classes(
    method: nn.Module,
    model: nn.Module,
    loader: Iterable,
    steps: int,
    threshold: float = EFFECTIVE_THRESHOLD,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    total_steps: int | None = None,
) -> EffectiveClasses:
    """Run ``method``'s first ``steps`` training steps on ``loader`` and measure the effective
    class number of its targets at each step.

    The method is set up on the model (``method.setup(model, generator)``), both are put in train
    mode, and ``on_epoch_start(e)`` is called at each pass over ``loader`` (which restarts until
    ``steps`` batches are seen). Without ``optimizer`` the model is not trained (the targets of
    every mixlab method depend on the drawn λs and boxes, not on the weights) and gradients a
    step leaves (PuzzleMix's own backward pass) are cleared; with one, each step is a full
    training step (backward, ``optimizer.step()``). ``after_optimizer_step`` follows every step.

    Args:
        method: a :class:`mixlab.methods.Method` (fresh: its state, e.g. a history, starts empty).
        model: the classifier, on the device the steps run on.
        loader: iterable of ``(images, labels)`` batches; ``uint8`` images are normalised on the
            device with ``mean``/``std`` (as the trainer does), float images pass unchanged. A
            method that mixes in the loader (CropMix) needs a loader built with its
            ``train_transform``, as in training.
        steps: number of training steps, >= 1.
        threshold: weights strictly above it count (default 10⁻⁴).
        optimizer: train while measuring (see above); default none.
        generator: the method's generator (its draws); default the torch seed.
        mean, std: normalisation of ``uint8`` batches.
        total_steps: the run length that sets ``progress = step / total_steps``; default ``steps``.

    Returns:
        :class:`EffectiveClasses` (read back from the device once, at the end).

    Raises:
        ValueError: ``steps``/``total_steps`` not >= 1, an empty loader, ``uint8`` batches without
            ``mean``/``std``, or a bad threshold.
    """
    threshold = _check_threshold(threshold)
    for name, value in (("steps", steps), ("total_steps", steps if total_steps is None else total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    total = steps if total_steps is None else total_steps
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    prepare = _preparer(mean, std)
    method.setup(model, generator)
    method.train()
    model.train()
    counts: list[Tensor] = []
    epoch = 0
    while len(counts) < steps:
        method.on_epoch_start(epoch)
        seen = len(counts)
        for images, labels in loader:
            if len(counts) == steps:
                break
            batch = (prepare(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True))
            out = method.training_step(model, batch, len(counts) / total)
            if out.targets is not None:  # mixed without an image batch (Manifold Mixup, hidden stage)
                targets = out.targets
            elif out.mixed is not None:
                targets = out.mixed.targets
            else:
                targets = soft_targets(batch[1], getattr(method, "num_classes", 0) or _num_classes(out, batch[1]),
                                       getattr(method, "label_smoothing", 0.0))
            counts.append(effective_class_number(targets.detach(), threshold, reduction="none"))
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
            method.after_optimizer_step(model, len(counts) / total)
            _clear_grads(model, method)
        if len(counts) == seen:
            raise ValueError("loader yielded no batch: measure_effective_classes needs at least one (images, labels)")
        epoch += 1
    per_step = torch.stack([c.double().mean() for c in counts]).cpu()
    images = sum(c.numel() for c in counts)
    overall = float(torch.cat(counts).double().mean())
    return EffectiveClasses(per_step, overall, images, threshold)


def _preparer(mean: Sequence[float] | None, std: Sequence[float] | None) -> Callable[[Tensor], Tensor]:
    def prepare(x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            return x
        if mean is None or std is None:
            raise ValueError("uint8 batches need mean and std to be normalised (pass mean=, std=)")
        from mixlab.data import normalize_on_device

        return normalize_on_device(x, mean, std)

    return prepare


def _num_classes(out: Any, labels: Tensor) -> int:
    """K for a method that does not say it: from the logits or soft labels."""
    if labels.dim() == 2:
        return labels.shape[1]
    if getattr(out, "logits", None) is not None:
        return out.logits.shape[1]
    raise ValueError("cannot tell the number of classes: the method has no num_classes and its step no logits")


def _clear_grads(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None
