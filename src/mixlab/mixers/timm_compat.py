"""A drop-in for timm's ``timm.data.Mixup`` built on mixlab's kernels.

timm's ``train.py`` builds ``Mixup(mixup_alpha=..., cutmix_alpha=..., cutmix_minmax=..., prob=...,
switch_prob=..., mode=..., label_smoothing=..., num_classes=...)`` and calls
``input, target = mixup_fn(input, target)``; swapping the import for ``mixlab.TimmMixup`` keeps
every argument, the in-place update of ``input`` and the returned soft targets, and
``mixup_fn.mixup_enabled = False`` (timm's ``--mixup-off-epoch``) still turns mixing off.

What is the same as timm (``timm/data/mixup.py``, 1.0.31):

* pairing by flip (image i with B-1-i); λ ~ Beta(α, α) of the chosen method; ``prob`` the
  chance of mixing (per batch in ``"batch"`` mode, per pair / per image in ``"pair"``/``"elem"``);
  ``switch_prob`` the chance of CutMix when both α > 0, Mixup or CutMix alone when the other α is 0;
* CutMix boxes: ``rand_bbox`` (side ``int(√(1-λ)·H)`` × ``int(√(1-λ)·W)``, uniform integer centre,
  ``[c - cut//2, c + (cut+1)//2)`` clipped) or, with ``cutmix_minmax=(a, b)``,
  ``rand_bbox_minmax`` (sides uniform integers in ``[int(a·H), int(b·H))``, placed inside), which
  also sets ``cutmix_alpha`` to 1.0; ``correct_lam`` (and always with ``cutmix_minmax``) makes λ
  the exact kept area, ``1 - area/(H·W)``;
* ``"pair"`` mode: one draw per pair, both members share λ and box;
* targets: ``off = label_smoothing / num_classes``, ``on = 1 - label_smoothing + off``,
  ``y·λ + y.flip(0)·(1 - λ)``; ``multi_label=True`` takes dense (B, K) targets smoothed towards
  0.5: ``t·(1 - ε) + 0.5·ε``;
* ``mixup_enabled`` (set it to ``False`` to stop mixing; the targets are still smoothed).

What differs, on purpose:

* randomness: a ``torch.Generator`` (keyword ``generator``, default the global torch seed), not
  NumPy's global RNG; the draws are vectorised (no loop over images in ``"elem"``/``"pair"``).
* odd batches work (timm asserts an even batch): the middle image pairs with itself and so
  stays unmixed, with its own targets; a batch of one passes through.
* bad arguments raise ``ValueError``/``TypeError`` when constructed (timm asserts, or, for an
  unknown ``mode``, silently uses ``"batch"``); ``mixup_alpha = cutmix_alpha = 0`` without
  ``cutmix_minmax`` is refused at construction (timm fails at the first call).
* uint8 images work (Mixup rows rounded as timm's ``FastCollateMixup``), and inputs that
  require grad are mixed out of place, differentiably (timm's in-place update fails there).
* Mixup pixels are one ``lerp`` where timm computes ``x·λ + x'·(1-λ)``: equal to float rounding
  (one ulp); the targets likewise; CutMix pixels, boxes and λ are equal bit for bit.
* the return value is a :class:`~mixlab.core.result.MixResult`: the tuple ``(x, target)``, plus
  ``lam``, ``index`` and ``source_targets`` (``boxes`` too when only CutMix is active).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mixlab.core.boxes import clipped_box, clipped_boxes, kept_fraction, paste_boxes
from mixlab.core.checks import (
    check_bool,
    check_choice,
    check_images,
    check_labels,
    check_nonnegative,
    check_probability,
    is_label_map,
    reads_values,
)
from mixlab.core.random import beta_sample, rand
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.mixers.base import plain_view, rewrap, needs_grad, unmixed
from mixlab.mixers.cutmix import cutmix_images
from mixlab.mixers.mixup import mixup_images

__all__ = ["TimmMixup", "TIMM_MODES"]

#: timm's ``mode`` values
TIMM_MODES = ("batch", "pair", "elem")


class TimmMixup:
    """timm's ``Mixup`` (Mixup and CutMix, per batch, pair or element), on mixlab's kernels.

    Args (timm's, same defaults):
        mixup_alpha: α of Mixup's Beta(α, α); Mixup is active if > 0 (default 1.0).
        cutmix_alpha: α of CutMix's Beta(α, α); CutMix is active if > 0 (default 0.0).
        cutmix_minmax: ``(min, max)`` box side fractions, 0 <= min < max <= 1: CutMix with
            uniform box sides instead of α (default None).
        prob: probability of mixing a batch, pair or element (default 1.0).
        switch_prob: probability of CutMix instead of Mixup when both are active (default 0.5).
        mode: ``"batch"`` (default), ``"pair"`` or ``"elem"``: how often parameters are drawn.
        correct_lam: λ from the clipped box's exact area (default True).
        label_smoothing: ε (default 0.1, as timm).
        num_classes: K (default 1000).
        multi_label: dense (B, K) multi-label targets, smoothed towards 0.5 (default False).

    Args (mixlab's, keyword-only):
        generator: ``torch.Generator`` for all randomness (default: the global torch seed).
        inplace: mix into ``x`` and return it, as timm (default True); ``False`` leaves ``x``
            untouched.

    Example:
        >>> mixup_fn = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)
        >>> x, target = mixup_fn(x, target)   # as timm: x mixed in place, target (B, 1000) soft
    """

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        multi_label: bool = False,
        *,
        generator: torch.Generator | None = None,
        inplace: bool = True,
    ) -> None:
        self.mixup_alpha = check_nonnegative(mixup_alpha, "mixup_alpha")
        self.cutmix_alpha = check_nonnegative(cutmix_alpha, "cutmix_alpha")
        if cutmix_minmax is not None:
            if not isinstance(cutmix_minmax, (tuple, list)) or len(cutmix_minmax) != 2:
                raise TypeError(f"cutmix_minmax must be a pair (min, max) or None, got {cutmix_minmax!r}")
            lo, hi = (float(v) for v in cutmix_minmax)
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"cutmix_minmax must satisfy 0 <= min < max <= 1, got ({lo}, {hi})")
            cutmix_minmax = (lo, hi)
            self.cutmix_alpha = 1.0  # as timm: minmax forces CutMix on
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise ValueError("one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be given, "
                             f"got mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, cutmix_minmax=None")
        self.cutmix_minmax = cutmix_minmax
        self.mix_prob = check_probability(prob, "prob")
        self.switch_prob = check_probability(switch_prob, "switch_prob")
        self.mode = check_choice(mode, "mode", TIMM_MODES)
        self.correct_lam = check_bool(correct_lam, "correct_lam")
        self.label_smoothing = check_probability(label_smoothing, "label_smoothing")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.multi_label = check_bool(multi_label, "multi_label")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        self.inplace = check_bool(inplace, "inplace")
        self.mixup_enabled = True  # timm's switch, set by the training loop

    # ---------------------------------------------------------------- sampling (timm's _params_per_*)
    def make_params(self, batch_size: int, height: int, width: int) -> dict[str, Tensor]:
        """One draw per batch (``"batch"``), per pair (B // 2) or per image (``"elem"``), on the
        generator's device: ``lam`` (n,) float32, the final λ (1 where not mixed, the kept area
        for CutMix when corrected), ``cutmix`` (n,) bool, ``boxes`` (n, 4) int64 ``(x1, y1, x2, y2)``
        (empty where not CutMix)."""
        n = {"batch": 1, "pair": batch_size // 2, "elem": batch_size}[self.mode]
        g = self.generator
        u = rand((2, n), g)
        apply = u[0] < self.mix_prob if self.mixup_enabled else torch.zeros(n, dtype=torch.bool, device=u.device)
        if self.mixup_alpha > 0.0 and self.cutmix_alpha > 0.0:
            use_cutmix = u[1] < self.switch_prob
            lam = torch.where(use_cutmix, beta_sample(self.cutmix_alpha, self.cutmix_alpha, n, g, dtype=torch.float64),
                              beta_sample(self.mixup_alpha, self.mixup_alpha, n, g, dtype=torch.float64))
        else:
            alpha = self.mixup_alpha if self.mixup_alpha > 0.0 else self.cutmix_alpha
            lam = beta_sample(alpha, alpha, n, g, dtype=torch.float64)
            use_cutmix = None  # the one active method
        lam = torch.where(apply, lam, 1.0)
        if self.cutmix_alpha == 0.0:  # Mixup only: no boxes to draw
            return {"lam": lam.float(), "cutmix": torch.zeros(n, dtype=torch.bool, device=u.device),
                    "boxes": torch.zeros(n, 4, dtype=torch.int64, device=u.device)}
        cut = apply if use_cutmix is None else apply & use_cutmix
        if self.cutmix_minmax is None and n == 1 and reads_values(lam, None):
            return self._batch_box_on_host(float(lam[0]), bool(cut[0]), height, width)
        if self.cutmix_minmax is not None:
            boxes = self._minmax_boxes(n, height, width)
        else:
            boxes = clipped_boxes((1.0 - lam).clamp(0, 1).sqrt(), height, width, generator=g, exact_side=True)
        boxes = torch.where(cut.view(-1, 1), boxes, 0)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = torch.where(cut, kept_fraction(boxes, height, width).double(), lam)
        return {"lam": lam.float(), "cutmix": cut, "boxes": boxes}

    def _batch_box_on_host(self, lam: float, cut: bool, height: int, width: int) -> dict[str, Tensor]:
        """The end of :meth:`make_params` for the batch's one box in Python, when its draws are
        host values: the same draws and the same float64 arithmetic as the tensor path."""
        box = clipped_box(math.sqrt(min(max(1.0 - lam, 0.0), 1.0)), height, width, self.generator, exact_side=True)
        if not cut:
            box = (0, 0, 0, 0)
        elif self.correct_lam:
            lam = 1.0 - (box[2] - box[0]) * (box[3] - box[1]) / float(height * width)
        return {"lam": torch.tensor([lam], dtype=torch.float32), "cutmix": torch.tensor([cut]),
                "boxes": torch.tensor([box], dtype=torch.int64)}

    def _minmax_boxes(self, n: int, height: int, width: int) -> Tensor:
        """timm's ``rand_bbox_minmax``: sides uniform in [int(a·S), int(b·S)), placed inside."""
        lo, hi = self.cutmix_minmax
        u = rand((4, n), self.generator).double()
        h_lo, h_hi, w_lo, w_hi = int(height * lo), int(height * hi), int(width * lo), int(width * hi)
        cut_h = h_lo + (u[0] * max(h_hi - h_lo, 1)).long()
        cut_w = w_lo + (u[1] * max(w_hi - w_lo, 1)).long()
        y1 = (u[2] * (height - cut_h + 1)).long()
        x1 = (u[3] * (width - cut_w + 1)).long()
        return torch.stack([x1, y1, x1 + cut_w, y1 + cut_h], dim=1)

    # ---------------------------------------------------------------- application
    def __call__(self, x: Tensor, target: Tensor) -> MixResult:
        """Mix ``x`` (B, C, H, W) in place (unless ``inplace=False``) and return ``(x, target)``
        with (B, K) float32 soft targets, as timm's ``Mixup.__call__``."""
        check_images(x)
        return self.apply(x, target, self.make_params(x.shape[0], x.shape[-2], x.shape[-1]))

    def apply(self, x: Tensor, target: Tensor, params: dict[str, Tensor]) -> MixResult:
        """Mix with drawn parameters (:meth:`make_params`'s, or timm's own draws)."""
        images = x if type(x) is Tensor else plain_view(x)
        check_images(images)
        b = images.shape[0]
        device = images.device
        source = self._targets(target, b, device)
        if b < 2:  # nothing to pair with: the batch passes through
            return unmixed(x, source)
        index = torch.arange(b - 1, -1, -1, device=device)
        out = None if needs_grad(images) else images if self.inplace else torch.empty_like(images)
        if self.mode == "batch" and params["lam"].device.type == "cpu" and not torch.compiler.is_compiling():
            mixed = self._mix_batch_on_host(images, index, params, out)  # one kernel, chosen on the host
            lam, boxes = params["lam"].to(device, non_blocking=True), params["boxes"]
        else:
            lam, cut, boxes = self.rows(params, b, device)  # (R,), (R,), (R, 4): R = 1 in batch mode, else B
            partner = images.flip(0)  # the unmixed partners, kept while ``out`` is overwritten
            weight = torch.where(cut, 1.0, lam)  # CutMix rows: no blend, then the paste
            mixed = mixup_images(images, index, weight, out=out, pairing="flip", partner=partner)
            mixed = paste_boxes(mixed, partner, boxes, out=None if out is None else mixed)
        lam = lam.expand(b).contiguous()
        targets = mix_targets(source, index, lam)
        boxes = boxes.to(device, non_blocking=True).expand(b, 4) if self.mixup_alpha == 0.0 else None
        return rewrap(MixResult(mixed, targets, lam, index, source, boxes=boxes), x)

    def _mix_batch_on_host(self, images: Tensor, index: Tensor, params: dict[str, Tensor], out: Tensor | None) -> Tensor:
        lam, cut = float(params["lam"][0]), bool(params["cutmix"][0])
        if cut:
            return cutmix_images(images, index, tuple(params["boxes"][0].tolist()), out=out, pairing="flip")
        if lam < 1.0:
            return mixup_images(images, index, params["lam"][:1], out=out, pairing="flip")
        return images if out is None or out is images else out.copy_(images)

    def rows(self, params: dict[str, Tensor], b: int, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`make_params`' draws as per-image ``(λ, cutmix, boxes)`` rows on ``device`` (one
        row in batch mode): pair mode gives both members of pair i its draw i; an odd batch's
        middle image (its own partner) gets λ = 1 and no box."""
        lam, cut, boxes = (params[k].to(device, non_blocking=True) for k in ("lam", "cutmix", "boxes"))
        if self.mode == "batch":
            return lam, cut, boxes
        if self.mode == "elem" and b % 2 == 0:
            return lam, cut, boxes
        # pair i and its partner B-1-i share row i (pair mode); an odd batch's middle takes an extra
        # identity row (it is its own partner)
        lam = torch.cat([lam, lam.new_ones(1)])
        cut = torch.cat([cut, cut.new_zeros(1)])
        boxes = torch.cat([boxes, boxes.new_zeros(1, 4)])
        ar = torch.arange(b, device=device)
        if self.mode == "pair":
            row = torch.minimum(ar, b - 1 - ar)
        else:
            row = torch.where(ar == b // 2, b, ar)
        return lam[row], cut[row], boxes[row]

    def _targets(self, target: Tensor, b: int, device) -> Tensor:
        if is_label_map(target):
            raise TypeError("TimmMixup mixes class labels, as timm's Mixup; for segmentation label maps (B, H, W) "
                            "use mixlab.Mixup / CutMix / ResizeMix / FMix / SaliencyMix, which move them with the pixels")
        if self.multi_label:
            check_labels(target, b, self.num_classes)
            if target.ndim != 2:
                raise ValueError(f"multi_label=True needs dense targets (B, num_classes), got shape {tuple(target.shape)}")
            return target.to(device, torch.float32) * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        check_labels(target, b, self.num_classes)
        return soft_targets(target.to(device, non_blocking=True), self.num_classes, self.label_smoothing)

    def __repr__(self) -> str:
        return (f"TimmMixup(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"cutmix_minmax={self.cutmix_minmax}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
                f"mode={self.mode!r}, correct_lam={self.correct_lam}, label_smoothing={self.label_smoothing}, "
                f"num_classes={self.num_classes}, multi_label={self.multi_label})")
