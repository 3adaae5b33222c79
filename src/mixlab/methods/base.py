"""The one interface every training objective fits: :class:`Method`.

The trainer (``mixlab.engine``) knows nothing about any particular method. Each step it calls::

    out = method.training_step(model, batch, progress)   # StepOutput: loss (+ logits, logs)
    out.loss.backward(); optimizer.step()
    method.after_optimizer_step(model, progress)          # EMA / momentum / history updates

and once per epoch ``method.on_epoch_start(epoch)``; after each epoch's checkpoint (rank 0),
``method.epoch_figures(model, images)`` on a fixed batch of un-augmented training images, whose
figures (e.g. MAE's ``reconstructions.png``) are written to the run directory. ``progress`` is the fraction of training
done, in [0, 1], so schedules (AutoMix's momentum and gamma decay, DINO's temperature warm-up)
need no access to the trainer. A method is an ``nn.Module``: its parameters and buffers (a Mix
Block, a momentum encoder, RecursiveMix's history) move to the device with ``.to()`` and are saved
in every checkpoint through ``state_dict``; plain-Python state goes through ``extra_state``.

How each kind of method fits (worked examples live in ``docs/method_interface.md`` and in
``tests/test_method_interface.py``):

============================  =================================================================
kind                          what it uses
============================  =================================================================
stateless batch mixer         :class:`MixerMethod`: mix the batch, soft-target cross-entropy
per-image dataset transform   ``train_transform()`` returns the transform (CropMix); the step is
                              vanilla or a mixer's; ``device_transform()`` its batched twin
stateful (RecursiveMix)       buffers for the history; ``model.forward_features`` and
                              ``model.forward_head``; an extra head in ``param_groups``
extra modules + EMA (AutoMix) ``param_groups`` with its own lr; a momentum copy updated in
                              ``after_optimizer_step``; features at stage l via
                              ``mixlab.models.forward_until``
input gradients (PuzzleMix)   a second forward/backward inside ``training_step``
hidden-state mixing           ``mixlab.models.forward_until`` / ``forward_from`` to run the model
(Manifold Mixup)              stage by stage
self-supervised (MoCo, DINO)  ``batch`` is ``(views, labels)``; projector/predictor/heads in
                              ``param_groups``; teacher updated in ``after_optimizer_step``
============================  =================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mixlab.core.checks import check_real
from mixlab.core.losses import SoftTargetCrossEntropy, decouple_term
from mixlab.core.result import MixResult

__all__ = ["Method", "StepOutput", "ImageRows", "Vanilla", "MixerMethod"]


@dataclass
class StepOutput:
    """What one training step returns to the trainer.

    Attributes:
        loss: scalar tensor to back-propagate.
        logits: (B, K) predictions on the training inputs, for running train accuracy; ``None``
            for objectives without class logits (self-supervised).
        logs: extra scalars to log (e.g. ``{"loss_mix": 1.2, "loss_cl": 0.1}``), as floats or
            0-dim tensors; the trainer averages them over the epoch.
        mixed: the mixed batch, when the method mixes inputs; used for ``samples.png``.
        targets: (B, K) soft targets of the loss when the step mixes without an image batch to
            show (Manifold Mixup at a hidden stage); otherwise ``None`` and the step's targets are
            ``mixed.targets`` (or the labels when nothing is mixed). Read by
            :func:`mixlab.evaluation.effective_classes.measure_effective_classes`.
    """

    loss: Tensor
    logits: Tensor | None = None
    logs: dict[str, Any] = field(default_factory=dict)
    mixed: MixResult | None = None
    targets: Tensor | None = None


@dataclass
class ImageRows:
    """A figure of labelled rows of images, one column per image, for :meth:`Method.epoch_figures`.

    Attributes:
        rows: ``(label, images)`` pairs; ``images`` (n, C, H, W) in the training batches'
            normalisation (the engine undoes it for display), the same n in every row.
        title: drawn above the rows.
    """

    rows: list[tuple[str, Tensor]]
    title: str = ""


class Method(nn.Module):
    """Base class of every training objective.

    Subclasses override :meth:`training_step` and, where they need them, the hooks below. The
    base class implements plain supervised training with (optionally label-smoothed) cross-entropy,
    so ``Method()`` is vanilla training.

    Args:
        num_classes: number of classes K of the classification head (0 for self-supervised).
        label_smoothing: ε of label smoothing for the cross-entropy, in [0, 1).
    """

    name: str = "vanilla"
    #: learns without labels (MoCo, DINO, MAE: ``mixlab.ssl``): a run has no trained classifier, so
    #: the engine monitors a kNN classifier on its features and ``mixlab probe`` scores it, not
    #: ``mixlab eval``. Asked through :func:`mixlab.registry.is_self_supervised`.
    self_supervised: bool = False
    #: buffers whose shape is only known once training runs (a history batch); loading a
    #: checkpoint resizes them to the saved shape first, so a fresh method accepts it.
    resizable_buffers: tuple[str, ...] = ()
    #: the training step (0-based, of the whole run) whose mixed batch ``samples.png`` draws: a
    #: method that mixes with what earlier steps left (RecursiveMix's history) shows a later one.
    preview_step: int = 0
    #: λ values ``mixlab show`` draws one mix each for, with the same partners, through
    #: ``mix_preview(images, labels, lam=λ)`` (AutoMix's masks at 0.2, 0.5, 0.8); empty: one mix
    #: of the method's own λ.
    preview_lams: tuple[float, ...] = ()
    #: some trainable parameter of the model or of the method may get no gradient in a step (the
    #: SSL frameworks never use the model's classifier; RecursiveMix's H' waits for a history):
    #: the engine's ``DistributedDataParallel`` then looks for them after each forward
    #: (``find_unused_parameters``, a walk over the autograd graph), which the other methods skip.
    ddp_find_unused_parameters: bool = False
    #: the engine draws ``samples.png`` from the step's batch (classification targets); the dense
    #: tasks' steps (:mod:`mixlab.methods.dense`) have none to show and say False
    draws_samples: bool = True

    def __init__(self, num_classes: int = 0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.generator: torch.Generator | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in self.resizable_buffers:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self._buffer_device(name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _buffer_device(self, name: str) -> torch.device:
        current = getattr(self, name, None)
        return current.device if isinstance(current, torch.Tensor) else torch.device("cpu")

    # ------------------------------------------------------------------ hooks the trainer calls
    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Called once before training, with the model and the method's generator.

        Methods that build modules sized by the model (a second head, a Mix Block, a momentum
        copy) do it here. They must create them on the model's device.
        """
        self.generator = generator

    def train_transform(self, default: Callable | None, image_size: int | None = None) -> Callable | None:
        """Per-image training transform; per-image methods (CropMix) and self-supervised methods
        (their multi-view transform, at ``image_size``, the training images' side) replace ``default``."""
        return default

    def device_transform(self, default: Callable | None, image_size: int | None = None) -> Callable:
        """The batched twin of :meth:`train_transform` (``data.device_augment``): the same
        operations on a whole uint8 batch on the training device, each image with its own
        parameters, float [0, 1] out (a list of views for a multi-view transform); see
        :func:`mixlab.transforms.device.batched_pipeline`, which builds it from the per-image
        transform, so the two never disagree on what the augmentation is.

        Raises:
            mixlab.transforms.device.UnsupportedTransform: an operation with no batched twin.
        """
        from mixlab.transforms.device import batched_pipeline

        return batched_pipeline(self.train_transform(default, image_size))

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        """One training step's loss. ``batch`` is ``(images, labels)`` for classification."""
        images, labels = batch
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, logits=logits)

    def param_groups(self, base_lr: float) -> list[dict]:
        """Optimizer parameter groups for the method's own trainable modules (default: none).

        Each dict is a torch optimizer group (``{"params": [...], "lr": ...}``); a group may set
        ``"lr_scale"`` to follow the main schedule at a fixed ratio, or ``"fixed_lr": True`` to
        keep its lr constant.
        """
        return []

    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """State updates after each optimizer step (EMA, momentum encoders); default none."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of each epoch (RecursiveMix resets its history here); not again when
        a run resumes from a mid-epoch checkpoint, whose ``state_dict`` holds what it had set."""

    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult | None:
        """Mix a batch without training, for ``samples.png`` and ``mixlab show`` (``None``: the
        method does not mix). A method with :attr:`preview_lams` also takes ``lam=``."""
        return None

    def epoch_figures(self, model: nn.Module, images: Tensor) -> dict[str, Any]:
        """Pictures of the method's state after each epoch, written to the run directory (default none).

        The trainer calls it on rank 0 after each checkpoint, under ``torch.no_grad()`` with model
        and method in eval mode and the method's generator restored afterwards (so drawing never
        changes training), with the same ``images`` every epoch: a few un-augmented training
        images (B, C, H, W), normalised as the training batches.

        Returns:
            ``{file name: figure}``, each figure an :class:`ImageRows` (drawn by the engine) or a
            matplotlib ``Figure`` (saved with ``savefig``); MAE returns ``reconstructions.png``.
        """
        return {}

    def per_rank_state(self) -> dict[str, Tensor]:
        """State that differs between data-parallel processes (``state_dict`` keys -> tensors);
        the trainer saves every rank's copy and gives each its own back on resume. Default: the
        :attr:`resizable_buffers` (a per-rank history)."""
        return {name: getattr(self, name) for name in self.resizable_buffers}


class Vanilla(Method):
    """Plain supervised training: cross-entropy on un-mixed images."""

    name = "vanilla"


class MixerMethod(Method):
    """Adapter that turns any stateless batch mixer into a training method.

    The mixer produces dense soft targets (label smoothing is the mixer's job), and the loss is
    the soft-target cross-entropy ``-sum_k t_k log softmax(z)_k`` averaged over the batch, plus
    DecoupleMix's regulariser ``decouple · R`` (:func:`mixlab.core.losses.decouple_term`) when
    ``decouple`` > 0.

    Args:
        mixer: a callable ``mixer(images, labels) -> MixResult`` (``mixlab.Mixup``, ...).
        loss: loss on (logits, soft targets); default soft-target cross-entropy.
        decouple: η of DecoupleMix (Liu et al. 2023), >= 0; default 0 (off: the plain loss).

    Example:
        >>> import mixlab
        >>> method = MixerMethod(mixlab.CutMix(num_classes=10, alpha=1.0))
        >>> with_dm = MixerMethod(mixlab.Mixup(num_classes=10, alpha=1.0), decouple=0.1)
    """

    def __init__(self, mixer: Callable[..., MixResult], loss: nn.Module | None = None, decouple: float = 0.0) -> None:
        num_classes = getattr(mixer, "num_classes", 0)
        super().__init__(num_classes=num_classes)
        self.mixer = mixer
        self.loss_fn = loss if loss is not None else SoftTargetCrossEntropy()
        self.decouple = check_real(decouple, "decouple", 0.0, math.inf, high_open=True)
        self.name = getattr(mixer, "name", type(mixer).__name__.lower())

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        super().setup(model, generator)
        if hasattr(self.mixer, "generator") and generator is not None:
            self.mixer.generator = generator

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        mixed = self.mixer(images, labels)
        logits = model(mixed.images)
        loss = self.loss_fn(logits, mixed.targets)
        if self.decouple:
            loss = loss + self.decouple * decouple_term(logits, mixed)
        return StepOutput(loss=loss, logits=logits, mixed=mixed)

    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult | None:
        return self.mixer(images, labels)

    def extra_repr(self) -> str:
        return f"mixer={self.mixer!r}" + (f", decouple={self.decouple}" if self.decouple else "")

