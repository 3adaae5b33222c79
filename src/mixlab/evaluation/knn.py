"""The kNN monitor of self-supervised training (Wu et al. 2018, used by MoCo and DINO).

Each test feature votes with its k nearest training features by cosine similarity, each vote
weighted by ``exp(similarity / T)`` (k = 200, T = 0.1 by default, the usual CIFAR monitor); the
class with the largest total wins. Vectorised over test chunks, on the features' device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.evaluation.features import extract_features

__all__ = ["knn_predict", "knn_accuracy", "knn_monitor"]


def knn_predict(test_features: Tensor, train_features: Tensor, train_labels: Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """(N_test,) int64 predicted classes by weighted kNN voting.

    Args:
        test_features: (N_test, D); L2-normalised here.
        train_features: (N_train, D); L2-normalised here.
        train_labels: (N_train,) int64 in [0, num_classes).
        k: neighbours (clipped to N_train), >= 1.
        temperature: T of the ``exp(sim / T)`` vote weights, > 0.
        chunk: test features per matrix product (bounds memory at chunk × N_train).

    Raises:
        ValueError: mismatched shapes, k < 1 or T <= 0.
    """
    if test_features.ndim != 2 or train_features.ndim != 2 or test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(test_features.shape)} and "
                         f"{tuple(train_features.shape)}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must be ({train_features.shape[0]},), got {tuple(train_labels.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    train = torch.nn.functional.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device).long()
    k = min(k, train.shape[0])
    out = []
    for part in torch.nn.functional.normalize(test_features.float(), dim=1).split(chunk):
        sim, idx = (part.to(train.device) @ train.T).topk(k, dim=1)  # (n, k)
        votes = torch.zeros(part.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out)


def knn_accuracy(test_features: Tensor, test_labels: Tensor, train_features: Tensor, train_labels: Tensor,
                 num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict` on the test set."""
    pred = knn_predict(test_features, train_features, train_labels, num_classes, k, temperature)
    return 100.0 * float((pred.cpu() == test_labels.cpu().long()).float().mean())


def knn_monitor(model: torch.nn.Module, train_batches, test_batches, device: torch.device, mean, std,
                num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """kNN top-1 (%) of the model's features: the un-augmented training images are the memory
    bank, the test images the queries (the per-epoch monitor of self-supervised training).
    Features are :func:`~mixlab.evaluation.features.extract_features` (eval mode, the trainer's normalisation)."""
    train_f, train_y = extract_features(model, train_batches, device, mean, std)
    test_f, test_y = extract_features(model, test_batches, device, mean, std)
    return knn_accuracy(test_f.to(device), test_y, train_f.to(device), train_y, num_classes, k, temperature)
