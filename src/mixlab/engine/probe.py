"""Linear probe of a run's frozen backbone: ``linear_probe`` (``mixlab probe RUN``).

    mixlab probe runs/mocov3-resnet18-cifar10-20250101-120000
    mixlab probe runs/x --epochs 100 --augment --max-corruption-images 1000

    from mixlab.engine.probe import linear_probe
    results = linear_probe("runs/x", epochs=100, progress=False)
    print(results["clean"]["top1"], results["corruptions"]["mCA"])

The standard evaluation of self-supervised pre-training (MoCo v3, DINO), and a fair way to compare
the representations of any two runs: the backbone of the checkpoint is frozen (eval mode, no
gradients, BatchNorm statistics untouched), a linear classifier is trained on its pooled features
(``model.forward_head(model.forward_features(x), pre_logits=True)``) of the run's training split,
and the probed model is evaluated on the run's test split: clean top-1 / top-5 / NLL /
calibration and, as the engine's out-of-distribution measure, accuracy under the corruptions.

The protocol (MoCo v3's linear classification: SGD with momentum, no weight decay, cosine decay):

* features are standardised with the training features' per-dimension mean and standard deviation:
  a ``BatchNorm1d(affine=False, eps=1e-6)`` in front of the linear layer whose statistics are those
  of the whole training set, as MAE's linear probe puts one there (it makes one learning rate fit
  backbones whose feature scales differ by orders of magnitude);
* ``nn.Linear(C, K)``, weights drawn from N(0, 0.01²), zero bias (as MoCo); SGD(lr, momentum,
  weight_decay=0); the lr decays along a cosine over all steps, to 0; cross-entropy; shuffled
  mini-batches drawn from a ``torch.Generator`` seeded with ``seed``: the same seed gives the
  same probe, bit for bit on the CPU;
* without augmentation (the default) the training images go through the run's TEST transform,
  their features are extracted once, and the linear layer trains on the cached features: seconds
  on a CPU for CIFAR-size sets. With ``augment=True`` (MoCo v3's full protocol) every epoch runs the
  frozen backbone over freshly augmented images (``RandomResizedCrop`` at the image size, scale
  (0.08, 1), and a horizontal flip, each image's seeded from ``(seed, epoch, index)``): one
  backbone pass over the training set per epoch, as slow as that many epochs of inference;
* after training the standardisation is folded into the linear layer (``W' = W / std``,
  ``b' = b - W' @ mean``) and copied into ``model.get_classifier()``: the probed model is an
  ordinary classifier, evaluated by :func:`~mixlab.evaluation.evaluate_all`.

The results go to ``probe.json`` and the probed weights (the model's ``state_dict``, backbone as in
the checkpoint, the folded classifier) to ``probe.pt``, next to the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mixlab.engine.config import check_value
from mixlab.engine.data import EpochSampler, SeededItems, mix_seed
from mixlab.engine.distributed import resolve_device
from mixlab.engine.eval_run import (check_classes, eval_data, load_weights, open_checkpoint, rebuild_model,
                                    results_head, run_threads)
from mixlab.engine.writer import prepare_run_dir
from mixlab.evaluation import evaluate_all, extract_features

__all__ = ["linear_probe", "fold_into_classifier", "PROBE_JSON", "PROBE_WEIGHTS"]

PROBE_JSON = "probe.json"
PROBE_WEIGHTS = "probe.pt"

_EPS = 1e-6  # of the standardisation, as MAE's BatchNorm1d(affine=False, eps=1e-6)


def fold_into_classifier(model: nn.Module, linear: nn.Linear, mean: Tensor, std: Tensor) -> nn.Module:
    """Copy ``linear((f - mean) / std)`` into ``model.get_classifier()``, folded into one layer.

    ``W' = W / std`` (column-wise) and ``b' = b - W' @ mean``, computed in float64, so that
    ``model(x) == linear((pooled features - mean) / std)`` up to float32 rounding.

    Returns:
        ``model`` (changed in place).

    Raises:
        ValueError: the model's classifier is not an ``nn.Linear`` with a bias of ``linear``'s shape
            (C inputs, K outputs), or ``mean``/``std`` are not (C,).
    """
    head = model.get_classifier()
    k, c = linear.weight.shape
    if not isinstance(head, nn.Linear) or head.bias is None or tuple(head.weight.shape) != (k, c):
        shape = tuple(head.weight.shape) if isinstance(head, nn.Linear) else type(head).__name__
        raise ValueError(f"the model's classifier must be an nn.Linear with bias mapping {c} features to {k} "
                         f"classes to receive the probe, got {shape}")
    if tuple(mean.shape) != (c,) or tuple(std.shape) != (c,):
        raise ValueError(f"mean and std must have shape ({c},), got {tuple(mean.shape)} and {tuple(std.shape)}")
    with torch.no_grad():
        weight = linear.weight.double() / std.to(linear.weight.device).double()  # (K, C)
        bias = linear.bias.double() - weight @ mean.to(linear.weight.device).double()
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
    return model


def _fit_linear(epoch_features: Callable[[int], tuple[Tensor, Tensor]], mean: Tensor, std: Tensor,
                num_classes: int, *, epochs: int, lr: float, batch_size: int, momentum: float, seed: int,
                device: torch.device, progress: bool) -> nn.Linear:
    """Train ``nn.Linear(C, K)`` on ``(epoch_features(epoch) - mean) / std`` (see the module docstring)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(mean.shape[0], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.01)
        linear.bias.zero_()
    linear = linear.to(device)
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    mean, std = mean.to(device), std.to(device)
    step = total = 0
    bar = tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        features, labels = epoch_features(epoch)
        x, y = (features.to(device) - mean) / std, labels.to(device)
        batches = torch.randperm(x.shape[0], generator=g).split(batch_size)
        total = total or epochs * len(batches)
        loss_sum = 0.0
        for idx in batches:
            for group in optimizer.param_groups:  # cosine over all steps, to 0
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            idx = idx.to(device)
            loss = F.cross_entropy(linear(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * idx.shape[0]
            step += 1
        bar.set_postfix(loss=f"{loss_sum / x.shape[0]:.4f}")
    bar.close()
    return linear.eval()


def _check_probe_args(epochs: Any, lr: Any, batch_size: Any, momentum: Any, augment: Any, corruptions: Any,
                      max_corruption_images: Any, seed: Any, progress: Any, data_root: Any) -> None:
    """``ValueError`` naming the first argument out of its accepted range."""
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    real = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    check_value(integer(epochs) and epochs >= 1, "epochs", "an integer >= 1", epochs)
    check_value(real(lr) and lr > 0, "lr", "a finite number > 0", lr)
    check_value(integer(batch_size) and batch_size >= 1, "batch_size", "an integer >= 1", batch_size)
    check_value(real(momentum) and 0 <= momentum < 1, "momentum", "a number in [0, 1)", momentum)
    check_value(max_corruption_images is None or (integer(max_corruption_images) and max_corruption_images >= 1),
           "max_corruption_images", "None or an integer >= 1", max_corruption_images)
    check_value(integer(seed) and seed >= 0, "seed", "an integer >= 0", seed)
    for name, value in (("augment", augment), ("corruptions", corruptions), ("progress", progress)):
        check_value(isinstance(value, bool), name, "True or False", value)
    check_value(data_root is None or isinstance(data_root, (str, os.PathLike)), "data_root", "None or a path",
                data_root)


def _augmented_features(model: nn.Module, train_set, cfg, device: torch.device, mean: Sequence[float],
                        std: Sequence[float], batch_size: int, seed: int) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``epoch -> features`` of the training images under MoCo v3's probe augmentation
    (RandomResizedCrop at the image size, scale (0.08, 1), horizontal flip), seeded per
    ``(seed, epoch, image)`` as the trainer's augmentation, whatever the number of workers."""
    from torchvision.transforms import v2

    from mixlab.data import seed_worker

    size = cfg.data.image_size if train_set.is_lazy else tuple(train_set.images.shape[-2:])
    augment = v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0)), v2.RandomHorizontalFlip()])
    sampler = EpochSampler(len(train_set), seed=seed, shuffle=False)  # (epoch, index) keys in order
    workers = cfg.data.num_workers
    loader = DataLoader(SeededItems(train_set.with_transform(augment), seed=mix_seed(seed, 0, 5)),
                        batch_size=batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                        worker_init_fn=seed_worker)

    def features(epoch: int) -> tuple[Tensor, Tensor]:
        sampler.set_epoch(epoch)
        return extract_features(model, loader, device, mean, std, batch_size)

    return features


def _write(out_dir: Path, results: dict[str, Any], state: dict[str, Tensor], path: Any) -> None:
    """``probe.json`` and ``probe.pt`` in ``out_dir``, each written whole or not at all."""
    try:
        for name, save in ((PROBE_WEIGHTS, lambda f: torch.save(state, f)),
                           (PROBE_JSON, lambda f: f.write_text(json.dumps(results, indent=2) + "\n"))):
            tmp = out_dir / f".{name}.tmp"
            save(tmp)
            os.replace(tmp, out_dir / name)
    except PermissionError as e:
        raise ValueError(f"cannot write the probe of {path} into {out_dir}: {e.strerror or e}") from None


def linear_probe(path: str | os.PathLike, *, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 momentum: float = 0.9, augment: bool = False, corruptions: bool = True,
                 max_corruption_images: int | None = None, device: str = "auto", seed: int = 0,
                 progress: bool = True, data_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Linear probe of the checkpoint at ``path``: train a linear classifier on its frozen features,
    evaluate the probed model on the run's test split; write ``probe.json`` and ``probe.pt`` beside it.

    The model is rebuilt from the checkpoint's config and loaded with its weights (as ``mixlab eval``
    does), then frozen. The probe's training set is the run's training split as the trainer built
    it (same dataset, the class-balanced ``data.train_per_class`` subset if the run had one),
    normalised as the trainer did. See the module docstring for the protocol.

    Args:
        path: a run directory (its ``checkpoint.pt``) or a checkpoint file; any run, supervised or
            self-supervised.
        epochs: epochs of the linear layer (>= 1).
        lr: peak learning rate (> 0), decayed along a cosine to 0 over all steps.
        batch_size: mini-batch of the linear layer (>= 1); the last batch of an epoch may be smaller.
        momentum: SGD momentum, in [0, 1). No weight decay.
        augment: ``False``: the training images through the run's test transform, features
            extracted once and cached (fast). ``True``: each epoch extracts the features of
            randomly resized crops (scale 0.08-1) and flips of the images (MoCo v3's protocol;
            one backbone pass over the training set per epoch, slow).
        corruptions: measure the probed model's top-1 under every corruption at severities 1-5
            (seeded as ``mixlab eval``'s, so the numbers compare with its ``eval.json``).
        max_corruption_images: corruption accuracy on N test images evenly strided over the test
            split (default: all).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        seed: initialisation, mini-batch order and augmentation (>= 0).
        progress: tqdm bar over the epochs (and the corruptions).
        data_root: where the dataset is now, if it moved since training (replaces ``data.root``).

    Returns:
        ``{"checkpoint", "epoch", "method", "model", "dataset", "device", "probe": {"epochs", "lr",
        "batch_size", "momentum", "weight_decay", "augment", "seed", "train_images",
        "feature_dim"}, "train_acc1" (%, the final probe on the un-augmented training features),
        "clean": evaluate_all's clean metrics, "corruptions": evaluate_all's or None, "seconds",
        "probe_json", "probe_weights"}`` (paths written). ``format_table(results)`` prints it.

    Raises:
        ValueError: an argument out of its range (the message names it), before any work;
            (``CheckpointError``, a ValueError) ``path`` is missing, not a mixlab checkpoint, or its
            weights do not fit its config's model; the run's dataset cannot be loaded (pass
            ``data_root``); the model's classifier cannot take the probe; the directory is not
            writable.
    """
    t0 = time.perf_counter()
    _check_probe_args(epochs, lr, batch_size, momentum, augment, corruptions, max_corruption_images, seed, progress,
                      data_root)
    dev = resolve_device(device, what="device")
    ckpt_path, ckpt, cfg = open_checkpoint(path, data_root)
    out_dir = ckpt_path.parent
    prepare_run_dir(out_dir)  # writable, before the probe's work
    test_set, mean, std, train_set = eval_data(cfg, path, train=True)
    num_classes = check_classes(ckpt, test_set, cfg, path)
    model = load_weights(rebuild_model(cfg, num_classes, dev), ckpt["model"], "model weights", ckpt["path"])
    model.requires_grad_(False).eval()  # frozen: no gradients, BatchNorm statistics never updated

    from mixlab.data import eval_loader

    eval_batch, workers = cfg.data.eval_batch_size, cfg.data.num_workers
    with run_threads(cfg):  # the run's CPU threads
        features, labels = extract_features(model, eval_loader(train_set, eval_batch, workers), dev, mean, std,
                                            eval_batch)
        feature_mean = features.double().mean(0)
        feature_std = (features.double().var(0, unbiased=False) + _EPS).sqrt()
        feature_mean, feature_std = feature_mean.float(), feature_std.float()
        epoch_features = (_augmented_features(model, train_set, cfg, dev, mean, std, eval_batch, seed) if augment
                          else lambda epoch: (features, labels))
        linear = _fit_linear(epoch_features, feature_mean, feature_std, num_classes, epochs=epochs, lr=lr,
                             batch_size=batch_size, momentum=momentum, seed=seed, device=dev, progress=progress)
        with torch.no_grad():
            standardised = ((features - feature_mean) / feature_std).to(dev)
            train_acc1 = 100.0 * float((linear(standardised).argmax(1).cpu() == labels).double().mean())
        fold_into_classifier(model, linear, feature_mean, feature_std)
        evaluation = evaluate_all(model, eval_loader(test_set, eval_batch, workers), mean, std, dev, fgsm=False,
                                  corruptions=corruptions, max_corruption_images=max_corruption_images,
                                  batch_size=eval_batch, progress=progress)
    results: dict[str, Any] = {
        **results_head(ckpt_path, ckpt, cfg, dev),
        "probe": {"epochs": epochs, "lr": float(lr), "batch_size": batch_size, "momentum": float(momentum),
                  "weight_decay": 0.0, "augment": augment, "seed": seed, "train_images": int(labels.shape[0]),
                  "feature_dim": int(features.shape[1])},
        "train_acc1": train_acc1,
        "clean": evaluation["clean"],
        "corruptions": evaluation["corruptions"],
        "seconds": round(time.perf_counter() - t0, 2),
        "probe_json": str(out_dir / PROBE_JSON),
        "probe_weights": str(out_dir / PROBE_WEIGHTS),
    }
    _write(out_dir, results, {k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return results
