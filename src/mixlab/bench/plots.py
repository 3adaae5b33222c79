"""The benchmark's figures: ``accuracy.png`` (last-epoch top-1 per method, mean ± std over seeds),
``curves.png`` (test top-1 per epoch, mean over seeds, one line per method) and ``gallery.png``
(the same 8 test images mixed by every method, one row per method).

Figures and tiles come from :mod:`mixlab.engine.plots` (Agg canvas, no pyplot).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from mixlab import registry
from mixlab.bench.protocols import method_name
from mixlab.bench.report import mean_std, read_history
from mixlab.engine.config import TrainConfig
from mixlab.engine.plots import display_images, new_figure, show_tile, soft_label_text

__all__ = ["plot_accuracy", "plot_curves", "plot_gallery", "gallery_batch"]


def plot_accuracy(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                  ylabel: str = "test top-1 % (last epoch)", key: str = "top1") -> None:
    """Bar per method: mean last-epoch test top-1 (the results column ``key``: ``miou``, ``map``
    for the dense tasks) with a ± 1 std error bar; each seed as a dot."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    values = [[r[key] for r in rows if r["method"] == m] for m in methods]
    stats = [mean_std(v) for v in values]
    fig = new_figure(max(4.0, 0.9 * len(methods) + 1.5), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(methods)))
    ax.bar(x, [m for m, _ in stats], yerr=[0.0 if math.isnan(s) else s for _, s in stats], capsize=4,
           color="tab:blue", alpha=0.7)
    for i, v in enumerate(values):
        ax.scatter([i] * len(v), v, color="black", s=10, zorder=3)
    for i, (m, sd) in enumerate(stats):  # the numbers themselves, above the error bar
        label = f"{m:.1f}" + ("" if math.isnan(sd) else f"\n± {sd:.1f}")
        ax.text(i, m + (0.0 if math.isnan(sd) else sd) + 1.0, label, ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, min(100.0, max(max(v) for v in values) * 1.15 + 5))
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "last-epoch test top-1, mean ± std over seeds (dots: seeds)", fontsize=9, wrap=True)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "", metric: str | None = None) -> None:
    """Test top-1 (self-supervised runs: kNN top-1; ``metric``: that ``metrics.csv`` column, e.g.
    ``test_miou``) per epoch from each run's ``metrics.csv``, mean over seeds, one line per method
    (shaded: ± 1 std where there are 2+ seeds). Rows whose run directory is not here (merged from
    another bench's results.csv) are left out."""
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    rows = [r for r in rows if (Path(str(r["run_dir"])) / "metrics.csv").is_file()]
    key = "test_acc1"
    for method in dict.fromkeys(r["method"] for r in rows):
        histories = [read_history(r["run_dir"]) for r in rows if r["method"] == method]
        epochs = min(len(h) for h in histories)  # the epochs every seed tested (run.eval_every may skip some)
        key = metric or ("knn_acc1" if registry.is_self_supervised(method_name(method)) else "test_acc1")  # SSL: kNN
        xs = [e + 1 for e in range(epochs) if all(not math.isnan(h[e].get(key, math.nan)) for h in histories)]
        curve = [mean_std([h[x - 1][key] for h in histories]) for x in xs]
        mean = [m for m, _ in curve]
        line, = ax.plot(xs, mean, label=f"{method} (n={len(histories)})", marker="o" if len(xs) <= 20 else None)
        if len(histories) > 1:
            ax.fill_between(xs, [m - s for m, s in curve], [m + s for m, s in curve], color=line.get_color(),
                            alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel({"test_acc1": "test top-1 %", "knn_acc1": "kNN top-1 % (test)"}.get(key, f"{key} %"))
    ax.set_title(title or "test top-1 per epoch, mean over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def gallery_batch(cfg: TrainConfig, n: int = 8):
    """``(images (n, C, H, W) normalised float, labels (n,), test set)``: the first test image of
    each of the first ``n`` classes (then the next images, with fewer classes), as the trainer
    feeds them to a method."""
    from mixlab.data import normalize_on_device
    from mixlab.engine.data import build_split, default_transforms

    test = build_split(cfg, "test")
    test = test.with_transform(default_transforms(test, cfg)[1])  # None, or the eval resize + crop of mixed sizes
    firsts = [int((test.labels == c).nonzero()[0]) for c in range(test.num_classes) if (test.labels == c).any()]
    index = (firsts + [i for i in range(len(test)) if i not in firsts])[:n]
    images = torch.stack([test[i][0] for i in index])  # uint8 (n, C, H, W)
    return normalize_on_device(images, test.mean, test.std), test.labels[index], test


def plot_gallery(cfg: TrainConfig, methods: dict[str, dict[str, Any]], path: str | Path, seed: int = 4) -> None:
    """One row per method: the same 8 test images mixed by ``method.mix_preview`` with a generator
    seeded with ``seed`` (vanilla and methods without a preview show the images as they are).

    The default seed draws a mid-range first λ from Beta(1, 1) (0.48), so every mix is visible;
    seed 0 draws 0.97, which shows almost nothing.
    """
    images, labels, test = gallery_batch(cfg)
    model = registry.build_model(cfg.model.name, test.num_classes, **cfg.model.kwargs).eval()
    rows = []
    for name, params in methods.items():
        method = registry.build_method(method_name(name), test.num_classes, cfg.method.label_smoothing, **params)
        method.setup(model, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            mixed = method.mix_preview(images, labels)
        shown, targets = (images, labels) if mixed is None else (mixed.images, mixed.targets)
        if targets.ndim == 1:
            targets = torch.nn.functional.one_hot(targets.long(), test.num_classes).float()
        rows.append((name, display_images(shown, test.mean, test.std), targets))
    n = images.shape[0]
    fig = new_figure(1.5 * n + 0.8, 1.75 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (name, tiles, targets) in enumerate(rows):
        for i in range(n):
            show_tile(axes[r][i], tiles[i], soft_label_text(targets[i], test.classes))
        axes[r][0].text(-0.12, 0.5, name, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
    fig.suptitle(f"the same {n} test images mixed by each method (generator seed {seed})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
