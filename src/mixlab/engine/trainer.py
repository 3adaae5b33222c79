"""The training loop: ``train(config) -> dict`` of final metrics.

    mixlab train                                      # the README's default run, a few minutes on a CPU
    mixlab train --method mixup --epochs 30 --set optim.lr=0.05
    mixlab train --model resnet18 --dataset imagefolder --data-root ../shared/data/cifar10-jpeg.zip
    mixlab train --resume runs/cutmix-resnet_small-synthetic-20250101-120000

    from mixlab.engine import TrainConfig, train
    metrics = train(TrainConfig())

The trainer knows nothing about any method: each step it calls ``method.training_step`` (the loss),
steps the optimizer, then ``method.after_optimizer_step`` (see ``mixlab.methods.base``). Reading
order: the small helpers, :func:`train_step`, then :func:`train` top to bottom.

Randomness: the global RNGs are seeded once from ``seed + rank``; the engine owns one
``torch.Generator`` per purpose (data order, the method's mixing, the loader), and each image's
augmentation is seeded from ``(seed, epoch, index)``, so a run does not depend on the number of
workers, and a resumed run continues bit for bit on the CPU.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mixlab import registry
from mixlab.engine.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, rng_state, save_checkpoint,
                                      set_rng_state)
from mixlab.engine.config import TrainConfig, config_to_dict, validate_config
from mixlab.engine.metrics import evaluate, write_metrics
from mixlab.engine.plots import plot_curves, plot_samples
from mixlab.methods.base import Method, StepOutput

__all__ = ["train", "train_step", "build_optimizer", "lr_factor", "set_lr", "default_run_dir", "EpochSampler",
           "SeededItems"]


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


def _prepare_run_dir(path: Path) -> None:
    """Create the run directory and prove it is writable, or raise ``ValueError``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"run directory {path} is not writable: {e.strerror or e}") from None


class EpochSampler(Sampler):
    """Shuffled indices, a deterministic function of ``(seed, epoch)``; yields ``(epoch, index)``
    so that :class:`SeededItems` can seed each image's augmentation. Call ``set_epoch`` first."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        return ((self.epoch, i) for i in order.tolist())


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
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
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
) -> StepOutput:
    """One optimisation step: the method's loss, backward, clipping, step, the method's update.

    Gradients are zeroed *after* ``training_step``, so a method may run its own backward passes
    inside it (PuzzleMix's input gradient) without cleaning up.
    """
    with autocast():
        out = method.training_step(model, batch, progress)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(out.loss).backward()
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        out.loss.backward()
        if clip_grad > 0:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
        optimizer.step()
    method.after_optimizer_step(model, progress)
    return out


def _datasets(cfg: TrainConfig):
    """The train and test splits (+ the class-balanced subset of the train split, if asked)."""
    d = cfg.data
    def synthetic(n: int) -> dict[str, Any]:  # the synthetic set's size; other datasets take only a root
        return {"num_per_class": n, "image_size": d.image_size, "seed": cfg.run.seed} if d.name == "synthetic" else {}

    train_set = registry.build_dataset(d.name, "train", root=d.root, **synthetic(d.num_per_class))
    test_set = registry.build_dataset(d.name, "test", root=d.root, **synthetic(d.test_per_class))
    if d.train_per_class is not None:
        from mixlab.data import class_balanced_subset

        train_set = train_set.subset(class_balanced_subset(train_set.labels, d.train_per_class, seed=cfg.run.seed,
                                                          classes=train_set.classes))
    for split, ds in (("train", train_set), ("test", test_set)):
        if len(ds) == 0:
            raise ValueError(f"the {split} split of dataset {d.name!r} (root {d.root}) is empty")
    if len(train_set) < d.batch_size:
        raise ValueError(f"data.batch_size={d.batch_size} is larger than the training set ({len(train_set)} images); "
                         f"lower --batch-size")
    return train_set, test_set


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


# -------------------------------------------------------------------------------- the loop
def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` with ``config.method``; returns the final metrics.

    The run directory receives ``checkpoint.pt`` (every epoch), ``metrics.csv`` / ``metrics.jsonl``
    (one row per epoch), ``curves.png``, ``samples.png`` and ``config.yaml``.

    Returns:
        the last epoch's row: ``epoch``, ``step``, ``lr``, ``train_loss``, ``train_acc`` (%, when
        the method gives logits), ``train_<log>`` for each of the method's logs, ``test_acc1``,
        ``test_acc5`` (%), ``test_nll``, ``ema_test_*`` (with an EMA), ``epoch_time``,
        ``images_per_s``; plus ``run_dir`` and ``checkpoint`` (paths).

    Raises:
        ValueError (``CheckpointError`` is one), FileNotFoundError: anything wrong with the inputs
            (config values, names, dataset path, resume checkpoint, run directory), before the
            first step.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)  # run.threads applies to the run only


def _train(cfg: TrainConfig) -> dict[str, Any]:
    validate_config(cfg)
    registry.check_names(cfg.method.name, cfg.method.params, cfg.model.name, cfg.data.name)
    d, o, r = cfg.data, cfg.optim, cfg.run
    rank = int(os.environ.get("RANK", 0))
    device = resolve_device(r.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(r.threads or max(1, cores - d.num_workers))  # spare cores for the loader's workers
    random.seed(r.seed + rank)
    np.random.seed(r.seed + rank)
    torch.manual_seed(r.seed + rank)

    ckpt = None
    if r.resume:
        ckpt = load_checkpoint(r.resume)
        _check_resumable(ckpt, cfg)

    # ---- data, model, method
    train_set, test_set = _datasets(cfg)
    num_classes = train_set.num_classes
    if ckpt is not None and ckpt["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {ckpt['path']} has {ckpt['num_classes']} classes, dataset "
                              f"{d.name!r} has {num_classes}")
    model = registry.build_model(cfg.model.name, num_classes, **cfg.model.kwargs).to(device)
    if r.channels_last:  # ~1.5x faster on CPU too (oneDNN), measured on resnet_small
        model = model.to(memory_format=torch.channels_last)
    method = registry.build_method(cfg.method.name, num_classes, cfg.method.label_smoothing,
                                   **cfg.method.params).to(device)
    generators = {"method": torch.Generator().manual_seed(_mix_seed(r.seed, rank, 1)),
                  "loader": torch.Generator().manual_seed(_mix_seed(r.seed, rank, 2))}
    method.setup(model, generators["method"])
    train_transform, test_transform = _transforms(train_set, cfg)
    train_set = train_set.with_transform(method.train_transform(train_transform))
    test_set = test_set.with_transform(test_transform)
    preprocess = _normalizer(train_set.mean, train_set.std, r.channels_last)

    sampler = EpochSampler(len(train_set), seed=_mix_seed(r.seed, rank, 3))
    from mixlab.data import seed_worker

    train_loader = DataLoader(SeededItems(train_set, seed=_mix_seed(r.seed, rank, 4)), batch_size=d.batch_size,
                              sampler=sampler, drop_last=True, num_workers=d.num_workers,
                              persistent_workers=d.num_workers > 0, pin_memory=on_gpu,
                              worker_init_fn=seed_worker, generator=generators["loader"])
    if test_set.transform is None:  # decoded uint8 tensors: plain slices, no loader needed
        test_loader = list(zip(test_set.images.split(d.eval_batch_size), test_set.labels.split(d.eval_batch_size)))
    else:
        test_loader = DataLoader(test_set, batch_size=d.eval_batch_size, num_workers=d.num_workers, pin_memory=on_gpu)

    # ---- optimisation
    optimizer = build_optimizer(model, method, o)
    amp = {"auto": "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "none"}.get(r.amp, r.amp)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if on_gpu else None
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype else nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if cfg.model.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.model.ema_decay), use_buffers=True)
    steps_per_epoch = len(train_loader)
    total_steps = o.epochs * steps_per_epoch

    # ---- resume: every state, then the RNGs last
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        path = ckpt["path"]
        _load_state("model weights", lambda: model.load_state_dict(ckpt["model"]), path)
        _load_state("method state", lambda: method.load_state_dict(ckpt["method"]), path)
        _load_state("optimizer state", lambda: optimizer.load_state_dict(ckpt["optimizer"]), path)
        _load_state("AMP scaler state", lambda: scaler.load_state_dict(ckpt["scaler"]), path)
        if ema is not None and ckpt["ema"] is not None:
            _load_state("EMA weights", lambda: ema.load_state_dict(ckpt["ema"]), path)
        _load_state("RNG states", lambda: set_rng_state(ckpt["rng"], generators), path)
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
    run_dir = Path(r.out) if r.out else Path(ckpt["path"]).parent if ckpt is not None else default_run_dir(cfg)
    if ckpt is None and (run_dir / CHECKPOINT_NAME).exists():
        raise ValueError(f"run directory {run_dir} already holds a {CHECKPOINT_NAME}; pass --resume {run_dir} "
                         f"to continue it, or choose another --out")
    _prepare_run_dir(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    writer = _tensorboard(run_dir) if r.tensorboard else None
    from tqdm.auto import tqdm

    print(f"mixlab: {cfg.method.name} | {cfg.model.name} | {d.name} ({len(train_set)} train / {len(test_set)} test, "
          f"{num_classes} classes) | {o.epochs} epochs x {steps_per_epoch} steps | {device} | run dir {run_dir}",
          flush=True)
    samples = None  # the run's first mixed batch, drawn in samples.png
    for epoch in range(start_epoch, min(o.epochs, r.stop_epoch or o.epochs)):
        model.train()
        method.train()
        method.on_epoch_start(epoch)
        sampler.set_epoch(epoch)
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=device, dtype=torch.float64))
        seen = correct = 0
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{o.epochs}", disable=not r.progress, leave=False,
                   dynamic_ncols=True)
        for images, labels in bar:
            images, labels = _to_device((images, labels), device, preprocess)  # images (B, C, H, W) float
            set_lr(optimizer, lr_factor(step, steps_per_epoch, o))
            out = train_step(model, method, optimizer, (images, labels), step / total_steps, scaler=scaler,
                             clip_grad=o.clip_grad, autocast=autocast)
            if ema is not None:
                ema.update_parameters(model)
            b = labels.shape[0]
            sums["loss"] += out.loss.detach().double() * b
            for k, v in out.logs.items():
                sums[k] += torch.as_tensor(v).detach().double().to(device) * b
            if out.logits is not None and out.logits.shape[0] == b:
                target = out.mixed.targets.argmax(1) if out.mixed is not None else labels
                correct += (out.logits.argmax(1) == target).sum()
            if step == 0 and isinstance(images, Tensor):
                samples = _preview(method, out, images[:16], labels[:16])
            seen += b
            step += 1
            if r.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'].item() / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        train_time = time.perf_counter() - t0

        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": float(v) / seen for k, v in sums.items()})
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training loss is {row['train_loss']} in epoch {epoch + 1}; lower optim.lr or "
                                     f"set optim.clip_grad (the last checkpoint was left untouched)")
        if isinstance(correct, Tensor):
            row["train_acc"] = 100.0 * float(correct) / seen
        row.update({f"test_{k}": v for k, v in evaluate(model, test_loader, device, preprocess, autocast).items()
                    if k != "n"})
        if ema is not None:
            row.update({f"ema_test_{k}": v for k, v in evaluate(ema.module, test_loader, device, preprocess,
                                                                autocast).items() if k != "n"})
        row.update({"epoch_time": time.perf_counter() - t0, "images_per_s": seen / train_time})
        history.append(row)

        save_checkpoint(run_dir / CHECKPOINT_NAME, {
            "epoch": epoch + 1, "step": step, "config": config_to_dict(cfg), "num_classes": num_classes,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "method": method.state_dict(),
            "rng": rng_state(generators), "history": history})
        write_metrics(run_dir, history)
        plot_curves(history, run_dir / "curves.png")
        if samples is not None:
            plot_samples(*samples, train_set.classes, run_dir / "samples.png", train_set.mean, train_set.std,
                         title=f"{cfg.method.name}: first training batch")
            samples = None
        if writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(k, v, epoch + 1)
        ema_text = f" (EMA {row['ema_test_acc1']:.1f}%)" if ema is not None else ""
        print(f"epoch {epoch + 1}/{o.epochs}  loss {row['train_loss']:.4f}  test top-1 {row['test_acc1']:.2f}%"
              f"{ema_text}  top-5 {row['test_acc5']:.2f}%  nll {row['test_nll']:.3f}  lr {row['lr']:.4g}  "
              f"{row['epoch_time']:.1f}s  {row['images_per_s']:.0f} img/s", flush=True)
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


def _preview(method: Method, out: StepOutput, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor] | None:
    """(images, soft targets) of the first batch: the step's own mix, else ``method.mix_preview``
    (with the method's generator restored afterwards, so the preview does not change training)."""
    if out.mixed is not None:
        return out.mixed.images[:16].detach().cpu(), out.mixed.targets[:16].detach().cpu()
    g = method.generator
    state = g.get_state() if g is not None else None
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        mixed = method.mix_preview(images, labels)
    if g is not None:
        g.set_state(state)
    if mixed is None:
        return images.detach().cpu(), labels.detach().cpu()
    return mixed.images.detach().cpu(), mixed.targets.detach().cpu()
