"""The training engine: config, the loop, checkpoints, the run directory and data-parallel helpers.

    from mixlab.engine import load_config, train
    metrics = train(load_config(overrides=["method.name=mixup", "optim.epochs=3"]))

Under ``torchrun --nproc_per_node=N`` the same ``train`` runs data-parallel (docs/distributed.md).
``linear_probe(run_dir)`` trains a linear classifier on a run's frozen features (``mixlab probe``).
The measures themselves (accuracy, calibration, robustness, kNN) are :mod:`mixlab.evaluation`.
"""

from mixlab.engine.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
from mixlab.engine.config import (DataConfig, MethodConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig,
                                  apply_overrides, config_from_dict, config_to_dict, load_config, validate_config)
from mixlab.engine.distributed import DistInfo, init_distributed, is_main_process
from mixlab.engine.loop import train
from mixlab.engine.optim import TrainingDivergedError, build_optimizer, lr_factor, set_lr, train_step
from mixlab.engine.probe import linear_probe
from mixlab.evaluation import accuracy, evaluate, extract_features

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "DataConfig",
    "DistInfo",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "TrainingDivergedError",
    "accuracy",
    "apply_overrides",
    "build_optimizer",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "extract_features",
    "init_distributed",
    "is_main_process",
    "linear_probe",
    "load_checkpoint",
    "load_config",
    "lr_factor",
    "save_checkpoint",
    "set_lr",
    "train",
    "train_step",
    "validate_config",
]
