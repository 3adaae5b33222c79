"""SDMP's virtual labels: the target weights of Eq. 3-4 (MoCo) and 7-8 (DINO).

Ren, Xie, Shen, Yuille et al. 2022, "A Simple Data Mixing Prior for Improving Self-Supervised
Learning" (CVPR 2022). The batch is mixed with its reversed copy (timm's intra-batch mixing): image
i with partner n−1−i (the paper's "n−i", indices from 0), with weight λ_i on image i. Both
frameworks then learn from two *teachers*, each a row-stochastic (n, n) weight matrix over the
batch:

* the **source** teacher (Eq. 3 and 7): mixed query i is positive with the other view of its two
  sources, ``W[i, i] = λ_i`` and ``W[i, n−1−i] = 1 − λ_i``;
* the **intra-batch** teacher (Eq. 4 and 8): mixed query i is positive with the other view of its
  own mix and with the mix of the same two sources in the other order,
  ``W[i, i] = 1 / (1 + λᶜ_i)`` and ``W[i, n−1−i] = λᶜ_i / (1 + λᶜ_i)``, where
  ``λᶜ_i = min(λ_i, 1 − λ_{n−1−i}) + min(1 − λ_i, λ_{n−1−i})`` is the share of content the two
  mixes have in common.

The losses are linear in these weights, so each is one soft-target cross-entropy:

* MoCo (Eq. 3-4): ``CE(softmax(q_i · k_j / τ) over j, W[i])``: :func:`soft_contrastive_loss`
  with keys of the other view of the sources (Eq. 3) or of the mixes (Eq. 4);
* DINO (Eq. 7-8): ``H(W @ P_t, P_s)``: the teacher's distributions averaged by the weights, then
  the usual cross-entropy against the student (:func:`mixed_teacher`).

With λ = 1 (no mixing) both matrices are the identity and each loss is its framework's plain loss.
When n is odd the middle image is its own partner; its two weights then add up on the diagonal.

The mixing itself (:class:`SDMPMixing`): per batch, one operation drawn uniformly from {Mixup,
CutMix, ResizeMix} (§4.4.2), λ per sample (Table 7) from Beta(1, 1) (the authors' code), the exact
λ of each (CutMix's clipped box area, ResizeMix's pasted area). Mixup and CutMix are the core
mixers; ResizeMix is drawn as the authors' ``datamixing`` draws it (:class:`SDMPResizeMix`: pasted
area ≈ U(0.1, 0.9), not the ResizeMix paper's side τ ~ U(0.1, 0.8)). One draw is applied to
several views (the query's view and the key's view are mixed alike, Eq. 1-2), its boxes scaled to
each view's size.

Ablation switches (Tables 6-9) are arguments of the frameworks that use this module
(``mixlab.ssl.MoCoV3``, ``mixlab.ssl.DINO``): ``ops``, ``per_sample``, ``static_source``,
``static_intra``, and MoCo's ``version`` (replace / extra) and ``loss_form``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixlab.core.boxes import box_area_fraction, resize_paste
from mixlab.core.checks import check_alpha, check_bool, check_choice
from mixlab.core.pairing import pair_index
from mixlab.core.random import beta_sample, rand, randint
from mixlab.core.targets import mix_targets
from mixlab.mixers import CutMix, Mixup

__all__ = ["flip_partner", "shared_fraction", "source_weights", "intra_weights", "soft_contrastive_loss",
           "mixed_teacher", "SDMPMixing", "SDMPResizeMix", "MixDraw", "SDMP_OPS", "LOSS_FORMS", "sdmp_weights"]

#: the mixing operations SDMP chooses from, uniformly per batch (§3.2, §4.4.2)
SDMP_OPS = ("mixup", "cutmix", "resizemix")
#: ``"soft"``: the paper's soft-target cross-entropy (Algorithm 1, default); ``"code"``: the
#: authors' code, ``−log(Σ_j W_ij p_ij)``, the log of the summed positive probabilities
LOSS_FORMS = ("soft", "code")


def flip_partner(n: int, device: torch.device | str | None = None) -> Tensor:
    """(n,) int64 partner index ``n − 1 − i`` (the batch mixed with its reversed copy)."""
    return pair_index(n, "flip", device=device)


def _check_lam(lam: Tensor) -> Tensor:
    """``lam`` if it is a (n,) float tensor in [0, 1]. The values are read only on the CPU, where that
    is free: on an accelerator reading them would wait for the device at every training step (the
    mixing draws λ in [0, 1] by construction)."""
    if lam.ndim != 1 or not lam.is_floating_point():
        raise ValueError(f"lam must be a (n,) float tensor, got shape {tuple(lam.shape)} {lam.dtype}")
    if lam.device.type == "cpu" and bool(((lam < 0) | (lam > 1)).any()):
        raise ValueError(f"lam must lie in [0, 1], got values from {float(lam.min())} to {float(lam.max())}")
    return lam


def shared_fraction(lam: Tensor) -> Tensor:
    """λᶜ of Eq. 4: ``min(λ_i, 1 − λ_{n−1−i}) + min(1 − λ_i, λ_{n−1−i})``, (n,) in [0, 1].

    Mix i holds λ_i of source i and 1 − λ_i of source n−1−i; mix n−1−i holds λ_{n−1−i} of source
    n−1−i and 1 − λ_{n−1−i} of source i; λᶜ is the mass of the two sources they share.
    """
    lam = _check_lam(lam)
    other = lam.flip(0)  # λ_{n−1−i}
    return torch.minimum(lam, 1 - other) + torch.minimum(1 - lam, other)


def _pair_weights(first: Tensor) -> Tensor:
    """(n, n) matrix with ``first[i]`` at (i, i) and ``1 − first[i]`` at (i, n−1−i)."""
    n = first.shape[0]
    eye = torch.eye(n, device=first.device, dtype=first.dtype)
    # mix_targets builds λ·y_i + (1 − λ)·y_{index[i]}: with one-hot rows y = I, exactly these weights
    return mix_targets(eye, flip_partner(n, first.device), first)


def source_weights(lam: Tensor) -> Tensor:
    """Eq. 3 / Eq. 7: (n, n) row-stochastic weights of the source teacher (λ_i at i, 1 − λ_i at n−1−i)."""
    return _pair_weights(_check_lam(lam))


def intra_weights(lam: Tensor) -> Tensor:
    """Eq. 4 / Eq. 8: (n, n) row-stochastic weights of the mixed teacher
    (1 / (1 + λᶜ_i) at i, λᶜ_i / (1 + λᶜ_i) at n−1−i)."""
    c = shared_fraction(lam)
    return _pair_weights(1 / (1 + c))


def sdmp_weights(lam: Tensor, static_source: bool = False, static_intra: bool = False) -> tuple[Tensor, Tensor]:
    """``(source, intra)`` teacher matrices for mixing weights ``lam``, with Table 6's "static"
    switches: ``static_source`` puts 0.5 for λ_i and 1 − λ_i in the source teacher, ``static_intra``
    puts λᶜ = 0 in the intra-batch teacher (its weights then ignore the mixing)."""
    source = source_weights(torch.full_like(lam, 0.5) if static_source else lam)
    intra = torch.eye(lam.shape[0], device=lam.device, dtype=lam.dtype) if static_intra else intra_weights(lam)
    return source, intra


def soft_contrastive_loss(queries: Tensor, keys: Tensor, weights: Tensor, tau: float, form: str = "soft") -> Tensor:
    """InfoNCE with soft positives: ``mean_i −Σ_j W[i, j] log softmax_j(⟨q_i, k_j⟩ / τ)``.

    ``queries`` (n, d) and ``keys`` (m, d) are L2-normalised here; ``weights`` (n, m) rows sum to 1.
    With ``weights = I`` it is MoCo v3's loss before its ``2τ`` factor (``CE(q kᵀ / τ, arange(n))``).
    ``form="code"`` is the authors' code instead: ``mean_i −log Σ_j W[i, j] softmax_j(...)`` (equal
    to the soft form when each row has a single positive).
    """
    check_choice(form, "form", LOSS_FORMS)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (n, d) and keys (m, d) must share d, got {tuple(queries.shape)}, {tuple(keys.shape)}")
    if weights.shape != (queries.shape[0], keys.shape[0]):
        raise ValueError(f"weights must be (n, m) = {(queries.shape[0], keys.shape[0])}, got {tuple(weights.shape)}")
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    k = torch.nn.functional.normalize(keys.float(), dim=1)
    log_p = (q @ k.T / tau).log_softmax(dim=1)
    if form == "code":  # log Σ_j W_ij p_ij, computed stably in log space
        return -torch.logsumexp(log_p + weights.float().log(), dim=1).mean()
    return -(weights.float() * log_p).sum(dim=1).mean()


def mixed_teacher(weights: Tensor, teacher_probs: Tensor) -> Tensor:
    """Eq. 7 / 8's teacher distribution for each mixed student input: ``W @ P_t`` (n, K).

    ``teacher_probs`` (n, K) are the teacher's (centred, sharpened) softmax outputs on the other
    view of the sources (Eq. 7) or of the mixes (Eq. 8); the DINO loss against the student is then
    ``H(W @ P_t, P_s)``.
    """
    if weights.ndim != 2 or weights.shape[1] != teacher_probs.shape[0]:
        raise ValueError(f"weights (n, m) and teacher_probs (m, K) do not match: {tuple(weights.shape)}, "
                         f"{tuple(teacher_probs.shape)}")
    return weights.to(teacher_probs.dtype) @ teacher_probs


@dataclass
class MixDraw:
    """One draw of SDMP's mixing: the operation, its parameters at the size they were drawn for."""

    op: str
    params: dict
    size: tuple[int, int]


def _scale_boxes(boxes, src: tuple[int, int], dst: tuple[int, int]):
    """(x1, y1, x2, y2) boxes drawn for an image of ``src`` (H, W), rescaled to ``dst``."""
    if src == dst:
        return boxes
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    if isinstance(boxes, tuple):
        x1, y1, x2, y2 = boxes
        return (round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy))
    scale = torch.tensor([sx, sy, sx, sy]).to(boxes.device, non_blocking=True)
    return (boxes.double() * scale).round().long()


class SDMPResizeMix:
    """SDMP's ResizeMix, drawn as the authors' ``datamixing`` draws it (github.com/OliverRensu/SDMP,
    ``moco/moco/builder.py``, the only mixing of their released code), with the exact λ.

    What that code does, per image i of the batch (all ranks' images gathered):

    * λ ~ Beta(1, 1) (float32), shifted to λ' = 0.8·λ + 0.1 ∈ [0.1, 0.9];
    * ``cut_h = int(H·√(1 − λ'))``, ``cut_w = int(W·√(1 − λ'))`` in float32;
    * centre ``cy ~ randint(cut_h // 2, H − cut_h // 2)`` (upper bound excluded), rows
      ``cy − cut_h // 2`` to ``cy + cut_h // 2`` (end excluded); columns alike. The pasted side is
      thus ``2·(cut // 2)``, a pixel short of ``cut`` when it is odd; the box lies inside the image
      and never reaches its last row or column (its top row is uniform on 0..H − side − 1);
    * the whole partner ``x.flip(0)[i]`` is resized into the box with
      ``F.interpolate(mode="bilinear")`` (``align_corners=False``, no antialiasing).

    The pasted area is then ≈ 1 − λ' ~ U(0.1, 0.9) less the truncations: mean 0.494 at 224×224,
    0.459 at 32×32 (the ResizeMix paper's τ ~ U(0.1, 0.8) on the side gives τ²: mean 0.243, at most
    0.64). All of the above is followed here, with λ ~ Beta(α, α) (α = 1 is the code's).

    Where the code differs and is not followed:

    * its λ is ``1 − cut_h·cut_w / (H·W)``, which counts the pixel row and column an odd ``cut``
      does not paste; here λ is the exact fraction of pixels kept, ``1 − side_h·side_w / (H·W)``;
    * as released (commit 8615686, "fixbug", 2023-01-01) the paste is guarded by
      ``if (i >= rank*bz) and (i < rank*bz)``, which is never true: no image is pasted while the
      losses still use λ. The first release (v0.1, 2022-06-19) pasted every image, with a CutMix
      box (uniform centre, clipped) into which the partner was squeezed. Here the box is pasted;
    * the code draws the box position anew for each of the two views (same λ, so same size); here
      one draw serves every view (:meth:`SDMPMixing.apply`, the box rescaled to each view's size).

    ``per_sample=False`` draws one λ and one box for the whole batch (Table 7's "Shared").
    """

    def __init__(self, alpha: float = 1.0, per_sample: bool = True, generator: torch.Generator | None = None) -> None:
        self.alpha = check_alpha(alpha)
        self.per_sample = check_bool(per_sample, "per_sample")
        self.generator = generator

    def make_params(self, images: Tensor, index: Tensor) -> dict:
        """``{"boxes": (n, 4) int64}`` ``(x1, y1, x2, y2)`` on the images' device."""
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        n = b if self.per_sample else 1
        lam = beta_sample(self.alpha, self.alpha, n, self.generator)  # float32, as the code's astype
        ratio = torch.sqrt(1 - (lam * 0.8 + 0.1))
        half_h = (h * ratio).long() // 2  # int() truncation, then the code's cut // 2
        half_w = (w * ratio).long() // 2
        u = rand((n, 2), self.generator)
        # cy - half = randint(half, H - half) - half: uniform on 0 .. H - 2·half - 1
        y1 = (u[:, 0] * (h - 2 * half_h)).long().clamp(max=h - 2 * half_h - 1)
        x1 = (u[:, 1] * (w - 2 * half_w)).long().clamp(max=w - 2 * half_w - 1)
        boxes = torch.stack([x1, y1, x1 + 2 * half_w, y1 + 2 * half_h], dim=1)
        return {"boxes": boxes.expand(b, 4).to(images.device, non_blocking=True)}

    def mix(self, images: Tensor, index: Tensor, params: dict) -> tuple[Tensor, Tensor, None, Tensor]:
        """``(mixed, λ (n,), None, boxes)``: each whole ``images[index[i]]`` resized bilinearly into
        box i; λ the exact fraction of image i's pixels kept."""
        boxes = params["boxes"]
        mixed = resize_paste(images, images[index.to(images.device, non_blocking=True)], boxes, mode="bilinear")
        return mixed, 1.0 - box_area_fraction(boxes, images.shape[-2], images.shape[-1]), None, boxes


class SDMPMixing:
    """SDMP's intra-batch mixing: ``x^m_i = mix(x_i, x_{n−1−i}, λ_i)``.

    Args:
        ops: the operations to choose from, uniformly per batch; any of :data:`SDMP_OPS`
            (default all three, the paper's; Table 8 ablates ``("mixup",)`` and ``("resizemix",)``).
        alpha: λ ~ Beta(α, α) (default 1.0: uniform, as the authors' code); ResizeMix then shifts
            it to 0.8·λ + 0.1 (:class:`SDMPResizeMix`).
        per_sample: one λ per image (default, Table 7's "Ind.") or one per batch ("Shared").
        generator: all randomness (the operation, λ, boxes); default the global torch seed.

    Example:
        >>> mixing = SDMPMixing(generator=torch.Generator().manual_seed(0))
        >>> draw = mixing.draw(view2)
        >>> view2_mixed, lam = mixing.apply(view2, draw)
        >>> view1_mixed, _ = mixing.apply(view1, draw)   # the same mix of the other view
    """

    def __init__(self, ops: Sequence[str] = SDMP_OPS, alpha: float = 1.0, per_sample: bool = True,
                 generator: torch.Generator | None = None) -> None:
        if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
            raise ValueError(f"ops must be a non-empty list drawn from {list(SDMP_OPS)}, got {ops!r}")
        self.ops = tuple(check_choice(op, "ops", SDMP_OPS) for op in ops)
        self.alpha = check_alpha(alpha)
        self.per_sample = check_bool(per_sample, "per_sample")
        common = {"pairing": "flip", "granularity": "elem" if self.per_sample else "batch"}
        # the core mixers draw and apply; their targets are never built, so num_classes=1 is never used
        self.mixers = {"mixup": Mixup(1, alpha=self.alpha, **common), "cutmix": CutMix(1, alpha=self.alpha, **common),
                       "resizemix": SDMPResizeMix(self.alpha, self.per_sample)}
        self.generator = generator

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    @generator.setter
    def generator(self, g: torch.Generator | None) -> None:
        self._generator = g
        for m in self.mixers.values():
            m.generator = g

    def draw(self, images: Tensor) -> MixDraw:
        """Draw the operation and its parameters for a batch shaped like ``images`` (n >= 2)."""
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(f"SDMP mixes a (n, C, H, W) batch with n >= 2, got shape {tuple(images.shape)}")
        op = self.ops[int(randint(len(self.ops), (1,), self.generator))] if len(self.ops) > 1 else self.ops[0]
        index = flip_partner(images.shape[0], images.device)
        return MixDraw(op, self.mixers[op].make_params(images, index), tuple(images.shape[-2:]))

    def apply(self, images: Tensor, draw: MixDraw) -> tuple[Tensor, Tensor]:
        """``(mixed images, exact λ (n,) float32)``: ``draw`` applied to ``images`` (any size; boxes
        are rescaled to it, so λ can differ by the rounding of the box sides)."""
        size = tuple(images.shape[-2:])
        params = dict(draw.params)
        for key in ("box", "boxes"):
            if key in params:
                params[key] = _scale_boxes(params[key], draw.size, size)
        mixed, lam, _, _ = self.mixers[draw.op].mix(images, flip_partner(images.shape[0], images.device), params)
        return mixed, lam.float().to(images.device, non_blocking=True).expand(images.shape[0]).contiguous()

    def __repr__(self) -> str:
        return f"SDMPMixing(ops={self.ops}, alpha={self.alpha}, per_sample={self.per_sample})"
