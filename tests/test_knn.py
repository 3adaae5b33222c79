"""The kNN monitor: weighted voting of the k nearest training features by cosine similarity."""

from __future__ import annotations

import pytest
import torch

from mixlab.evaluation.knn import knn_accuracy, knn_predict


def test_votes_by_hand():
    # test point (1, 0): neighbours sim 1.0 (class 0) and 0.8 (class 1, twice) with k = 3, T = 0.1:
    # class 0 gets e^10 = 22026, class 1 gets 2 e^8 = 5962 -> class 0; with T = 10 (flat weights) class 1
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.0]])  # normalised inside
    assert knn_predict(test, train, labels, 3, k=3, temperature=0.1).tolist() == [0]
    assert knn_predict(test, train, labels, 3, k=3, temperature=10.0).tolist() == [1]
    assert knn_predict(test, train, labels, 3, k=1).tolist() == [0]


def test_separable_clusters_are_classified_perfectly_in_chunks():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 5
    train_y, test_y = torch.arange(5).repeat(40), torch.arange(5).repeat(9)
    train = centres[train_y] + 0.1 * torch.randn(200, 16, generator=g)
    test = centres[test_y] + 0.1 * torch.randn(45, 16, generator=g)
    assert knn_accuracy(test, test_y, train, train_y, 5, k=200) == 100.0  # k clipped to the 200 train points
    assert torch.equal(knn_predict(test, train, train_y, 5, chunk=7), knn_predict(test, train, train_y, 5))


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k must be an int >= 1"), ({"temperature": 0.0}, "temperature must be > 0"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 2, **kwargs)
    with pytest.raises(ValueError, match="same D"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 5), torch.zeros(4, dtype=torch.long), 2)
