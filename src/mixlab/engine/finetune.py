"""Fine-tuning of a pre-trained backbone with a fraction of the labels: ``finetune`` (``mixlab finetune RUN``).

    mixlab finetune runs/mocov2-resnet_small-imagefolder-20250101-120000 --fraction 0.1
    mixlab finetune runs/x --fraction 0.01 --epochs 60 --lr 0.003

    from mixlab.engine.finetune import finetune
    results = finetune("runs/x", fraction=0.1, progress=False)
    print(results["top1"])

The semi-supervised evaluation of self-supervised pre-training (the CropMix paper's MoCo v2
columns with 1 % and 10 % of the labels, §5; MAE's fine-tuning, §6): the whole network starts
from the run's model weights, with a freshly initialised classifier, and is trained end to end with
labels on a class-balanced ``fraction`` of the run's own training images, then tested on its test
split. It is an ordinary training run (``mixlab train`` with ``model.init`` = the checkpoint and
``data.train_per_class`` = the fraction's share), in ``<run dir>/finetune-<pct>pct/``, so it has
the trainer's checkpoint, resume, metrics and plots; the summary goes to ``finetune.json`` there.

Choices where the papers leave the CPU-scale recipe open (each is an argument):

* the labelled subset: ``round(fraction × n)`` images of every class, at least 1, where n is the
  per-class count of the pre-training set (``data.train_per_class``, else the smallest class of the
  training split); drawn with the run's seed, so the 1 % subset lies inside the 10 % one and inside
  the pre-training images;
* the recipe: AdamW, lr 1e-3, weight decay 0.05, one warm-up epoch, cosine to 0, 30 epochs, the
  engine's random crop + flip, plain cross-entropy (``method="vanilla"``), the head at the trunk's
  lr (``head_lr_scale`` gives it more, as the CropMix paper's MoCo v2 fine-tuning); batch
  ``min(batch_size, labelled images)`` (the last incomplete batch of an epoch is dropped, as in
  training). BatchNorm layers train (their statistics adapt to the labelled images);
* the test pass runs once, after the last epoch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from mixlab import registry
from mixlab.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mixlab.engine.config import apply_overrides, check_value, config_to_dict, validate_config
from mixlab.engine.data import build_split
from mixlab.engine.distributed import resolve_device
from mixlab.engine.eval_run import open_checkpoint
from mixlab.engine.loop import train

__all__ = ["finetune", "finetune_dir", "labelled_per_class", "FINETUNE_JSON"]

FINETUNE_JSON = "finetune.json"


def finetune_dir(path: str | os.PathLike, fraction: float) -> Path:
    """``<run dir>/finetune-<pct>pct``: where :func:`finetune` of ``fraction`` writes its run."""
    p = Path(path)
    run_dir = p if p.is_dir() else p.parent
    return run_dir / f"finetune-{100 * fraction:g}pct"


def labelled_per_class(cfg, fraction: float) -> int:
    """``max(1, round(fraction × n))``: labelled images per class, n the run's per-class training
    count (``data.train_per_class``, else the smallest class of the training split)."""
    n = cfg.data.train_per_class
    if n is None:
        n = int(torch.bincount(torch.as_tensor(build_split(cfg, "train").labels)).min())
    return max(1, round(fraction * n))


def finetune(path: str | os.PathLike, *, fraction: float = 0.1, epochs: int = 30, lr: float = 1e-3,
             optimizer: str = "adamw", weight_decay: float = 0.05, head_lr_scale: float = 1.0, batch_size: int = 128,
             method: str = "vanilla", seed: int | None = None, device: str = "auto", progress: bool = True,
             data_root: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Fine-tune the checkpoint at ``path`` with ``fraction`` of the labels; write its run directory
    (``finetune_dir(path, fraction)``) and ``finetune.json`` there. See the module docstring.

    A finished fine-tuning of the same settings is not redone (its ``finetune.json`` is returned);
    an interrupted one resumes from its checkpoint.

    Args:
        path: a run directory (its ``checkpoint.pt``) or a checkpoint file: any run whose model can
            start a classifier (self-supervised pre-training, or a supervised run).
        fraction: share of the labelled training images, in (0, 1].
        epochs: fine-tuning epochs (>= 1).
        lr: peak learning rate (> 0), one warm-up epoch then cosine to 0.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        weight_decay: >= 0, not on biases and norms.
        head_lr_scale: the fresh classifier's lr as a multiple of ``lr`` (> 0; the CropMix paper's
            MoCo v2 fine-tuning: 20 with 10 % of the labels, 250 with 1 %).
        batch_size: at most this many images per step (>= 2); fewer when the labelled set is smaller.
        method: the training method of the fine-tuning (a name of ``mixlab list``; default plain CE).
        seed: the run's seed (default: the pre-training run's): the labelled subset, init and order.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        progress: tqdm bars.
        data_root: where the dataset is now, if it moved since pre-training.
        overrides: more ``key=value`` config overrides of the fine-tuning run (``run.threads=1``).

    Returns:
        ``{"checkpoint" (the pre-trained one), "pretrain_epoch", "fraction", "per_class",
        "train_images", "epochs", "lr", "optimizer", "weight_decay", "head_lr_scale", "batch_size",
        "method", "seed", "top1", "top5",
        "nll" (test split, last epoch), "seconds", "run_dir", "finetune_json"}``.

    Raises:
        ValueError: an argument out of its range (named), before any work; the checkpoint or its
            dataset cannot be loaded; its model cannot be initialised from it.
    """
    real = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    check_value(real(fraction) and 0 < fraction <= 1, "fraction", "a number in (0, 1]", fraction)
    check_value(integer(epochs) and epochs >= 1, "epochs", "an integer >= 1", epochs)
    check_value(real(lr) and lr > 0, "lr", "a finite number > 0", lr)
    check_value(optimizer in ("adamw", "sgd"), "optimizer", "'adamw' or 'sgd'", optimizer)
    check_value(real(weight_decay) and weight_decay >= 0, "weight_decay", "a number >= 0", weight_decay)
    check_value(real(head_lr_scale) and head_lr_scale > 0, "head_lr_scale", "a finite number > 0", head_lr_scale)
    check_value(integer(batch_size) and batch_size >= 2, "batch_size", "an integer >= 2", batch_size)
    check_value(seed is None or (integer(seed) and seed >= 0), "seed", "None or an integer >= 0", seed)
    check_value(isinstance(progress, bool), "progress", "True or False", progress)
    resolve_device(device, what="device")
    registry.check_names(method=method)
    t0 = time.perf_counter()
    ckpt_path, ckpt, pre = open_checkpoint(path, data_root)
    per_class = labelled_per_class(pre, fraction)
    cfg = copy.deepcopy(pre)
    cfg.model.init, cfg.model.ema_decay = str(ckpt_path), 0.0
    cfg.method.name, cfg.method.params, cfg.method.label_smoothing = method, {}, 0.0
    cfg.data.train_per_class, cfg.data.augment = per_class, "crop-flip"
    cfg.data.batch_size = min(batch_size, per_class * ckpt["num_classes"])
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.epochs = optimizer, float(lr), float(weight_decay), epochs
    cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.betas = 0.9, True, (0.9, 0.999)
    cfg.optim.warmup_epochs, cfg.optim.schedule, cfg.optim.min_lr, cfg.optim.clip_grad = 1.0, "cosine", 0.0, 0.0
    cfg.optim.head_lr_scale = float(head_lr_scale)
    cfg.run.seed = pre.run.seed if seed is None else seed
    cfg.run.device, cfg.run.progress, cfg.run.tensorboard = device, progress, False
    cfg.run.eval_every, cfg.run.stop_epoch = epochs, None
    apply_overrides(cfg, overrides)
    out = finetune_dir(ckpt_path, fraction)
    cfg.run.out, cfg.run.resume = str(out), None
    validate_config(cfg)
    settings = {"checkpoint": str(ckpt_path), "pretrain_epoch": ckpt["epoch"], "fraction": float(fraction),
                "per_class": per_class, "epochs": epochs, "lr": float(lr), "optimizer": optimizer,
                "weight_decay": float(weight_decay), "head_lr_scale": float(head_lr_scale), "batch_size": batch_size,
                "method": method, "seed": cfg.run.seed}
    done = _finished(out, settings)
    if done is not None:
        return done
    final = None
    if (out / CHECKPOINT_NAME).is_file():  # interrupted: resume it if it is this fine-tuning, else start afresh
        saved = load_checkpoint(out)
        old, new = saved["config"], config_to_dict(cfg)
        same = all(old.get(k) == new[k] for k in ("data", "model", "optim", "method"))
        if same and old["run"]["seed"] == cfg.run.seed and saved["epoch"] >= epochs:
            final = dict(saved["history"][-1])  # trained to the end, stopped before its summary was written
        elif same and old["run"]["seed"] == cfg.run.seed:
            cfg.run.resume = str(out)
        else:
            (out / CHECKPOINT_NAME).unlink()
    if final is None:
        final = train(cfg)
    results = {**settings, "train_images": per_class * ckpt["num_classes"], "top1": final["test_acc1"],
               "top5": final["test_acc5"], "nll": final["test_nll"], "seconds": round(time.perf_counter() - t0, 2),
               "run_dir": str(out), "finetune_json": str(out / FINETUNE_JSON)}
    tmp = out / f".{FINETUNE_JSON}.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / FINETUNE_JSON)
    return results


def _finished(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved results when ``out`` holds a finished fine-tuning with these settings."""
    try:
        saved = json.loads((out / FINETUNE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return saved if all(saved.get(k) == v for k, v in settings.items()) else None
