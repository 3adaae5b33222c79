"""A backbone's pooled features on a set of images: what the kNN monitor and the linear probe read.

    features, labels = extract_features(model, test_set, "cpu", test_set.mean, test_set.std)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mixlab.evaluation.metrics import eval_mode, iter_batches, model_device

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(model: nn.Module, loader_or_dataset: Any, device: torch.device | str | None,
                     mean: Sequence[float], std: Sequence[float], batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """The pooled features of ``model`` on every image of ``loader_or_dataset``.

    ``features = model.forward_head(model.forward_features(x), pre_logits=True)``, in eval mode (the
    model's mode is restored afterwards; BatchNorm statistics are not updated), without gradients.

    Args:
        model: a model of :mod:`mixlab.models` (``forward_features`` / ``forward_head``).
        loader_or_dataset: a ``DataLoader`` (or any iterable) of ``(images, labels)`` batches, one
            ``(images, labels)`` pair of tensors, or a dataset of ``(image, label)`` items (a
            :class:`~mixlab.data.ImageTensorDataset` without transform is sliced, not loaded).
            ``uint8`` images (the datasets' CHW pixels) are normalised as the trainer does
            (``normalize_on_device`` with ``mean``/``std``); float images are taken as normalised.
        device: where to run (``None``: the model's device; the model must already be there).
        mean, std: per-channel statistics of the run's normalisation, in [0, 1] units.
        batch_size: images per forward pass, for a dataset or a pair of tensors.

    Returns:
        ``(features (N, C) float32, labels (N,) int64)``, both on the CPU.

    Raises:
        ValueError: ``batch_size`` < 1, no images, features that are not (B, C).
    """
    from mixlab.data import eval_loader, normalize_on_device

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    data = loader_or_dataset
    if hasattr(data, "images") and hasattr(data, "with_transform"):  # an ImageTensorDataset
        data = eval_loader(data, batch_size)
    elif isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size)
    device = model_device(model, device)
    mean, std = tuple(mean), tuple(std)
    features, labels = [], []
    with eval_mode(model):
        for images, targets in iter_batches(data, batch_size):
            x = images.to(device)
            x = (normalize_on_device(x, mean, std) if x.dtype == torch.uint8 else x).contiguous()
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            if f.ndim != 2:
                raise ValueError(f"extract_features: forward_head(..., pre_logits=True) of {type(model).__name__} "
                                 f"gave shape {tuple(f.shape)}, not (B, C)")
            features.append(f.float().cpu())
            labels.append(targets.cpu().long())
    if not features:
        raise ValueError("extract_features: the data yielded no images")
    return torch.cat(features), torch.cat(labels)
