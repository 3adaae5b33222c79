"""``curves.png`` (loss and accuracy per epoch) and ``samples.png`` (a mixed batch with its soft labels).

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so the global backend of an
interactive session is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["plot_curves", "plot_samples", "soft_label_text"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Train loss and test top-1 accuracy (and the EMA's, when logged) against the epoch."""
    epochs = [row["epoch"] for row in history]
    marker = "o" if len(epochs) <= 20 else None
    fig = _figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [row["train_loss"] for row in history], marker=marker, label="train loss")
    if any("test_nll" in row for row in history):
        ax1.plot(epochs, [row.get("test_nll", math.nan) for row in history], marker=marker, label="test NLL")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    ax2.plot(epochs, [row["test_acc1"] for row in history], marker=marker, label="test top-1")
    if any("train_acc" in row for row in history):
        ax2.plot(epochs, [row.get("train_acc", math.nan) for row in history], marker=marker and ".", label="train")
    if any("ema_test_acc1" in row for row in history):
        ax2.plot(epochs, [row.get("ema_test_acc1", math.nan) for row in history], marker=marker, label="EMA test top-1")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("%")
    ax2.set_title("accuracy")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def soft_label_text(target: Tensor, classes: Sequence[str], k: int = 2) -> str:
    """'cat .62 / dog .38': the top-``k`` classes of a (K,) soft target with their weights."""
    weights, idx = target.float().topk(min(k, target.numel()))
    parts = [f"{classes[i][:9]} {w:.2f}".replace(" 0.", " .") for w, i in zip(weights.tolist(), idx.tolist())
             if w >= 0.005]
    return " / ".join(parts)


def plot_samples(
    images: Tensor,
    targets: Tensor,
    classes: Sequence[str],
    path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_images: int = 16,
    title: str = "",
) -> None:
    """A grid of images with their soft labels printed underneath.

    Args:
        images: (B, C, H, W), normalised float (then give ``mean``/``std``) or uint8.
        targets: (B, K) soft targets or (B,) class indices.
        classes: class names.
        path: the PNG to write.
    """
    images = images[:max_images].detach().float().cpu()
    targets = targets[:max_images].detach().float().cpu()
    if targets.ndim == 1:
        targets = torch.nn.functional.one_hot(targets.long(), len(classes)).float()
    if mean is not None and std is not None:  # undo the normalisation: x * std + mean
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    elif images.max() > 1.5:  # uint8 range
        images = images / 255.0
    images = images.clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    n = images.shape[0]
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig = _figure(1.6 * cols, 1.85 * rows + (0.3 if title else 0))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.axis("off")
        if i < n:
            img = images[i]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_title(soft_label_text(targets[i], classes), fontsize=7, y=-0.2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
