"""Classification metrics and the evaluation loop.

``evaluate`` returns plain floats keyed by name, so new metrics (calibration, robustness; see
``mixlab.evaluation``) can be added beside these without touching the trainer.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.engine.checkpoint import atomic_write_bytes

__all__ = ["accuracy", "evaluate", "write_metrics"]


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
        model: classifier returning (B, K) logits; put in eval mode for the loop and restored after.
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
    correct1 = correct5 = nll = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if preprocess is not None:
            images = preprocess(images)
        with autocast():
            logits = model(images)
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


def write_metrics(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.jsonl`` from the full history (one row per epoch).

    Rewriting (rather than appending) keeps the files consistent with the checkpoint after a
    resume, and lets columns appear later (a method that starts logging a term mid-run).
    """
    run_dir = Path(run_dir)
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    # each written whole or not at all (CheckpointWriteError names a full disk)
    atomic_write_bytes(run_dir / "metrics.csv", lambda f: f.write(text.getvalue().encode()))
    atomic_write_bytes(run_dir / "metrics.jsonl",
                       lambda f: f.write("".join(json.dumps(row) + "\n" for row in history).encode()))
