"""TransMix: attend to mix for vision transformers.

Chen, Sun, He, Torr, Yuille & Bai, "TransMix: Attend to Mix for Vision Transformers", CVPR 2022
(arXiv:2111.09833); official code Beckschen/TransMix. DeiT's Mixup/CutMix switch; on CutMix batches
the label weight of each image is the share of the class token's attention (last block, averaged
over the heads, recorded in the same forward pass) that falls on its patches:
``λ = (1 − w) λ_attn + w λ_area`` with ``λ_attn = (A · M↓) / (A · 1)`` (w = ``area_weight``).

The equations, the defaults and their source and the deviations from the official code:
docs/methods/transmix.md.

Example:
    >>> model = create_model("vit_tiny_patch4", 10)
    >>> method = TransMix(num_classes=10, label_smoothing=0.1)
    >>> method.setup(model, torch.Generator().manual_seed(0))
    >>> out = method.training_step(model, (images, labels), progress=0.0)   # out.loss, out.mixed.targets
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_choice, check_probability
from mixlab.core.losses import SoftTargetCrossEntropy
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.methods.base import Method, StepOutput
from mixlab.models.attention import QUERIES, AttentionLayout, AttentionRecorder, attention_layout, patch_grid

__all__ = ["MASK_DOWNSAMPLING", "TransMix", "attention_lambda", "patch_fraction"]

#: how a pixel mask is brought to the patch grid (:func:`patch_fraction`)
MASK_DOWNSAMPLING = ("area", "nearest")


def patch_fraction(mask: Tensor, patch_size: tuple[int, int], mode: str = "area") -> Tensor:
    """``M↓``: the (B, 1, H, W) pixel mask of image i's own pixels on the (h, w) patch grid, (B, h·w).

    ``"area"``: the fraction of each patch's pixels that are image i's; ``"nearest"``: the mask at
    each patch's top-left pixel (the TransMix code's ``nn.Upsample(size)``, nearest).
    """
    ph, pw = patch_size
    if mode == "area":
        return F.avg_pool2d(mask.float(), (ph, pw)).flatten(1)
    check_choice(mode, "mask_downsample", MASK_DOWNSAMPLING)
    return mask[:, 0, ::ph, ::pw].float().flatten(1)


def attention_lambda(attn: Tensor, own: Tensor) -> Tensor:
    """Eq. (1): ``λ_attn = Σ_j A_j own_j / Σ_j A_j``, the share of the attention on image i's patches.

    Args:
        attn: (B, p) non-negative attention over the patch tokens (need not sum to 1).
        own: (B, p) fraction of each patch that is image i's (``M↓``), in [0, 1].
    """
    attn = attn.float()
    return (attn * own).sum(dim=1) / attn.sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)


class TransMix(Method):
    """TransMix (docs/methods/transmix.md): CutMix (or Mixup, DeiT's switch) with attention-weighted labels.

    Args:
        num_classes: K.
        label_smoothing: ε, applied to the one-hot targets before mixing.
        cutmix_alpha: α of CutMix's Beta(α, α) (default 1.0, DeiT's).
        mixup_alpha: α of Mixup's Beta(α, α) for the batches that are not CutMix'ed (default 0.8,
            DeiT's); 0 disables Mixup (every batch is CutMix + TransMix).
        cutmix_prob: probability that a batch is CutMix'ed when Mixup is enabled (default 0.5).
        area_weight: w of Eq. (2): 0 = the paper's λ_attn (default), 0.5 = the official code's average.
        query: ``"auto"`` (default), ``"cls"`` or ``"mean"``: the attention row
            (:mod:`mixlab.models.attention`).
        mask_downsample: ``"area"`` (default) or ``"nearest"`` (paper and code): how ``M`` reaches the
            patch grid (:func:`patch_fraction`).

    Raises:
        TypeError, ValueError: bad arguments (at construction); a model without the attention this
            method reads (at :meth:`setup`, a ``TypeError`` saying what the model must expose).
    """

    name = "transmix"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, cutmix_alpha: float = 1.0,
                 mixup_alpha: float = 0.8, cutmix_prob: float = 0.5, area_weight: float = 0.0, query: str = "auto",
                 mask_downsample: str = "area") -> None:
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing)
        from mixlab import CutMix, Mixup

        if isinstance(mixup_alpha, bool) or not isinstance(mixup_alpha, (int, float)) or not mixup_alpha >= 0:
            raise ValueError(f"mixup_alpha must be a number >= 0 (0 disables Mixup), got {mixup_alpha!r}")
        self.cutmix_prob = check_probability(cutmix_prob, "cutmix_prob")
        self.area_weight = check_probability(area_weight, "area_weight")
        self.query = check_choice(query, "query", QUERIES)
        self.mask_downsample = check_choice(mask_downsample, "mask_downsample", MASK_DOWNSAMPLING)
        self.cutmix_alpha, self.mixup_alpha = float(cutmix_alpha), float(mixup_alpha)
        self.cutmix = CutMix(num_classes, alpha=cutmix_alpha, label_smoothing=label_smoothing)
        self.mixup = Mixup(num_classes, alpha=mixup_alpha, label_smoothing=label_smoothing) if mixup_alpha > 0 else None
        self.loss_fn = SoftTargetCrossEntropy()
        self.layout: AttentionLayout | None = None
        self._recorder: AttentionRecorder | None = None
        self._model: list[nn.Module] = []  # for mix_preview (a list: not a submodule, not in the state)

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Find the model's last attention (``TypeError`` if it has none) and share the generator."""
        super().setup(model, generator)
        self.layout = attention_layout(model, type(self).__name__)
        self._recorder = AttentionRecorder(model, self.query, layout=self.layout)
        self._model = [model]
        for mixer in (self.cutmix, self.mixup):
            if mixer is not None:
                mixer.generator = generator

    # ------------------------------------------------------------------ steps 1 and 4: the input
    def use_cutmix(self) -> bool:
        """Step 4: whether this batch is CutMix'ed (a host draw from the method's generator)."""
        return self.mixup is None or float(rand((1,), self.generator)) < self.cutmix_prob

    # ------------------------------------------------------------------ step 3: the label
    def relabel(self, mixed: MixResult, labels: Tensor, attn: Tensor) -> tuple[MixResult, Tensor]:
        """Eq. (1)-(2): the targets of a CutMix batch from the attention ``attn`` (B, p) on it.

        Returns:
            ``mixed`` with its targets replaced by ỹ, and λ (B,), the weight of each image's own label.
        """
        own = patch_fraction(mixed.mask, self.layout.patch_size, self.mask_downsample)
        lam_attn = attention_lambda(attn, own)
        lam = torch.lerp(lam_attn, mixed.lam.to(lam_attn), self.area_weight)
        targets = soft_targets(labels.to(mixed.images.device), self.num_classes, self.label_smoothing)
        return mixed.replace(targets=mix_targets(targets, mixed.index, lam)), lam

    def mix(self, model: nn.Module, images: Tensor, labels: Tensor,
            cutmix: bool | None = None) -> tuple[MixResult, Tensor, Tensor]:
        """Steps 1-4 for one batch: mix, run ``model`` on the mixed batch (recording the attention
        on CutMix batches), re-label. Returns ``(mixed, logits, λ)``. ``cutmix`` forces the branch
        (``None``: step 4's draw).

        Raises:
            RuntimeError: :meth:`setup` was not called.
            ValueError: the images are not a multiple of the model's patch size.
        """
        if self._recorder is None:
            raise RuntimeError("TransMix.setup(model, generator) must be called first: it finds the model's attention")
        use_cutmix = self.use_cutmix() if cutmix is None else (cutmix or self.mixup is None)
        if not use_cutmix:
            mixed = self.mixup(images, labels)
            return mixed, model(mixed.images), mixed.lam
        patch_grid(self.layout, images.shape[-2], images.shape[-1])
        mixed = self.cutmix(images, labels)
        with self._recorder:
            logits = model(mixed.images)
        mixed, lam = self.relabel(mixed, labels, self._recorder.map)
        return mixed, logits, lam

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        mixed, logits, lam = self.mix(model, images, labels)
        loss = self.loss_fn(logits, mixed.targets)
        logs = {"lam_label": lam.float().mean().detach(), "lam": mixed.lam.float().mean()}
        return StepOutput(loss=loss, logits=logits, logs=logs, mixed=mixed)

    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """A CutMix batch labelled by TransMix (the method's own branch), with the attention of the
        model given to :meth:`setup`."""
        if not self._model:
            raise RuntimeError("TransMix.setup(model, generator) must be called before previewing: the labels need "
                               "the model's attention")
        return self.mix(self._model[0], images, labels, cutmix=True)[0]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, cutmix_alpha={self.cutmix_alpha}, "
                f"mixup_alpha={self.mixup_alpha}, cutmix_prob={self.cutmix_prob}, "
                f"area_weight={self.area_weight}, query={self.query!r}, mask_downsample={self.mask_downsample!r}")
