"""``mixlab cam``: class activation maps of several trained runs on the same test images, side by side.

    mixlab cam runs/bench/cifar10-quick/runs/{vanilla,mixup,cutmix,recursivemix}-s0 --images 8 --topk 2

    from mixlab.engine.cam import compare_cams
    path, runs = compare_cams(["runs/a", "runs/b"], images=6, topk=2)

RecursiveMix §4.4 / Fig. 6 and AutoMix Fig. 3 compare the CAMs of models trained with different
mixing methods. Each run's model is rebuilt from its checkpoint (:mod:`mixlab.engine.eval_run`)
and its top-k CAMs (CAM for a global-average-pool + linear head, Grad-CAM otherwise;
:func:`mixlab.evaluation.cam.class_activation_maps`, bilinear upsampling to the image size) are
computed on the same images, taken from the first run's test split with its test transform and
normalised with each run's own statistics. :func:`mixlab.evaluation.cam.plot_cams` draws one row
per image: the image with its true class, then each run's k maps with the class names and the
run's probabilities (green: the true class).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from mixlab import registry
from mixlab.engine.distributed import resolve_device
from mixlab.engine.eval_run import check_classes, eval_data, load_weights, open_checkpoint, rebuild_model
from mixlab.evaluation.cam import CAMOutput, class_activation_maps, plot_cams

__all__ = ["compare_cams", "spread_over_classes", "MAX_IMAGES"]

MAX_IMAGES = 32  # rows of the figure


def spread_over_classes(labels: torch.Tensor, n: int) -> list[int]:
    """``n`` indices into ``labels``, as many classes as possible: with ``n`` at most the number of
    classes present, the first image of ``n`` classes evenly spread over them (sorted class order);
    beyond, every class's first image, then every class's second, ... in class order."""
    classes = labels.unique(sorted=True).tolist()
    first_of = {}
    rank = torch.empty_like(labels)
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):  # the occurrence number of each image in its class
        rank[i] = seen.get(y, 0)
        seen[y] = seen.get(y, 0) + 1
        first_of.setdefault(y, i)
    if n <= len(classes):
        picks = torch.linspace(0, len(classes) - 1, n).round().long().tolist()
        return [first_of[classes[p]] for p in picks]
    order = sorted(range(len(labels)), key=lambda i: (int(rank[i]), int(labels[i])))
    return order[:n]


def _names(paths: Sequence[Path]) -> list[str]:
    """A column title per run: its directory's name, numbered where two are alike."""
    names = [p.parent.name or str(p) for p in paths]
    return [f"{name} ({i + 1})" if names.count(name) > 1 else name for i, name in enumerate(names)]


def compare_cams(runs: Sequence[str | os.PathLike], *, images: int = 8, indices: Sequence[int] | None = None,
                 topk: int = 2, out: str | os.PathLike | None = None, device: str = "auto",
                 data_root: str | os.PathLike | None = None) -> tuple[Path, list[tuple[str, CAMOutput]]]:
    """Draw the top-``topk`` CAMs of each run in ``runs`` on the same test images into ``out``.

    Args:
        runs: run directories (their ``checkpoint.pt``) or checkpoint files of classification runs
            on the same dataset (same classes and test image size).
        images: how many test images, 1 to :data:`MAX_IMAGES`, spread over the classes
            (:func:`spread_over_classes`); ignored when ``indices`` is given.
        indices: these test images (indices into the first run's test split) instead.
        topk: maps per run and image: the k most probable classes, best first.
        out: the PNG (default ``runs/cam/<run names joined by +>.png``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        data_root: where the runs' dataset is now, if it moved since training.

    Returns:
        ``(the PNG written, [(run name, CAMOutput on the CPU), ...])``.

    Raises:
        ValueError (``CheckpointError`` is one): no run, bad ``images``/``indices``/``topk``, a
            missing or unreadable checkpoint, a self-supervised run (no trained classifier), runs
            of different datasets, classes or image sizes, a dataset that cannot be loaded.
    """
    if not runs:
        raise ValueError("give at least one run directory or checkpoint to draw")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"--topk must be an integer >= 1, got {topk!r}")
    if indices is None and (isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_IMAGES):
        raise ValueError(f"--images must be an integer in [1, {MAX_IMAGES}] (one row each), got {images!r}")
    if indices is not None:
        indices = list(indices)
        if not 1 <= len(indices) <= MAX_IMAGES or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                                       for i in indices):
            raise ValueError(f"--indices must be 1 to {MAX_IMAGES} integers >= 0 (test image indices), got {indices!r}")
    dev = resolve_device(device, what="device")
    opened = []
    for path in runs:  # every checkpoint checked before any model is run
        ckpt_path, ckpt, cfg = open_checkpoint(path, data_root)
        if registry.is_self_supervised(cfg.method.name):
            raise ValueError(f"cannot draw CAMs of {path}: it is a self-supervised run ({cfg.method.name}) whose "
                             f"classifier was never trained (`mixlab probe` trains one)")
        opened.append((path, ckpt_path, ckpt, cfg))
    first_path, _, first_ckpt, first_cfg = opened[0]
    if topk > first_ckpt["num_classes"]:
        raise ValueError(f"--topk must be at most the number of classes ({first_ckpt['num_classes']}), got {topk}")
    test_set, _, _, _ = eval_data(first_cfg, first_path)
    check_classes(first_ckpt, test_set, first_cfg, first_path)
    if indices is None:
        picks = spread_over_classes(test_set.labels, min(images, len(test_set)))
    else:
        picks = indices
        bad = [i for i in picks if i >= len(test_set)]
        if bad:
            raise ValueError(f"--indices {bad} are out of range: the test split of {first_path} has {len(test_set)} "
                             f"images (indices 0 to {len(test_set) - 1})")
    x = torch.stack([torch.as_tensor(test_set[i][0]) for i in picks])  # (n, C, H, W) uint8, the test transform
    y = test_set.labels[picks]
    from mixlab.data import normalize_on_device

    outputs = []
    for (path, ckpt_path, ckpt, cfg), name in zip(opened, _names([p for _, p, _, _ in opened])):
        own_set, mean, std, _ = eval_data(cfg, path)  # this run's normalisation
        num_classes = check_classes(ckpt, own_set, cfg, path)
        if cfg.data.name != first_cfg.data.name or own_set.classes != test_set.classes:
            raise ValueError(f"cannot compare {path} with {first_path}: they were trained on different datasets or "
                             f"classes ({cfg.data.name}, {num_classes} classes vs {first_cfg.data.name}, "
                             f"{len(test_set.classes)} classes)")
        size = tuple(torch.as_tensor(own_set[0][0]).shape)
        if size != tuple(x.shape[1:]):
            raise ValueError(f"cannot compare {path} with {first_path}: their test images differ in size "
                             f"({size} vs {tuple(x.shape[1:])})")
        model = load_weights(rebuild_model(cfg, num_classes, dev), ckpt["model"], "model weights", ckpt["path"])
        maps = class_activation_maps(model, normalize_on_device(x.to(dev), mean, std), topk=topk)
        outputs.append((name, CAMOutput(maps.cams.cpu(), maps.classes.cpu(), maps.probs.cpu(), maps.method,
                                        maps.layer)))
    path = Path(out) if out is not None else Path("runs") / "cam" / f"{'+'.join(n for n, _ in outputs)[:150]}.png"
    plot_cams(x, outputs, test_set.classes, labels=y, path=path)
    return path, outputs
