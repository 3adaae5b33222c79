"""What a segmentation or detection run (``data.task``) trains with: data, model, method, metric.

    mixlab train --task segmentation --method cutmix          # mIoU
    mixlab train --task detection --method mosaic --set data.objects=3 --set data.image_size=64   # mAP

The training loop (:mod:`mixlab.engine.loop`) is the classification one; for a dense task it calls
these instead of their classification twins: :func:`datasets` (the splits of
``mixlab.data.build_dataset(task=...)``), :func:`build_model`
(:func:`mixlab.registry.build_dense_model`), :func:`build_method`
(:func:`mixlab.registry.build_dense_method`), :func:`run_data` (loaders) and :func:`evaluate`
(mIoU / mAP, :mod:`mixlab.evaluation.dense`). The same :class:`~mixlab.engine.data.EpochSampler`
and per-image seeds (:class:`~mixlab.engine.data.SeededItems`) as classification, so a resumed run
continues bit for bit on the CPU.

* Segmentation batches: ``(images (B, 3, H, W) normalised, label maps (B, H, W) uint8)``, 255 =
  ignore. The training transform (``data.augment: crop-flip``) pads by ``size // 8`` (image 0, map
  ``ignore_index``), crops back and flips, moving image and map together (torchvision v2).
* Detection batches: ``(images (B, 3, H, W) float in [0, 1], B target dicts)`` (boxes, labels,
  instance masks): the detectors normalise themselves. Training transform: the same crop and flip
  on the boxes and masks, then ``v2.SanitizeBoundingBoxes``.
"""

from __future__ import annotations

import contextlib
import copy
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from mixlab import registry
from mixlab.engine.config import TrainConfig
from mixlab.engine.data import EpochSampler, RunData, SeededItems, mix_seed, normalizer, to_device
from mixlab.engine.distributed import DistInfo, all_gather_object, all_reduce_sum

__all__ = ["is_dense", "split", "datasets", "transforms", "collate", "with_transforms", "build_model", "init_target",
           "build_method", "run_data", "evaluate", "evaluate_dense_checkpoint"]


def is_dense(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains segmentation or detection."""
    return cfg.data.task != "classification"


def split(cfg: TrainConfig, which: str, transform: Callable | None = None):
    """One split of ``cfg``'s dense dataset (``mixlab.data.build_dataset(task=...)``) with ``transform``
    (``transform(image, target)``); the synthetic set with ``num_per_class`` / ``test_per_class``,
    ``image_size``, ``objects`` and the run's seed."""
    d = cfg.data
    kwargs: dict[str, Any] = {"transforms": transform}
    if d.name == "synthetic":
        kwargs.update(num_per_class=d.num_per_class if which == "train" else d.test_per_class,
                      image_size=d.image_size, seed=cfg.run.seed, objects=d.objects)
    if d.download:
        kwargs["download"] = True
    return registry.build_dataset(d.name, which, root=d.root, task=d.task, **kwargs)


def transforms(cfg: TrainConfig, ignore_index: int = 255) -> tuple[Callable | None, Callable | None]:
    """(train, test) joint transforms of a dense task on uint8 images (module docstring); images of
    mixed sizes (not the synthetic set) are cropped to ``data.image_size`` (train: random resized
    crop; test: resize + centre crop)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    d = cfg.data
    size = d.image_size
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index if d.task == "segmentation" else 0}
    fixed = d.name == "synthetic"
    if d.augment == "crop-flip":
        crop = v2.RandomCrop(size, padding=max(1, size // 8), fill=fill) if fixed else v2.RandomResizedCrop(size)
        train: list = [crop, v2.RandomHorizontalFlip()]
    else:
        train = [] if fixed else [v2.Resize(size), v2.CenterCrop(size)]
    test = None if fixed else v2.Compose([v2.Resize(size), v2.CenterCrop(size)] + (
        [v2.SanitizeBoundingBoxes()] if d.task == "detection" else []))
    if d.task == "detection" and train:
        train.append(v2.SanitizeBoundingBoxes())
    return (v2.Compose(train) if train else None), test


def datasets(cfg: TrainConfig, world_size: int = 1, train_transform: Callable | None = None,
             test_transform: Callable | None = None):
    """The (train, test) splits of a dense run with the given transforms.

    Raises:
        ValueError: an empty split, or fewer training images (per process) than ``data.batch_size``.
    """
    d = cfg.data
    train_set, test_set = split(cfg, "train", train_transform), split(cfg, "test", test_transform)
    for which, ds in (("train", train_set), ("test", test_set)):
        if len(ds) == 0:
            raise ValueError(f"the {which} split of dataset {d.name!r} (task {d.task}, root {d.root}) is empty")
    share = -(-len(train_set) // world_size)
    if share < d.batch_size:
        raise ValueError(f"data.batch_size={d.batch_size} is larger than the {share} training images of each of the "
                         f"{world_size} process(es); lower --batch-size")
    return train_set, test_set


def collate(task: str) -> Callable[[Sequence[tuple]], tuple]:
    """The batch of a dense task: images stacked (B, C, H, W) as plain tensors; segmentation maps
    stacked (B, H, W), detection targets a list of dicts (torchvision's detection format)."""
    return partial(_collate, task == "segmentation")


def _collate(stack_targets: bool, batch: Sequence[tuple]) -> tuple[Tensor, Any]:
    images = torch.stack([im.as_subclass(Tensor) for im, _ in batch])
    if stack_targets:
        return images, torch.stack([t.as_subclass(Tensor) for _, t in batch])
    return images, [t for _, t in batch]


def build_model(cfg: TrainConfig, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """The run's segmenter / detector (:func:`mixlab.registry.build_dense_model`) on ``model.name``."""
    return registry.build_dense_model(cfg.data.task, cfg.model.name, num_classes, image_size=cfg.data.image_size,
                                      mean=mean, std=std, **cfg.model.kwargs)


def init_target(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Where ``model.init`` loads a classification run's weights: the classification model inside
    the dense model (:func:`mixlab.models.dense.classification_body`).

    Raises:
        ValueError: the model is one of torchvision's, with no mixlab backbone to load into.
    """
    from mixlab.models.dense import classification_body

    body = classification_body(model)
    if body is None:
        raise ValueError(f"model.init loads a classification run's backbone, and model {cfg.model.name!r} has none of "
                         f"mixlab's: use a classification model name (resnet_small, resnet18, ...) as model.name")
    return body


def build_method(cfg: TrainConfig, num_classes: int, ignore_index: int = 255):
    """The run's dense step (:func:`mixlab.registry.build_dense_method`)."""
    m = cfg.method
    return registry.build_dense_method(cfg.data.task, m.name, num_classes, m.label_smoothing, ignore_index,
                                       **m.params)


def _preprocess(cfg: TrainConfig, train_set) -> Callable[[Tensor], Tensor]:
    if cfg.data.task == "detection":  # the detectors normalise [0, 1] images themselves
        return lambda x: x.float().div_(255) if x.dtype == torch.uint8 else x
    return normalizer(train_set.mean, train_set.std, cfg.run.channels_last)


def with_transforms(dataset, transform: Callable | None):
    """A shallow copy of a dense dataset (its tensors shared) whose items go through ``transform``."""
    view = copy.copy(dataset)
    view.transforms = transform
    return view


def run_data(cfg: TrainConfig, info: DistInfo, train_set, test_set, method, loader_generator: torch.Generator
             ) -> RunData:
    """The loaders of a dense run on ``(train_set, test_set)`` (from :func:`datasets`, untransformed):
    the same sampler and per-image seeds as :func:`mixlab.engine.data.run_data`, the transforms of
    :func:`transforms`, the batches of :func:`collate`."""
    from mixlab.data import seed_worker

    d, r = cfg.data, cfg.run
    on_gpu = info.device.type == "cuda"
    train_transform, test_transform = transforms(cfg, getattr(train_set, "ignore_index", 255))
    train_set, test_set = with_transforms(train_set, train_transform), with_transforms(test_set, test_transform)
    fn = collate(d.task)
    sampler = EpochSampler(len(train_set), seed=mix_seed(r.seed, 0, 3), rank=info.rank, world_size=info.world_size)
    train_loader = DataLoader(SeededItems(train_set, seed=mix_seed(r.seed, 0, 4)), batch_size=d.batch_size,
                              sampler=sampler, drop_last=True, num_workers=d.num_workers, collate_fn=fn,
                              persistent_workers=d.num_workers > 0, pin_memory=on_gpu, generator=loader_generator,
                              worker_init_fn=seed_worker)
    n = len(test_set)
    shard = Subset(test_set, range(n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size))
    test = DataLoader(shard, batch_size=d.eval_batch_size, num_workers=d.num_workers, collate_fn=fn,
                      pin_memory=on_gpu)
    preprocess, device = _preprocess(cfg, train_set), info.device
    return RunData(train_set=train_set, test_set=test_set, monitor_set=None, sampler=sampler,
                   train_loader=train_loader, test_loader=test, preprocess=preprocess,
                   train_inputs=lambda batch: to_device(tuple(batch), device, preprocess), device_augment=None,
                   figure_images=None)


def evaluate(cfg: TrainConfig, model: nn.Module, data: RunData, info: DistInfo,
             autocast: Callable[[], Any]) -> dict[str, Any]:
    """The test metrics of a dense model over this process's shard, summed over every process:
    segmentation ``miou``, ``pixel_acc``, ``iou`` (per class); detection ``map``, ``map50``; ``n``."""
    from mixlab.evaluation.dense import evaluate_detection, evaluate_segmentation

    if cfg.data.task == "segmentation":
        return evaluate_segmentation(model, data.test_loader, info.device, data.train_set.num_classes,
                                     getattr(data.train_set, "ignore_index", 255), data.preprocess, autocast,
                                     all_reduce_sum if info.distributed else None)
    gather = (lambda xs: [x for part in all_gather_object(xs) for x in part]) if info.distributed else None
    return evaluate_detection(model, data.test_loader, info.device, data.preprocess, autocast, gather)


def evaluate_dense_checkpoint(ckpt_path, ckpt: dict[str, Any], cfg: TrainConfig, device: torch.device,
                              batch_size: int | None = None) -> dict[str, Any]:
    """``mixlab eval`` of a dense run (:func:`mixlab.engine.eval_run.evaluate_checkpoint` calls it):
    the test split rebuilt as the trainer built it, the saved weights (and EMA weights), the task's
    metrics; written to ``eval.json`` beside the checkpoint.

    Returns:
        ``{"task", "clean": {miou, pixel_acc, iou, n} or {map, map50, n}, "fgsm": None,
        "corruptions": None, "ema": the same for the EMA weights or None, checkpoint, epoch, method,
        model, dataset, device, seconds, eval_json}`` (FGSM and corruptions are classification's).

    Raises:
        ValueError: the dataset cannot be loaded, or the weights do not fit the config's model.
    """
    import json
    import os
    import tempfile
    import time
    from pathlib import Path

    from mixlab.engine.eval_run import EVAL_NAME, load_weights, results_head, run_threads

    t0 = time.perf_counter()
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    try:  # (the dense datasets' statistics are fixed: the synthetic shapes', ImageNet's for VOC and COCO)
        test_set = split(cfg, "test")
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot evaluate {ckpt_path}: the run's dataset {cfg.data.name!r} (task {cfg.data.task}, "
                         f"root {cfg.data.root}) cannot be loaded: {e}") from None
    if batch_size is not None:
        cfg.data.eval_batch_size = batch_size
    data = run_data(cfg, info, test_set, test_set, None, torch.Generator())
    num_classes = ckpt["num_classes"]

    def model_with(state: dict[str, Any], what: str) -> nn.Module:
        model = build_model(cfg, num_classes, test_set.mean, test_set.std).to(device)
        return load_weights(model, state, what, ckpt["path"]).eval()

    models = {"model": model_with(ckpt["model"], "model weights")}
    if ckpt["ema"] is not None:
        models["ema"] = model_with({k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")},
                                   "EMA weights")
    with run_threads(cfg):
        scores = {name: evaluate(cfg, model, data, info, contextlib.nullcontext) for name, model in models.items()}
    out_dir = Path(ckpt_path).parent
    results = {"task": cfg.data.task, "clean": scores["model"], "fgsm": None, "corruptions": None,
               "ema": scores.get("ema"), **results_head(Path(ckpt_path), ckpt, cfg, device),
               "seconds": round(time.perf_counter() - t0, 2), "eval_json": str(out_dir / EVAL_NAME)}
    try:
        with tempfile.NamedTemporaryFile("w", dir=out_dir, prefix=".eval-", suffix=".json", delete=False) as f:
            f.write(json.dumps(results, indent=2) + "\n")
        os.replace(f.name, out_dir / EVAL_NAME)
    except PermissionError as e:
        raise ValueError(f"cannot write the evaluation of {ckpt_path} into {out_dir}: {e.strerror or e}") from None
    return results
