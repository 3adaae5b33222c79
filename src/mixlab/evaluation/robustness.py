"""Evaluate a trained classifier the way the AutoMix / CropMix papers do: clean accuracy,
calibration, FGSM robustness and accuracy under CIFAR-10-C style corruptions.

* clean: top-1 / top-5 accuracy (%), NLL, ECE and RMS calibration error (%, 15 bins;
  :mod:`mixlab.evaluation.calibration`);
* FGSM (Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015, Eq. 3):
  ``x_adv = clamp(x + ε·sign(∇_x CE(f(x), y)), 0, 1)`` in pixel space, default ε = 8/255, as the
  robustness tables of AutoMix (Liu et al., ECCV 2022) and its follow-ups;
* corruptions (Hendrycks & Dietterich, ICLR 2019): top-1 under each corruption of
  :mod:`mixlab.evaluation.corruptions` at severities 1-5, their mean per corruption and the mean over
  all of them ("mCA", mean corruption accuracy).

Data comes as a ``DataLoader`` (or any iterable) of ``(images, labels)`` batches, or as one
``(images, labels)`` pair of tensors. Images are normalised floats ``(x01 - mean) / std`` (as the
model sees them); ``uint8`` pixel batches (the trainer's loaders) are accepted too and normalised
on the device. Attacks and corruptions act in pixel space: denormalise, perturb, clamp to [0, 1],
renormalise. The model is put in eval mode for every function and its previous mode restored.

    >>> results = evaluate_all(model, test_loader, mean=CIFAR10_MEAN, std=CIFAR10_STD,
    ...                        out_dir="runs/x/eval")  # writes eval.json, calibration.png
    >>> print(format_table(results))
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.evaluation.calibration import expected_calibration_error, reliability_diagram, rms_calibration_error
from mixlab.evaluation.corruptions import CORRUPTIONS, corrupt
from mixlab.evaluation.metrics import DEFAULT_BATCH, Data, eval_mode, iter_batches, model_device
from mixlab.models.inference import fused_for_inference

__all__ = [
    "clean_metrics",
    "corruption_accuracy",
    "evaluate_all",
    "fgsm_accuracy",
    "format_table",
    "predict",
]

# ----------------------------------------------------------------------------------------------
# Helpers: pixel space, arguments, seeds


def _stats(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int,
           device: torch.device) -> tuple[Tensor, Tensor]:
    """(1, C, 1, 1) float32 mean and std on ``device``, validated against ``channels``."""
    if mean is None or std is None:
        raise TypeError("mean and std are needed to move between normalised and pixel space")
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).flatten()
    s = torch.as_tensor(std, dtype=torch.float32, device=device).flatten()
    if m.numel() != channels or s.numel() != channels:
        raise ValueError(f"mean and std must have one value per channel ({channels}), got {m.numel()} and {s.numel()}")
    if not bool((s > 0).all()):
        raise ValueError(f"std must be > 0, got {tuple(s.tolist())}")
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)


class _Pixels:
    """Conversions between the data's images, pixel space [0, 1] and the model's input."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device) -> None:
        self.mean_, self.std_, self.device = mean, std, device
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def stats(self, channels: int) -> tuple[Tensor, Tensor]:
        if channels not in self._cache:
            self._cache[channels] = _stats(self.mean_, self.std_, channels, self.device)
        return self._cache[channels]

    def pixels(self, images: Tensor) -> Tensor:
        """Data images (normalised float or uint8) on the device -> float32 pixels (B, C, H, W)."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            return images.float() / 255.0
        if not images.dtype.is_floating_point:
            raise TypeError(f"images must be normalised floats or uint8, got {images.dtype}")
        m, s = self.stats(images.shape[1])
        return images.float() * s + m

    def model_input(self, pixels: Tensor) -> Tensor:
        m, s = self.stats(pixels.shape[1])
        return (pixels - m) / s

    def normalised(self, images: Tensor) -> Tensor:
        """Data images -> model input; normalised floats pass through untouched (no round trip)."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            return self.model_input(images.float() / 255.0)
        return images


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a real number >= 0, got {type(epsilon).__name__}")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0 (pixel units, e.g. 8/255), got {epsilon}")
    return float(epsilon)


def _check_corruption_plan(corruptions: Sequence[str] | None, severities: Sequence[int]) -> tuple[list[str], list[int]]:
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"Unknown corruption(s) {unknown}. Valid corruptions are {sorted(CORRUPTIONS)}")
    if not names:
        raise ValueError("corruptions must name at least one corruption (None means all)")
    sev = list(severities)
    if not sev or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5 for s in sev):
        raise ValueError(f"severities must be a non-empty sequence of ints in 1..5, got {tuple(severities)}")
    return list(dict.fromkeys(names)), list(dict.fromkeys(sev))


def _stable_seed(seed: int, name: str, severity: int) -> int:
    """Seed for one (corruption, severity): independent of which other corruptions are run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 8 + severity) % (2**63)


# ----------------------------------------------------------------------------------------------
# Clean predictions and metrics


@torch.no_grad()
def predict(model: nn.Module, loader: Data, device: torch.device | str | None = None, *,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Logits of ``model`` on every sample of ``loader``.

    Args:
        model: classifier mapping normalised (B, C, H, W) floats to (B, K) logits.
        loader: ``(images, labels)`` batches of normalised images, or one pair of tensors.
        device: where to run (default: the model's device).
        mean, std: only needed when the loader yields ``uint8`` pixel batches.
        batch_size: batch size when ``loader`` is a pair of tensors (default 256).

    Returns:
        ``(logits (N, K) float32, labels (N,) int64)``, both on the CPU.

    Raises:
        ValueError: the loader yields no samples.
    """
    device = model_device(model, device)
    px = _Pixels(mean, std, device)
    all_logits, all_labels = [], []
    with eval_mode(model):
        for images, labels in iter_batches(loader, batch_size):
            all_logits.append(model(px.normalised(images)).float().cpu())
            all_labels.append(labels.cpu().long())
    if not all_logits:
        raise ValueError("predict: the loader yielded no samples")
    return torch.cat(all_logits), torch.cat(all_labels)


def clean_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean NLL (nats), ECE and RMS calibration error (%).

    Args:
        logits: (N, K); top-5 becomes top-K when K < 5.
        labels: (N,) class indices.
        n_bins: confidence bins for ECE / RMS (default 15).

    Returns:
        ``{"top1", "top5", "nll", "ece", "rms", "n"}``.

    Raises:
        ValueError: shapes that do not match, N = 0.
    """
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("clean_metrics needs at least one sample, got N = 0")
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    n = labels.shape[0]
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
    hit = top == labels[:, None]
    probs = logits.softmax(dim=1)
    return {
        "top1": 100.0 * float(hit[:, 0].sum()) / n,
        "top5": 100.0 * float(hit.any(dim=1).sum()) / n,
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": 100.0 * expected_calibration_error(probs, labels, n_bins),
        "rms": 100.0 * rms_calibration_error(probs, labels, n_bins),
        "n": n,
    }


# ----------------------------------------------------------------------------------------------
# FGSM


def fgsm_accuracy(model: nn.Module, loader: Data, mean: Sequence[float], std: Sequence[float],
                  epsilon: float = 8 / 255, device: torch.device | str | None = None,
                  batch_size: int | None = None) -> float:
    """Top-1 accuracy (%) under the FGSM attack (Goodfellow et al. 2015) in pixel space.

    For each batch: ``x`` = denormalised images, ``x_adv = clamp(x + ε·sign(∇_x CE(f(x), y)), 0, 1)``
    (one gradient step of size ε in the L∞ ball), renormalised and classified. The model is in eval
    mode (BatchNorm uses running statistics, dropout is off); its parameters' ``.grad`` are left
    untouched.

    Args:
        model, loader, device, batch_size: as :func:`predict`.
        mean, std: the per-channel normalisation of the loader's images.
        epsilon: L∞ budget in pixel units (default 8/255); 0 gives the clean accuracy.

    Raises:
        ValueError: negative / non-finite ``epsilon``, mean/std of the wrong length, no samples.
    """
    epsilon = _check_epsilon(epsilon)
    device = model_device(model, device)
    px = _Pixels(mean, std, device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with eval_mode(model):
        for images, labels in iter_batches(loader, batch_size):
            labels = labels.to(device, non_blocking=True)
            x = px.pixels(images).detach().requires_grad_(True)  # (B, C, H, W) in [0, 1]
            with torch.enable_grad():
                loss = F.cross_entropy(model(px.model_input(x)).float(), labels, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                x_adv = (x.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)
                correct += (model(px.model_input(x_adv)).argmax(dim=1) == labels).sum()
            n += labels.shape[0]
    if n == 0:
        raise ValueError("fgsm_accuracy: the loader yielded no samples")
    return 100.0 * float(correct) / n


# ----------------------------------------------------------------------------------------------
# Corruptions


def _cache_pixels(loader: Data, px: _Pixels, max_images: int | None,
                  batch_size: int | None) -> tuple[Tensor, Tensor]:
    """The images on the CPU (uint8 if the data is uint8, else float32 pixels in [0, 1]) and their
    labels: all of them, or ``max_images`` evenly strided over the whole set, so that a subset of a
    class-sorted test split (an ImageFolder) still covers every class."""
    images, labels = [], []
    for x, y in iter_batches(loader, batch_size):
        images.append(x.cpu() if x.dtype == torch.uint8 else px.pixels(x).cpu())
        labels.append(y.cpu().long())
    if not images:
        raise ValueError("corruption_accuracy: the loader yielded no samples")
    if len({t.dtype for t in images}) > 1:
        images = [t.float() / 255.0 if t.dtype == torch.uint8 else t for t in images]
    images_all, labels_all = torch.cat(images), torch.cat(labels)
    n = images_all.shape[0]
    if max_images is not None and max_images < n:
        keep = torch.linspace(0, n - 1, max_images).round().long()  # evenly strided, deterministic
        images_all, labels_all = images_all[keep], labels_all[keep]
    return images_all, labels_all


@torch.no_grad()
def corruption_accuracy(model: nn.Module, loader: Data, mean: Sequence[float], std: Sequence[float],
                        corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
                        device: torch.device | str | None = None, seed: int = 0, max_images: int | None = None,
                        batch_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Top-1 accuracy (%) under each corruption and severity (Hendrycks & Dietterich 2019).

    The loader is read once and its images cached on the CPU in pixel space (``uint8`` if the
    loader yields ``uint8``, else float32: 120 MB for the CIFAR-10 test set; use ``max_images`` for
    large sets). Then, for every (corruption, severity), the cache is corrupted batch by batch on
    ``device`` with a generator seeded from ``(seed, corruption, severity)``, renormalised and
    classified.

    Args:
        model, loader, device: as :func:`predict`.
        mean, std: per-channel normalisation of the loader's images.
        corruptions: names from :data:`~mixlab.evaluation.corruptions.CORRUPTIONS` (default: all).
        severities: subset of 1..5 (default all five).
        seed: results are reproducible for the same seed, device and ``batch_size``.
        max_images: evaluate ``max_images`` images evenly strided over the set (default: all).
        batch_size: images per corrupted batch (default: the loader's ``batch_size``, else 256).
        progress: tqdm bar over the corruption × severity loop.

    Returns:
        ``{"accuracy": {name: [acc per severity]}, "mean": {name: mean over severities},
        "mCA": mean over all corruptions and severities, "clean_top1": top-1 on the same images,
        "severities": [...], "n": images used, "seed": seed}``; accuracies in %.

    Raises:
        ValueError: unknown corruption (the valid ones are listed), severities outside 1..5,
            ``max_images`` < 1, no samples.
    """
    from tqdm.auto import tqdm

    names, sevs = _check_corruption_plan(corruptions, severities)
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be None or an int >= 1, got {max_images!r}")
    device = model_device(model, device)
    px = _Pixels(mean, std, device)
    step = batch_size or getattr(loader, "batch_size", None) or DEFAULT_BATCH
    images, labels = _cache_pixels(loader, px, max_images, batch_size)
    n = labels.shape[0]

    def accuracy_on(transform) -> float:
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, n, step):
            x = images[start: start + step].to(device, non_blocking=True)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x
            y = labels[start: start + step].to(device, non_blocking=True)
            correct += (model(px.model_input(transform(x))).argmax(dim=1) == y).sum()
        return 100.0 * float(correct) / n

    accuracy: dict[str, list[float]] = {}
    with eval_mode(model):
        clean_top1 = accuracy_on(lambda x: x)
        bar = tqdm(total=len(names) * len(sevs), desc="corruptions", disable=not progress, leave=False)
        for name in names:
            accuracy[name] = []
            for severity in sevs:
                bar.set_postfix_str(f"{name} s{severity}")
                generator = torch.Generator(device=device).manual_seed(_stable_seed(seed, name, severity))
                accuracy[name].append(accuracy_on(lambda x: corrupt(x, name, severity, generator=generator)))
                bar.update(1)
        bar.close()
    per_corruption = {name: sum(accs) / len(accs) for name, accs in accuracy.items()}
    return {
        "accuracy": accuracy,
        "mean": per_corruption,
        "mCA": sum(per_corruption.values()) / len(per_corruption),
        "clean_top1": clean_top1,
        "severities": sevs,
        "n": n,
        "seed": seed,
    }


# ----------------------------------------------------------------------------------------------
# Everything at once


def evaluate_all(model: nn.Module, loader: Data, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str | None = None, out_dir: str | Path | None = None,
                 fgsm: bool = True, corruptions: bool | Sequence[str] = True,
                 max_corruption_images: int | None = None, *, epsilon: float = 8 / 255,
                 severities: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0, n_bins: int = 15,
                 batch_size: int | None = None, progress: bool = True, ood: Sequence[str] = (),
                 ood_images: int | None = None) -> dict[str, Any]:
    """Clean metrics, calibration, FGSM, corruption accuracy and out-of-distribution detection of
    ``model`` on ``loader``.

    Args:
        model, loader, mean, std, device: as :func:`fgsm_accuracy`.
        out_dir: if given, ``eval.json`` (the returned dict) and ``calibration.png`` (reliability
            diagram, :func:`~mixlab.evaluation.calibration.reliability_diagram`) are written there.
        fgsm: run the FGSM attack (``epsilon``, default 8/255).
        corruptions: True for all corruptions, False for none, or a list of names.
        max_corruption_images: corruption accuracy on N images evenly strided over the set (default: all).
        severities, seed: see :func:`corruption_accuracy`.
        n_bins: calibration bins (default 15).
        batch_size: batch size for tensor input and corrupted batches.
        progress: tqdm bar over the corruption loop.
        ood: names of synthetic out-of-distribution sets (:data:`~mixlab.evaluation.ood.OOD_SETS`:
            ``"gaussian"``, ``"uniform"``) the max-softmax detector is scored against
            (:func:`~mixlab.evaluation.ood.ood_detection`, on the clean pass's logits); default none.
        ood_images: images of each OOD set (default: as many as the test images).

    Returns:
        ``{"clean": clean_metrics(...), "fgsm": {"epsilon", "top1"} or None,
        "corruptions": corruption_accuracy(...) or None, "ood": {"auroc", "fpr95" (means over the
        sets), "sets": {name: ood_detection(...)}} or None}``; accuracies, calibration errors,
        AUROC and FPR@95TPR in %.

    Raises:
        ValueError: as the functions above; arguments are checked before any evaluation.
    """
    from mixlab.evaluation.ood import OOD_SETS, ood_detection  # ood builds on predict: imported here

    epsilon = _check_epsilon(epsilon)
    if isinstance(ood, str) or not all(name in OOD_SETS for name in ood) or len(set(ood)) != len(ood):
        raise ValueError(f"ood must be distinct names among {list(OOD_SETS)}, got {ood!r}")
    if ood_images is not None and (isinstance(ood_images, bool) or not isinstance(ood_images, int) or ood_images < 1):
        raise ValueError(f"ood_images must be None or an integer >= 1, got {ood_images!r}")
    names = None
    if not isinstance(corruptions, bool):
        names, _ = _check_corruption_plan(corruptions, severities)
    elif corruptions:
        _check_corruption_plan(None, severities)
    device = model_device(model, device)
    if mean is None or std is None or len(mean) != len(std):
        raise ValueError(f"mean and std must be per-channel sequences of the same length, got {mean!r} and {std!r}")
    _stats(mean, std, len(mean), torch.device("cpu"))  # std > 0, before any evaluation

    with eval_mode(model):
        model = fused_for_inference(model)  # BatchNorm folded into the convolutions: ~1.3x faster
    shape: list[tuple[int, ...]] = []  # (C, H, W) of the images, read on the way (the OOD images' shape)

    def batches():
        for images, labels in iter_batches(loader, batch_size):
            shape[:] = [tuple(images.shape[1:])]
            yield images, labels

    logits, labels = predict(model, batches(), device, mean=mean, std=std)
    results: dict[str, Any] = {"clean": clean_metrics(logits, labels, n_bins), "fgsm": None, "corruptions": None,
                               "ood": None}
    if ood:
        sets = {name: ood_detection(model, loader, name, mean, std, device, n_out=ood_images, batch_size=batch_size,
                                    in_logits=logits, image_shape=shape[0]) for name in ood}
        results["ood"] = {key: sum(r[key] for r in sets.values()) / len(sets) for key in ("auroc", "fpr95")}
        results["ood"]["sets"] = sets
    if fgsm:
        results["fgsm"] = {"epsilon": epsilon,
                           "top1": fgsm_accuracy(model, loader, mean, std, epsilon, device, batch_size)}
    if corruptions is not False:
        results["corruptions"] = corruption_accuracy(model, loader, mean, std, names, severities, device, seed,
                                                     max_corruption_images, batch_size, progress)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".eval.json.tmp"
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out / "eval.json")
        reliability_diagram(logits.softmax(dim=1), labels, out / "calibration.png", n_bins=n_bins,
                            title=f"Reliability (top-1 {results['clean']['top1']:.2f}%)")
    return results


def _format_epsilon(epsilon: float) -> str:
    k = epsilon * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{epsilon:.4g}"


def format_table(results: dict[str, Any]) -> str:
    """A compact text table of :func:`evaluate_all`'s results: clean top-1/top-5/NLL/ECE/RMS, FGSM,
    the out-of-distribution detection, the localization (``results["wsol"]``,
    :func:`~mixlab.evaluation.wsol.localization_accuracy`) and the effective class number
    (``results["effective_classes"]``) when present, mCA, then one line per corruption with its
    accuracy at each severity and the mean.

    Example output::

        clean   top-1 95.12%  top-5 99.81%  NLL 0.1812  ECE 2.31%  RMS 3.10%  (n=10000)
        FGSM    top-1 23.45%  (eps=8/255)
        OOD     AUROC 97.40%  FPR@95 12.35%  (max softmax vs gaussian 98.10 / 8.20, uniform 96.70 / 16.50; n=1000 each)
        WSOL    MaxBoxAccV2 61.02%  (IoU 30/50/70: 90.10 / 65.30 / 27.67; cam of the true class, n=1000)
        classes 4.51 effective classes per training target (weight > 0.0001, first 100 steps, 12800 images)
        mCA     75.40%  (12 corruptions x 5 severities, n=10000, clean top-1 on them 95.12%)
        corruption           s1     s2     s3     s4     s5   mean
        gaussian_noise    90.12  85.40  ...
    """
    lines = []
    clean = results.get("clean")
    if clean:
        lines.append(f"clean   top-1 {clean['top1']:.2f}%  top-5 {clean['top5']:.2f}%  NLL {clean['nll']:.4f}  "
                     f"ECE {clean['ece']:.2f}%  RMS {clean['rms']:.2f}%  (n={clean['n']})")
    fgsm = results.get("fgsm")
    if fgsm:
        lines.append(f"FGSM    top-1 {fgsm['top1']:.2f}%  (eps={_format_epsilon(fgsm['epsilon'])})")
    ood = results.get("ood")
    if ood:
        sets = ood["sets"]
        sizes = sorted({r["n_out"] for r in sets.values()})
        lines.append(f"OOD     AUROC {ood['auroc']:.2f}%  FPR@95 {ood['fpr95']:.2f}%  (max softmax vs "
                     + ", ".join(f"{name} {r['auroc']:.2f} / {r['fpr95']:.2f}" for name, r in sets.items())
                     + f"; n={'/'.join(map(str, sizes))} each)")
    wsol = results.get("wsol")
    if wsol:
        deltas = [k.partition("@")[2] for k in wsol if k.startswith("maxboxacc@")]
        lines.append(f"WSOL    MaxBoxAccV2 {wsol['maxboxacc']:.2f}%  (IoU " + "/".join(deltas) + ": "
                     + " / ".join(f"{wsol['maxboxacc@' + d]:.2f}" for d in deltas)
                     + f"; {wsol['cam']} of the true class, n={wsol['n']})")
    effective = results.get("effective_classes")
    if effective:
        lines.append(f"classes {effective['mean']:.2f} effective classes per training target (weight > "
                     f"{effective['threshold']:g}, first {effective['steps']} steps, {effective['images']} images)")
    corr = results.get("corruptions")
    if corr:
        sevs = corr["severities"]
        lines.append(f"mCA     {corr['mCA']:.2f}%  ({len(corr['accuracy'])} corruptions x {len(sevs)} severities, "
                     f"n={corr['n']}, clean top-1 on them {corr['clean_top1']:.2f}%)")
        width = max(len("corruption"), *(len(name) for name in corr["accuracy"]))
        lines.append(f"{'corruption':<{width}}" + "".join(f"{'s' + str(s):>7}" for s in sevs) + f"{'mean':>7}")
        for name, accs in corr["accuracy"].items():
            lines.append(f"{name:<{width}}" + "".join(f"{a:7.2f}" for a in accs) + f"{corr['mean'][name]:7.2f}")
    return "\n".join(lines)
