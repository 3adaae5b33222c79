"""Classification metrics, the evaluation loop, and the helpers every measure here shares.

``evaluate`` returns plain floats keyed by name, so new metrics (calibration, robustness) can be
added beside these without touching the trainer. :func:`iter_batches`, :func:`eval_mode` and
:func:`model_device` are how every function of :mod:`mixlab.evaluation` reads its data, sets the
model's mode and picks its device.
"""

from __future__ import annotations

import contextlib
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.models.inference import fused_for_inference

__all__ = ["accuracy", "evaluate", "iter_batches", "eval_mode", "model_device", "Data", "DEFAULT_BATCH"]

DEFAULT_BATCH = 256  # images per batch when the data is one pair of tensors and no batch size is given

#: what every measure reads: an iterable of ``(images, labels)`` batches (a ``DataLoader``), or one
#: ``(images, labels)`` pair of tensors
Data = Iterable | tuple[Tensor, Tensor]


def iter_batches(data: Data, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches from a loader/iterable or from one pair of tensors (sliced into
    ``batch_size``, default :data:`DEFAULT_BATCH`).

    Raises:
        ValueError: a pair of tensors of different lengths.
        TypeError: an item that is not an ``(images, labels)`` batch.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data) \
            and data[0].ndim == 4:
        images, labels = data
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"images and labels must have the same length, got {images.shape[0]} != {labels.shape[0]}")
        step = batch_size or DEFAULT_BATCH
        for start in range(0, images.shape[0], step):
            yield images[start: start + step], labels[start: start + step]
        return
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"data must yield (images, labels) batches, got {type(batch).__name__}")
        yield batch[0], batch[1]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, its previous mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` or, when None, the device of the model's first parameter / buffer (CPU if none).

    Raises:
        ValueError: ``device`` is of another type than the model's (the model is not moved here).
    """
    tensors = [*model.parameters(), *model.buffers()]
    model_at = tensors[0].device if tensors else None
    if device is None:
        return model_at or torch.device("cpu")
    device = torch.device(device)
    if model_at is not None and model_at.type != device.type:
        raise ValueError(f"device is {device} but the model is on {model_at}; move the model first "
                         f"(model.to({str(device)!r})) or leave device=None")
    return device


def accuracy(logits: Tensor, labels: Tensor, topk: tuple[int, ...] = (1,)) -> list[Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at K).

    Args:
        logits: (B, K).
        labels: (B,) class indices.

    Returns:
        one 0-dim int64 tensor (count of correct samples) per k.
    """
    maxk = min(max(topk), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = top == labels.unsqueeze(1)  # (B, maxk)
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    autocast: Callable[[], Any] = nullcontext,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (in %) and mean NLL of ``model`` over ``loader``.

    In data-parallel evaluation each process passes its own shard of the test set and
    ``all_reduce=mixlab.engine.distributed.all_reduce_sum``: the *sums* (correct counts, NLL, N)
    are added over the processes before dividing, so the result is exactly that of the whole set
    (up to the order of the float64 NLL additions), whatever the shard sizes.

    Args:
        model: classifier returning (B, K) logits; put in eval mode for the loop and restored after
            (evaluated through :func:`~mixlab.models.inference.fused_for_inference`).
        loader: iterable of ``(images, labels)`` batches.
        device: where to run.
        preprocess: applied to each image batch on the device (e.g. uint8 -> normalised float).
        autocast: context manager factory for mixed precision.
        all_reduce: sums a float64 tensor over processes in place (default: this process only).

    Returns:
        ``{"acc1", "acc5", "nll", "n"}`` (``n``: images evaluated, over all processes).

    Raises:
        ValueError: no process's loader yielded a sample.
    """
    was_training = model.training
    model.eval()
    net = fused_for_inference(model)  # BatchNorm folded into the convolutions: ~1.3x faster
    correct1 = correct5 = nll = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if preprocess is not None:
            images = preprocess(images)
        with autocast():
            logits = net(images)
        c1, c5 = accuracy(logits, labels, (1, 5))
        correct1 = correct1 + c1
        correct5 = correct5 + c5
        nll = nll + F.cross_entropy(logits.float(), labels, reduction="sum").double()
        n += labels.shape[0]
    model.train(was_training)
    sums = torch.stack([correct1, correct5, nll, torch.tensor(float(n), device=device, dtype=torch.float64)])
    if all_reduce is not None:
        sums = all_reduce(sums)
    correct1, correct5, nll, total = sums.tolist()
    n = round(total)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "nll": nll / n, "n": n}
