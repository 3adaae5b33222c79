"""SMMix: self-motivated image mixing for vision transformers.

Chen, Lin, Lin, Zhang, Chao & Ji, "SMMix: Self-Motivated Image Mixing for Vision Transformers",
ICCV 2023 (arXiv:2212.12977); official code github.com/ChenMnZ/SMMix (``smmix.py``, ``deit.py``,
``engine.py``). The model under training motivates both the mixed image and its labels (equations
are numbered within this docstring):

1. **Self-motivation.** The un-mixed batch goes through the model once more, in eval mode and
   without gradient, for its predictions ``z`` and the attention score of every patch: the attention
   each patch token receives in the last block, averaged over the patch queries and the heads
   (the code's ``attn[:, :, 1:, 1:].mean((1, 2))``; :mod:`mixlab.models.attention`, ``query="mean"``).
2. **Max-min attention region mixing.** One region side k (in patches) is drawn per batch,
   uniformly among the integers in [⌊r_min·S⌋, ⌊r_max·S⌋] (S the side of the patch grid,
   r_min = 0.25, r_max = 0.75). Summing the scores over every k×k window of patches (stride 1),
   image i's *least* attended window receives, patch by patch, its partner's *most* attended window::

       x̃_i = x_i with window argmin_W Σ_W a_i  ←  window argmax_W Σ_W a_partner     (1)
       λ = 1 − k² / N,    ỹ = λ y_i + (1 − λ) y_partner                              (2)

   (N patches; λ is the exact kept pixel fraction, both windows being patch-aligned).
3. **Fine-grained label assignment.** The mixed image's output tokens are pooled over the pasted
   window (→ y_partner) and over the rest (→ y_i); a token head h_tok (a linear layer besides the
   model's head, used only in training) classifies both::

       L_fine = ½ [CE(h_tok(mean_{j∉W} t_j), y_i) + CE(h_tok(mean_{j∈W} t_j), y_partner)]  (3)

4. **Feature consistency.** The mixed image's prediction is pulled towards the mix of the un-mixed
   images' predictions from step 1, mixed as the labels::

       L_con = KL(softmax(λ z_i + (1 − λ) z_partner) ‖ softmax(z̃_i))                  (4)

   The paper names it a feature-consistency constraint; the official code applies it to the head's
   outputs as written here (``KLDivLoss(log_softmax(outputs), softmax(mixed logits))``).
5. ``L = CE(z̃, ỹ) + L_fine + L_con`` (weights 1, the code's). As in the code, SMMix replaces CutMix
   in DeiT's switch: each batch is SMMix'ed with probability ``smmix_prob`` (0.5) and mixed by
   Mixup (α = 0.8, area labels, cross-entropy only) otherwise.

Choices where paper and code leave room:

* The token head is separate from the classifier (the code's ``token_head``, which notes that
  sharing it "does not affect performance"; ``share_head=True`` shares it); it is built in
  :meth:`SMMix.setup` with timm's initialisation (truncated normal, std 0.02) and trained with the
  model's learning rate and schedule. The deployed model is unchanged.
* Grids that are not square draw k from the shorter side. The partner of image i is image i − 1
  (the code flips the batch: the same law for a shuffled loader, and no self-pair on odd batches).
* The step-1 pass restores the model's training mode afterwards (the code sets ``train()``).

Example:
    >>> method = SMMix(num_classes=10, label_smoothing=0.1)
    >>> method.setup(create_model("vit_tiny_patch4", 10), torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_bool, check_probability, check_range
from mixlab.core.losses import SoftTargetCrossEntropy, soft_cross_entropy
from mixlab.core.pairing import pair_index
from mixlab.core.random import rand, randint
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.methods.base import Method, StepOutput
from mixlab.models.attention import AttentionLayout, AttentionRecorder, attention_layout, patch_grid, patch_tokens

__all__ = ["SMMix", "max_min_windows", "paste_windows"]


def max_min_windows(scores: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Eq. (1)'s windows: for each image, the top-left patch ``(row, col)`` of its least attended
    k×k window (the target) and of its partner's most attended one (the source).

    Args:
        scores: (B, h, w) attention score of every patch.
        index: (B,) partner of each image.
        k: window side in patches.

    Returns:
        ``(target, source)``, each (B, 2) int64 (first window in raster order on ties, as the code).
    """
    sums = F.avg_pool2d(scores.float().unsqueeze(1), k, stride=1).flatten(1)  # (B, windows): means, same order
    cols = scores.shape[2] - k + 1
    low, high = sums.argmin(dim=1), sums.argmax(dim=1)[index]
    return (torch.stack([low // cols, low % cols], dim=1), torch.stack([high // cols, high % cols], dim=1))


def paste_windows(images: Tensor, index: Tensor, target: Tensor, source: Tensor, k: int,
                  patch_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Eq. (1)'s paste: image i's k×k-patch window at ``target[i]`` takes, patch by patch, the pixels
    of its partner's window at ``source[i]`` (both in patches), vectorised.

    Returns:
        ``(mixed, window)``: the (B, C, H, W) mixed batch and the (B, h, w) bool token mask of the
        pasted window (True = from the partner).
    """
    b, c, height, width = images.shape
    ph, pw = patch_size
    ys = torch.arange(height, device=images.device).view(1, height, 1)
    xs = torch.arange(width, device=images.device).view(1, 1, width)
    ty, tx = (target[:, 0] * ph).view(b, 1, 1), (target[:, 1] * pw).view(b, 1, 1)
    sy, sx = (source[:, 0] * ph).view(b, 1, 1), (source[:, 1] * pw).view(b, 1, 1)
    inside = (ys >= ty) & (ys < ty + k * ph) & (xs >= tx) & (xs < tx + k * pw)  # (B, H, W)
    src = torch.where(inside, (ys - ty + sy) * width + (xs - tx + sx), ys * width + xs)  # flat source pixel
    partner = images[index].flatten(2)  # (B, C, H*W)
    pasted = partner.gather(2, src.view(b, 1, -1).expand(b, c, -1)).view(b, c, height, width)
    mixed = torch.where(inside.unsqueeze(1), pasted, images)
    window = inside[:, ::ph, ::pw]
    return mixed, window


class SMMix(Method):
    """SMMix (module docstring): max-min attention region mixing, fine-grained labels, consistency.

    Args:
        num_classes: K.
        label_smoothing: ε, applied to the one-hot targets before mixing.
        smmix_prob: probability that a batch is SMMix'ed (default 0.5); the others are Mixup'ed.
        mixup_alpha: α of Mixup's Beta(α, α) (default 0.8); 0 makes every batch SMMix.
        min_side_ratio, max_side_ratio: r_min, r_max of the window side (0.25, 0.75).
        fine_weight: weight of L_fine, Eq. (3) (default 1).
        consistency_weight: weight of L_con, Eq. (4) (default 1).
        share_head: the token head is the model's classifier (default False: a separate head).

    Raises:
        TypeError, ValueError: bad arguments (at construction); a model without the attention this
            method reads, or without ``forward_features`` / ``forward_head`` (at :meth:`setup`).
    """

    name = "smmix"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, smmix_prob: float = 0.5,
                 mixup_alpha: float = 0.8, min_side_ratio: float = 0.25, max_side_ratio: float = 0.75,
                 fine_weight: float = 1.0, consistency_weight: float = 1.0, share_head: bool = False) -> None:
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing)
        from mixlab import Mixup

        if isinstance(mixup_alpha, bool) or not isinstance(mixup_alpha, (int, float)) or not mixup_alpha >= 0:
            raise ValueError(f"mixup_alpha must be a number >= 0 (0 disables Mixup), got {mixup_alpha!r}")
        self.smmix_prob = check_probability(smmix_prob, "smmix_prob")
        self.min_side_ratio, self.max_side_ratio = check_range((min_side_ratio, max_side_ratio),
                                                               "(min_side_ratio, max_side_ratio)")
        for name, value in (("fine_weight", fine_weight), ("consistency_weight", consistency_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.fine_weight, self.consistency_weight = float(fine_weight), float(consistency_weight)
        self.share_head = check_bool(share_head, "share_head")
        self.mixup_alpha = float(mixup_alpha)
        self.mixup = Mixup(num_classes, alpha=mixup_alpha, label_smoothing=label_smoothing) if mixup_alpha > 0 else None
        self.loss_fn = SoftTargetCrossEntropy()
        self.token_head: nn.Linear | None = None  # built by setup (sized by the model), unless shared
        self._shared: list[nn.Module] = []  # the model's classifier when shared (a list: not a submodule)
        self.layout: AttentionLayout | None = None
        self._recorder: AttentionRecorder | None = None
        self._model: list[nn.Module] = []

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Find the model's last attention, build the token head (``model.num_features`` inputs, on the
        model's device and in its dtype), share the generator.

        Raises:
            TypeError: no supported attention (see :mod:`mixlab.models.attention`), no
                ``forward_features`` / ``forward_head``, or no integer ``num_features``.
        """
        super().setup(model, generator)
        self.layout = attention_layout(model, type(self).__name__)
        for attr in ("forward_features", "forward_head"):
            if not callable(getattr(model, attr, None)):
                raise TypeError(f"SMMix needs model.{attr} (timm's and mixlab's models have it); "
                                f"{type(model).__name__} has none")
        self._recorder = AttentionRecorder(model, "mean", layout=self.layout)
        self._model = [model]
        if self.mixup is not None:
            self.mixup.generator = generator
        if self.share_head:
            self._shared = [model.get_classifier()]
        elif self.token_head is None:
            width = getattr(model, "num_features", None)
            if isinstance(width, bool) or not isinstance(width, int):
                raise TypeError(f"cannot size SMMix's token head: {type(model).__name__} has no integer num_features")
            param = next(model.parameters())
            self.token_head = nn.Linear(width, self.num_classes, device=param.device, dtype=param.dtype)
            nn.init.trunc_normal_(self.token_head.weight, std=0.02)
            nn.init.zeros_(self.token_head.bias)

    @property
    def ddp_find_unused_parameters(self) -> bool:  # type: ignore[override]
        """True when a batch may be Mixup'ed: that branch leaves the token head without a gradient."""
        return self.token_head is not None and self.mixup is not None and self.smmix_prob < 1.0

    def param_groups(self, base_lr: float) -> list[dict]:
        """The token head trains with the model's learning rate and schedule (no decay on its bias)."""
        if self.token_head is None:
            return []
        return [{"params": [self.token_head.weight]}, {"params": [self.token_head.bias], "weight_decay": 0.0}]

    # ------------------------------------------------------------------ steps 1-2
    def window_side(self, height: int, width: int) -> int:
        """k of step 2, drawn on the host from the method's generator."""
        side = min(height, width)
        low = max(1, int(side * self.min_side_ratio))
        high = max(low, int(side * self.max_side_ratio))
        return low + int(randint(high - low + 1, (1,), self.generator))

    def mix(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[MixResult, Tensor, Tensor]:
        """Steps 1-2 on a batch: ``(mixed, window, z)``: the mixed batch (λ, ỹ, ``mask``), the (B, h, w)
        token mask of the pasted windows, and the un-mixed batch's logits z (no gradient).

        Raises:
            RuntimeError: :meth:`setup` was not called.
            ValueError: the images are not a multiple of the model's patch size.
        """
        if self._recorder is None:
            raise RuntimeError("SMMix.setup(model, generator) must be called first: it finds the model's attention")
        b, _, height, width = images.shape
        h, w = patch_grid(self.layout, height, width)
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), self._recorder:
                logits = model(images)
        finally:
            model.train(was)
        k = self.window_side(h, w)
        index = pair_index(b, "roll", device=images.device)
        target, source = max_min_windows(self._recorder.map.view(b, h, w), index, k)
        mixed_images, window = paste_windows(images, index, target, source, k, self.layout.patch_size)
        lam = torch.full((b,), 1.0 - k * k / (h * w), device=images.device)
        targets = soft_targets(labels.to(images.device), self.num_classes, self.label_smoothing)
        kept = (~window).repeat_interleave(self.layout.patch_size[0], 1).repeat_interleave(self.layout.patch_size[1], 2)
        mixed = MixResult(mixed_images, mix_targets(targets, index, lam), lam, index, targets,
                          mask=kept.unsqueeze(1).to(images.dtype))
        return mixed, window, logits.detach()

    # ------------------------------------------------------------------ steps 3-5
    def _head(self) -> nn.Module:
        return self._shared[0] if self._shared else self.token_head

    def losses(self, mixed: MixResult, window: Tensor, clean_logits: Tensor, features: Tensor,
               logits: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. (3) and (4) for the mixed batch's ``features`` and ``logits``: ``(L_fine, L_con)``."""
        tokens = patch_tokens(self.layout, features)  # (B, N, C)
        pasted = window.flatten(1).to(tokens.dtype).unsqueeze(2)  # (B, N, 1)
        kept = 1 - pasted
        head = self._head()
        pooled_kept = (tokens * kept).sum(1) / kept.sum(1).clamp_min(1)
        pooled_pasted = (tokens * pasted).sum(1) / pasted.sum(1).clamp_min(1)
        partner = mixed.source_targets[mixed.index]
        fine = 0.5 * (soft_cross_entropy(head(pooled_kept), mixed.source_targets)
                      + soft_cross_entropy(head(pooled_pasted), partner))
        lam = mixed.lam.float().unsqueeze(1)
        teacher = torch.lerp(clean_logits[mixed.index].float(), clean_logits.float(), lam).softmax(dim=1)
        con = (teacher * (teacher.clamp_min(1e-12).log() - logits.float().log_softmax(dim=1))).sum(dim=1).mean()
        return fine, con

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        zero = images.new_zeros((), dtype=torch.float32)
        if self.mixup is not None and float(rand((1,), self.generator)) >= self.smmix_prob:
            mixed = self.mixup(images, labels)
            logits = model(mixed.images)
            loss = self.loss_fn(logits, mixed.targets)
            logs = {"loss_cls": loss.detach(), "loss_fine": zero, "loss_con": zero}
            return StepOutput(loss=loss, logits=logits, logs=logs, mixed=mixed)
        mixed, window, clean_logits = self.mix(model, images, labels)
        features = model.forward_features(mixed.images)
        logits = model.forward_head(features)
        loss_cls = self.loss_fn(logits, mixed.targets)
        fine, con = self.losses(mixed, window, clean_logits, features, logits)
        loss = loss_cls + self.fine_weight * fine + self.consistency_weight * con
        logs = {"loss_cls": loss_cls.detach(), "loss_fine": fine.detach(), "loss_con": con.detach()}
        return StepOutput(loss=loss, logits=logits, logs=logs, mixed=mixed)

    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """An SMMix batch (always the SMMix branch), its windows chosen by the model given to :meth:`setup`."""
        if not self._model:
            raise RuntimeError("SMMix.setup(model, generator) must be called before previewing: the windows need "
                               "the model's attention")
        return self.mix(self._model[0], images, labels)[0]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, smmix_prob={self.smmix_prob}, mixup_alpha={self.mixup_alpha}, "
                f"min_side_ratio={self.min_side_ratio}, max_side_ratio={self.max_side_ratio}, "
                f"fine_weight={self.fine_weight}, consistency_weight={self.consistency_weight}, "
                f"share_head={self.share_head}")
