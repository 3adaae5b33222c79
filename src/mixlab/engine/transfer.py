"""Transfer a classification run's backbone to segmentation or detection: ``mixlab transfer``.

    mixlab transfer runs/cutmix-resnet_small-synthetic-20250101-120000 --task detection
    mixlab transfer runs/x --task segmentation --epochs 30 --set data.num_per_class=100

    from mixlab.engine.transfer import transfer
    metrics = transfer("runs/x", "segmentation")      # the last epoch's row: test_miou, ...

The papers' downstream experiments (RecursiveMix Tables 7-9, AutoMix Table 7, CropMix Table 3):
the run's classification model (mixlab's ResNets, staged ``timm:`` ResNets) becomes the backbone of
:mod:`mixlab.models.dense`'s segmenter (an FPN head) or detector (FCOS), its weights loaded from the
run's checkpoint (the classifier excepted: ``model.init``), and the whole model is fine-tuned on the
task's data with an ordinary ``mixlab train --task`` run (:func:`transfer_config` is that run's
config), then scored (mIoU / mAP, ``eval.json``).

Defaults (:data:`TRANSFER_DEFAULTS`): the synthetic shapes of the run's seed in a low-data regime,
sized for a CPU (segmentation: 32x32 images, 50 per class, 20 epochs; detection: 64x64 images with
up to 3 shapes, 30 per class, 10 epochs), vanilla fine-tuning (``--method`` mixes the fine-tuning
too). Anything else through ``--set`` (``data.name=voc``, ``data.root``, ``optim.epochs``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from mixlab.engine.config import TrainConfig, apply_overrides, check_value, config_from_dict, set_value, validate_config

__all__ = ["TRANSFER_DEFAULTS", "transfer_dir", "transfer_config", "transfer_config_from", "transfer"]

#: the fine-tuning's settings per task, under the run's model and seed (config sections)
TRANSFER_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {"data": {"name": "synthetic", "task": "segmentation", "image_size": 32, "num_per_class": 50,
                              "test_per_class": 20, "batch_size": 32, "eval_batch_size": 100},
                     "optim": {"name": "adamw", "lr": 3e-3, "epochs": 20, "warmup_epochs": 1}},
    "detection": {"data": {"name": "synthetic", "task": "detection", "image_size": 64, "objects": 3,
                           "num_per_class": 30, "test_per_class": 20, "batch_size": 16, "eval_batch_size": 50},
                  "optim": {"name": "adamw", "lr": 2e-3, "epochs": 10, "warmup_epochs": 1}},
}


def transfer_dir(run: str | os.PathLike, task: str) -> Path:
    """The run directory of the transfer of ``run`` (a run directory or its checkpoint file) to
    ``task``: ``<run>/transfer-<task>``."""
    p = Path(run)
    return (p.parent if p.is_file() else p) / f"transfer-{task}"


def transfer_config(run: str | os.PathLike, task: str, overrides: Iterable[str] = (),
                    values: dict[str, Any] | None = None) -> TrainConfig:
    """The training config of the transfer of ``run`` to ``task``: :func:`transfer_config_from`
    of the run's config and checkpoint file.

    Raises:
        ValueError (``CheckpointError`` is one): ``task`` is not a dense task, ``run`` is not a
            readable run, or an override is invalid.
    """
    from mixlab.engine.eval_run import open_checkpoint

    check_value(task in TRANSFER_DEFAULTS, "task", " or ".join(map(repr, TRANSFER_DEFAULTS)), task)
    ckpt_path, _, run_cfg = open_checkpoint(run, None)
    return transfer_config_from(run_cfg, ckpt_path, task, overrides, values)


def transfer_config_from(run_cfg: TrainConfig, checkpoint: str | os.PathLike, task: str,
                         overrides: Iterable[str] = (), values: dict[str, Any] | None = None) -> TrainConfig:
    """The transfer config of the run whose config is ``run_cfg`` and checkpoint file ``checkpoint``
    (nothing is read): :data:`TRANSFER_DEFAULTS`, the run's ``model.name`` / ``model.kwargs`` and
    seed, ``model.init`` = ``checkpoint``, method vanilla, run directory :func:`transfer_dir`; then
    ``overrides`` (``key=value``) and ``values`` (dotted key -> value, the CLI's flags).

    Raises:
        ValueError: ``task`` is not a dense task, an override is invalid or changes ``data.task``.
    """
    check_value(task in TRANSFER_DEFAULTS, "task", " or ".join(map(repr, TRANSFER_DEFAULTS)), task)
    cfg = config_from_dict(TRANSFER_DEFAULTS[task])
    cfg.model.name = run_cfg.model.name
    cfg.model.kwargs = {k: v for k, v in run_cfg.model.kwargs.items() if k != "pretrained"}  # weights: the run's
    cfg.model.init = str(checkpoint)
    cfg.method.name = "vanilla"
    cfg.run.seed = run_cfg.run.seed
    cfg.run.out = str(transfer_dir(Path(checkpoint).parent, task))
    cfg = apply_overrides(cfg, overrides)
    for key, value in (values or {}).items():
        set_value(cfg, key, value)
    check_value(cfg.data.task == task, "data.task", f"{task!r} (the transfer's --task)", cfg.data.task)
    validate_config(cfg)
    return cfg


def transfer(run: str | os.PathLike, task: str, overrides: Iterable[str] = (),
             values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``run``'s backbone on ``task`` (:func:`transfer_config`); returns the last epoch's
    row (``test_miou`` / ``test_map``, ...) with ``run_dir`` and ``checkpoint``."""
    from mixlab.engine.loop import train

    return train(transfer_config(run, task, overrides, values))
