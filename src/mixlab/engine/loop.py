"""The training loop: ``train(config) -> dict`` of final metrics.

    mixlab train                                      # the README's default run, a few minutes on a CPU
    mixlab train --method mixup --epochs 30 --set optim.lr=0.05
    mixlab train --model resnet18 --dataset imagefolder --data-root /path/to/cifar10-jpeg.zip
    mixlab train --resume runs/cutmix-resnet_small-synthetic-20250101-120000
    torchrun --nproc_per_node=2 -m mixlab.cli train   # data parallel: 2 processes (gloo on CPU, nccl on GPUs)

    from mixlab.engine import TrainConfig, train
    metrics = train(TrainConfig())

Reading order: :func:`train` (the whole run), :func:`setup` (everything it trains with, a
:class:`State`), :func:`train_one_epoch` and its :func:`step`, :func:`evaluate_epoch`. The data
pipeline is :mod:`mixlab.engine.data`, the optimizer and the step :mod:`mixlab.engine.optim`, the
run directory :mod:`mixlab.engine.writer`.

Segmentation and detection (``data.task``) run through this same loop: :mod:`mixlab.engine.dense`
supplies their data, model, training step (a :class:`~mixlab.methods.base.Method` of
:mod:`mixlab.methods.dense`) and test metric (mIoU, mAP) in :func:`setup` and :func:`evaluate_epoch`.

Randomness: the global RNGs are seeded once from ``seed + rank``; the engine owns one
``torch.Generator`` per purpose (data order, the method's mixing, the loader, the augmentation on
the device with ``data.device_augment``), and each image's per-image augmentation is seeded from
``(seed, epoch, index)``, so a run does not depend on the number of workers, and a resumed run
continues bit for bit on the CPU.

Checkpoints: after every epoch, and with ``run.checkpoint_every: N`` also every N optimizer steps
inside an epoch (an ImageNet epoch takes hours). A mid-epoch checkpoint holds the epoch's position
(``epoch_step``), its partial training sums and the pending ``samples.png`` batch besides the
weights, optimizer, method and RNG states; ``--resume`` skips the positions of the epoch's
permutation already trained on (without loading them) and continues from that step bit for bit on
the CPU: the epoch's metrics row is that of an uninterrupted run. Metrics rows are written at
epoch ends only.

Data parallel (``torchrun``, see ``mixlab.engine.distributed`` and ``docs/distributed.md``): every
process holds the whole model and a disjoint shard of each epoch's permutation (``data.batch_size``
is per process); the step runs through ``DistributedDataParallel`` wrapped around the model and
the method together (``distributed.StepModule``), so the method gets the plain model and DDP
averages the gradients during backward. The test set is sharded and its sums added up. Rank 0 alone
writes files and prints; the mixing generators differ per rank (seeded from ``seed`` and ``rank``).

A step does not wait for the device: the batch is copied without blocking, and the loss, the
method's logs and the divergence flag are added up on the device, read every ``LOG_EVERY`` steps
(the progress bar, the flag) and at the end of the epoch.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from mixlab import registry
from mixlab.engine import dense
from mixlab.engine.checkpoint import (CHECKPOINT_NAME, CheckpointError, check_epochs_left, check_mid_epoch,
                                      check_resumable, init_from_checkpoint, load_checkpoint, load_state, rng_state,
                                      set_rng_state)
from mixlab.engine.config import TrainConfig, config_to_dict, validate_config
from mixlab.engine.data import RunData, load_datasets, rank_generators, run_data, test_loader, wants_device_augment
from mixlab.engine.distributed import (DistInfo, all_gather_object, all_reduce_sum, barrier, broadcast_tensors,
                                       build_step_module, cleanup, init_distributed, on_main, sync_batchnorm,
                                       weights_fingerprint)
from mixlab.engine.optim import LossWatch, build_optimizer, lr_factor, set_lr, train_step
from mixlab.engine.writer import RunWriter, preview_batch
from mixlab.evaluation import metrics
from mixlab.evaluation.knn import knn_monitor
from mixlab.methods.base import Method, StepOutput

__all__ = ["train", "setup", "State", "train_one_epoch", "step", "evaluate_epoch", "EpochMeter", "LOG_EVERY"]

LOG_EVERY = 10  # steps between progress-bar updates and, on a GPU, reads of the non-finite loss flag


# -------------------------------------------------------------------------------- the run
def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` with ``config.method``; returns the final metrics.

    Writes the run directory (:mod:`mixlab.engine.writer`: ``checkpoint.pt`` every epoch and
    every ``run.checkpoint_every`` steps,
    ``metrics.csv`` / ``metrics.jsonl``, ``curves.png``, ``samples.png``, ``config.yaml``, the
    method's figures); nothing before the first checkpoint, and a run that fails before it removes
    the directories it created.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) it joins the process group (and leaves it at
    the end, unless the caller had set it up) and trains data-parallel: every rank returns the
    same metrics, which cover all processes; rank 0 alone writes the run directory.

    Returns:
        the last epoch's row: ``epoch``, ``step``, ``lr``, ``train_loss``, ``train_acc`` (%, when
        the method gives logits), ``train_<log>`` for each of the method's logs, ``test_acc1``,
        ``test_acc5`` (%), ``test_nll``, ``ema_test_*`` (with an EMA) or ``knn_acc1``
        (self-supervised), ``epoch_time`` (training and test pass), ``train_time``,
        ``images_per_s`` (all processes together); plus ``run_dir`` and ``checkpoint`` (paths).

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
    writer = None
    try:
        state = setup(config, info)
        writer = RunWriter(config, info, resumed=state.resumed_from)
        writer.start(state)

        def save() -> None:  # a mid-epoch checkpoint (run.checkpoint_every)
            writer.write_checkpoint(checkpoint(state))
            barrier()

        for epoch in range(state.start_epoch, state.end_epoch):
            t0 = time.perf_counter()
            row, images = train_one_epoch(state, epoch, save)
            train_time = time.perf_counter() - t0
            row.update(evaluate_epoch(state, epoch))
            row.update(epoch_time=time.perf_counter() - t0, train_time=train_time, images_per_s=images / train_time)
            state.history.append(row)
            writer.write_epoch(state, row, checkpoint(state))
            barrier()  # the checkpoint of this epoch is complete before any rank goes on
        writer.close()
    except BaseException:
        if writer is not None:
            writer.discard()  # a run that failed before its first checkpoint leaves no directory behind
        raise
    finally:
        torch.set_num_threads(threads)  # run.threads applies to the run only
        if owns_group:
            cleanup()
    final = dict(state.history[-1]) if state.history else {}
    final.update({"run_dir": str(writer.path), "checkpoint": str(writer.path / CHECKPOINT_NAME)})
    return final


# -------------------------------------------------------------------------------- what it trains with
@dataclass
class State:
    """Everything a run trains with (:func:`setup`), and where it stands."""

    cfg: TrainConfig
    info: DistInfo
    data: RunData
    num_classes: int
    model: nn.Module
    method: Method
    step_module: nn.Module  # runs method.training_step(model, ...): DistributedDataParallel / compiled (run.compile)
    generators: dict[str, torch.Generator]  # "method" (mixing), "loader" (worker seeds), "augment" (device path)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None
    autocast: Callable[[], Any]  # mixed precision on a GPU (run.amp), else nullcontext
    amp_dtype: torch.dtype | None
    watch: LossWatch
    steps_per_epoch: int
    start_epoch: int = 0
    step: int = 0  # optimizer steps taken
    epoch_step: int = 0  # steps taken in the epoch in progress (where a mid-epoch checkpoint resumes)
    meter: EpochMeter | None = None  # the training sums of the epoch in progress
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    resumed_from: str | None = None  # the checkpoint file the run continues
    last_checkpoint: str | None = None  # where the newest checkpoint stands ("epoch 3"), for messages
    samples: tuple[Tensor, Tensor] | None = None  # the mixed batch of step preview_at, for samples.png

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.epochs * self.steps_per_epoch

    @property
    def end_epoch(self) -> int:
        """The epoch count this run stops at (``run.stop_epoch`` or ``optim.epochs``)."""
        return min(self.cfg.optim.epochs, self.cfg.run.stop_epoch or self.cfg.optim.epochs)

    @property
    def preview_at(self) -> int:
        """The step whose batch ``samples.png`` draws (``method.preview_step``, within the run)."""
        return min(self.method.preview_step, self.total_steps - 1)


def setup(cfg: TrainConfig, info: DistInfo, splits: tuple[Any, Any] | None = None) -> State:
    """Seeds, data, model (SyncBatchNorm with ``run.sync_bn``), method, optimizer, AMP, EMA and the
    step module (DDP, compiled with ``run.compile``) of a run (in this order, which the RNG streams
    depend on), every state restored from ``run.resume`` when set; writes nothing.
    ``splits``: the (train, test) splits of ``cfg`` (:func:`~mixlab.engine.data.load_datasets`'s),
    built once for many runs on the same data (``benchmarks/gpu.py``); default: built here.

    Raises:
        ValueError, FileNotFoundError: see :func:`train`.
    """
    validate_config(cfg)
    is_dense = dense.is_dense(cfg)  # segmentation / detection: their data, model, step and metric (engine.dense)
    if is_dense:
        registry.check_dense_method(cfg.data.task, cfg.method.name, cfg.method.params)
    else:
        registry.check_names(cfg.method.name, cfg.method.params, cfg.model.name, cfg.data.name)
    d, o, r = cfg.data, cfg.optim, cfg.run
    device, on_gpu = info.device, info.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))  # the processes torchrun put on this machine
    # 0: every core of this process's share. Loader workers that crop and flip in-memory images need
    # little CPU; leaving them whole cores halved the default run's compute on 2 cores (7.3 s an epoch
    # against 4.4 s); set run.threads lower when the workers decode JPEGs on a CPU-bound machine.
    torch.set_num_threads(r.threads or max(1, cores))
    random.seed(r.seed + info.rank)
    np.random.seed(r.seed + info.rank)
    torch.manual_seed(r.seed + info.rank)

    ckpt = None
    if r.resume:
        barrier()  # (rank 0 of an earlier run in this process group wrote it before a barrier too)
        ckpt = load_checkpoint(r.resume)
        check_resumable(ckpt, cfg)
        check_epochs_left(ckpt, cfg)
    if not is_dense:  # (a dense model's name is checked when it is built)
        registry.check_names(model=cfg.model.name, model_kwargs=cfg.model.kwargs)  # after the checkpoint's diffs

    if splits is None:
        splits = dense.datasets(cfg, info.world_size) if is_dense else load_datasets(cfg, info)
    train_set, test_set = splits
    num_classes = train_set.num_classes
    if ckpt is not None and ckpt["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {ckpt['path']} has {ckpt['num_classes']} classes, dataset "
                              f"{d.name!r} has {num_classes}")
    model = (dense.build_model(cfg, num_classes, train_set.mean, train_set.std) if is_dense
             else registry.build_model(cfg.model.name, num_classes, **cfg.model.kwargs)).to(device)
    if cfg.model.init and ckpt is None:  # a pre-trained backbone (fine-tuning); resuming loads everything below
        init_from_checkpoint(dense.init_target(model, cfg) if is_dense else model, cfg.model.init)
    if r.channels_last:  # ~1.5x faster on CPU too (oneDNN), measured on resnet_small
        model = model.to(memory_format=torch.channels_last)
    if r.sync_bn:  # before the method copies the model (momentum encoders normalise like it)
        model = sync_batchnorm(model, info)
    broadcast_tensors(model.state_dict().values())  # every rank starts from rank 0's initial weights
    method = (dense.build_method(cfg, num_classes, getattr(train_set, "ignore_index", 255)) if is_dense else
              registry.build_method(cfg.method.name, num_classes, cfg.method.label_smoothing,
                                    **cfg.method.params)).to(device)
    generators = rank_generators(r.seed, info.rank, augment=not is_dense and wants_device_augment(cfg, device))
    method.setup(model, generators["method"])
    broadcast_tensors(method.state_dict().values())
    data = (dense.run_data(cfg, info, train_set, test_set, method, generators["loader"]) if is_dense else
            run_data(cfg, info, train_set, test_set, method, generators["loader"], generators.get("augment")))

    optimizer = build_optimizer(model, method, o)
    amp = {"auto": "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "none"}.get(r.amp, r.amp)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if on_gpu else None
    ema = None
    if cfg.model.ema_decay > 0:  # updated on every rank: the weights are the same everywhere
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.model.ema_decay), use_buffers=True)
    state = State(cfg=cfg, info=info, data=data, num_classes=num_classes, model=model, method=method,
                  step_module=build_step_module(model, method, info, compile=r.compile),  # before restore()
                  generators=generators, optimizer=optimizer, ema=ema,
                  scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                  autocast=partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype else nullcontext,
                  amp_dtype=amp_dtype, steps_per_epoch=len(data.train_loader),
                  # on the CPU of a single process reading the flag is free: every step
                  watch=LossWatch(device, every=1 if device.type == "cpu" and not info.distributed else LOG_EVERY))
    if ckpt is not None:
        restore(state, ckpt)
    return state


def restore(state: State, ckpt: dict[str, Any]) -> None:
    """Every state of the checkpoint into ``state``, the RNGs last (each rank its own)."""
    info, path = state.info, ckpt["path"]
    rank = info.rank
    check_mid_epoch(ckpt, state.steps_per_epoch)

    def load(what: str, fn: Callable[[], Any]) -> None:
        load_state(fn, f"checkpoint {path}: cannot load the saved {what} into this run")

    load("model weights", lambda: state.model.load_state_dict(ckpt["model"]))
    own = ckpt.get("method_per_rank") or []  # each rank's own history (RecursiveMix)
    own = own[rank] if rank < len(own) else {}
    load("method state", lambda: state.method.load_state_dict({**ckpt["method"], **own}))
    load("optimizer state", lambda: state.optimizer.load_state_dict(ckpt["optimizer"]))
    load("AMP scaler state", lambda: state.scaler.load_state_dict(ckpt["scaler"]))
    if state.ema is not None and ckpt["ema"] is not None:
        load("EMA weights", lambda: state.ema.load_state_dict(ckpt["ema"]))
    saved = ckpt.get("rng_per_rank") or [ckpt["rng"]]
    if len(saved) != info.world_size and info.is_main:
        print(f"mixlab: note: {path} was written by {len(saved)} process(es) and this run has "
              f"{info.world_size}: training continues, but not bit for bit (data shards and RNG streams differ)",
              flush=True)
    if rank < len(saved):
        load("RNG states", lambda: set_rng_state(saved[rank], state.generators))
    state.start_epoch, state.step, state.history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
    state.epoch_step = ckpt.get("epoch_step", 0)
    state.resumed_from, state.last_checkpoint = path, _position(state)
    if state.epoch_step:  # mid-epoch: the epoch goes on from there, with its sums and pending picture
        sums = ckpt["epoch_sums"]  # one per rank; a run on another number of processes: rank 0 takes all
        state.meter = EpochMeter(info.device)
        state.meter.load_state_dict(*(sums[rank:rank + 1] if len(sums) == info.world_size else
                                      sums if info.is_main else []))
        state.samples = ckpt["samples"] if info.is_main else None


def _position(state: State) -> str:
    """Where ``state`` stands, as its checkpoint would say it: ``epoch 3`` or ``step 12, in epoch 4``."""
    done = state.history[-1]["epoch"] if state.history else 0
    return f"step {state.step}, in epoch {done + 1}" if state.epoch_step else f"epoch {done}"


def checkpoint(state: State) -> dict[str, Any] | None:
    """The checkpoint of ``state`` as it stands, on rank 0 (``None`` elsewhere): after the last epoch
    of ``state.history``, or mid-epoch (``state.epoch_step > 0``: then with every rank's partial sums
    of the epoch and the pending ``samples.png`` batch). Every rank's RNG states (and per-rank method
    state) go into it; the weights must be the same on every rank. Records the position in
    ``state.last_checkpoint``."""
    info, method, model = state.info, state.method, state.model
    own = method.per_rank_state() if info.distributed else {}
    sums = state.meter.state_dict() if state.epoch_step else None
    gathered = all_gather_object((rng_state(state.generators), weights_fingerprint(model) if info.distributed else "",
                                  {k: v.cpu() for k, v in own.items()}, sums))
    state.last_checkpoint = _position(state)
    if len({f for _, f, _, _ in gathered}) > 1:
        raise RuntimeError(f"the model weights differ across processes at {state.last_checkpoint} "
                           f"({[f for _, f, _, _ in gathered]}); this is a bug in the synchronisation")
    if not info.is_main:
        return None
    mid = state.epoch_step > 0
    return {"epoch": state.history[-1]["epoch"] if state.history else 0, "step": state.step,
            "epoch_step": state.epoch_step, "steps_per_epoch": state.steps_per_epoch,
            "config": config_to_dict(state.cfg),
            "num_classes": state.num_classes, "model": model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict(), "ema": state.ema.state_dict() if state.ema is not None else None,
            "method": method.state_dict(), "rng": gathered[0][0],
            "rng_per_rank": [g for g, _, _, _ in gathered] if info.distributed else None,
            "method_per_rank": [m for _, _, m, _ in gathered] if own else None,
            "epoch_sums": [s for _, _, _, s in gathered] if mid else None, "samples": state.samples if mid else None,
            "world_size": info.world_size, "history": state.history}


# -------------------------------------------------------------------------------- one epoch
class EpochMeter:
    """The training sums of one epoch, added up on the device without a host-device sync: the loss
    and each of the method's logs weighted by the batch size (logs given as Python floats are added
    on the host), the correct predictions, the images."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: dict[str, None] = {}  # in order of first appearance
        self.sums: dict[str, Tensor] = {}  # float64 on the device
        self.host: dict[str, float] = {}
        self.correct: Tensor | int = 0
        self.seen = 0

    def update(self, out: StepOutput, labels: Any) -> None:
        b = len(labels)  # (B,) labels, (B, H, W) label maps or B detection targets
        for key, value in (("loss", out.loss), *out.logs.items()):
            self.keys[key] = None
            if isinstance(value, Tensor):  # (a CPU log on a GPU run is copied without waiting)
                value = value.detach().double().to(self.device, non_blocking=True) * b
                self.sums[key] = self.sums[key] + value if key in self.sums else value
            else:  # as torch.as_tensor reads it: a float32 value
                self.host[key] = self.host.get(key, 0.0) + float(torch.as_tensor(value).double()) * b
        if out.logits is not None and out.logits.shape[0] == b:
            target = out.mixed.targets.argmax(1) if out.mixed is not None else labels
            self.correct += (out.logits.argmax(1) == target).sum()
        self.seen += b

    def state_dict(self) -> dict[str, Any]:
        """The sums so far, on the CPU (for a mid-epoch checkpoint; reads the device)."""
        correct = self.correct.cpu() if isinstance(self.correct, Tensor) else self.correct
        return {"keys": list(self.keys), "sums": {k: v.cpu() for k, v in self.sums.items()}, "host": dict(self.host),
                "correct": correct, "seen": self.seen}

    def load_state_dict(self, *states: dict[str, Any]) -> None:
        """Add the sums of ``states`` (:meth:`state_dict`'s) to these: this process's own, or all the
        processes' of a run that had more of them."""
        for s in states:
            self.keys.update(dict.fromkeys(s["keys"]))
            for k, v in s["sums"].items():
                v = v.to(self.device)
                self.sums[k] = self.sums[k] + v if k in self.sums else v
            for k, v in s["host"].items():
                self.host[k] = self.host.get(k, 0.0) + v
            correct = s["correct"]
            self.correct = self.correct + (correct.to(self.device) if isinstance(correct, Tensor) else correct)
            self.seen += s["seen"]

    def mean_loss(self) -> float:
        """This process's mean training loss so far (reads the device: for the progress bar)."""
        return float(self.sums["loss"]) / self.seen

    def reduce(self) -> tuple[dict[str, float], float | None, int]:
        """The epoch's sums over every process: ``({key: sum / images}, correct / images or None,
        images)``; keys a method logged on only some ranks count as 0 on the others."""
        keys = list(dict.fromkeys(k for ks in all_gather_object(list(self.keys)) for k in ks))  # rank 0's order first
        f64 = dict(device=self.device, dtype=torch.float64)
        zero = torch.zeros((), **f64)
        totals = torch.stack([*(self.sums.get(k, zero) + self.host.get(k, 0.0) for k in keys),
                              torch.as_tensor(self.correct, device=self.device).double(),
                              torch.tensor(float(self.seen), **f64),
                              torch.tensor(float(isinstance(self.correct, Tensor)), **f64)])
        *values, correct, seen, with_logits = all_reduce_sum(totals).tolist()
        return ({k: v / seen for k, v in zip(keys, values)}, correct / seen if with_logits > 0 else None,
                round(seen))


def step(state: State, images: Any, labels: Tensor) -> StepOutput:
    """One optimisation step of the loop on a batch already on the device: the lr of this step,
    :func:`~mixlab.engine.optim.train_step`, the EMA update, the loss watch. Waits for nothing."""
    cfg = state.cfg
    set_lr(state.optimizer, lr_factor(state.step, state.steps_per_epoch, cfg.optim))
    out = train_step(state.model, state.method, state.optimizer, (images, labels), state.step / state.total_steps,
                     scaler=state.scaler, clip_grad=cfg.optim.clip_grad, autocast=state.autocast,
                     step_module=state.step_module)
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.watch.update(out.loss.detach(), state.step)
    return out


def train_one_epoch(state: State, epoch: int, save: Callable[[], None] | None = None
                    ) -> tuple[dict[str, Any], int]:
    """One pass over this process's training shard, or what is left of it after a mid-epoch
    checkpoint (``state.epoch_step > 0``: the sums and the method's state are the checkpoint's, and
    ``method.on_epoch_start`` was called before it).

    Args:
        save: writes a checkpoint of ``state``; called every ``run.checkpoint_every`` optimizer
            steps (counted over the run) that do not end the epoch, once the loss was found finite.

    Returns:
        the epoch's row (``epoch``, ``step``, ``lr``, ``train_<log>`` means over every process and
        the whole epoch, ``train_acc``), and the images all processes trained on in this call.

    Raises:
        TrainingDivergedError: a non-finite training loss (found at the next read of the flag).
    """
    from tqdm.auto import tqdm

    cfg, info, data, method = state.cfg, state.info, state.data, state.method
    state.model.train()
    method.train()
    done = state.epoch_step
    if done == 0:
        method.on_epoch_start(epoch)
        state.meter = EpochMeter(info.device)
    meter = state.meter
    data.sampler.set_epoch(epoch, start=done * cfg.data.batch_size)  # skips what the checkpoint trained on
    loader = state.generators["loader"]
    drawn = loader.get_state()
    batches = iter(data.train_loader)  # draws the workers' base seed from the loader generator
    if done > 0 or (state.resumed_from is not None and epoch == state.start_epoch
                    and data.train_loader.persistent_workers):
        loader.set_state(drawn)  # a draw the uninterrupted run did not make here: its stream goes on as it did
    epoch_end = state.step - done + state.steps_per_epoch
    every = cfg.run.checkpoint_every if save is not None else 0
    bar = tqdm(batches, total=state.steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=not (cfg.run.progress and info.is_main), leave=False, dynamic_ncols=True)
    for batch in bar:
        images, labels = data.train_inputs(batch)  # images (B, C, H, W) float, or a list of views; on the device
        out = step(state, images, labels)
        meter.update(out, labels)
        # samples.png; a multi-view batch (self-supervised): its first view
        if state.step == state.preview_at and info.is_main and method.draws_samples:
            first = images if isinstance(images, Tensor) else images[0]
            state.samples = preview_batch(method, out, first[:16], labels[:16])
        state.step += 1
        state.epoch_step += 1
        save_now = every > 0 and state.step % every == 0 and state.step != epoch_end
        if save_now or state.watch.due(state.step, end_of_epoch=state.step == epoch_end):
            bad = state.watch.bad(info.distributed)
            if bad is not None:
                bar.close()
                raise state.watch.error(bad, state.steps_per_epoch, cfg, state.amp_dtype, state.last_checkpoint)
        if save_now:
            save()
        if cfg.run.progress and info.is_main and state.step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{meter.mean_loss():.3f}", lr=f"{state.optimizer.param_groups[0]['lr']:.3g}")
    means, acc, _ = meter.reduce()  # every process's sums, weighted by images
    state.epoch_step, state.meter = 0, None
    row: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "lr": state.optimizer.param_groups[0]["lr"]}
    row.update({f"train_{k}": v for k, v in means.items()})
    if acc is not None:
        row["train_acc"] = 100.0 * acc
    return row, (state.steps_per_epoch - done) * cfg.data.batch_size * info.world_size  # full batches (drop_last)


def evaluate_epoch(state: State, epoch: int) -> dict[str, Any]:
    """The test keys of the epoch's row, every ``run.eval_every`` epochs and after the last (else
    none): the kNN monitor's ``knn_acc1`` for a self-supervised method (rank 0 reads every image),
    else ``test_acc1``, ``test_acc5``, ``test_nll`` (and ``ema_test_*``) over the sharded test set."""
    cfg, info, data, device = state.cfg, state.info, state.data, state.info.device
    if (epoch + 1) % cfg.run.eval_every != 0 and epoch + 1 != state.end_epoch:
        return {}
    if registry.is_self_supervised(state.method):
        def monitor() -> float:  # on rank 0, over every image
            whole, on_gpu = DistInfo(rank=0, world_size=1, local_rank=0, device=device), device.type == "cuda"
            bank, queries = (test_loader(s, cfg, whole, on_gpu) for s in (data.monitor_set, data.test_set))
            return knn_monitor(state.model, bank, queries, device, data.train_set.mean, data.train_set.std,
                               state.num_classes)

        return {"knn_acc1": on_main(monitor, info)}
    reduce = all_reduce_sum if info.distributed else None
    row = {}
    for prefix, model in (("test_", state.model), ("ema_test_", state.ema.module if state.ema is not None else None)):
        if model is not None:
            results = (dense.evaluate(cfg, model, data, info, state.autocast) if dense.is_dense(cfg) else
                       metrics.evaluate(model, data.test_loader, device, data.preprocess, state.autocast, reduce))
            row.update({prefix + k: v for k, v in results.items() if k not in ("n", "iou")})
    return row
