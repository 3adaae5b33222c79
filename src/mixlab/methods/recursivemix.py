"""RecursiveMix: mixed learning with history.

Yang, Li, Hu, Wang & Yang 2022, "RecursiveMix: Mixed Learning with History" (arXiv:2203.06844).
The paper is the specification (§3.1, Eq. 1-5); facts it leaves out come from the authors' code
(github.com/implus/RecursiveMix-pytorch, ``utils.recursive_mix`` and ``main.train``).

Each training step t keeps the previous step's *mixed* batch as the history ``(x^h, y^h, p^h)``:

* Eq. 2: the historical area fraction λ ~ U[0, α] (α = 0.5); a box of side √λ·W × √λ·H with a
  uniform centre, clipped to the image (:func:`mixlab.core.boxes.rand_box`, CutMix's box). One
  box for the whole batch, as the paper and the code do; ``per_sample_boxes=True`` draws one λ
  and one box per sample.
* Eq. 1: ``x̃ = M ⊙ ResizeFill(x^h, M) + (1 − M) ⊙ x``: the whole historical image i is resized
  into the box of current image i (nearest by default; bilinear selectable, Table 4b, with
  ``align_corners=True`` as the authors' ``F.interpolate`` call), and
  ``ỹ = λ y^h + (1 − λ) y`` with λ the *exact* pasted-area fraction after clipping (the code's
  ``lam``; the drawn λ is only the target). Then ``x^h ← x̃, y^h ← ỹ``.
* Eq. 3-5: ``p^h = softmax(H(GAP(F(x̃^{t-1}))))``, the previous step's prediction, detached; this
  step's RoI prediction ``p_roi = softmax(H′(RoIAlign(F(x̃^t), B)))`` with a 1×1 aligned RoIAlign
  (``torchvision.ops.roi_align``, ``aligned=True``, adaptive sampling) of the final feature map
  over the box; ``L = CE(x̃, ỹ) + ω·λ·KL(p^h ‖ p_roi)``. H′ is a separate linear head (unshared by
  default, Table 4a), which exists only in training: the deployed model is unchanged. When the
  box rounds to nothing (λ < (2/H)², about 0.8 % of CIFAR steps) the RoI branch is skipped, as the
  code's ``if lam < 1.0`` does: H′ gets no gradient (``grad is None``), so momentum and weight
  decay leave it alone. The decision is taken on the host from the host-drawn box, without reading
  a device tensor.

Choices where the paper is silent (documented so they can be argued with):

* The consistency term is the KL divergence the paper writes; the authors' code uses the soft
  cross-entropy ``CE(p_roi, p^h)``, which differs by the entropy of p^h (a constant: the same
  gradients). With per-sample boxes the weight is each sample's λ_i; the term is averaged over
  the samples that have a history.
* ``"nearest"`` samples at pixel centres (``F.interpolate``'s ``"nearest-exact"``), which keeps
  the resized history centred; the code's legacy ``"nearest"`` shifts it by up to half a pixel.
  ``"bilinear"`` follows the code (``align_corners=True``: the history's corner pixels land on the
  box's corner pixels).
* The history is a copy: the first step's batch is cloned, so a loop that refills its input
  buffer in place does not rewrite it.
* Half precision (``model.half()``, bf16): H′ takes the model's dtype; RoIAlign runs in float32
  for float16/bfloat16 feature maps (torchvision's own autocast policy; its CPU kernels have no
  bf16), then H′ reads the pooled features in its dtype.
* With ``per_sample_boxes=True`` the RoI branch runs whenever a box is non-empty; samples whose
  box is empty weigh λ_i = 0.
* The box is in (x, y) = (column, row) order for both the paste and the RoI, scaled to the
  feature map per axis (the code's first release swapped H and W of the RoI, wrong for
  non-square boxes; here a test checks that the RoI covers exactly the pasted pixels).
* The history is reset at every epoch start, as the code does (``reset_each_epoch=False`` keeps
  it). The first step (no history) is plain training. A batch smaller than the history uses its
  first B historical samples (the code's ``old_x[:bs]``); a batch larger than the history (after
  a short last batch, with the history kept) mixes only its first rows, the rest train plainly.
* Table 2's ablations: ``history=False, omega=0`` is "RS" (the resize-paste with a partner from
  the current batch, CutMix's pairing, instead of the history); ``omega=0`` is "RS + HIS"; the
  default is "RS + HIS + CL".
* Segmentation label maps ((B, H, W) class indices, a ``tv_tensors.Mask`` or a plain tensor) are
  pasted with the images: the historical map is resized into the same box by nearest neighbour
  (:func:`mixlab.core.boxes.resize_paste_labels`; pixel centres, exactly under the pixels in the
  ``"nearest"`` mode, never blending classes), the history keeps the mixed maps, and the step's
  loss is :func:`~mixlab.core.losses.mixed_segmentation_loss` (the exact map's cross-entropy) on
  ``model(images)`` (a tensor (B, K, H, W), or torchvision's ``{"out": ...}``). The consistency
  term compares class predictions of the pasted region, which a segmenter does not make: label
  maps need ``omega=0`` (Table 2's "RS + HIS").

Usage in any training loop (the trainer does the same in :meth:`RecursiveMix.training_step`)::

    rm = RecursiveMix(num_classes=10).to(device)
    rm.setup(model)                                   # builds H′ from model.num_features
    optimizer = torch.optim.SGD([*model.parameters(), *rm.parameters()], lr=0.1)
    for images, labels in loader:
        mixed = rm.mix(images, labels)                # 1. before the forward pass
        features = model.forward_features(mixed.images)   # (B, C, h, w)
        logits = model.forward_head(features)
        loss = soft_cross_entropy(logits, mixed.targets) + rm.update(features, logits)  # 2. after it
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mixlab.core.boxes import box_area_fraction, rand_box, rand_boxes, resize_paste, resize_paste_labels
from mixlab.core.checks import check_bool, check_choice, check_label_maps, is_label_map
from mixlab.core.losses import SoftTargetCrossEntropy, mixed_segmentation_loss
from mixlab.core.pairing import pair_index
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.core.targets import soft_targets
from mixlab.methods.base import Method, StepOutput

__all__ = ["RecursiveMix", "INTERPOLATIONS"]

INTERPOLATIONS = ("nearest", "bilinear")


class RecursiveMix(Method):
    """RecursiveMix (the module docstring has the equations and every choice made).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets of the current batch.
        alpha: upper bound of λ ~ U[0, α], the historical area fraction, in (0, 1]. Default 0.5.
        omega: weight ω of the consistency loss, >= 0: 0.1 for CIFAR (default), 0.5 for ImageNet;
            0 turns it off (no H′).
        interpolation: ResizeFill's ``"nearest"`` (default) or ``"bilinear"``.
        share_head: use the model's classifier H as H′ (Table 4a's "shared"); default a new head.
        per_sample_boxes: one λ and one box per sample instead of one per batch.
        history: mix with the previous step's batch (default); ``False`` mixes with a shuffled
            copy of the current batch (Table 2's "RS" row; needs ``omega=0``).
        reset_each_epoch: drop the history at every epoch start (default, as the authors do).
        in_features: channels of the final feature map; default ``model.num_features`` at
            :meth:`setup`.
        ignore_index: the label-map value of pixels without a class (segmentation; default 255).

    Raises:
        ValueError: α outside (0, 1], ω < 0, an unknown interpolation, or ``omega > 0`` without
            history (the consistency loss compares with the historical prediction).
    """

    name = "recursivemix"
    resizable_buffers = ("hist_images", "hist_targets", "hist_probs")
    preview_step = 1  # samples.png: step 0 has no history yet (each image pasted into itself, label 1.00)
    ddp_find_unused_parameters = True  # H' is unused on a step without history or with an empty box

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        *,
        alpha: float = 0.5,
        omega: float = 0.1,
        interpolation: str = "nearest",
        share_head: bool = False,
        per_sample_boxes: bool = False,
        history: bool = True,
        reset_each_epoch: bool = True,
        in_features: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(num_classes, label_smoothing)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for RecursiveMix, got {num_classes}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha is the upper bound of lambda ~ U[0, alpha] and must be in (0, 1], got {alpha!r}")
        if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not (omega >= 0.0 and math.isfinite(omega)):
            raise ValueError(f"omega must be a finite number >= 0, got {omega!r}")
        for flag, value in (("share_head", share_head), ("per_sample_boxes", per_sample_boxes),
                            ("history", history), ("reset_each_epoch", reset_each_epoch)):
            check_bool(value, flag)
        if omega > 0 and not history:
            raise ValueError("omega > 0 needs history=True: the consistency loss compares with the previous "
                             "step's prediction (Table 2's 'RS' row is history=False, omega=0)")
        if in_features is not None and (isinstance(in_features, bool) or not isinstance(in_features, int)
                                        or in_features < 1):
            raise ValueError(f"in_features must be None or an integer >= 1, got {in_features!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        self.ignore_index = ignore_index
        self.alpha, self.omega = float(alpha), float(omega)
        self.interpolation = check_choice(interpolation, "interpolation", INTERPOLATIONS)
        self.share_head, self.per_sample_boxes = share_head, per_sample_boxes
        self.history, self.reset_each_epoch = history, reset_each_epoch
        self.loss_fn = SoftTargetCrossEntropy()
        # H′ (Eq. 4): built here when the width is known, else by setup(); None when shared or ω = 0
        self.head_roi: nn.Linear | None = None
        if in_features is not None and omega > 0 and not share_head:
            self.head_roi = nn.Linear(in_features, num_classes)
        self._shared: list[nn.Module] = []  # the model's classifier, when shared (a list: not a submodule)
        # the history triplet (x^h, y^h, p^h), detached, on the training device; empty = none yet
        self.register_buffer("hist_images", torch.empty(0))
        self.register_buffer("hist_targets", torch.empty(0))
        self.register_buffer("hist_probs", torch.empty(0))
        self._pending: dict[str, Any] | None = None  # between mix() and update()

    # ------------------------------------------------------------------ setup
    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Record the generator; build H′ (``model.num_features`` inputs, on the model's device and in
        its dtype), or take the model's classifier as H′ with ``share_head``.

        Raises:
            TypeError: the model has no ``forward_features`` / ``forward_head`` (every mixlab
                model and ``timm:<name>`` has them), or no ``num_features`` when H′ must be built.
        """
        super().setup(model, generator)
        for attr in ("forward_features", "forward_head"):
            if not callable(getattr(model, attr, None)):
                raise TypeError(f"RecursiveMix needs model.{attr} (the staged protocol of mixlab.models); "
                                f"{type(model).__name__} has none")
        if self.omega == 0:
            return
        if self.share_head:
            if not callable(getattr(model, "get_classifier", None)):
                raise TypeError(f"share_head=True needs model.get_classifier(); {type(model).__name__} has none")
            self._shared = [model.get_classifier()]
        elif self.head_roi is None:
            width = getattr(model, "num_features", None)
            if not isinstance(width, int):
                raise TypeError(f"cannot size H': {type(model).__name__} has no integer num_features; "
                                "pass in_features=")
            param = next(model.parameters())
            self.head_roi = nn.Linear(width, self.num_classes, device=param.device, dtype=param.dtype)
        else:  # built from in_features: H' follows the model's dtype too
            self.head_roi.to(dtype=next(model.parameters()).dtype)

    def param_groups(self, base_lr: float) -> list[dict]:
        """H′ trains with the model's learning rate and schedule (the authors' single optimizer)."""
        return [{"params": list(self.head_roi.parameters())}] if self.head_roi is not None else []

    def on_epoch_start(self, epoch: int) -> None:
        if self.reset_each_epoch:
            self.reset()

    def reset(self) -> None:
        """Forget the history: the next step trains on its own batch."""
        device = self.hist_images.device
        self.hist_images = torch.empty(0, device=device)
        self.hist_targets = torch.empty(0, device=device)
        self.hist_probs = torch.empty(0, device=device)
        self._pending = None

    def per_rank_state(self) -> dict[str, Tensor]:
        """Each rank's own history, for checkpoints of data-parallel runs; none when the history is
        reset at the next epoch start anyway (checkpoints are written at epoch ends)."""
        return {} if self.reset_each_epoch else super().per_rank_state()

    @property
    def has_history(self) -> bool:
        return self.hist_images.numel() > 0

    # ------------------------------------------------------------------ call 1: mix (Eq. 1-2)
    def _draw(self, n: int, height: int, width: int, device: torch.device) -> tuple[Tensor, tuple | Tensor, bool]:
        """λ ~ U[0, α] and the box(es) of Eq. 2: one for the batch, or one per sample; and whether
        anything is pasted, decided on the host (boxes are drawn on the generator's device, the
        CPU by default; on another device per-sample boxes count as pasting, unread)."""
        if self.per_sample_boxes:
            boxes = rand_boxes(rand((n,), self.generator) * self.alpha, height, width, generator=self.generator)
            frac = box_area_fraction(boxes, height, width)
            pasted = bool((frac > 0).any()) if frac.device.type == "cpu" else True
            return frac.to(device, non_blocking=True), boxes.to(device, non_blocking=True), pasted
        box = rand_box(float(rand((1,), self.generator)) * self.alpha, height, width, self.generator)
        x1, y1, x2, y2 = box
        area = max(x2 - x1, 0) * max(y2 - y1, 0) / (height * width)
        return torch.full((n,), area, device=device), box, area > 0

    @torch.compiler.disable
    def mix(self, images: Tensor, labels: Tensor) -> MixResult:
        """Eq. 1-2: paste the resized history (or, with ``history=False``, a shuffled copy of the
        batch) into a random box of each image; label weights by the exact pasted area.

        Under ``torch.compile`` (``run.compile``) it runs eagerly: its box is drawn on the host and the
        pasted size changes at every step, so a compiled ``mix`` would recompile at every step.

        Call :meth:`update` after the forward pass, before the next ``mix``. In eval mode, or on
        the first step, the batch is returned un-mixed (``lam`` = 1) and nothing is stored.

        Args:
            images: (B, C, H, W) float batch (normalised, on the training device).
            labels: (B,) int64 class indices, (B, K) soft targets, or (B, H, W) label maps.

        Returns:
            :class:`~mixlab.core.result.MixResult`: ``lam[i]`` is the current image's weight
            (1 − pasted fraction), ``boxes`` the pasted regions, ``partner_targets`` the
            historical labels (``index`` is then the identity). Label maps: ``targets`` and
            ``partner_targets`` are the exact mixed maps (the module docstring).

        Raises:
            RuntimeError: the previous ``mix`` was not followed by :meth:`update`.
            ValueError: images not (B, C, H, W) floats, a history of another image size or kind of
                label, label maps with ``omega > 0`` or ``label_smoothing > 0``, bad label maps.
        """
        if self._pending is not None and self.training:
            raise RuntimeError("RecursiveMix.mix() called twice without update(features, logits) in between; "
                               "call update() after each forward pass (it stores the history)")
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a (B, C, H, W) float tensor, got {tuple(images.shape)} {images.dtype}")
        b, _, h, w = images.shape
        dense = is_label_map(labels)
        targets = self._targets(images, labels)
        ident = torch.arange(b, device=images.device)
        plain = MixResult(images, targets, torch.ones(b, device=images.device), ident, targets,
                          partner_targets=targets if dense else None)
        if not self.training:
            return plain
        if self.history and not self.has_history:  # the first step: plain training; update() stores
            self._pending = {"mixed": plain, "n": 0, "pasted": False, "owned": False}  # a copy of it
            return plain
        if self.history:
            if self.hist_images.shape[1:] != images.shape[1:]:
                raise ValueError(f"the history holds images of shape {tuple(self.hist_images.shape[1:])}, this batch "
                                 f"{tuple(images.shape[1:])}; call reset() when the image size changes")
            if (self.hist_targets.ndim == 3) != dense:
                kinds = ("class targets", "label maps")
                raise ValueError(f"the history holds {kinds[self.hist_targets.ndim == 3]}, this batch has "
                                 f"{kinds[dense]}; call reset() when the kind of label changes")
            n = min(b, self.hist_images.shape[0])
            partner, partner_targets = self.hist_images[:n].to(images.dtype), self.hist_targets[:n]
            index = ident
        else:  # Table 2 "RS": the partner comes from the current batch
            index = pair_index(b, "flip", self.generator, device=images.device)
            partner, partner_targets, n = images[index], targets[index], b
        frac, boxes, pasted = self._draw(n, h, w, images.device)
        # one box for the batch: (4,) int64, copied to the device without waiting for it
        box_t = boxes if isinstance(boxes, Tensor) else torch.tensor(boxes).to(images.device, non_blocking=True)
        out = images.clone(memory_format=torch.preserve_format)
        head = out[:n]
        # ResizeFill, Eq. 1 (the authors' bilinear is align_corners=True)
        mode = "nearest" if self.interpolation == "nearest" else "bilinear-align-corners"
        resize_paste(head, partner, boxes if self.interpolation == "nearest" else box_t.expand(n, 4), mode, out=head)
        lam_hist = torch.zeros(b, device=images.device)
        lam_hist[:n] = frac
        mixed_targets = targets.clone()
        if dense:  # the historical map resized into the same box by nearest neighbour
            mixed_targets[:n] = resize_paste_labels(targets[:n], partner_targets, box_t.expand(n, 4))
        else:
            mixed_targets[:n] = frac[:, None] * partner_targets + (1 - frac[:, None]) * targets[:n]  # ỹ, Eq. 1
        all_boxes = torch.zeros(b, 4, dtype=torch.long, device=images.device)
        all_boxes[:n] = box_t
        if dense:  # one exact map: y_a = y_b
            full_partner = mixed_targets
        else:
            full_partner = targets.clone()
            full_partner[:n] = partner_targets
        mixed = MixResult(out, mixed_targets, 1 - lam_hist, index, targets, boxes=all_boxes,
                          partner_targets=full_partner if self.history or dense else None)
        self._pending = {"mixed": mixed, "n": n if self.history else 0, "pasted": pasted, "owned": True}
        return mixed

    def _targets(self, images: Tensor, labels: Tensor) -> Tensor:
        """The un-mixed targets on the images' device: soft (B, K), or checked label maps (B, H, W)."""
        if not is_label_map(labels):
            return soft_targets(labels, self.num_classes, self.label_smoothing).to(images.device)
        if self.omega > 0:
            raise ValueError(f"label maps need omega=0: the consistency loss (omega={self.omega}) compares class "
                             "predictions of the pasted region, which a segmenter does not make")
        if self.label_smoothing > 0:
            raise ValueError("label_smoothing applies to class targets; for label maps pass it to "
                             "mixlab.core.losses.mixed_segmentation_loss")
        check_label_maps(labels, images, self.num_classes, self.ignore_index)
        return labels.as_subclass(Tensor).to(images.device)

    # ------------------------------------------------------------------ call 2: consistency + history (Eq. 3-5)
    def roi_logits(self, features: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Eq. 4 before the softmax: H′ of the 1×1 aligned RoIAlign of ``features`` over ``boxes``.

        Args:
            features: (B, C, h, w) final feature map.
            boxes: (B, 4) ``(x1, y1, x2, y2)`` in input pixels; scaled to the feature map per axis.
            image_size: the input's (H, W).
        """
        from torchvision.ops import roi_align

        b, _, fh, fw = features.shape
        if features.dtype in (torch.float16, torch.bfloat16):  # RoIAlign in float32 (torchvision's autocast rule)
            features = features.float()
        scale = boxes.new_tensor([fw / image_size[1], fh / image_size[0]] * 2, dtype=torch.float32)
        rois = torch.cat([torch.arange(b, device=features.device, dtype=torch.float32)[:, None],
                          boxes.float() * scale], dim=1).to(features.dtype)
        pooled = roi_align(features, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        head = self._shared[0] if self._shared else self.head_roi
        weight = next(head.parameters(), None)  # H' reads the pooled features in its own dtype
        return head(pooled.flatten(1) if weight is None else pooled.flatten(1).to(weight.dtype))

    def update(self, features: Tensor | None, logits: Tensor) -> Tensor:
        """The consistency term ``ω·λ·KL(p^h ‖ p_roi)`` of Eq. 5 for the batch of the last
        :meth:`mix`, then that batch becomes the history ``(x̃, ỹ, softmax(logits))``.

        Args:
            features: (B, C, h, w) final feature map of the mixed batch (``model.forward_features``);
                read only by the consistency term (may be ``None`` with ``omega=0``).
            logits: (B, K) the model's logits on it (``model.forward_head(features)``).

        Returns:
            the scalar loss (0 on the first step, with ``omega=0``, or in eval mode).

        Raises:
            RuntimeError: no :meth:`mix` before this call.
            ValueError: ``features`` is not a (B, C, h, w) map (a ViT's tokens: RoIAlign needs a map).
        """
        zero = logits.new_zeros(()).float()
        if not self.training:
            return zero
        if self._pending is None:
            raise RuntimeError("RecursiveMix.update() needs a preceding mix(images, labels)")
        pending, self._pending = self._pending, None
        mixed, n = pending["mixed"], pending["n"]
        loss = zero
        if self.omega > 0 and n > 0 and pending["pasted"] and self.hist_probs.numel() > 0:
            if features.ndim != 4:
                raise ValueError(f"RecursiveMix needs a (B, C, h, w) feature map for RoIAlign, got shape "
                                 f"{tuple(features.shape)} (models whose forward_features returns tokens do not fit)")
            roi = self.roi_logits(features[:n], mixed.boxes[:n], mixed.images.shape[-2:]).float()
            p_hist = self.hist_probs[:n].float()
            kl = (p_hist * (p_hist.clamp_min(1e-12).log() - roi.log_softmax(dim=1))).sum(dim=1)  # KL(p^h ‖ p_roi)
            lam = 1 - mixed.lam[:n].float()  # the pasted (historical) fraction of each sample
            loss = self.omega * (lam * kl).mean()  # Eq. 5, second term
        if self.history:  # mixed batches are new tensors; the first step's is the caller's: copy it
            copy = (lambda t: t) if pending["owned"] else torch.clone
            dense = is_label_map(mixed.targets)
            self.hist_images = copy(mixed.images.detach())
            self.hist_targets = copy(mixed.targets.detach() if dense else mixed.targets.detach().float())
            # p^h, Eq. 3 (label maps: omega = 0, no consistency term, nothing to keep)
            self.hist_probs = torch.empty(0, device=logits.device) if dense else logits.detach().float().softmax(dim=1)
        return loss

    # ------------------------------------------------------------------ the trainer's step
    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        if is_label_map(labels):  # segmentation: the model's per-pixel logits, no RoI branch (omega = 0)
            mixed = self.mix(images, labels)
            pasted = self._pending is not None and self._pending["pasted"]
            out = model(mixed.images)
            logits = out["out"] if isinstance(out, dict) else out  # torchvision segmenters return {"out": ...}
            loss = mixed_segmentation_loss(logits, mixed, self.ignore_index)
            self.update(None, logits)
            return StepOutput(loss=loss, logs={"lam": (1 - mixed.lam).mean()}, mixed=mixed if pasted else None)
        mixed = self.mix(images, labels)
        pasted = self._pending is not None and self._pending["pasted"]  # a host flag: no device read
        features = model.forward_features(mixed.images)
        logits = model.forward_head(features)
        loss_ce = self.loss_fn(logits, mixed.targets)
        loss_cl = self.update(features, logits)
        logs = {"loss_ce": loss_ce.detach(), "loss_cl": loss_cl.detach(), "lam": (1 - mixed.lam).mean()}
        # without a consistency term the loss is loss_ce itself, not loss_ce + 0: compiled (torch 2.14
        # inductor), the sum folds into loss_ce and comes back detached, as its detached log beside it
        loss = loss_ce + loss_cl if loss_cl.requires_grad else loss_ce
        return StepOutput(loss=loss, logits=logits, logs=logs, mixed=mixed if pasted else None)

    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """What a step looks like: the batch mixed with the stored history when there is one of the
        same size, else with the batch rolled by one as a stand-in history (then ``index`` is that
        roll, so ``images[index]`` shows each output's partner). Nothing is stored."""
        was, pending = self.training, self._pending
        saved = (self.hist_images, self.hist_targets, self.hist_probs)
        try:
            self.train()
            self._pending = None
            stand_in = self.history and not (self.has_history and self.hist_images.shape[1:] == images.shape[1:])
            if stand_in:
                self.hist_images = images.roll(1, dims=0)
                self.hist_targets = self._targets(images, labels).roll(1, 0)
            mixed = self.mix(images, labels)
            if stand_in:
                mixed.index = torch.arange(images.shape[0], device=images.device).roll(1)
            return mixed
        finally:
            self.hist_images, self.hist_targets, self.hist_probs = saved
            self._pending = pending
            self.train(was)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, omega={self.omega}, "
                f"interpolation={self.interpolation!r}, share_head={self.share_head}, "
                f"per_sample_boxes={self.per_sample_boxes}, history={self.history}, "
                f"reset_each_epoch={self.reset_each_epoch}")
