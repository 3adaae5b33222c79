"""Optimisation: the optimizer and its lr schedule, one training step, and the watch on its loss.

    optimizer = build_optimizer(model, method, cfg.optim)
    set_lr(optimizer, lr_factor(step, steps_per_epoch, cfg.optim))
    out = train_step(model, method, optimizer, (images, labels), step / total_steps)

The trainer knows nothing about any method: :func:`train_step` calls ``method.training_step`` (the
loss; through the DDP-wrapped, possibly compiled step module in the loop), steps the optimizer,
then ``method.after_optimizer_step`` (see ``mixlab.methods.base``).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mixlab.engine.distributed import all_gather_object, all_reduce_sum, average_buffers
from mixlab.methods.base import Method, StepOutput

__all__ = ["build_optimizer", "lr_factor", "set_lr", "train_step", "LossWatch", "TrainingDivergedError"]


def build_optimizer(model: nn.Module, method: Method, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW over the model (no weight decay on 1-D parameters) plus the method's groups.

    Every group gets ``base_lr`` (its own ``lr`` or ``cfg.lr``, times its ``lr_scale``); the
    schedule sets ``lr = base_lr * lr_factor(step)``, except for groups with ``fixed_lr: True``.
    With ``cfg.head_lr_scale != 1`` the classifier (``model.get_classifier()``) has groups of its
    own at that multiple of the lr (fine-tuning recipes train a fresh head faster than the trunk).
    """
    head = model.get_classifier() if cfg.head_lr_scale != 1.0 and hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    groups = []
    for part, scale in (([p for p in model.parameters() if id(p) not in head_ids], 1.0),
                        ([p for p in model.parameters() if id(p) in head_ids], cfg.head_lr_scale)):
        part = [p for p in part if p.requires_grad]
        groups += [{"params": [p for p in part if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "lr_scale": scale}]
    groups += [dict(g) for g in method.param_groups(cfg.lr)]
    groups = [g for g in groups if len(list(g["params"])) > 0]
    for g in groups:
        g["base_lr"] = g.get("lr", cfg.lr) * g.get("lr_scale", 1.0)
        g["lr"] = g["base_lr"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear warm-up, then cosine/step/constant."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        floor = cfg.min_lr / cfg.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """``lr = base_lr * factor`` for every group, except groups with ``fixed_lr: True``."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] if g.get("fixed_lr") else g["base_lr"] * factor


def train_step(
    model: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    progress: float,
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float = 0.0,
    autocast: Callable[[], Any] = nullcontext,
    step_module: nn.Module | None = None,
) -> StepOutput:
    """One optimisation step: the method's loss, backward, clipping, step, the method's update.

    Gradients are zeroed *after* ``training_step``, so a method may run its own backward passes
    inside it (PuzzleMix's input gradient) without cleaning up.

    Args:
        step_module: what runs the step's forward, ``step_module(batch, progress)``: the
            engine's :class:`~mixlab.engine.distributed.StepModule` of ``model`` and ``method``,
            compiled and/or wrapped in ``DistributedDataParallel``
            (:func:`~mixlab.engine.distributed.build_step_module`). Under DDP the gradients are
            averaged across processes during ``backward`` (before clipping and the step; with fp16
            AMP the scaled ones, so an overflow anywhere makes every process skip the step), and
            the BatchNorm statistics right after it. Default: ``method.training_step(model, ...)``
            eagerly, in this process.
    """
    with autocast():
        run = step_module if step_module is not None else partial(method.training_step, model)
        out = run(batch, progress)
    optimizer.zero_grad(set_to_none=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None and scaler.is_enabled():
        scaler.scale(out.loss).backward()
        average_buffers(step_module)
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        out.loss.backward()
        average_buffers(step_module)
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
    method.after_optimizer_step(model, progress)
    return out


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped at that step (its last checkpoint,
    if any, is untouched)."""


class LossWatch:
    """Watches the training loss for its first non-finite value without a host-device sync per step:
    :meth:`update` keeps a flag, the step and the value on the device; :meth:`bad` reads them (one
    sync), which the loop does every ``every`` steps and at the end of each epoch. In a single
    process on the CPU reading is free, and the loop checks every step (data parallel, a read is a
    collective: every ``every`` steps too)."""

    def __init__(self, device: torch.device, every: int) -> None:
        self.every = every
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)

    def update(self, loss: Tensor, step: int) -> None:
        first = self.ok & ~torch.isfinite(loss)  # the first bad step only
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss.float(), self.value)
        self.ok = self.ok & ~first

    def due(self, step: int, end_of_epoch: bool) -> bool:
        """Whether the loop reads the flag after ``step`` steps (``step`` >= 1)."""
        return end_of_epoch or step % self.every == 0

    def bad(self, distributed: bool) -> tuple[int, float] | None:
        """``(step, loss)`` of the first non-finite loss on any process, or ``None``."""
        if distributed:  # every process checks at the same steps: a cheap sum first, details if needed
            if not all_reduce_sum((~self.ok).to(torch.int64)):
                return None
            found = [(s, v) for s, v in all_gather_object((int(self.step), float(self.value))) if s >= 0]
            return min(found)
        return None if bool(self.ok) else (int(self.step), float(self.value))

    def error(self, bad: tuple[int, float], steps_per_epoch: int, cfg, amp_dtype: torch.dtype | None,
              last_checkpoint: str | None) -> TrainingDivergedError:
        """The error naming the step of ``bad`` and what to change (``last_checkpoint``: where the
        run's last checkpoint stands, ``"epoch 3"`` or ``"step 12, in epoch 4"``; ``None`` when it has
        written none)."""
        at, value = bad
        o = cfg.optim
        kept = (f"its last checkpoint ({last_checkpoint}) is untouched" if last_checkpoint is not None
                else "no checkpoint had been written, so it left no files")
        amp_hint = {torch.float16: "; mixed precision in fp16 overflows easily: try run.amp=bf16 (or none)",
                    torch.bfloat16: "; or train in full precision: run.amp=none"}.get(amp_dtype, "")
        return TrainingDivergedError(
            f"the training loss became {value} at step {at + 1} (epoch {at // steps_per_epoch + 1}, batch "
            f"{at % steps_per_epoch + 1} of {steps_per_epoch}): training diverged and stopped there; {kept}. Lower "
            f"the learning rate (optim.lr is {o.lr:g}: --lr), or clip the gradients (optim.clip_grad is "
            f"{o.clip_grad:g}: e.g. --set optim.clip_grad=1.0){amp_hint}")
