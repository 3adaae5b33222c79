"""CropMix: several random-resized crops of one image at distinct scales, mixed into one image.

Han, Petersson, Li & Reid 2022, "CropMix: Sampling a Rich Input Distribution via Multi-Scale
Cropping" (arXiv:2205.15955). The paper is the specification; the sections are cited below.

Per image (§3.2):

1. **Cropping.** The crop-scale range ``scale = (s0, s1)`` is split evenly into N non-overlapping
   sub-ranges, ``(s0 + k·(s1-s0)/N, s0 + (k+1)·(s1-s0)/N)`` for k = 0..N-1 (N = 3 of (0.01, 1.0)
   gives (0.01, 0.34), (0.34, 0.67), (0.67, 1.0)); crop k is a RandomResizedCrop (RRC) whose area
   fraction is drawn from sub-range k and whose aspect ratio is log-uniform in ``ratio``
   (torchvision's RRC sampler, its 10 attempts and its centre-crop fallback, computed in Python
   from one ``torch.rand`` call: 12x cheaper than 2 ``RandomResizedCrop.make_params``), resized to
   ``size``.
2. **Mixing.** The N views are shuffled; the first two are mixed, then the result is mixed with
   the third, and so on: N-1 mixing steps in all. Appendix A:

   * Mixup: ``Z = λ·X + (1-λ)·Y`` with λ ~ Beta(α/N, α/N) (Appendix C.2's parameterisation; the
     main text writes "α = 0.4/N"), α = 0.4 by default;
   * CutMix: ``Z = M ⊙ X + (1-M) ⊙ Y`` with λ ~ Beta(1, 1) = U(0, 1): a box of side √(1-λ) of each
     image side, uniform centre, clipped (as CutMix), is pasted from one operand into the other; a
     second fair coin decides which operand is the base and which supplies the patch.
3. **Intermediate augmentations** (§3.2, Table 5f): before every mixing step the *weaker* operand
   is augmented: for Mixup the one with the smaller weight (the second when λ > 0.5, else the
   first), for CutMix the one that supplies the patch. The classification default is a random
   permutation of the colour channels; ``placement="after"`` applies the augmentations once to the
   final image instead, ``"both"`` does both.

N = 1 is plain RRC: ``CropMix(size, num_crops=1, inter_aug=())`` has the distribution of
``v2.RandomResizedCrop(size)`` (not its exact draws: the RNG is consumed differently). The paper's settings: CIFAR (§4.1)
``scale=(0.01, 1), num_crops=2, mix="mixup", inter_aug=("permute",)``; ImageNet (§4.2) the same
with ``num_crops=(2, 3, 4)`` (drawn per image); contrastive learning (§5) ``mix="cutmix"``, crop
scale (0.2, 1) and heavy intermediate augmentation; MAE (§6) ``inter_aug=()``.

Deviations from the official code (github.com/JunlinHan/CropMix, ``classification/*/cropmix.py``),
where it disagrees with the paper the paper is followed:

* N = 2 sub-ranges: as first released (May 2022), the N = 2 branch of *every* variant (the root,
  ``classification/{cifar10,cifar100,imagenet}`` and ``mae`` ``cropmix.py``) gave the crops
  ``(s0, (1-s0)/N)`` and ``((1-s0)/N, 1)`` instead of ``(s0, s0 + (1-s0)/N)`` and
  ``(s0 + (1-s0)/N, 1)``. Upstream fixed it in all of them in 2022: the root file on 2022-08-26
  (commit 8527cc5), the other four on 2022-10-09 (cacbda8, fb25d6c, 03ada5d, 5de308a); the
  contrastive code hard-codes the correct (0.2, 0.6), (0.6, 1.0) from the start. Runs with the
  code of the paper's release used the old split; here, as in the current official code, every
  N uses §3.2's split;
* choosing N from {2, 3, 4} overwrites ``self.number`` on the first call, so N is drawn once and
  then fixed for the whole run (per worker); here N is drawn independently for every image;
* its CutMix box indexes ``view[:, x1:x2, y1:y2]`` (x as the row index), a transposed box that
  only matters for non-square images; here x indexes columns;
* it does not shuffle the views when N = 2 (which changes nothing in distribution), draws from
  Python's ``random`` and NumPy's global RNGs, and mixes in place; here all randomness comes from
  the global torch RNG, so ``torch.manual_seed`` and each DataLoader worker's seed reproduce it;
* only the channel permutation exists there; "hflip", "vflip", "colorjitter" and the "after" /
  "both" placements follow the paper's Table 5f ablation. Flips are random (p = 0.5), like
  ``RandomHorizontalFlip``; a permutation is uniform over all C! orders (identity included), as
  ``random.shuffle`` in the official code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mixlab.core.boxes import rand_box
from mixlab.core.checks import check_bool
from mixlab.core.random import beta_sample

__all__ = [
    "CropMix",
    "rrc",
    "scale_ranges",
    "crop_from_uniforms",
    "beta_draws",
    "mixup_views",
    "cutmix_views",
    "augment_view",
    "mix_views",
    "MIX_OPS",
    "INTERPOLATIONS",
    "INTER_AUGS",
    "PLACEMENTS",
]

MIX_OPS = ("mixup", "cutmix")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
INTER_AUGS = ("permute", "hflip", "vflip", "colorjitter")
PLACEMENTS = ("before", "after", "both")
#: α when ``alpha=None``: Mixup λ ~ Beta(0.4/N, 0.4/N) (§4), CutMix λ ~ Beta(1, 1) (§3.2)
DEFAULT_ALPHA = {"mixup": 0.4, "cutmix": 1.0}
#: the colour jitter of Table 5f's "Color jit" row (the usual SimCLR/MoCo strengths)
JITTER = (0.4, 0.4, 0.4, 0.1)


# ------------------------------------------------------------------------------ pure helpers
def scale_ranges(scale: tuple[float, float], n: int, multi_scale: bool = True) -> list[tuple[float, float]]:
    """The N crop-scale sub-ranges of §3.2: ``scale`` split evenly, without overlap.

    Args:
        scale: the whole range ``(s0, s1)``.
        n: the number of crops N >= 1.
        multi_scale: ``False`` is §7's single-scale ablation: N copies of the whole range.

    Returns:
        ``[(s0 + k·d, s0 + (k+1)·d) for k in range(n)]`` with d = (s1 - s0) / N; the last upper
        bound is exactly ``s1``.

    Example:
        >>> [tuple(round(v, 2) for v in r) for r in scale_ranges((0.01, 1.0), 3)]
        [(0.01, 0.34), (0.34, 0.67), (0.67, 1.0)]
    """
    s0, s1 = check_scale(scale)
    n = _check_count(n, "n")
    if not multi_scale:
        return [(s0, s1)] * n
    d = (s1 - s0) / n
    return [(s0 + k * d, s1 if k == n - 1 else s0 + (k + 1) * d) for k in range(n)]


def check_scale(scale: Any, name: str = "scale") -> tuple[float, float]:
    """``scale`` as a float pair ``0 < min <= max <= 1`` (area fractions), else ``TypeError``/``ValueError``."""
    if not isinstance(scale, (tuple, list)) or len(scale) != 2 or not all(
        isinstance(v, Real) and not isinstance(v, bool) for v in scale
    ):
        raise TypeError(f"{name} must be a pair of floats (min, max) with 0 < min <= max <= 1, got {scale!r}")
    a, b = float(scale[0]), float(scale[1])
    if not (0.0 < a <= b <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1 (area fractions of the image), got ({a}, {b})")
    return a, b


def check_ratio(ratio: Any) -> tuple[float, float]:
    """``ratio`` as a float pair ``0 < min <= max < inf`` (width / height), else ``TypeError``/``ValueError``."""
    if not isinstance(ratio, (tuple, list)) or len(ratio) != 2 or not all(
        isinstance(v, Real) and not isinstance(v, bool) for v in ratio
    ):
        raise TypeError(f"ratio must be a pair of floats (min, max) with 0 < min <= max, got {ratio!r}")
    a, b = float(ratio[0]), float(ratio[1])
    if not (0.0 < a <= b and math.isfinite(b)):
        raise ValueError(f"ratio must satisfy 0 < min <= max < inf (width / height), got ({a}, {b})")
    return a, b


def _check_count(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1 (N = 1 is plain RandomResizedCrop), got {n}")
    return n


def _check_num_crops(num_crops: Any) -> tuple[int, ...]:
    if isinstance(num_crops, (tuple, list)):
        if len(num_crops) == 0:
            raise ValueError("num_crops must be an int >= 1 or a non-empty sequence of them, got an empty sequence")
        values = tuple(_check_count(n, "num_crops") for n in num_crops)
        if len(set(values)) != len(values):
            raise ValueError(f"num_crops must not repeat a value (each is drawn with equal probability), got {values}")
        return values
    return (_check_count(num_crops, "num_crops"),)


def check_size(size: Any) -> tuple[int, int] | None:
    """``size`` (None, an int or a 1-2 sequence of ints) as ``(H, W)`` or None, else ``TypeError``/``ValueError``."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) in (1, 2) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in size
    ):
        size = (size[0], size[-1])
    else:
        raise TypeError(f"size must be an int, a sequence (h, w) of ints, or None (keep the input size), got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size}")
    return size


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def _check_interpolation(interpolation: Any) -> InterpolationMode:
    if isinstance(interpolation, InterpolationMode):
        interpolation = interpolation.value
    return InterpolationMode(_check_choice(interpolation, "interpolation", INTERPOLATIONS))


def _check_inter_aug(inter_aug: Any) -> tuple[str, ...]:
    if isinstance(inter_aug, str):
        inter_aug = (inter_aug,)
    if not isinstance(inter_aug, (tuple, list)):
        raise TypeError(f"inter_aug must be a sequence of names from {list(INTER_AUGS)} (() for none), "
                        f"got {inter_aug!r}")
    out = tuple(_check_choice(a, "inter_aug", INTER_AUGS) for a in inter_aug)
    if len(set(out)) != len(out):
        raise ValueError(f"inter_aug must not repeat a name, got {out}")
    return out


def _check_alpha(alpha: Any, mix: str) -> float:
    if alpha is None:
        return DEFAULT_ALPHA[mix]
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"alpha must be a real number > 0 or None, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    return alpha


def set_config(obj: Any, cfg: dict[str, Any]) -> None:
    """Store a :func:`check_config` result as attributes (``scale``, ``ratio``, ``num_crops``,
    ``mix``, ``alpha``, ``interpolation``, ``inter_aug``, ``placement``, ``multi_scale``)."""
    for key, value in cfg.items():
        setattr(obj, key, value)


def check_config(
    *, scale: Any, ratio: Any, num_crops: Any, mix: Any, alpha: Any, interpolation: Any, inter_aug: Any,
    placement: Any, multi_scale: Any,
) -> dict[str, Any]:
    """Validate CropMix's arguments (shared by :class:`CropMix` and ``CropMixBatch``).

    Returns:
        the normalised values: tuples, ``InterpolationMode``, α resolved for ``mix``.

    Raises:
        TypeError, ValueError: naming the argument, what it accepts and what it got.
    """
    mix = _check_choice(mix, "mix", MIX_OPS)
    return dict(
        scale=check_scale(scale),
        ratio=check_ratio(ratio),
        num_crops=_check_num_crops(num_crops),
        mix=mix,
        alpha=_check_alpha(alpha, mix),
        interpolation=_check_interpolation(interpolation),
        inter_aug=_check_inter_aug(inter_aug),
        placement=_check_choice(placement, "placement", PLACEMENTS),
        multi_scale=check_bool(multi_scale, "multi_scale"),
    )


def beta_draws(a: float, b: float, n: int) -> list[float]:
    """``n`` draws of Beta(a, b) from the global torch RNG, as Python floats (per-image speed).

    For a, b <= 1 (CropMix's Beta(0.4/N, 0.4/N)) Jöhnk's method: U^(1/a) / (U^(1/a) + V^(1/b))
    given U^(1/a) + V^(1/b) <= 1, in log space (acceptance Γ(a+1)Γ(b+1)/Γ(a+b+1) >= 1/2), from one
    ``torch.rand`` call in practice; Beta(1, 1) is U(0, 1); otherwise
    :func:`mixlab.core.random.beta_sample`.
    """
    if a == 1.0 and b == 1.0:
        return torch.rand(n, dtype=torch.float64).tolist()
    if a > 1.0 or b > 1.0:
        return beta_sample(a, b, n, dtype=torch.float64).tolist()
    out: list[float] = []
    while len(out) < n:
        m = 2 * (n - len(out)) + 2  # pairs: enough for all n with probability > 0.9 at acceptance 1/2
        u = torch.rand(2 * m, dtype=torch.float64).tolist()
        for i in range(m):
            if u[2 * i] == 0.0 or u[2 * i + 1] == 0.0:
                continue
            lx, ly = math.log(u[2 * i]) / a, math.log(u[2 * i + 1]) / b  # log U^(1/a), log V^(1/b)
            top = max(lx, ly)
            log_sum = top + math.log(math.exp(lx - top) + math.exp(ly - top))
            if log_sum <= 0.0:
                out.append(math.exp(lx - log_sum))
                if len(out) == n:
                    break
    return out


ATTEMPTS = 10  # RandomResizedCrop's tries before its centre-crop fallback


def crop_from_uniforms(
    u: Sequence[float], lo: float, hi: float, height: int, width: int, ratio: tuple[float, float]
) -> dict[str, int]:
    """torchvision's RandomResizedCrop sampler as a function of ``2 * ATTEMPTS + 2`` uniforms.

    Attempt i takes an area fraction ``lo + (hi - lo) * u[2i]`` and a log-uniform aspect ratio from
    ``u[2i + 1]``; the first with 0 < w <= W and 0 < h <= H is placed by the last two uniforms
    (top, left uniform over the valid positions); with none, the centred crop of the whole image
    clipped to ``ratio`` (torchvision's fallback). The batched counterpart is
    :func:`mixlab.transforms.cropmix_batch.sample_crop_boxes`; per image, plain Python over one
    ``torch.rand`` call costs a tenth of ``v2.RandomResizedCrop.make_params``.

    Returns:
        ``{"top", "left", "height", "width"}``, the keyword arguments of ``F.resized_crop``.
    """
    log_r0, log_r1 = math.log(ratio[0]), math.log(ratio[1])
    for i in range(ATTEMPTS):
        area = height * width * (lo + (hi - lo) * u[2 * i])
        aspect = math.exp(log_r0 + (log_r1 - log_r0) * u[2 * i + 1])
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2 * ATTEMPTS] * (height - h + 1)), height - h)
            left = min(int(u[2 * ATTEMPTS + 1] * (width - w + 1)), width - w)
            return {"top": top, "left": left, "height": h, "width": w}
    h, w = fallback_crop_size(height, width, ratio)
    return {"top": (height - h) // 2, "left": (width - w) // 2, "height": h, "width": w}


def fallback_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """RandomResizedCrop's fallback crop ``(h, w)``: the whole image clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return int(round(width / ratio[0])), width
    if in_ratio > ratio[1]:
        return height, int(round(height * ratio[1]))
    return height, width


# ------------------------------------------------------------------------------ functional kernels
@functools.lru_cache(maxsize=256)
def _index(perm: tuple[int, ...], device: torch.device) -> Tensor:
    """A channel permutation as an index tensor (cached: building one costs more than using it)."""
    return torch.tensor(perm, device=device)


def augment_view(image: Tensor, params: dict[str, Any] | None) -> Tensor:
    """Apply one operand's intermediate augmentations, in the order permute, flips, jitter.

    Args:
        image: (..., C, H, W) float (colour jitter assumes values in [0, 1], as torchvision).
        params: ``{"perm": list of C ints | None, "hflip": bool, "vflip": bool, "jitter": dict | None}``
            (missing keys: not applied); ``jitter`` is ``v2.ColorJitter.make_params``'s dict.
            ``None`` returns ``image``.

    Returns:
        a new tensor (``image`` itself when nothing applies); ``image`` is never modified.
    """
    if not params:
        return image
    perm = params.get("perm")
    if perm is not None:
        image = image.index_select(-3, _index(tuple(perm), image.device))
    if params.get("hflip"):
        image = image.flip(-1)
    if params.get("vflip"):
        image = image.flip(-2)
    jitter = params.get("jitter")
    if jitter is not None:
        for fn_id in jitter["fn_idx"].tolist():
            if fn_id == 0:
                image = F.adjust_brightness(image, jitter["brightness_factor"])
            elif fn_id == 1:
                image = F.adjust_contrast(image, jitter["contrast_factor"])
            elif fn_id == 2:
                image = F.adjust_saturation(image, jitter["saturation_factor"])
            else:
                image = F.adjust_hue(image, jitter["hue_factor"])
    return image


def _flips(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The geometric part of intermediate-augmentation parameters (the flips), for masks."""
    if not params:
        return None
    return {k: params[k] for k in ("hflip", "vflip") if k in params} or None


def mixup_views(first: Tensor, second: Tensor, lam: float, augment: dict[str, Any] | None = None) -> Tensor:
    """One Mixup step of CropMix: ``λ·first + (1-λ)·second``, the weaker operand augmented.

    The operand with the smaller weight (``second`` when λ > 0.5, else ``first``) goes through
    :func:`augment_view` with ``augment`` first (the official code's rule).

    Args:
        first, second: (..., C, H, W) float views of the same shape.
        lam: the weight λ of ``first``.
        augment: intermediate-augmentation parameters for the weaker operand, or ``None``.

    Returns:
        a new tensor; the inputs are not modified.
    """
    if lam > 0.5:
        second = augment_view(second, augment)
    else:
        first = augment_view(first, augment)
    return torch.lerp(second, first, lam)  # λ·first + (1-λ)·second


def cutmix_views(
    first: Tensor, second: Tensor, box: tuple[int, int, int, int], patch_from_second: bool,
    augment: dict[str, Any] | None = None,
) -> Tensor:
    """One CutMix step of CropMix: a box of one operand pasted into the other.

    Args:
        first, second: (..., C, H, W) views of the same shape.
        box: ``(x1, y1, x2, y2)`` half-open pixel ranges (columns x1..x2-1, rows y1..y2-1).
        patch_from_second: ``True``: ``first`` is the base and ``second`` supplies the patch;
            ``False``: the reverse.
        augment: intermediate-augmentation parameters for the patch source, or ``None``.

    Returns:
        a new tensor; the inputs are not modified.
    """
    base, source = (first, second) if patch_from_second else (second, first)
    source = augment_view(source, augment)
    x1, y1, x2, y2 = box
    out = base.clone()
    out[..., y1:y2, x1:x2] = source[..., y1:y2, x1:x2]
    return out


def mix_views(views: Sequence[Tensor], params: dict[str, Any], mix: str) -> Tensor:
    """Mix the N views in sequence (§3.2): ``views[order[0]]`` with ``views[order[1]]``, the
    result with ``views[order[2]]``, ... then the ``"after"`` augmentation.

    Args:
        views: the N cropped views, in sub-range order, (..., C, H, W) float, same shape.
        params: :meth:`CropMix.make_params`'s dict (``order``, ``steps``, ``after``).
        mix: ``"mixup"`` or ``"cutmix"``.

    Returns:
        the mixed image (a new tensor unless N = 1 and nothing applies).
    """
    order = params["order"]
    out = views[order[0]]
    for t, step in enumerate(params["steps"], start=1):
        if mix == "mixup":
            out = mixup_views(out, views[order[t]], step["lam"], step["aug"])
        else:
            out = cutmix_views(out, views[order[t]], step["box"], step["patch_from_second"], step["aug"])
    return augment_view(out, params["after"])


# ------------------------------------------------------------------------------ the transforms
def rrc(
    size: int | Sequence[int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    interpolation: str | InterpolationMode = "bilinear",
    antialias: bool = True,
) -> v2.RandomResizedCrop:
    """The RandomResizedCrop baseline of the paper's tables, with :class:`CropMix`'s argument
    names and checks: ``rrc(32, scale=(0.01, 1))`` vs ``CropMix(32, scale=(0.01, 1))``.

    Returns:
        ``torchvision.transforms.v2.RandomResizedCrop(size, scale, ratio, interpolation, antialias)``.

    Raises:
        TypeError, ValueError: as :class:`CropMix` (scale outside (0, 1], bad ratio/size/mode).
    """
    size = check_size(size)
    if size is None:
        raise TypeError("size must be an int or a sequence (h, w) of ints for rrc, got None")
    return v2.RandomResizedCrop(size, scale=check_scale(scale), ratio=check_ratio(ratio),
                                interpolation=_check_interpolation(interpolation),
                                antialias=check_bool(antialias, "antialias"))


class CropMix(v2.Transform):
    """CropMix (Han et al. 2022, §3.2): N random-resized crops of one image at distinct scales,
    mixed in sequence into one image of ``size``. The module docstring gives the equations and
    the deviations from the official code (its N = 2 sub-range bug, N drawn once per run, ...).

    A ``torchvision.transforms.v2`` transform: one image in (a C×H×W or ...×C×H×W ``uint8`` or
    float tensor, a ``tv_tensors.Image``, or a PIL image), one image of ``size`` out, of the same
    type and dtype (``uint8`` is mixed in float and rounded back). Labels pass through unchanged:
    every crop comes from the same image, so the label does not change. Randomness comes from the
    global torch RNG (``torch.manual_seed``, each DataLoader worker's seed).

    Segmentation: with ``mix="cutmix"`` a ``tv_tensors.Mask`` in the sample ((H, W) label map, or
    (..., H, W) masks) moves with the image: the same N crops (resized by nearest neighbour:
    ``NEAREST`` when the images use ``"nearest"``, so each label sits exactly under its pixel, else
    ``NEAREST_EXACT``, pixel centres, the geometry of bilinear/bicubic), the same pastes, and the
    same flips of the intermediate augmentations (the colour ones do not touch a mask).
    ``mix="mixup"`` blends whole crops, so no one label map describes the result: a Mask then raises
    ``ValueError`` (mix label maps in the batch with :class:`mixlab.Mixup`, which returns both
    maps and λ). ``tv_tensors.BoundingBoxes`` raise ``TypeError``: crops and pastes would cut
    boxes in ways one box cannot describe (use the detection mixers, :mod:`mixlab.mixers.detection`).

    Args:
        size: output size, an int or ``(h, w)``; ``None`` keeps each input's size.
        scale: the whole crop-scale range (area fractions), 0 < min <= max <= 1. Default
            (0.01, 1.0), the paper's classification choice (§4, §7 Table 5e); its contrastive
            and MAE runs use (0.2, 1.0).
        ratio: aspect-ratio range (width / height) of every crop, log-uniform. Default (3/4, 4/3).
        num_crops: N >= 1, or a sequence of N values drawn uniformly per image. Default 2
            (CIFAR, §4.1); ImageNet uses ``(2, 3, 4)`` (§4.2).
        mix: ``"mixup"`` (default, classification and MAE) or ``"cutmix"`` (contrastive learning).
        alpha: Mixup draws λ ~ Beta(α/N, α/N) (Appendix C.2); CutMix draws λ ~ Beta(α, α) for the
            kept area. ``None`` (default): α = 0.4 for Mixup, 1.0 for CutMix (λ ~ U(0, 1)).
        interpolation: ``"nearest"``, ``"bilinear"`` (default) or ``"bicubic"`` (Table 5d).
        inter_aug: intermediate augmentations, any of ``"permute"`` (random channel permutation;
            the default ``("permute",)``), ``"hflip"``, ``"vflip"`` (each with p = 0.5) and
            ``"colorjitter"`` (``v2.ColorJitter(0.4, 0.4, 0.4, 0.1)``; float images must be in
            [0, 1]); ``()`` for none (the MAE setting). Applied in that order.
        placement: ``"before"`` (default): to the weaker operand before each mixing step;
            ``"after"``: once to the final mixed image; ``"both"`` (Table 5f).
        multi_scale: ``False`` gives every crop the whole ``scale`` range (§7's single-scale ablation).
        antialias: antialiasing of the tensor resize, as ``v2.RandomResizedCrop`` (PIL always has it).

    Raises:
        TypeError, ValueError: a bad argument, named, with the valid values: ``scale`` outside
            (0, 1] or min > max, N < 1, an unknown ``mix`` / ``interpolation`` / ``inter_aug`` /
            ``placement``, α <= 0.

    Example:
        >>> import torch
        >>> from torchvision.transforms import v2
        >>> from mixlab.transforms import CropMix
        >>> t = v2.Compose([CropMix(32, num_crops=(2, 3, 4)), v2.RandomHorizontalFlip()])
        >>> image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
        >>> out, label = t(image, 3)
        >>> out.shape, out.dtype, label
        (torch.Size([3, 32, 32]), torch.uint8, 3)

    Note:
        :meth:`make_params` draws everything (N, the crops, the order, every λ, box and
        augmentation); :meth:`transform` is deterministic given them. The draws, in order: N (only
        when ``num_crops`` is a sequence); the N crops (one ``torch.rand`` of N x 22 for
        :func:`crop_from_uniforms`); the order (only when N > 1); the N-1 λ; per step the CutMix
        box centre and coin, then the step's augmentation parameters; then the ``"after"`` ones.
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, F.is_pure_tensor, tv_tensors.Mask)

    def __init__(
        self,
        size: int | Sequence[int] | None,
        *,
        scale: tuple[float, float] = (0.01, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        num_crops: int | Sequence[int] = 2,
        mix: str = "mixup",
        alpha: float | None = None,
        interpolation: str | InterpolationMode = "bilinear",
        inter_aug: Sequence[str] = ("permute",),
        placement: str = "before",
        multi_scale: bool = True,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        cfg = check_config(scale=scale, ratio=ratio, num_crops=num_crops, mix=mix, alpha=alpha,
                           interpolation=interpolation, inter_aug=inter_aug, placement=placement,
                           multi_scale=multi_scale)
        self.size = check_size(size)
        set_config(self, cfg)
        self.antialias: bool = check_bool(antialias, "antialias")
        self._ranges = {n: scale_ranges(self.scale, n, self.multi_scale) for n in self.num_crops}
        self._jitter = v2.ColorJitter(*JITTER) if "colorjitter" in self.inter_aug else None

    # ------------------------------------------------------------------ sampling
    def check_inputs(self, flat_inputs: list[Any]) -> None:
        """Refuse what cannot follow the mix, before anything is drawn (class docstring)."""
        if any(isinstance(x, tv_tensors.BoundingBoxes) for x in flat_inputs):
            raise TypeError("CropMix does not move tv_tensors.BoundingBoxes: its crops and pastes cut boxes in "
                            "ways one box cannot describe; use mixlab's detection mixers (mixlab.mixers.detection)")
        if self.mix == "mixup" and max(self.num_crops) > 1 and any(isinstance(x, tv_tensors.Mask)
                                                                   for x in flat_inputs):
            raise ValueError("CropMix(mix='mixup') blends whole crops, so no one label map describes the result: "
                             "a tv_tensors.Mask cannot follow it. Use mix='cutmix' (the mask moves with the crops "
                             "and pastes), or mix label maps in the batch with mixlab.Mixup (both maps and lambda)")

    def _aug_params(self, channels: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if "permute" in self.inter_aug:
            params["perm"] = torch.randperm(channels).tolist()
        if "hflip" in self.inter_aug:
            params["hflip"] = bool(torch.rand(()) < 0.5)
        if "vflip" in self.inter_aug:
            params["vflip"] = bool(torch.rand(()) < 0.5)
        if self._jitter is not None:
            params["jitter"] = self._jitter.make_params([])
        return params

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw everything random for one image.

        Returns:
            ``{"size": (h, w) output, "num_crops": N, "crops": N dicts (top, left, height, width)
            in sub-range order, "order": the mixing order (a permutation of range(N)),
            "steps": N-1 dicts {"lam": λ, "aug": augmentation params or None, and for CutMix
            "box": (x1, y1, x2, y2), "patch_from_second": bool}, "after": params or None}``.
        """
        channels, height, width = v2.query_chw(flat_inputs)
        size = self.size or (height, width)
        choices = self.num_crops
        n = choices[0] if len(choices) == 1 else choices[int(torch.randint(len(choices), ()))]
        k = 2 * ATTEMPTS + 2
        u = torch.rand(n * k, dtype=torch.float64).tolist()
        crops = [crop_from_uniforms(u[i * k:(i + 1) * k], lo, hi, height, width, self.ratio)
                 for i, (lo, hi) in enumerate(self._ranges[n])]
        order = torch.randperm(n).tolist() if n > 1 else [0]
        before = self.placement in ("before", "both") and bool(self.inter_aug)
        steps = []
        if n > 1:
            a = self.alpha / n if self.mix == "mixup" else self.alpha
            lams = beta_draws(a, a, n - 1)
            for lam in lams:
                step: dict[str, Any] = {"lam": lam}
                if self.mix == "cutmix":
                    step["box"] = rand_box(1.0 - lam, size[0], size[1])
                    step["patch_from_second"] = bool(torch.rand(()) > 0.5)
                step["aug"] = self._aug_params(channels) if before else None
                steps.append(step)
        after = self._aug_params(channels) if self.placement in ("after", "both") and self.inter_aug else None
        return dict(size=size, num_crops=n, crops=crops, order=order, steps=steps, after=after)

    # ------------------------------------------------------------------ application
    def _mix_image(self, image: Tensor, params: dict[str, Any]) -> Tensor:
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"CropMix needs uint8 or floating-point images, got {image.dtype}")
        if image.ndim < 3:
            raise ValueError(f"CropMix needs images of shape (..., C, H, W), got shape {tuple(image.shape)}")
        # the tensor kernel of v2.functional.resized_crop (we only ever hold plain tensors here)
        views = [F.resized_crop_image(image, **crop, size=list(params["size"]), interpolation=self.interpolation,
                                      antialias=self.antialias) for crop in params["crops"]]
        if not params["steps"] and params["after"] is None:
            return views[0]  # N = 1 without augmentation: plain RRC, nothing to mix
        if image.dtype != torch.uint8 or (self.mix == "cutmix" and self._jitter is None):
            return mix_views(views, params, self.mix)  # float, or uint8 CutMix without jitter: pure copies
        # uint8: mixed in float, in [0, 1] for colour jitter (its range), else in [0, 255]; rounded back.
        # Convex mixes (and jitter's clamped output) stay in [0, 255], so no clamp is needed; the float
        # views are fresh copies, so in-place ops on the result touch nothing of the caller's.
        if self._jitter is None:
            out = mix_views([v.float() for v in views], params, self.mix)
        else:
            out = mix_views([v.float().div_(255.0) for v in views], params, self.mix).mul_(255.0)
        return out.round_().to(torch.uint8)

    def _mix_mask(self, mask: Tensor, params: dict[str, Any]) -> Tensor:
        """The mask through the same crops, pastes and flips as the image (class docstring)."""
        mode = InterpolationMode.NEAREST if self.interpolation == InterpolationMode.NEAREST \
            else InterpolationMode.NEAREST_EXACT
        squeeze = mask.ndim == 2
        m = mask.unsqueeze(0) if squeeze else mask
        views = [F.resize_mask(F.crop_mask(m, **crop), list(params["size"]), interpolation=mode)
                 for crop in params["crops"]]
        flips = {**params, "steps": [{**step, "aug": _flips(step["aug"])} for step in params["steps"]],
                 "after": _flips(params["after"])}
        out = mix_views(views, flips, self.mix)
        return out.squeeze(0) if squeeze else out

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(self._mix_mask(inpt.as_subclass(Tensor), params), like=inpt)
        if isinstance(inpt, PIL.Image.Image):
            if inpt.mode not in ("L", "RGB", "RGBA", "LA"):
                raise TypeError(f"CropMix takes PIL images of mode L, LA, RGB or RGBA, got mode {inpt.mode!r}; "
                                "convert it first (image.convert('RGB'))")
            out = self._mix_image(F.pil_to_tensor(inpt), params)
            return F.to_pil_image(out, mode=inpt.mode)
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(self._mix_image(inpt.as_subclass(Tensor), params), like=inpt)
        return self._mix_image(inpt, params)

    def extra_repr(self) -> str:
        n = self.num_crops[0] if len(self.num_crops) == 1 else self.num_crops
        return (f"size={self.size}, scale={self.scale}, ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g}), "
                f"num_crops={n}, mix={self.mix!r}, alpha={self.alpha}, interpolation={self.interpolation.value!r}, "
                f"inter_aug={self.inter_aug}, placement={self.placement!r}, multi_scale={self.multi_scale}, "
                f"antialias={self.antialias}")
