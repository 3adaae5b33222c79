"""Class-balanced subsets, DataLoader worker seeding, and a split's batches in order (evaluation)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

__all__ = ["class_balanced_subset", "seed_worker", "eval_loader"]


def class_balanced_subset(labels: Tensor | Sequence[int], per_class: int, seed: int = 0,
                          classes: Sequence[str] | None = None) -> Tensor:
    """Indices of exactly ``per_class`` random items of every class, sorted ascending.

    Fully vectorised: items get random keys from a ``torch.Generator`` seeded with ``seed``, are
    ordered by (label, key), and the first ``per_class`` of each class are kept.

    Args:
        labels: integer class labels ``(N,)``, values >= 0.
        per_class: items to keep per class, >= 1.
        seed: seed of the draw (same seed, same indices).
        classes: class names; sets the number of classes (a class absent from ``labels`` then
            counts as too small) and names classes in errors. Default: ``0..labels.max()``.

    Raises:
        TypeError: ``labels`` not integer.
        ValueError: ``per_class`` < 1, labels negative/out of range, or a class with fewer than
            ``per_class`` items (named in the message).
    """
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise TypeError(f"labels must be a 1-D integer tensor or sequence, "
                        f"got {labels.dtype} of shape {tuple(labels.shape)}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be an int >= 1, got {per_class!r}")
    labels = labels.to(torch.int64).cpu()
    if labels.numel() == 0:
        raise ValueError("labels is empty")
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels, minlength=num_classes)
    short = (counts < per_class).nonzero().flatten().tolist()
    if short:
        c = short[0]
        name = f"{c} ({classes[c]!r})" if classes is not None else str(c)
        raise ValueError(f"class {name} has only {int(counts[c])} items, fewer than per_class={per_class}"
                         + (f" ({len(short)} classes are short)" if len(short) > 1 else ""))
    g = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(torch.rand(labels.numel(), generator=g))  # random order ...
    order = order[torch.argsort(labels[order], stable=True)]  # ... grouped by class
    starts = torch.cumsum(counts, 0) - counts  # first position of each class in ``order``
    rank = torch.arange(labels.numel()) - starts[labels[order]]
    return order[rank < per_class].sort().values


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for ``DataLoader``: seed Python's ``random`` and NumPy from the torch seed
    that the DataLoader already gave this worker (base seed + worker id), so every library draws
    distinct, reproducible numbers per worker. Pass ``generator=torch.Generator().manual_seed(s)``
    to the DataLoader to make the base seed itself reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def eval_loader(dataset: Any, batch_size: int, num_workers: int = 0, pin_memory: bool = False, start: int = 0,
                stop: int | None = None) -> Any:
    """The ``(images, labels)`` batches of ``dataset[start:stop]`` in order, every image once (no
    padding, the last batch may be smaller): plain slices of the decoded ``uint8`` tensors when the
    dataset has no transform (no loader, no copies), else a ``DataLoader`` (images decoded or
    transformed per item, e.g. resized and cropped from mixed sizes)."""
    stop = len(dataset) if stop is None else stop
    if getattr(dataset, "transform", None) is None and not getattr(dataset, "is_lazy", True):
        return list(zip(dataset.images[start:stop].split(batch_size), dataset.labels[start:stop].split(batch_size)))
    part = dataset if (start, stop) == (0, len(dataset)) else Subset(dataset, range(start, stop))
    return DataLoader(part, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
