"""Out-of-distribution detection by the maximum softmax probability: AUROC and FPR at 95 % TPR.

The baseline detector of Hendrycks & Gimpel ("A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017): a test image's score is the
classifier's confidence ``max_k softmax(f(x))_k``; in-distribution images should score higher than
out-of-distribution ones. Two threshold-free measures of how well the score separates them, both
with the in-distribution images as the positives:

* AUROC: the probability that an in-distribution image scores higher than an out-of-distribution
  one, ties counting one half (the Mann-Whitney U statistic over ``n_in · n_out``; the area under
  the ROC curve as ``sklearn.metrics.roc_auc_score`` computes it);
* FPR@95TPR: the fraction of out-of-distribution images accepted at the highest threshold that
  accepts at least 95 % of the in-distribution ones (accept: score >= threshold).

RegMixup (Pinto et al. 2022) reports both for CIFAR-10 against held-out datasets (SVHN, CIFAR-100,
Tiny ImageNet). mixlab ships no second dataset, so :func:`synthetic_ood` generates the synthetic
out-of-distribution sets that the OOD literature uses beside real ones, free and exact to reproduce:

* ``"gaussian"``: i.i.d. pixels N(0.5, 1) clipped to [0, 1] (Liang et al., ODIN, ICLR 2018;
  Hendrycks et al., Outlier Exposure, ICLR 2019);
* ``"uniform"``: i.i.d. pixels U(0, 1) (ODIN's "Uniform").

They are a floor (a model that cannot tell noise from images is badly calibrated away from its
data) rather than a substitute for a near-distribution test set; any ``(images, labels)`` data
(a held-out dataset's loader) can be given as the out-of-distribution set instead.

    >>> results = ood_detection(model, test_loader, "gaussian", mean, std)
    >>> results["auroc"], results["fpr95"]          # in %
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mixlab.evaluation.metrics import Data, iter_batches
from mixlab.evaluation.robustness import predict

__all__ = ["OOD_SETS", "msp_scores", "auroc", "fpr_at_tpr", "synthetic_ood", "ood_detection"]

OOD_SETS = ("gaussian", "uniform")


def msp_scores(logits: Tensor) -> Tensor:
    """The maximum softmax probability of each row of ``logits`` (N, K): (N,) float64 on the CPU."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be an (N, K) tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    return logits.detach().double().softmax(dim=1).amax(dim=1).cpu()


def _scores(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    for name, s in (("scores_in", scores_in), ("scores_out", scores_out)):
        if not isinstance(s, Tensor) or s.ndim != 1 or s.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor of scores, got "
                             f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
        if not s.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating-point scores, got {s.dtype}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"{name} must be finite, got NaN or infinite values")
    return scores_in.detach().double().cpu(), scores_out.detach().double().cpu()


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve of ``scores_in`` (positives) against ``scores_out`` (negatives), in
    [0, 1]: ``P(s_in > s_out) + P(s_in = s_out) / 2``, from the average ranks of all scores (the
    Mann-Whitney U statistic; equal to ``sklearn.metrics.roc_auc_score`` with ties).

    Raises:
        TypeError, ValueError: scores that are not non-empty, finite, floating 1-D tensors.
    """
    s_in, s_out = _scores(scores_in, scores_out)
    n_in, n_out = s_in.numel(), s_out.numel()
    _, inverse, counts = torch.unique(torch.cat([s_in, s_out]), sorted=True, return_inverse=True,
                                      return_counts=True)
    upper = counts.cumsum(0).double()  # 1-based rank of each distinct value's last occurrence
    mid_rank = upper - (counts.double() - 1) / 2  # the average rank of its ties
    rank_sum_in = mid_rank[inverse[:n_in]].sum()
    u = float(rank_sum_in) - n_in * (n_in + 1) / 2
    return u / (n_in * n_out)


def fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """The false-positive rate on ``scores_out`` at the highest threshold t whose true-positive
    rate ``mean(scores_in >= t)`` is at least ``tpr`` (t = the ⌈tpr · n_in⌉-th largest in-score):
    ``mean(scores_out >= t)``, in [0, 1].

    Raises:
        TypeError, ValueError: bad scores (as :func:`auroc`), ``tpr`` outside (0, 1].
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0 < tpr <= 1:
        raise ValueError(f"tpr must be a number in (0, 1], got {tpr!r}")
    s_in, s_out = _scores(scores_in, scores_out)
    k = max(math.ceil(tpr * s_in.numel() - 1e-9), 1)  # in-images that must be accepted (1e-9: 0.95 · n's rounding)
    threshold = s_in.sort(descending=True).values[k - 1]
    return float((s_out >= threshold).double().mean())


def synthetic_ood(kind: str, n: int, shape: Sequence[int], seed: int = 0) -> Tensor:
    """``n`` synthetic out-of-distribution images in pixel space: (n, C, H, W) float32 in [0, 1],
    the same for the same ``seed`` on every machine (drawn on the CPU).

    Args:
        kind: ``"gaussian"`` (N(0.5, 1) clipped to [0, 1]) or ``"uniform"`` (U(0, 1)).
        n: number of images, >= 1.
        shape: (C, H, W) of one image.
        seed: the generator's seed.

    Raises:
        ValueError: unknown ``kind`` (the valid ones are listed), n < 1, a bad shape.
    """
    if kind not in OOD_SETS:
        raise ValueError(f"kind must be one of {list(OOD_SETS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    shape = tuple(shape)
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape must be (C, H, W) of positive ints, got {shape!r}")
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return (torch.randn((n, *shape), generator=g) + 0.5).clamp_(0.0, 1.0)
    return torch.rand((n, *shape), generator=g)


def ood_detection(model: nn.Module, in_data: Data, out_data: str | Data, mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str | None = None, *, n_out: int | None = None, seed: int = 0,
                  batch_size: int | None = None, in_logits: Tensor | None = None,
                  image_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """Max-softmax-probability OOD detection of ``model``: AUROC and FPR@95TPR, in %.

    Args:
        model: classifier of normalised images.
        in_data: the in-distribution test data, ``(images, labels)`` batches (normalised or uint8) or
            one pair of tensors; read twice with a synthetic ``out_data`` (a ``DataLoader``, not a
            one-shot iterator).
        out_data: a name of :data:`OOD_SETS` (synthetic images shaped like ``in_data``'s), or data
            as ``in_data`` (its labels are not used).
        mean, std: the normalisation of the data (synthetic images are normalised with it).
        device: where to run (default: the model's device).
        n_out: synthetic images (default: as many as the in-distribution images).
        seed: the synthetic set's seed.
        batch_size: for pairs of tensors (default 256).
        in_logits: the model's (N, K) logits on ``in_data`` when they are at hand (the clean pass
            of :func:`~mixlab.evaluation.robustness.evaluate_all`): that pass is not run again.
        image_shape: (C, H, W) of the in-distribution images, the synthetic images' shape
            (default: read from ``in_data``'s first batch). With ``in_logits`` too, ``in_data`` is
            not read at all.

    Returns:
        ``{"ood": name, "auroc": %, "fpr95": %, "n_in", "n_out", "msp_in": mean score %,
        "msp_out": mean score %}``.

    Raises:
        ValueError: an unknown set name, no samples, ``n_out`` < 1, ``in_logits`` not (N, K).
    """
    if isinstance(out_data, str):
        if out_data not in OOD_SETS:
            raise ValueError(f"out_data must be one of {list(OOD_SETS)} or (images, labels) data, got {out_data!r}")
        if n_out is not None and (isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1):
            raise ValueError(f"n_out must be None or an int >= 1, got {n_out!r}")
    if in_logits is not None and (not isinstance(in_logits, Tensor) or in_logits.ndim != 2):
        raise ValueError(f"in_logits must be None or the (N, K) logits of in_data, got "
                         f"{tuple(in_logits.shape) if isinstance(in_logits, Tensor) else type(in_logits).__name__}")
    logits_in = in_logits if in_logits is not None else \
        predict(model, in_data, device, mean=mean, std=std, batch_size=batch_size)[0]
    if isinstance(out_data, str):
        if image_shape is None:
            first, _ = next(iter_batches(in_data, 1))  # the images' shape (C, H, W)
            image_shape = first.shape[1:]
        pixels = synthetic_ood(out_data, n_out or logits_in.shape[0], tuple(image_shape), seed)
        m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        out_pair = ((pixels - m) / s, torch.zeros(pixels.shape[0], dtype=torch.int64))
        logits_out, _ = predict(model, out_pair, device, mean=mean, std=std, batch_size=batch_size)
    else:
        logits_out, _ = predict(model, out_data, device, mean=mean, std=std, batch_size=batch_size)
    s_in, s_out = msp_scores(logits_in), msp_scores(logits_out)
    return {"ood": out_data if isinstance(out_data, str) else "data", "auroc": 100.0 * auroc(s_in, s_out),
            "fpr95": 100.0 * fpr_at_tpr(s_in, s_out), "n_in": s_in.numel(), "n_out": s_out.numel(),
            "msp_in": 100.0 * float(s_in.mean()), "msp_out": 100.0 * float(s_out.mean())}
