"""Calibration of a classifier's confidence: ECE, RMS calibration error and reliability diagrams.

Predictions are grouped into ``n_bins`` equal-width confidence bins ``B_m = ((m-1)/M, m/M]``
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, Sec. 2, where the confidence of
a sample is its top-class probability). With ``n_m`` samples, accuracy ``acc_m`` and mean
confidence ``conf_m`` in bin ``m`` out of ``N`` samples:

* Expected Calibration Error (Guo et al. 2017, Eq. 3): ``ECE = Σ_m (n_m / N) |acc_m - conf_m|``;
* RMS calibration error (Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure",
  ICLR 2019, Sec. 4; also Hendrycks et al. "AugMix", ICLR 2020):
  ``RMS = sqrt(Σ_m (n_m / N) (acc_m - conf_m)²)``.

Both are returned as fractions in [0, 1]; :mod:`mixlab.evaluation.robustness` reports them in %.
``reliability_diagram`` draws per-bin accuracy against confidence (as in AutoMix, Fig. 8).

    >>> probs = torch.softmax(torch.randn(1000, 10), dim=1)
    >>> labels = torch.randint(0, 10, (1000,))
    >>> ece = expected_calibration_error(probs, labels)  # a float in [0, 1]
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["calibration_bins", "expected_calibration_error", "rms_calibration_error", "reliability_figure",
           "reliability_diagram"]


ACCURACY_COLOR = "#3b75af"  # the reliability diagram's accuracy bars (and the mean accuracy)
GAP_COLOR = "#d62728"  # its gap hatching (and the mean confidence)


def _confidences(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and reduce to (confidence, correct) float64 pairs, both (N,)."""
    if not isinstance(probs, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"probs and labels must be tensors, got {type(probs).__name__} and {type(labels).__name__}")
    if not probs.dtype.is_floating_point:
        raise TypeError(f"probs must be a floating tensor, got {probs.dtype}")
    if probs.ndim not in (1, 2):
        raise ValueError(f"probs must be (N, K) probabilities or (N,) confidences, got shape {tuple(probs.shape)}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"labels must have shape ({probs.shape[0]},) to match probs {tuple(probs.shape)}, "
                         f"got {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one sample, got N = 0")
    probs = probs.detach().double()
    if not bool(((probs >= 0) & (probs <= 1)).all()):  # NaN fails too
        low, high = float(probs.nan_to_num(nan=math.inf).min()), float(probs.nan_to_num(nan=-math.inf).max())
        nan = " and NaN" if bool(probs.isnan().any()) else ""
        raise ValueError(f"probs must be probabilities in [0, 1], got values in [{low}, {high}]{nan}")
    labels = labels.detach().to(probs.device)
    if probs.ndim == 1:
        if labels.dtype != torch.bool and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("with (N,) confidences, labels must say whether each prediction is correct (bool or 0/1)")
        return probs, labels.double()
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    conf, pred = probs.max(dim=1)
    return conf, (pred == labels).double()


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise TypeError(f"n_bins must be an int >= 1, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return n_bins


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin sample count, accuracy and mean confidence over equal-width confidence bins.

    Bin ``m`` (0-based) holds the confidences in ``(m / M, (m + 1) / M]``; a confidence of exactly
    0 goes to the first bin.

    Args:
        probs: (N, K) class probabilities, or (N,) confidences of the predicted class.
        labels: (N,) int class indices; with (N,) confidences, (N,) bool/0-1 "prediction correct".
        n_bins: M >= 1 (default 15, as Guo et al.).

    Returns:
        ``(counts, accuracy, confidence)``, each (M,) float64 on CPU; empty bins hold 0 accuracy and
        confidence.

    Raises:
        TypeError: non-tensor input, non-floating ``probs``, non-integer class labels.
        ValueError: shape mismatch, N = 0, ``n_bins`` < 1, probabilities outside [0, 1] or NaN.
    """
    n_bins = _check_n_bins(n_bins)
    conf, correct = _confidences(probs, labels)
    conf, correct = conf.cpu(), correct.cpu()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    index = torch.bucketize(conf, edges[1:-1], right=False)  # edges[i-1] < conf <= edges[i]
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(conf))
    hits = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, conf)
    safe = counts.clamp(min=1.0)
    return counts, hits / safe, conf_sum / safe


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017, Eq. 3): ``Σ_m (n_m / N) |acc_m - conf_m|``, a fraction in [0, 1].

    Args:
        probs: (N, K) class probabilities (e.g. ``logits.softmax(1)``), or (N,) confidences.
        labels: (N,) class indices; with (N,) confidences, (N,) bool "prediction correct".
        n_bins: number of equal-width confidence bins (default 15).

    Raises:
        TypeError, ValueError: see :func:`calibration_bins`.

    Example:
        >>> expected_calibration_error(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 0, 1, 1]))
        0.5
    """
    counts, acc, conf = calibration_bins(probs, labels, n_bins)
    return float((counts / counts.sum() * (acc - conf).abs()).sum())


def rms_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """RMS calibration error (Hendrycks et al. 2019): ``sqrt(Σ_m (n_m / N) (acc_m - conf_m)²)``.

    Same arguments and errors as :func:`expected_calibration_error`; a fraction in [0, 1], always
    >= the ECE on the same bins.
    """
    counts, acc, conf = calibration_bins(probs, labels, n_bins)
    return math.sqrt(float((counts / counts.sum() * (acc - conf).square()).sum()))


def reliability_figure(probs: Tensor, labels: Tensor, n_bins: int = 15, title: str | None = None):
    """A reliability diagram as a matplotlib ``Figure``: per-bin accuracy bars against the diagonal,
    the gap between each bin's accuracy and its mean confidence, and the confidence histogram
    underneath (AutoMix Fig. 8).

    The gap is an unfilled box with red hatching from the accuracy to the confidence, so both
    colours stay what the legend shows whichever side the confidence lies on: above a bar
    (over-confident) red hatching on white, inside it (under-confident) red hatching on the bar's
    blue, never a blend. Drawn with matplotlib's object API on an Agg canvas (no pyplot, the global
    backend is untouched).

    Args:
        probs, labels, n_bins: as :func:`expected_calibration_error`.
        title: first title line (default ``"Reliability diagram"``); ECE and RMS (in %) are appended.

    Raises:
        TypeError, ValueError: see :func:`calibration_bins`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts, acc, conf = calibration_bins(probs, labels, n_bins)
    weights = counts / counts.sum()
    ece = float((weights * (acc - conf).abs()).sum())
    rms = math.sqrt(float((weights * (acc - conf).square()).sum()))
    mean_acc = float((weights * acc).sum())
    mean_conf = float((weights * conf).sum())
    width = 1.0 / n_bins
    lefts = [m * width for m in range(n_bins)]
    filled = counts > 0
    acc_l, conf_l = acc.tolist(), conf.tolist()

    fig = Figure(figsize=(4.8, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(lefts, [a if f else 0.0 for a, f in zip(acc_l, filled)], width=width, align="edge",
            color=ACCURACY_COLOR, edgecolor="black", linewidth=0.6, label="accuracy")
    gap_lo = [min(a, c) for a, c in zip(acc_l, conf_l)]
    gap_hi = [abs(a - c) if f else 0.0 for a, c, f in zip(acc_l, conf_l, filled)]
    top.bar(lefts, gap_hi, bottom=gap_lo, width=width, align="edge", facecolor="none", edgecolor=GAP_COLOR,
            hatch="///", hatch_linewidth=1.6, linewidth=1.0, label="gap to confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title or 'Reliability diagram'}\nECE = {100 * ece:.2f}%   RMS = {100 * rms:.2f}%", fontsize=10)
    bottom.bar(lefts, weights.tolist(), width=width, align="edge", color="#7f7f7f", edgecolor="black", linewidth=0.6)
    bottom.axvline(mean_acc, color=ACCURACY_COLOR, linestyle="-", linewidth=1.5,
                   label=f"accuracy {100 * mean_acc:.1f}%")
    bottom.axvline(mean_conf, color=GAP_COLOR, linestyle="--", linewidth=1.5,
                   label=f"avg. confidence {100 * mean_conf:.1f}%")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("fraction of samples")
    bottom.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def reliability_diagram(probs: Tensor, labels: Tensor, path: str | Path, n_bins: int = 15,
                        title: str | None = None) -> Path:
    """Write :func:`reliability_figure` as a PNG; parent folders are created. Returns the path.

    Raises:
        TypeError, ValueError: see :func:`calibration_bins`.
    """
    fig = reliability_figure(probs, labels, n_bins, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
