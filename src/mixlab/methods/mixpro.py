"""MixPro: MaskMix and Progressive Attention Labeling for vision transformers.

Zhao, Huang, Hu, Zhang & Liu, "MixPro: Data Augmentation with MaskMix and Progressive Attention
Labeling for Vision Transformer", ICLR 2023 (arXiv:2304.12043); official code fistyee/MixPro. On
MaskMix batches a random grid of patch-aligned cells of the partner replaces the image's (labels
by the exact area); the label weight is the attention label blended with the area label by the
progressive factor, the cosine similarity of the model's prediction and the area label.

The equations, the defaults and their source and the deviations from the official code:
docs/methods/mixpro.md.

Example:
    >>> method = MixPro(num_classes=10, label_smoothing=0.1)
    >>> method.setup(create_model("vit_tiny_patch4", 10), torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_alpha, check_bool, check_choice, check_probability
from mixlab.core.losses import SoftTargetCrossEntropy
from mixlab.core.pairing import pair_index
from mixlab.core.random import beta_sample, rand
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.methods.base import Method, StepOutput
from mixlab.methods.transmix import attention_lambda
from mixlab.models.attention import QUERIES, AttentionLayout, AttentionRecorder, attention_layout, patch_grid

__all__ = ["FACTORS", "MixPro", "cells_to_grid", "maskmix_cells", "progressive_factor"]

#: the progressive factors of Eq. (2)
FACTORS = ("similarity", "accuracy")


def maskmix_cells(n: int, grid: tuple[int, int], keep: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """(n, g_h, g_w) bool: for each image, ``keep`` cells drawn uniformly at random (True = kept)."""
    cells = grid[0] * grid[1]
    order = rand((n, cells), generator).argsort(dim=1)[:, :keep]  # a uniform keep-subset per image
    kept = torch.zeros(n, cells, dtype=torch.bool, device=order.device).scatter_(1, order, True)
    return kept.view(n, *grid).to(device, non_blocking=True)


def cells_to_grid(cells: Tensor, cell_size: int | tuple[int, int], height: int, width: int) -> Tensor:
    """(B, g_h, g_w) cells blown up to an (H, W) grid of pixels or tokens (``cell_size`` = (c_h, c_w)
    or c each, the last row and column cropped): (B, H, W)."""
    ch, cw = (cell_size, cell_size) if isinstance(cell_size, int) else cell_size
    return cells.repeat_interleave(ch, dim=1).repeat_interleave(cw, dim=2)[:, :height, :width]


def progressive_factor(logits: Tensor, area_targets: Tensor) -> Tensor:
    """Eq. (2)'s α_i = cos(softmax(z_i), ỹ_area,i), (B,), without gradient."""
    return F.cosine_similarity(logits.detach().float().softmax(dim=1), area_targets.float(), dim=1)


class MixPro(Method):
    """MixPro (docs/methods/mixpro.md): MaskMix + progressive attention labels, or DeiT's Mixup/CutMix.

    Args:
        num_classes: K.
        label_smoothing: ε, applied to the one-hot targets before mixing.
        alpha: α of MaskMix's Beta(α, α) (default 1.0, the paper's).
        mask_patch_size: s, the mask cell side in pixels, a multiple of the model's patch size;
            ``None`` (default): a 4 × 4 grid (docs/methods/mixpro.md).
        maskmix_prob: probability of MaskMix for a batch (default 0.5, the official configs').
        mixup_alpha, cutmix_alpha, cutmix_prob: DeiT's switch for the other batches (0.8, 1.0, 0.5);
            ``mixup_alpha=0`` makes them all CutMix.
        pal: use progressive attention labels on MaskMix batches (default True); ``False`` labels
            them by area (MaskMix alone).
        factor: ``"similarity"`` (default, the official α) or ``"accuracy"`` (the running training accuracy).
        accuracy_momentum: m of the running accuracy, ``acc ← m·acc + (1 − m)·batch accuracy`` (0.99).
        query: the attention row, ``"auto"`` (default), ``"cls"`` or ``"mean"``.

    Raises:
        TypeError, ValueError: bad arguments (at construction); a model without the attention this
            method reads, or a ``mask_patch_size`` that is not a multiple of its patch size (at :meth:`setup`).
    """

    name = "mixpro"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, alpha: float = 1.0,
                 mask_patch_size: int | None = None, maskmix_prob: float = 0.5, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, cutmix_prob: float = 0.5, pal: bool = True, factor: str = "similarity",
                 accuracy_momentum: float = 0.99, query: str = "auto") -> None:
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing)
        from mixlab import CutMix, Mixup

        self.alpha = check_alpha(alpha, "alpha")
        if mask_patch_size is not None and (isinstance(mask_patch_size, bool) or not isinstance(mask_patch_size, int)
                                            or mask_patch_size < 1):
            raise ValueError(f"mask_patch_size must be a positive int (pixels, a multiple of the model's patch size) "
                             f"or None, got {mask_patch_size!r}")
        if isinstance(mixup_alpha, bool) or not isinstance(mixup_alpha, (int, float)) or not mixup_alpha >= 0:
            raise ValueError(f"mixup_alpha must be a number >= 0 (0 disables Mixup), got {mixup_alpha!r}")
        self.mask_patch_size = mask_patch_size
        self.maskmix_prob = check_probability(maskmix_prob, "maskmix_prob")
        self.cutmix_prob = check_probability(cutmix_prob, "cutmix_prob")
        self.pal = check_bool(pal, "pal")
        self.factor = check_choice(factor, "factor", FACTORS)
        self.accuracy_momentum = check_probability(accuracy_momentum, "accuracy_momentum")
        self.query = check_choice(query, "query", QUERIES)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.cutmix = CutMix(num_classes, alpha=cutmix_alpha, label_smoothing=label_smoothing)
        self.mixup = Mixup(num_classes, alpha=mixup_alpha, label_smoothing=label_smoothing) if mixup_alpha > 0 else None
        self.loss_fn = SoftTargetCrossEntropy()
        self.register_buffer("train_accuracy", torch.zeros(()))  # the running accuracy of factor="accuracy"
        self._batch_accuracy: Tensor | None = None  # this step's, folded in by after_optimizer_step
        self.layout: AttentionLayout | None = None
        self._recorder: AttentionRecorder | None = None
        self._model: list[nn.Module] = []  # for mix_preview (a list: not a submodule)

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Find the model's last attention (``TypeError`` if it has none), check the cell size, share
        the generator."""
        super().setup(model, generator)
        self.layout = attention_layout(model, type(self).__name__)
        p = self.layout.patch_size
        if self.mask_patch_size is not None and (self.mask_patch_size % p[0] or self.mask_patch_size % p[1]):
            raise ValueError(f"mask_patch_size must be a multiple of the model's patch size {p[0]}x{p[1]} (each patch "
                             f"from one image), got {self.mask_patch_size}")
        self._recorder = AttentionRecorder(model, self.query, layout=self.layout)
        self._model = [model]
        for mixer in (self.cutmix, self.mixup):
            if mixer is not None:
                mixer.generator = generator

    def per_rank_state(self) -> dict[str, Tensor]:
        """Each data-parallel process's running accuracy (of its own batches)."""
        return {"train_accuracy": self.train_accuracy} if self.factor == "accuracy" else {}

    # ------------------------------------------------------------------ 1. MaskMix
    def cell_size(self, height: int) -> int:
        """s in pixels: ``mask_patch_size``, or the multiple of the patch size nearest to H/4."""
        if self.mask_patch_size is not None:
            return self.mask_patch_size
        p = self.layout.patch_size[0]
        return p * max(1, round(height / 4 / p))

    def maskmix(self, images: Tensor, labels: Tensor) -> tuple[MixResult, Tensor]:
        """Eq. (1) on a batch: the mixed batch (area labels, ``mask`` = M) and the (B, p) token mask M↓."""
        b, _, height, width = images.shape
        h, w = patch_grid(self.layout, height, width)
        s = self.cell_size(height)
        grid = (math.ceil(height / s), math.ceil(width / s))
        lam = float(beta_sample(self.alpha, self.alpha, 1, self.generator, dtype=torch.float64))
        cells = maskmix_cells(b, grid, math.ceil(grid[0] * grid[1] * lam), self.generator, images.device)
        mask = cells_to_grid(cells, s, height, width).unsqueeze(1)  # (B, 1, H, W), True = kept
        index = pair_index(b, "roll", device=images.device)
        mixed_images = torch.where(mask, images, images[index])
        kept = mask.float()
        lam_area = kept.mean(dim=(1, 2, 3))
        source = soft_targets(labels.to(images.device), self.num_classes, self.label_smoothing)
        mixed = MixResult(mixed_images, mix_targets(source, index, lam_area), lam_area, index, source,
                          mask=kept.to(images.dtype))
        ph, pw = self.layout.patch_size
        own_tokens = cells_to_grid(cells, (s // ph, s // pw), h, w).flatten(1).float()
        return mixed, own_tokens

    # ------------------------------------------------------------------ 2-3. progressive attention labels
    def relabel(self, mixed: MixResult, logits: Tensor, attn: Tensor, own_tokens: Tensor) -> tuple[MixResult, Tensor]:
        """Eq. (2) on a MaskMix batch: ``mixed`` with its targets replaced by ỹ, and α (B,)."""
        if self.factor == "similarity":
            alpha = progressive_factor(logits, mixed.targets)
        else:
            alpha = self.train_accuracy.float().expand(logits.shape[0])
        lam = torch.lerp(mixed.lam.float(), attention_lambda(attn, own_tokens), alpha)
        return mixed.replace(targets=mix_targets(mixed.source_targets, mixed.index, lam)), alpha

    def mix(self, model: nn.Module, images: Tensor, labels: Tensor,
            maskmix: bool | None = None) -> tuple[MixResult, Tensor, Tensor]:
        """One batch through the switch and the model: ``(mixed, logits, α)`` (α = 0 where the labels
        are by area). ``maskmix`` forces the branch (``None``: the draw of step 4).

        Raises:
            RuntimeError: :meth:`setup` was not called.
        """
        if self._recorder is None:
            raise RuntimeError("MixPro.setup(model, generator) must be called first: it finds the model's attention")
        zero = torch.zeros(images.shape[0], device=images.device)
        if maskmix is None:
            maskmix = float(rand((1,), self.generator)) < self.maskmix_prob
        if not maskmix:  # DeiT's switch, area labels
            use_cutmix = self.mixup is None or float(rand((1,), self.generator)) < self.cutmix_prob
            mixed = (self.cutmix if use_cutmix else self.mixup)(images, labels)
            return mixed, model(mixed.images), zero
        mixed, own_tokens = self.maskmix(images, labels)
        if not self.pal:
            return mixed, model(mixed.images), zero
        with self._recorder:
            logits = model(mixed.images)
        mixed, alpha = self.relabel(mixed, logits, self._recorder.map, own_tokens)
        return mixed, logits, alpha

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        mixed, logits, alpha = self.mix(model, images, labels)
        loss = self.loss_fn(logits, mixed.targets)
        if self.factor == "accuracy":
            self._batch_accuracy = (logits.detach().argmax(1) == mixed.targets.argmax(1)).float().mean()
        logs = {"alpha": alpha.mean(), "lam": mixed.lam.float().mean()}
        return StepOutput(loss=loss, logits=logits, logs=logs, mixed=mixed)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """``factor="accuracy"``: fold this step's accuracy into the running accuracy."""
        if self._batch_accuracy is not None:
            self.train_accuracy.lerp_(self._batch_accuracy.to(self.train_accuracy), 1.0 - self.accuracy_momentum)
            self._batch_accuracy = None

    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """A MaskMix batch with progressive attention labels (the method's own branch), from the model
        given to :meth:`setup`."""
        if not self._model:
            raise RuntimeError("MixPro.setup(model, generator) must be called before previewing: the labels need "
                               "the model's attention")
        return self.mix(self._model[0], images, labels, maskmix=True)[0]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, mask_patch_size={self.mask_patch_size}, "
                f"maskmix_prob={self.maskmix_prob}, mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"cutmix_prob={self.cutmix_prob}, pal={self.pal}, factor={self.factor!r}, query={self.query!r}")
