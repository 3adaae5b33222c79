"""``curves.png`` (loss and accuracy per epoch), ``samples.png`` (a mixed batch with its soft labels),
``mixlab show``'s grid (inputs, partners, masks and mixed images: :func:`plot_mix`) and the rows of
images of ``Method.epoch_figures`` (:func:`plot_rows`, e.g. MAE's ``reconstructions.png``).

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so the global backend of an
interactive session is left alone.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from mixlab.core.result import MixResult

__all__ = ["plot_curves", "plot_mix", "plot_rows", "plot_samples", "soft_label_text", "new_figure",
           "display_images", "show_tile"]


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at 100 dpi on an Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Train loss and test top-1 accuracy (the EMA's, when logged; the kNN monitor's for
    self-supervised runs) against the epoch."""
    epochs = [row["epoch"] for row in history]
    marker = "o" if len(epochs) <= 20 else None
    fig = new_figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [row["train_loss"] for row in history], marker=marker, label="train loss")
    if any("test_nll" in row for row in history):
        tested = [row for row in history if "test_nll" in row]
        ax1.plot([row["epoch"] for row in tested], [row["test_nll"] for row in tested], marker=marker, label="test NLL")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    for key, label in (("test_acc1", "test top-1"), ("knn_acc1", "kNN top-1 (test)"),  # classification / SSL
                       ("test_miou", "test mIoU"), ("test_map", "test mAP")):  # segmentation / detection
        tested = [row for row in history if key in row]  # run.eval_every > 1 skips epochs
        if tested:
            ax2.plot([row["epoch"] for row in tested], [row[key] for row in tested], marker=marker, label=label)
    if any("train_acc" in row for row in history):
        ax2.plot(epochs, [row.get("train_acc", math.nan) for row in history], marker=marker and ".", label="train")
    if any("ema_test_acc1" in row for row in history):
        tested = [row for row in history if "ema_test_acc1" in row]
        ax2.plot([row["epoch"] for row in tested], [row["ema_test_acc1"] for row in tested], marker=marker,
                 label="EMA test top-1")
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


def display_images(images: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """(B, C, H, W) images -> (B, H, W, C) float numpy in [0, 1] for ``imshow``: normalised floats are
    denormalised with ``mean``/``std``; uint8 (or values above 1.5) are divided by 255."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:  # undo the normalisation: x * std + mean
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    elif images.numel() and images.max() > 1.5:  # uint8 range
        images = images / 255.0
    return images.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def show_tile(ax, img, text: str = "", frame: bool = False, **imshow: Any) -> None:
    """One (H, W, C) tile, ``text`` underneath; one channel is drawn in grey. No axes, only a thin
    ``frame`` if asked (for tiles that may be white, such as masks)."""
    if frame:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.5)
            spine.set_color("0.6")
    else:
        ax.axis("off")
    if img.shape[-1] == 1:
        imshow = {"cmap": "gray", **imshow}
        img = img.squeeze(-1)
    ax.imshow(img, interpolation="nearest", **imshow)
    if text:
        ax.set_title(text, fontsize=7, y=-0.2 if "\n" not in text else -0.32)


def _one_hot(targets: Tensor, num_classes: int) -> Tensor:
    targets = targets.detach().float().cpu()
    return torch.nn.functional.one_hot(targets.long(), num_classes).float() if targets.ndim == 1 else targets


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
    images = display_images(images[:max_images], mean, std)  # (B, H, W, C)
    targets = _one_hot(targets[:max_images], len(classes))
    n = images.shape[0]
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig = new_figure(1.6 * cols, 1.85 * rows + (0.3 if title else 0))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.axis("off")
        if i < n:
            show_tile(ax, images[i], soft_label_text(targets[i], classes))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def plot_mix(
    images: Tensor,
    labels: Tensor,
    mixed: MixResult | Sequence[MixResult] | None,
    classes: Sequence[str],
    path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str = "",
) -> None:
    """What a mixing method does to a batch, one column per image (``mixlab show``).

    Rows: the inputs; their partners ``inputs[index]``; the mask (per-pixel weight of the own
    image, black 0 to white 1; a flat tile at λ for global mixes such as Mixup, whose mask is
    ``None``); the mixed images, with their top-2 soft label and λ underneath. With ``mixed=None``
    (a method that does not mix, such as vanilla) only the inputs are drawn, titled "no mixing".
    With several mixes of the same batch and partners (AutoMix at λ = 0.2, 0.5, 0.8) the mask and
    mixed rows repeat once per mix, named by its first λ.

    Args:
        images: (B, C, H, W) inputs, normalised float (then give ``mean``/``std``) or uint8.
        labels: (B,) class indices or (B, K) soft targets of the inputs.
        mixed: the method's ``mix_preview(images, labels)``, a list of such results with the same
            ``index``, or ``None``.
        classes: class names.
        path: the PNG to write.
        mean, std: per-channel normalisation of ``images`` and ``mixed.images``, to undo for display.
        title: drawn above the grid.
    """
    n = images.shape[0]
    labels = _one_hot(labels, len(classes))  # (B, K)
    names = [soft_label_text(t, classes, k=1 if bool((t == 1).any()) else 2).removesuffix(" 1.00") for t in labels]
    rows: list[tuple[str, Any, list[str], dict[str, Any]]] = [("input", display_images(images, mean, std), names, {})]
    mixes = [] if mixed is None else [mixed] if isinstance(mixed, MixResult) else list(mixed)
    if not mixes:
        title = f"{title}: no mixing" if title else "no mixing"
    else:
        index = mixes[0].index.detach().cpu().long()
        rows.append(("partner", display_images(images[index], mean, std), [names[j] for j in index.tolist()], {}))
    for one in mixes:
        lam = one.lam.detach().float().cpu().expand(n)  # (B,)
        mask = one.mask
        if mask is None:  # global mix: every pixel weighs λ
            mask = lam.view(n, 1, 1, 1).expand(n, 1, *images.shape[-2:])
        targets = _one_hot(one.targets, len(classes))
        at = f" λ {float(lam[0]):.2f}".replace(" 0.", " .") if len(mixes) > 1 else ""
        rows += [
            (f"mask (own){at}", display_images(mask.float().clamp(0, 1)), [],
             {"vmin": 0.0, "vmax": 1.0, "frame": True}),
            (f"mixed{at}", display_images(one.images, mean, std),
             [f"{soft_label_text(t, classes)}\nλ {l:.2f}".replace(" 0.", " .") for t, l in zip(targets, lam.tolist())],
             {}),
        ]
    _draw_rows(rows, path, title, row_height=1.75, extra_height=0.3 if mixes else 0.0)


def plot_rows(rows: Sequence[tuple[str, Tensor]], path: str | Path, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, title: str = "") -> None:
    """Labelled rows of images, one column per image (``Method.epoch_figures``' ``ImageRows``,
    e.g. MAE's original / masked / reconstruction).

    Args:
        rows: ``(label, images)`` pairs, images (n, C, H, W) with the same n, normalised float
            (then give ``mean``/``std``) or uint8.
        path: the PNG to write.
    """
    if not rows or len({images.shape[0] for _, images in rows}) != 1:
        raise ValueError(f"plot_rows needs rows with the same number of images, got "
                         f"{[tuple(images.shape) for _, images in rows]}")
    _draw_rows([(name, display_images(images, mean, std), [], {}) for name, images in rows], path, title,
               row_height=1.5)


def _draw_rows(rows: list[tuple[str, Any, list[str], dict[str, Any]]], path: str | Path, title: str,
               row_height: float, extra_height: float = 0.0) -> None:
    """One figure of ``(row label, tiles, texts under the tiles, imshow options)`` rows."""
    n = len(rows[0][1])
    fig = new_figure(1.5 * n + 0.6, row_height * len(rows) + 0.5 + extra_height)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (name, tiles, texts, imshow) in enumerate(rows):
        for i in range(n):
            show_tile(axes[r][i], tiles[i], texts[i] if texts else "", **imshow)
        axes[r][0].text(-0.12, 0.5, name, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
    fig.suptitle(textwrap.fill(title, max(40, round(fig.get_figwidth() * 12))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
