"""The effective class number of a run's training targets (RecursiveMix, Yang et al. 2022, Fig. 7):
``run_effective_classes(cfg, steps)``, used by ``mixlab show --effective-classes N`` and by
``mixlab eval --effective-classes N`` (``eval.json``, the bench's "effective classes" column).

    from mixlab.engine.effective import run_effective_classes
    measured = run_effective_classes(cfg, steps=100)        # cfg: a TrainConfig of a classification run
    print(measured.mean, measured.per_step[:10])

The run's first ``steps`` training steps are replayed as the trainer takes them (same splits,
loader order and per-image augmentation, the method's generator seeded from the run's seed),
without training: the weights stay as given (a checkpoint's, or the initialisation under the run's
seed) and only the targets are read
(:func:`mixlab.evaluation.effective_classes.measure_effective_classes`). The targets of almost
every method depend only on the drawn λs, boxes and pairings, not on the weights (AutoMix's masks
do, its targets do not), so the count is the one the run trained on. PuzzleMix is the exception:
its λ is the area of a mask cut from the model's saliency, and an untrained model's saliency often
gives a whole image (λ = 0 or 1, one class), so ``mixlab eval`` measures it with the trained
weights.

Label smoothing is switched off for the measurement: it gives every class ε / K, which is above
the 10⁻⁴ threshold for any usual ε and would count all K classes; the measure is about how many
images' classes a target mixes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mixlab import registry
from mixlab.engine.config import TrainConfig, validate_config
from mixlab.engine.data import datasets, rank_generators, run_data
from mixlab.engine.distributed import DistInfo, resolve_device
from mixlab.evaluation.effective_classes import EFFECTIVE_THRESHOLD, EffectiveClasses, measure_effective_classes

__all__ = ["run_effective_classes", "effective_classes_dict"]


class _Epochs:
    """The run's training batches, one epoch per pass: the sampler is set to the next epoch at
    each ``iter`` (the trainer's ``set_epoch`` before each epoch)."""

    def __init__(self, sampler, loader) -> None:
        self.sampler, self.loader, self.epoch = sampler, loader, 0

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


def run_effective_classes(cfg: TrainConfig, steps: int = 100, threshold: float = EFFECTIVE_THRESHOLD,
                          device: str = "cpu", model_state: dict[str, Any] | None = None) -> EffectiveClasses:
    """The effective class number of ``cfg``'s method over the run's first ``steps`` steps.

    Args:
        cfg: a classification run's config (``mixlab train``'s, or a checkpoint's).
        steps: training steps to replay, >= 1 (an epoch boundary restarts the loader, and calls
            the method's ``on_epoch_start``, as in training).
        threshold: target weights strictly above it count (default 10⁻⁴, RecursiveMix Fig. 7).
        device: where the steps run (``"cpu"``, ``"cuda"``, ``"auto"``, ...).
        model_state: weights to load into the model (a checkpoint's ``model``); default the
            initialisation under the run's seed.

    Returns:
        :class:`~mixlab.evaluation.effective_classes.EffectiveClasses` (per-step means and the
        overall mean). The global RNG states are left as they were.

    Raises:
        ValueError: a self-supervised method (its targets are not class mixtures), ``steps`` not
            >= 1, a bad threshold or config, or data that cannot be loaded.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (training steps to replay), got {steps!r}")
    if registry.is_self_supervised(cfg.method.name):
        raise ValueError(f"{cfg.method.name} is self-supervised: its targets are not mixtures of class labels, so it "
                         f"has no effective class number")
    cfg = copy.deepcopy(cfg)
    cfg.method.label_smoothing = 0.0  # see the module docstring
    cfg.model.init, cfg.model.ema_decay, cfg.run.resume, cfg.run.compile = None, 0.0, None, False
    validate_config(cfg)
    dev = resolve_device(device, what="device")
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    train_set, test_set = datasets(cfg)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        try:
            if cfg.run.threads:
                torch.set_num_threads(cfg.run.threads)
            torch.manual_seed(cfg.run.seed)  # the trainer's seed: the model's initial weights
            kwargs = cfg.model.kwargs if model_state is None else \
                {k: v for k, v in cfg.model.kwargs.items() if k != "pretrained"}  # the weights are given
            model = registry.build_model(cfg.model.name, train_set.num_classes, **kwargs)
            if model_state is not None:
                model.load_state_dict(model_state)
            model = model.to(dev)
            method = registry.build_method(cfg.method.name, train_set.num_classes, 0.0, **cfg.method.params).to(dev)
            generators = rank_generators(cfg.run.seed, 0)
            data = run_data(cfg, info, train_set, test_set, method, generators["loader"])
            return measure_effective_classes(method, model, _Epochs(data.sampler, data.train_loader), steps,
                                             threshold, generator=generators["method"], mean=data.train_set.mean,
                                             std=data.train_set.std,
                                             total_steps=max(steps, cfg.optim.epochs * len(data.train_loader)))
        finally:
            torch.set_num_threads(threads)


def effective_classes_dict(measured: EffectiveClasses) -> dict:
    """``eval.json``'s ``effective_classes``: ``mean``, ``steps``, ``threshold``, ``images`` and
    ``per_step`` (the mean of each step, rounded to 4 decimals)."""
    return {"mean": measured.mean, "steps": int(measured.per_step.numel()), "threshold": measured.threshold,
            "images": measured.images, "per_step": [round(v, 4) for v in measured.per_step.tolist()]}
