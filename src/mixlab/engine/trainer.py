"""The training loop: ``train(config) -> dict`` of final metrics.

    mixlab train                                      # the README's default run, a few minutes on a CPU
    mixlab train --method mixup --epochs 30 --set optim.lr=0.05
    mixlab train --model resnet18 --dataset imagefolder --data-root /path/to/cifar10-jpeg.zip
    mixlab train --resume runs/cutmix-resnet_small-synthetic-20250101-120000
    torchrun --nproc_per_node=2 -m mixlab.cli train   # data parallel: 2 processes (gloo on CPU, nccl on GPUs)

    from mixlab.engine import TrainConfig, train
    metrics = train(TrainConfig())

The trainer knows nothing about any method: each step it calls ``method.training_step`` (the loss),
steps the optimizer, then ``method.after_optimizer_step`` (see ``mixlab.methods.base``). Reading
order: the small helpers, :func:`train_step`, then :func:`train` top to bottom.

Randomness: the global RNGs are seeded once from ``seed + rank``; the engine owns one
``torch.Generator`` per purpose (data order, the method's mixing, the loader), and each image's
augmentation is seeded from ``(seed, epoch, index)``, so a run does not depend on the number of
workers, and a resumed run continues bit for bit on the CPU.

Data parallel (``torchrun``, see ``mixlab.engine.distributed`` and ``docs/distributed.md``): every
process holds the whole model and a disjoint shard of each epoch's permutation (``data.batch_size``
is per process); the method gets the plain model, and :func:`train_step` averages the gradients
across processes after backward. The test set is sharded and its sums added up. Rank 0 alone
writes files and prints; the mixing generators differ per rank (seeded from ``seed`` and ``rank``).
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from mixlab import registry
from mixlab.engine.checkpoint import (CHECKPOINT_NAME, CheckpointError, atomic_write_bytes, init_from_checkpoint,
                                      load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint,
                                      set_rng_state)
from mixlab.engine.config import TrainConfig, config_to_dict, validate_config
from mixlab.engine.distributed import (DistInfo, all_gather_object, all_reduce_sum, average_gradients, barrier,
                                       broadcast_object, broadcast_tensors, cleanup, init_distributed)
from mixlab.engine.knn import knn_monitor
from mixlab.engine.metrics import evaluate, write_metrics
from mixlab.engine.plots import plot_curves, plot_rows, plot_samples
from mixlab.methods.base import ImageRows, Method, StepOutput

__all__ = ["train", "train_step", "build_optimizer", "lr_factor", "set_lr", "default_run_dir", "EpochSampler",
           "SeededItems", "rank_generators", "write_epoch_figures", "align_test_split", "TrainingDivergedError"]


# ------------------------------------------------------------------------------- small helpers
def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (cheap enough to call once per image)."""
    h = 0x9E3779B9
    for p in parts:
        h = (h * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return h


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/<method>-<model>-<dataset>-<YYYYmmdd-HHMMSS>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.method.name}-{cfg.model.name}-{cfg.data.name}-{stamp}".replace(":", "_").replace("/", "_")
    return Path("runs") / name


def _prepare_run_dir(path: Path) -> list[Path]:
    """Create the run directory and prove it is writable, or raise ``ValueError``; returns the
    directories this created (``path`` and any missing parents), deepest first."""
    created = []
    for p in (path, *path.parents):
        if p.exists():
            break
        created.append(p)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"run directory {path} is not writable: {e.strerror or e}") from None
    return created


class _NewRunDirs:
    """The directories a run created; :meth:`remove` takes them away again (only while empty, so
    never anything else's) when the run fails before writing its first checkpoint (``kept``)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.kept = False

    def remove(self) -> None:
        if self.kept:
            return
        for p in self.paths:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break


_LOG_EVERY = 10  # steps between progress-bar updates and, on a GPU, reads of the non-finite loss flag


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped at that step (its last checkpoint,
    if any, is untouched)."""


class _LossWatch:
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


class EpochSampler(Sampler):
    """Shuffled indices, a deterministic function of ``(seed, epoch)``; yields ``(epoch, index)``
    so that :class:`SeededItems` can seed each image's augmentation. Call ``set_epoch`` first.

    With ``world_size > 1`` (``DistributedSampler``'s semantics): every rank draws the same
    permutation, pads it to a multiple of ``world_size`` by repeating its start, and takes
    positions ``rank, rank + world_size, ...``; the shards are disjoint apart from the padding,
    and all ranks take the same number of steps.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, *, rank: int = 0,
                 world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)  # ceil: this rank's share, padding included

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        if self.world_size > 1:
            total = len(self) * self.world_size
            order = order.repeat(-(-total // max(1, self.num_samples)))[:total]  # pad with the permutation's start
            order = order[self.rank::self.world_size]
        return ((self.epoch, i) for i in order.tolist())


def rank_generators(seed: int, rank: int) -> dict[str, torch.Generator]:
    """The engine's generators of one process: ``method`` (mixing: boxes, λ, pairings) and
    ``loader`` (worker seeds), seeded from ``(seed, rank)`` so that data-parallel ranks mix
    their batches differently. (The data order and each image's augmentation are seeded from
    ``seed`` alone: ranks share the permutation and own disjoint images of it.)"""
    return {"method": torch.Generator().manual_seed(_mix_seed(seed, rank, 1)),
            "loader": torch.Generator().manual_seed(_mix_seed(seed, rank, 2))}


class SeededItems(Dataset):
    """``dataset[index]`` with the global torch/python RNGs seeded from ``(seed, epoch, index)``.

    Per-image transforms (``torchvision.transforms.v2``) draw from the global RNG; seeding it per
    item makes the augmentation independent of the worker that loads the item. In the main
    process (``num_workers=0``) the global states are restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = _mix_seed(self.seed, epoch, index)
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            return self.dataset[index]
        torch_state, py_state = torch.get_rng_state(), random.getstate()
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)


def _normalizer(mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool) -> Callable[[Tensor], Tensor]:
    """uint8 (B, C, H, W) on the device -> normalised float32; float batches pass unchanged."""
    from mixlab.data import normalize_on_device

    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def preprocess(x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = normalize_on_device(x, mean, std)  # (B, C, H, W) float32
        return x.contiguous(memory_format=memory_format)

    return preprocess


def _transforms(train_set, cfg: TrainConfig) -> tuple[Callable | None, Callable | None]:
    """Default per-image (train, test) transforms on uint8 CHW images, uint8 out (normalised on
    the device). Images of mixed sizes (a lazy folder) are cropped to ``data.image_size``."""
    from torchvision.transforms import v2

    from mixlab.data import cifar_train_transform

    flip = cfg.data.augment == "crop-flip"
    if train_set.is_lazy:
        size = cfg.data.image_size
        train = v2.RandomResizedCrop(size) if flip else v2.Compose([v2.Resize(size), v2.CenterCrop(size)])
        return (v2.Compose([train, v2.RandomHorizontalFlip()]) if flip else train,
                v2.Compose([v2.Resize(round(size * 8 / 7)), v2.CenterCrop(size)]))
    size = train_set.images.shape[-1]
    return (cifar_train_transform(size=size, padding=max(1, size // 8), normalize=False) if flip else None), None


def _to_device(batch: Any, device: torch.device, preprocess: Callable[[Tensor], Tensor]) -> Any:
    """Move a (nested) batch to the device; 4-D image tensors go through ``preprocess``."""
    if isinstance(batch, Tensor):
        batch = batch.to(device, non_blocking=True)
        return preprocess(batch) if batch.ndim == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device, preprocess) for b in batch)
    return batch


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
    distributed: bool = False,
) -> StepOutput:
    """One optimisation step: the method's loss, backward, clipping, step, the method's update.

    Gradients are zeroed *after* ``training_step``, so a method may run its own backward passes
    inside it (PuzzleMix's input gradient) without cleaning up.

    With ``distributed=True`` (data parallel, inside a process group) the gradients of every
    optimised parameter, and the model's floating-point buffers (BatchNorm statistics, updated by
    this step's forward), are averaged across processes after backward, before clipping and the
    step: the methods run the plain model and need not know about it (see ``docs/distributed.md``).
    """
    with autocast():
        out = method.training_step(model, batch, progress)
    optimizer.zero_grad(set_to_none=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None and scaler.is_enabled():
        scaler.scale(out.loss).backward()
        if distributed:  # scaled gradients: a non-finite one anywhere makes every process skip the step
            average_gradients(params, model.buffers())
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        out.loss.backward()
        if distributed:
            average_gradients(params, model.buffers())
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
    method.after_optimizer_step(model, progress)
    return out


def _datasets(cfg: TrainConfig, world_size: int = 1):
    """The train and test splits (+ the class-balanced subset of the train split, if asked)."""
    d = cfg.data
    def synthetic(n: int) -> dict[str, Any]:  # the synthetic set's size; other datasets take only a root
        return {"num_per_class": n, "image_size": d.image_size, "seed": cfg.run.seed} if d.name == "synthetic" else {}

    train_set = registry.build_dataset(d.name, "train", root=d.root, **synthetic(d.num_per_class))
    test_set = align_test_split(train_set, registry.build_dataset(d.name, "test", root=d.root,
                                                                  **synthetic(d.test_per_class)), cfg)
    if d.train_per_class is not None:
        from mixlab.data import class_balanced_subset

        train_set = train_set.subset(class_balanced_subset(train_set.labels, d.train_per_class, seed=cfg.run.seed,
                                                          classes=train_set.classes))
    for split, ds in (("train", train_set), ("test", test_set)):
        if len(ds) == 0:
            raise ValueError(f"the {split} split of dataset {d.name!r} (root {d.root}) is empty")
    if world_size == 1 and len(train_set) < d.batch_size:
        raise ValueError(f"data.batch_size={d.batch_size} is larger than the training set ({len(train_set)} images); "
                         f"lower --batch-size")
    share = -(-len(train_set) // world_size)
    if world_size > 1 and share < d.batch_size:
        raise ValueError(f"data.batch_size={d.batch_size} (per process) is larger than the {share} training images "
                         f"each of the {world_size} processes gets ({len(train_set)} in all); lower --batch-size")
    return train_set, test_set


def align_test_split(train_set, test_set, cfg: TrainConfig):
    """``test_set`` labelled with the train split's class-to-index map, the model's outputs (an
    ImageFolder's test split may lack some of the train split's classes: its own sorted folder
    names would index them otherwise, shifted).

    Raises:
        ValueError: the test split has a class the train split lacks (the model has no output for it).
    """
    try:
        return test_set.with_classes(train_set.classes)
    except ValueError:
        d = cfg.data
        extra = [c for c in test_set.classes if c not in set(train_set.classes)]
        raise ValueError(f"the test split of dataset {d.name!r} (root {d.root}) has class(es) "
                         f"{', '.join(map(repr, extra[:12]))} that its train split lacks, so the model would have no "
                         f"output for them: give each test class training images (a train/<class> folder of the same "
                         f"name) or remove it from the test split") from None


def _check_epochs_left(ckpt: dict, cfg: TrainConfig) -> None:
    """Raise ``ValueError`` when the checkpoint is already at (or past) the epoch this run stops at."""
    o, r = cfg.optim, cfg.run
    end = min(o.epochs, r.stop_epoch or o.epochs)
    if ckpt["epoch"] < end:
        return
    run = Path(ckpt["path"]).parent
    asked = f"{o.epochs} epochs (optim.epochs)" + (f", stopping after epoch {r.stop_epoch} (run.stop_epoch)"
                                                  if r.stop_epoch else "")
    score = (f"`mixlab probe {run}` evaluates it" if registry.is_self_supervised(cfg.method.name)
             else f"`mixlab eval {run}` evaluates it")
    raise ValueError(f"nothing to train: {ckpt['path']} is at epoch {ckpt['epoch']} of "
                     f"{ckpt['config']['optim']['epochs']} and this run asks for {asked}; the run was left untouched. "
                     f"To train it longer, resume with more epochs (--epochs N, N > {ckpt['epoch']}); {score}")


def _check_resumable(ckpt: dict, cfg: TrainConfig) -> None:
    """Raise ``CheckpointError`` naming each setting that differs from the checkpoint's run."""
    old = ckpt["config"]
    diffs = [f"{section}.{key}: checkpoint has {old[section][key]!r}, this run {getattr(getattr(cfg, section), key)!r}"
             for section, key in (("model", "name"), ("model", "kwargs"), ("method", "name"), ("data", "name"))
             if old.get(section, {}).get(key) != getattr(getattr(cfg, section), key)]
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not match this run: " + "; ".join(diffs))


def _load_state(what: str, load: Callable[[], Any], path: str) -> None:
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as e:
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:3])[:600]
        raise CheckpointError(f"checkpoint {path}: cannot load the saved {what} into this run: {detail}") from None


def _on_main(fn: Callable[[], Any], info: DistInfo, share: bool = True) -> Any:
    """``fn()`` on rank 0 only; its result is broadcast to every rank (``share``) or returned on
    rank 0 alone (``None`` elsewhere). A ``ValueError``/``OSError`` it raises is raised on every
    rank, so that no process is left waiting for a rank 0 that stopped."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = e
    if info.distributed:
        result_or_none, error = broadcast_object((result if share else None, error))
        result = result if info.is_main else result_or_none
    if error is not None:
        raise error
    return result


def _test_loader(test_set, cfg: TrainConfig, info: DistInfo, pin_memory: bool) -> Any:
    """This process's contiguous shard of the test set (all of it in a single process). Shards are
    not padded, so no image is evaluated twice; ``evaluate`` adds the sums over the processes."""
    n, bs = len(test_set), cfg.data.eval_batch_size
    lo, hi = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
    if test_set.transform is None:  # decoded uint8 tensors: plain slices, no loader needed
        return list(zip(test_set.images[lo:hi].split(bs), test_set.labels[lo:hi].split(bs)))
    shard = test_set if info.world_size == 1 else Subset(test_set, range(lo, hi))
    return DataLoader(shard, batch_size=bs, num_workers=cfg.data.num_workers, pin_memory=pin_memory)


def _epoch_sums(sums: dict[str, Tensor], correct: Tensor | int, seen: int, device: torch.device
                ) -> tuple[dict[str, float], float | None, int]:
    """The epoch's sums over every process: ``({key: sum / images}, correct / images or None,
    images)``; keys a method logged on only some ranks count as 0 on the others."""
    keys = list(dict.fromkeys(k for ks in all_gather_object(list(sums)) for k in ks))  # rank 0's order first
    f64 = dict(device=device, dtype=torch.float64)
    totals = torch.stack([*(sums[k] for k in keys), torch.as_tensor(correct, device=device).double(),
                          torch.tensor(float(seen), **f64), torch.tensor(float(isinstance(correct, Tensor)), **f64)])
    *values, correct_all, seen_all, with_logits = all_reduce_sum(totals).tolist()
    means = {k: v / seen_all for k, v in zip(keys, values)}
    return means, (correct_all / seen_all if with_logits > 0 else None), round(seen_all)


def _fingerprint(model: nn.Module) -> str:
    """Exact digest of the weights and buffers (two float64 sums, as hex), to compare ranks."""
    tensors = [t.detach().double() for t in model.state_dict().values() if t.is_floating_point()]
    total = sum(float(t.sum()) for t in tensors)
    squares = sum(float(t.square().sum()) for t in tensors)
    return f"{total.hex()}/{squares.hex()}"


# -------------------------------------------------------------------------------- the loop
def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` with ``config.method``; returns the final metrics.

    The run directory receives ``checkpoint.pt`` (every epoch), ``metrics.csv`` / ``metrics.jsonl``
    (one row per epoch), ``curves.png``, ``samples.png`` (the mixed batch of step
    ``method.preview_step``), ``config.yaml``, and the method's ``epoch_figures`` (rewritten every
    epoch: MAE's ``reconstructions.png``). Nothing is written into it before the first checkpoint
    (``config.yaml`` follows it), and a run that fails before its first checkpoint removes the
    directories it created; a run directory's stale checkpoint temporaries (of a process killed
    while writing one) are deleted when a run starts or resumes there.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) it joins the process group (and leaves it at
    the end, unless the caller had set it up) and trains data-parallel: every rank returns the
    same metrics, which cover all processes; rank 0 alone writes the run directory.

    Returns:
        the last epoch's row: ``epoch``, ``step``, ``lr``, ``train_loss``, ``train_acc`` (%, when
        the method gives logits), ``train_<log>`` for each of the method's logs, ``test_acc1``,
        ``test_acc5`` (%), ``test_nll``, ``ema_test_*`` (with an EMA), ``epoch_time`` (training and
        test pass), ``train_time``, ``images_per_s`` (all processes together); plus ``run_dir`` and ``checkpoint`` (paths).

    Raises:
        ValueError (``CheckpointError`` is one), FileNotFoundError: anything wrong with the inputs
            (config values, names, model arguments, dataset path or a test class the train split
            lacks, resume checkpoint or one with no epoch left to train, run directory), before the
            first step.
        TrainingDivergedError: the training loss became NaN or infinite (the message names the step
            and what to change); the last checkpoint is untouched.
        CheckpointWriteError: a checkpoint could not be written (a full disk); the previous one is
            untouched.
    """
    validate_config(config)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(device=config.run.device)
    threads = torch.get_num_threads()
    new_dirs = _NewRunDirs()
    try:
        return _train(config, info, new_dirs)
    except BaseException:
        new_dirs.remove()  # a run that failed before its first checkpoint leaves no directory behind
        raise
    finally:
        torch.set_num_threads(threads)  # run.threads applies to the run only
        if owns_group:
            cleanup()


def _train(cfg: TrainConfig, info: DistInfo, new_dirs: _NewRunDirs) -> dict[str, Any]:
    validate_config(cfg)
    registry.check_names(cfg.method.name, cfg.method.params, cfg.model.name, cfg.data.name)
    d, o, r = cfg.data, cfg.optim, cfg.run
    rank, main, device = info.rank, info.is_main, info.device
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))  # the processes torchrun put on this machine
    torch.set_num_threads(r.threads or max(1, cores - d.num_workers))  # spare cores for the loader's workers
    random.seed(r.seed + rank)
    np.random.seed(r.seed + rank)
    torch.manual_seed(r.seed + rank)

    ckpt = None
    if r.resume:
        barrier()  # (rank 0 of an earlier run in this process group wrote it before a barrier too)
        ckpt = load_checkpoint(r.resume)
        _check_resumable(ckpt, cfg)
        _check_epochs_left(ckpt, cfg)
    registry.check_names(model=cfg.model.name, model_kwargs=cfg.model.kwargs)  # after the checkpoint's diffs

    # ---- data, model, method
    if d.name == "imagefolder" and info.distributed:  # rank 0 decodes into the disk cache, the others read it
        sets = _on_main(lambda: _datasets(cfg, info.world_size), info, share=False)
        train_set, test_set = sets if sets is not None else _datasets(cfg, info.world_size)
    else:
        train_set, test_set = _datasets(cfg, info.world_size)
    num_classes = train_set.num_classes
    if ckpt is not None and ckpt["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {ckpt['path']} has {ckpt['num_classes']} classes, dataset "
                              f"{d.name!r} has {num_classes}")
    model = registry.build_model(cfg.model.name, num_classes, **cfg.model.kwargs).to(device)
    if cfg.model.init and ckpt is None:  # a pre-trained backbone (fine-tuning); resuming loads everything below
        init_from_checkpoint(model, cfg.model.init)
    if r.channels_last:  # ~1.5x faster on CPU too (oneDNN), measured on resnet_small
        model = model.to(memory_format=torch.channels_last)
    broadcast_tensors(model.state_dict().values())  # every rank starts from rank 0's initial weights
    method = registry.build_method(cfg.method.name, num_classes, cfg.method.label_smoothing,
                                   **cfg.method.params).to(device)
    generators = rank_generators(r.seed, rank)
    method.setup(model, generators["method"])
    broadcast_tensors(method.state_dict().values())
    train_transform, test_transform = _transforms(train_set, cfg)
    image_size = d.image_size if train_set.is_lazy else train_set.images.shape[-1]
    self_supervised = registry.is_self_supervised(method)
    # the un-augmented training images: the memory bank of the kNN monitor (self-supervised runs),
    # and a few of them the images of method.epoch_figures after every epoch (rank 0)
    plain_train = train_set.with_transform(test_transform)
    monitor_set = plain_train if self_supervised else None
    train_set = train_set.with_transform(method.train_transform(train_transform, image_size=image_size))
    test_set = test_set.with_transform(test_transform)
    preprocess = _normalizer(train_set.mean, train_set.std, r.channels_last)
    figure_images = preprocess(_figure_images(plain_train, device)) if main else None

    # the same permutation and per-image augmentation seeds on every rank (rank 0's of a single
    # process); each rank loads its own positions of it
    sampler = EpochSampler(len(train_set), seed=_mix_seed(r.seed, 0, 3), rank=rank, world_size=info.world_size)
    from mixlab.data import seed_worker

    train_loader = DataLoader(SeededItems(train_set, seed=_mix_seed(r.seed, 0, 4)), batch_size=d.batch_size,
                              sampler=sampler, drop_last=True, num_workers=d.num_workers,
                              persistent_workers=d.num_workers > 0, pin_memory=on_gpu,
                              worker_init_fn=seed_worker, generator=generators["loader"])
    test_loader = _test_loader(test_set, cfg, info, on_gpu)
    reduce = all_reduce_sum if info.distributed else None

    # ---- optimisation
    optimizer = build_optimizer(model, method, o)
    amp = {"auto": "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "none"}.get(r.amp, r.amp)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if on_gpu else None
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype else nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if cfg.model.ema_decay > 0:  # updated on every rank: the weights are the same everywhere
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.model.ema_decay), use_buffers=True)
    steps_per_epoch = len(train_loader)
    total_steps = o.epochs * steps_per_epoch

    # ---- resume: every state, then the RNGs last (each rank its own)
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        path = ckpt["path"]
        _load_state("model weights", lambda: model.load_state_dict(ckpt["model"]), path)
        own = ckpt.get("method_per_rank") or []  # each rank's own history (RecursiveMix)
        own = own[rank] if rank < len(own) else {}
        _load_state("method state", lambda: method.load_state_dict({**ckpt["method"], **own}), path)
        _load_state("optimizer state", lambda: optimizer.load_state_dict(ckpt["optimizer"]), path)
        _load_state("AMP scaler state", lambda: scaler.load_state_dict(ckpt["scaler"]), path)
        if ema is not None and ckpt["ema"] is not None:
            _load_state("EMA weights", lambda: ema.load_state_dict(ckpt["ema"]), path)
        saved = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(saved) != info.world_size and main:
            print(f"mixlab: note: {path} was written by {len(saved)} process(es) and this run has "
                  f"{info.world_size}: training continues, but not bit for bit (data shards and RNG streams differ)",
                  flush=True)
        if rank < len(saved):
            _load_state("RNG states", lambda: set_rng_state(saved[rank], generators), path)
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])

    def prepare_run_dir() -> str:
        run_dir = Path(r.out) if r.out else Path(ckpt["path"]).parent if ckpt is not None else default_run_dir(cfg)
        if ckpt is None and (run_dir / CHECKPOINT_NAME).exists():
            raise ValueError(f"run directory {run_dir} already holds a {CHECKPOINT_NAME}; pass --resume {run_dir} "
                             f"to continue it, or choose another --out")
        new_dirs.paths = _prepare_run_dir(run_dir)
        # left by a process killed while it wrote one of them
        remove_stale_temporaries(run_dir, (CHECKPOINT_NAME, "config.yaml", "metrics.csv", "metrics.jsonl"))
        return str(run_dir)

    # nothing is written into the run directory before the first checkpoint, which config.yaml and
    # the TensorBoard log follow: a run that fails earlier leaves no half-made run behind
    run_dir = Path(_on_main(prepare_run_dir, info))  # rank 0's name (it holds a timestamp)
    writer = None
    written = ckpt is not None  # the run directory holds a checkpoint of this run
    from tqdm.auto import tqdm

    watch = _LossWatch(device, every=1 if device.type == "cpu" and not info.distributed else _LOG_EVERY)
    amp_hint = {torch.float16: "; mixed precision in fp16 overflows easily: try run.amp=bf16 (or none)",
                torch.bfloat16: "; or train in full precision: run.amp=none"}.get(amp_dtype, "")

    def diverged(bad: tuple[int, float]) -> TrainingDivergedError:
        at, value = bad
        kept = (f"its last checkpoint (epoch {history[-1]['epoch']}) is untouched" if written
                else "no checkpoint had been written, so it left no files")
        return TrainingDivergedError(
            f"the training loss became {value} at step {at + 1} (epoch {at // steps_per_epoch + 1}, batch "
            f"{at % steps_per_epoch + 1} of {steps_per_epoch}): training diverged and stopped there; {kept}. Lower "
            f"the learning rate (optim.lr is {o.lr:g}: --lr), or clip the gradients (optim.clip_grad is "
            f"{o.clip_grad:g}: e.g. --set optim.clip_grad=1.0){amp_hint}")

    if main:
        procs = (f" | {info.world_size} processes x batch {d.batch_size} ({info.world_size * d.batch_size} in all)"
                 if info.distributed else "")
        print(f"mixlab: {cfg.method.name} | {cfg.model.name} | {d.name} ({len(train_set)} train / {len(test_set)} "
              f"test, {num_classes} classes) | {o.epochs} epochs x {steps_per_epoch} steps | {device}{procs} | "
              f"run dir {run_dir}", flush=True)
    samples = None  # the mixed batch of step method.preview_step, drawn in samples.png
    preview_at = min(method.preview_step, total_steps - 1)
    for epoch in range(start_epoch, min(o.epochs, r.stop_epoch or o.epochs)):
        model.train()
        method.train()
        method.on_epoch_start(epoch)
        sampler.set_epoch(epoch)
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=device, dtype=torch.float64))
        seen = correct = 0
        epoch_end = step + steps_per_epoch
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{o.epochs}", disable=not (r.progress and main),
                   leave=False, dynamic_ncols=True)
        for images, labels in bar:
            images, labels = _to_device((images, labels), device, preprocess)  # images (B, C, H, W) float
            set_lr(optimizer, lr_factor(step, steps_per_epoch, o))
            out = train_step(model, method, optimizer, (images, labels), step / total_steps, scaler=scaler,
                             clip_grad=o.clip_grad, autocast=autocast, distributed=info.distributed)
            if ema is not None:
                ema.update_parameters(model)
            b = labels.shape[0]
            watch.update(out.loss.detach(), step)
            sums["loss"] += out.loss.detach().double() * b
            for k, v in out.logs.items():
                sums[k] += torch.as_tensor(v).detach().double().to(device) * b
            if out.logits is not None and out.logits.shape[0] == b:
                target = out.mixed.targets.argmax(1) if out.mixed is not None else labels
                correct += (out.logits.argmax(1) == target).sum()
            if step == preview_at and main:  # a multi-view batch (self-supervised) shows its first view
                first = images if isinstance(images, Tensor) else images[0]
                samples = _preview(method, out, first[:16], labels[:16])
            seen += b
            step += 1
            if watch.due(step, end_of_epoch=step == epoch_end):
                bad = watch.bad(info.distributed)
                if bad is not None:
                    bar.close()
                    raise diverged(bad)
            if r.progress and main and step % _LOG_EVERY == 0:
                bar.set_postfix(loss=f"{sums['loss'].item() / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        train_time = time.perf_counter() - t0

        # ---- the epoch's row: train sums over every process (weighted by images), sharded test sums
        means, acc, seen_all = _epoch_sums(sums, correct, seen, device)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in means.items()})
        if acc is not None:
            row["train_acc"] = 100.0 * acc
        last = epoch + 1 == min(o.epochs, r.stop_epoch or o.epochs)
        if self_supervised and ((epoch + 1) % r.eval_every == 0 or last):  # the kNN monitor, on rank 0
            whole = DistInfo(rank=0, world_size=1, local_rank=0, device=device)  # rank 0 reads every image
            row["knn_acc1"] = _on_main(lambda: knn_monitor(
                model, _test_loader(monitor_set, cfg, whole, on_gpu), _test_loader(test_set, cfg, whole, on_gpu),
                device, train_set.mean, train_set.std, num_classes), info)
        elif (epoch + 1) % r.eval_every == 0 or last:  # other epochs' rows have no test_* keys
            row.update({f"test_{k}": v for k, v in evaluate(model, test_loader, device, preprocess, autocast,
                                                            all_reduce=reduce).items() if k != "n"})
            if ema is not None:
                row.update({f"ema_test_{k}": v for k, v in evaluate(ema.module, test_loader, device, preprocess,
                                                                    autocast, all_reduce=reduce).items() if k != "n"})
        row.update({"epoch_time": time.perf_counter() - t0, "train_time": train_time,
                    "images_per_s": seen_all / train_time})
        history.append(row)

        # every rank's RNG states go into the checkpoint; the weights must be the same on every rank
        own = method.per_rank_state() if info.distributed else {}
        gathered = all_gather_object((rng_state(generators), _fingerprint(model) if info.distributed else "",
                                      {k: v.cpu() for k, v in own.items()}))
        if len({f for _, f, _ in gathered}) > 1:
            raise RuntimeError(f"the model weights differ across processes after epoch {epoch + 1} "
                               f"({[f for _, f, _ in gathered]}); this is a bug in the synchronisation")
        if main:
            save_checkpoint(run_dir / CHECKPOINT_NAME, {
                "epoch": epoch + 1, "step": step, "config": config_to_dict(cfg), "num_classes": num_classes,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "method": method.state_dict(),
                "rng": gathered[0][0], "rng_per_rank": [g for g, _, _ in gathered] if info.distributed else None,
                "method_per_rank": [m for _, _, m in gathered] if own else None,
                "world_size": info.world_size, "history": history})
            if epoch == start_epoch:  # this process's first checkpoint: the config.yaml it ran with
                atomic_write_bytes(run_dir / "config.yaml",
                                   lambda f: f.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode()))
            written = new_dirs.kept = True
            if writer is None and r.tensorboard:
                writer = _tensorboard(run_dir)
            write_metrics(run_dir, history)
            plot_curves(history, run_dir / "curves.png")
            if samples is not None:
                plot_samples(*samples, train_set.classes, run_dir / "samples.png", train_set.mean, train_set.std,
                             title=f"{cfg.method.name}: " + (f"training batch of step {preview_at + 1}" if preview_at
                                                             else "first training batch"))
                samples = None
            write_epoch_figures(method, model, figure_images, run_dir, train_set.mean, train_set.std)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            test_text = f"  kNN top-1 {row['knn_acc1']:.2f}%" if "knn_acc1" in row else ""
            if "test_acc1" in row:
                ema_text = f" (EMA {row['ema_test_acc1']:.1f}%)" if ema is not None else ""
                test_text = (f"  test top-1 {row['test_acc1']:.2f}%{ema_text}  top-5 {row['test_acc5']:.2f}%  "
                             f"nll {row['test_nll']:.3f}")
            print(f"epoch {epoch + 1}/{o.epochs}  loss {row['train_loss']:.4f}{test_text}  lr {row['lr']:.4g}  "
                  f"{row['epoch_time']:.1f}s  {row['images_per_s']:.0f} img/s", flush=True)
        barrier()  # the checkpoint of this epoch is complete before any rank goes on
    if writer is not None:
        writer.close()
    final = dict(history[-1]) if history else {}
    final.update({"run_dir": str(run_dir), "checkpoint": str(run_dir / CHECKPOINT_NAME)})
    return final


def _tensorboard(run_dir: Path):
    """A TensorBoard ``SummaryWriter`` in ``run_dir/tensorboard``, or ``None`` if it is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


@contextmanager
def _untouched_rng(method: Method) -> Iterator[None]:
    """No gradients, and the method's generator and the global CPU RNG restored afterwards: pictures
    drawn inside do not change training."""
    g = method.generator
    state = g.get_state() if g is not None else None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        if g is not None:
            g.set_state(state)


def _figure_images(dataset, device: torch.device, n: int = 8) -> Tensor:
    """``n`` images evenly spread over ``dataset`` (its order, so a spread of classes), stacked on ``device``."""
    picks = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().tolist()
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in picks]).to(device)


def write_epoch_figures(method: Method, model: nn.Module, images: Tensor, run_dir: Path,
                        mean: tuple[float, ...], std: tuple[float, ...]) -> list[Path]:
    """Write ``method.epoch_figures(model, images)`` into ``run_dir`` (model and method in eval mode,
    no gradients, RNGs untouched; their modes restored); returns the paths written.

    Raises:
        ValueError: a figure name that is not a plain ``.png`` file name.
    """
    modes = model.training, method.training
    model.eval()
    method.eval()
    try:
        with _untouched_rng(method):
            figures = method.epoch_figures(model, images)
    finally:
        model.train(modes[0])
        method.train(modes[1])
    paths = []
    for name, figure in figures.items():
        if Path(name).name != name or not name.endswith(".png"):
            raise ValueError(f"{type(method).__name__}.epoch_figures: figure names must be plain .png file names, "
                             f"got {name!r}")
        if isinstance(figure, ImageRows):
            plot_rows(figure.rows, run_dir / name, mean, std, title=figure.title)
        else:
            figure.savefig(run_dir / name)
        paths.append(run_dir / name)
    return paths


def _preview(method: Method, out: StepOutput, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor] | None:
    """(images, soft targets) of a training batch: the step's own mix, else ``method.mix_preview``
    (with the method's generator restored afterwards, so the preview does not change training)."""
    if out.mixed is not None:
        return out.mixed.images[:16].detach().cpu(), out.mixed.targets[:16].detach().cpu()
    with _untouched_rng(method):
        mixed = method.mix_preview(images, labels)
    if mixed is None:
        return images.detach().cpu(), labels.detach().cpu()
    return mixed.images.detach().cpu(), mixed.targets.detach().cpu()
