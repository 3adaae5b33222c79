"""The template every stateless batch mixer follows (torchvision v2's make_params/transform split).

``Mixer.__call__`` checks the inputs, builds the un-mixed soft targets, draws the pairing and the
mixer's parameters once (:meth:`Mixer.make_params`), then applies them deterministically
(:meth:`Mixer.mix`). Subclasses only say how to sample and how to apply. Nothing is written to the
caller's tensors unless ``inplace=True``.

The two pixel kernels every mixer reduces to live here too: :func:`blend_with_partner`
(``λ x_i + (1-λ) x_j``, Mixup) and :func:`select_from_partner` (``x_i`` where a mask keeps it,
``x_j`` elsewhere: CutMix, FMix, SaliencyMix).

Segmentation targets extend the same template: when the labels are per-pixel label maps
(:func:`~mixlab.core.checks.is_label_map`), :meth:`Mixer.apply` moves them with the geometry the
pixels moved with (:meth:`Mixer.mix_label_maps`: the box or mask a mixer reports, ResizeMix's
resize by nearest neighbour) instead of mixing soft targets; a global blend (Mixup) returns both
maps and λ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from mixlab.core.boxes import boxes_to_mask, paste_boxes
from mixlab.core.checks import (
    check_bool,
    check_choice,
    check_images,
    check_label_maps,
    check_labels,
    check_probability,
    is_label_map,
)
from mixlab.core.lam import GRANULARITIES, sample_lambda
from mixlab.core.pairing import PAIRINGS, pair_index
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets

__all__ = ["Mixer", "partner_of", "blend_with_partner", "select_from_partner", "unpack_batch", "needs_grad",
           "unmixed", "plain_view", "rewrap"]


class Mixer(ABC):
    """Base class of the stateless batch mixers.

    Call it as torchvision v2's MixUp/CutMix: ``images, targets = mixer(images, labels)``, or
    with the pair packed, ``mixer((images, labels))`` (so ``collate_fn=lambda b:
    mixer(default_collate(b))`` works). The result is a :class:`~mixlab.core.result.MixResult`,
    a tuple ``(images, targets)`` that also carries ``lam``, ``index``, ``mask``, ``boxes``.

    Inputs the mixers accept, as torchvision v2 and timm do:

    * images: (B, C, H, W) floating point or uint8, plain tensors or ``tv_tensors.Image``
      (the output has the input's type, dtype, device and memory format). Box and mask mixers
      copy pixels, so they work in any dtype; Mixup on uint8 blends in float32 and rounds
      (:class:`~mixlab.mixers.mixup.Mixup`). Inputs that require grad are mixed out of place
      and differentiably (``inplace`` then does not apply).
    * a batch of one (the last batch of a ``DataLoader`` with ``drop_last=False``) passes
      through unmixed: λ = 1, ``index = [0]``, the (smoothed) one-hot targets.
    * labels: (B,) class indices, or (B, K) float targets: probabilities (mixers chain), or
      multi-hot / multi-label rows that need not sum to 1 (mixed linearly, as v2.MixUp does).
    * or segmentation label maps: (B, H, W) integer class indices in [0, K) or ``ignore_index``,
      a ``tv_tensors.Mask`` or a plain tensor. They move with the pixels: box and mask mixers
      return the exact mixed map (each pixel's class is the class of the source pixel now there;
      ResizeMix resizes the partner's map by nearest neighbour, never blending classes), Mixup
      returns each image's own map and its partner's with λ (``targets`` and ``partner_targets``,
      see :class:`~mixlab.core.result.MixResult`); the maps keep their dtype and tensor subclass,
      and are never written in place. Train with
      :func:`~mixlab.core.losses.mixed_segmentation_loss`. ``label_smoothing`` does not apply to
      maps (pass it to the loss).

    Label check rule: shapes and dtypes are always checked. The label *values* (indices in
    [0, K), no negative entry in (B, K) targets) are checked when the labels are on the CPU and
    no ``torch.compile`` trace runs: there reading them is free. On an accelerator, reading them
    would make the host wait for the device at every batch, so by default they are not read
    (``check_values=True`` forces the check, ``False`` turns it off everywhere). Nothing else in
    a call reads a device value: random draws are made on the generator's device (the CPU by
    default) and sent with ``non_blocking=True``, and ``p`` is applied by tensor selection, so
    the call never waits for the device and compiles as one graph
    (``torch.compile(mixer, fullgraph=True)``, draws included: the same draws as eager from the
    same generator state; Inductor's fused blends agree with eager to float rounding).

    Args:
        num_classes: K, the width of the soft targets.
        p: probability of mixing a batch (per batch); otherwise the batch passes unchanged with
            the (smoothed) targets, λ = 1 and ``index`` the identity.
        pairing: ``"roll"`` (default, any B, no self-pairs), ``"flip"`` (timm/SDMP; on an odd
            batch the middle image mixes with itself) or ``"random"`` (derangement).
        granularity: λ per ``"batch"`` (default), per ``"pair"`` (needs ``pairing="flip"``) or per
            ``"elem"``.
        label_smoothing: ε applied to the targets before mixing, t = (1 - ε) y + ε / K.
        inplace: write the mixed images into the caller's tensor (saves one allocation).
        check_finite: also reject images or float labels with NaN/inf (a reduction read on the
            host: it waits for the device, and breaks a compiled graph).
        check_values: the label-value check (see above): ``None`` (default: CPU labels only),
            ``True`` (always) or ``False`` (never).
        generator: ``torch.Generator`` for all randomness (default: the global torch seed).
        target_dtype: dtype of the soft targets (default float32).
        ignore_index: the label-map value of pixels without a class (default 255, VOC's); it
            must lie outside [0, K). Checked and carried through, never mixed into a class.
    """

    name = "mixer"

    def __init__(
        self,
        num_classes: int,
        *,
        p: float = 1.0,
        pairing: str = "roll",
        granularity: str = "batch",
        label_smoothing: float = 0.0,
        inplace: bool = False,
        check_finite: bool = False,
        check_values: bool | None = None,
        generator: torch.Generator | None = None,
        target_dtype: torch.dtype = torch.float32,
        ignore_index: int = 255,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes must be an int >= 1, got {type(num_classes).__name__}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.p = check_probability(p, "p")
        self.pairing = check_choice(pairing, "pairing", PAIRINGS)
        self.granularity = check_choice(granularity, "granularity", GRANULARITIES)
        if granularity == "pair" and pairing != "flip":
            raise ValueError("granularity='pair' needs pairing='flip' (a pairing that is its own inverse)")
        self.label_smoothing = check_probability(label_smoothing, "label_smoothing")
        if self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if not (isinstance(target_dtype, torch.dtype) and target_dtype.is_floating_point):
            raise TypeError(f"target_dtype must be a floating torch.dtype, got {target_dtype!r}")
        if check_values is not None:
            check_bool(check_values, "check_values")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        self.inplace = bool(inplace)
        self.check_finite = bool(check_finite)
        self.check_values = check_values
        self.generator = generator
        self.target_dtype = target_dtype
        self.ignore_index = ignore_index

    # ---------------------------------------------------------------- what subclasses provide
    @abstractmethod
    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        """Draw everything random for this batch (λ, boxes, masks).

        ``coin`` is ``None`` (mix) or a (1,) bool tensor, the ``p`` coin: where it is False the
        parameters must leave the batch unchanged (λ = 1, empty boxes, full masks).
        """

    @abstractmethod
    def mix(self, images: Tensor, index: Tensor, params: dict) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Apply the parameters; return ``(mixed, exact λ (B,), mask or None, boxes or None)``."""

    def mix_label_maps(self, maps: Tensor, index: Tensor, params: dict, mask: Tensor | None,
                       boxes: Tensor | None) -> Tensor | None:
        """Move the label maps (B, H, W) as :meth:`mix` moved the pixels, given what it returned.

        The default covers the mixers that copy pixels in place: the partner's labels inside the
        reported ``boxes`` (CutMix, SaliencyMix), or where the reported ``mask`` is below 0.5 (FMix).
        ``None`` means a global blend (no box, no mask: Mixup): every pixel keeps both labels.
        A mixer that moves pixels otherwise (ResizeMix's resize) overrides this.
        """
        if "box" in params:  # the batch's one box as Python ints (CutMix): a slice copy, as the pixels
            x1, y1, x2, y2 = params["box"]
            patch = partner_of(maps[:, None, y1:y2, x1:x2], index, self.pairing)
            return paste_boxes(maps.unsqueeze(1), patch, params["box"]).squeeze(1)
        if boxes is not None:
            keep = ~boxes_to_mask(boxes, maps.shape[-2], maps.shape[-1], device=maps.device).squeeze(1)
        elif mask is not None:
            keep = mask.squeeze(1) > 0.5
        else:
            return None
        return select_from_partner(maps, index, keep, out=torch.empty_like(maps), pairing=self.pairing)

    # ---------------------------------------------------------------- the fixed template
    def sample_lambda(self, batch_size: int, alpha: float, index: Tensor, device, distribution: str = "beta",
                      coin: Tensor | None = None) -> Tensor:
        """λ (B,) at this mixer's granularity, 1 where the ``p`` coin ``coin`` is False; on
        ``device``, or where it was drawn if ``device`` is None (the generator's device; the
        index's for ``"pair"``)."""
        lam = sample_lambda(batch_size, alpha, self.granularity, distribution, index=index, generator=self.generator)
        if coin is not None:
            lam = torch.where(coin.to(lam.device, non_blocking=True), lam, 1.0)
        return lam if device is None else lam.to(device, non_blocking=True)

    def __call__(self, images: Tensor | tuple | list, labels: Tensor | None = None) -> MixResult:
        """Mix a batch.

        Args:
            images: (B, C, H, W) float or uint8; or the pair ``(images, labels)`` with ``labels``
                left out.
            labels: (B,) int class indices in [0, K) or (B, K) float targets.

        Returns:
            :class:`MixResult`, the tuple ``(images, targets)`` with the bookkeeping attributes.

        Raises:
            TypeError, ValueError: on malformed images or labels (nothing is modified).
        """
        images, labels = unpack_batch(images, labels)
        x = images if type(images) is Tensor else plain_view(images)
        source = self.source_targets(x, labels)
        if x.shape[0] < 2 or self.p == 0.0:
            return rewrap(unmixed(images, source), images, labels)
        index, params = self.draw(x)
        return rewrap(self.apply(x, source, index, params), images, labels)

    def source_targets(self, images: Tensor, labels: Tensor) -> Tensor:
        """Check the inputs; the un-mixed (smoothed) dense targets (B, K) on the images' device,
        or, for label maps, the maps (B, H, W) there (a plain tensor)."""
        check_images(images, check_finite=self.check_finite)
        if is_label_map(labels):
            check_label_maps(labels, images, self.num_classes, self.ignore_index, self.check_values)
        else:
            check_labels(labels, images.shape[0], self.num_classes, self.check_finite, self.check_values)
        return self.soft_targets(labels, images.device)

    def soft_targets(self, labels: Tensor, device: torch.device) -> Tensor:
        """The un-mixed dense targets (B, K) of checked ``labels``, smoothed, on ``device``;
        checked label maps are returned as they are (a plain tensor on ``device``).

        Raises:
            ValueError: label maps with ``label_smoothing > 0`` (smooth in the loss instead).
        """
        if is_label_map(labels):
            if self.label_smoothing > 0.0:
                raise ValueError(f"label_smoothing={self.label_smoothing} applies to class targets; label maps "
                                 "are mixed as class indices: pass label_smoothing to "
                                 "mixlab.core.losses.mixed_segmentation_loss instead")
            return plain_view(labels).to(device, non_blocking=True)
        return soft_targets(labels.to(device, non_blocking=True), self.num_classes, self.label_smoothing,
                            self.target_dtype)

    def draw(self, images: Tensor) -> tuple[Tensor, dict]:
        """The partner index and the parameters for a batch shaped like ``images`` (B >= 2)."""
        coin = rand((1,), self.generator) < self.p if self.p < 1.0 else None
        index = pair_index(images.shape[0], self.pairing, self.generator, device=images.device)
        params = self.make_params(images, index, coin)
        if coin is not None:
            params["coin"] = coin
        return index, params

    def apply(self, images: Tensor, source: Tensor, index: Tensor, params: dict) -> MixResult:
        """Mix ``images`` and their targets ``source`` with drawn parameters (no randomness)."""
        mixed, lam, mask, boxes = self.mix(images, index, params)
        partner = None
        if is_label_map(source):
            targets = self.mix_label_maps(source, index, params, mask, boxes)
            if targets is not None:
                partner = targets  # one exact map: y_a = y_b
        else:
            targets = mix_targets(source, index, lam)
        if "coin" in params:  # the p coin: an unmixed batch reports its own index
            index = torch.where(params["coin"].to(index.device, non_blocking=True), index,
                                torch.arange(images.shape[0], device=index.device))
        if is_label_map(source) and targets is None:  # a global blend: each pixel keeps both labels
            targets = source
            partner = partner_of(source, index, self.pairing if "coin" not in params else "")
        return MixResult(mixed, targets, lam, index, source, mask=mask, boxes=boxes, partner_targets=partner)

    def _out(self, images: Tensor, params: dict) -> Tensor | None:
        """The tensor to write the result into: the caller's (``inplace``, unless ``params`` say
        ``"fresh": True``), a fresh one, or ``None`` (out of place) when autograd records the mix."""
        if needs_grad(images):
            return None
        return images if self.inplace and not params.get("fresh", False) else torch.empty_like(images)

    def _hyper_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._hyper_repr()
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}{', ' + extra if extra else ''}, p={self.p}, "
            f"pairing={self.pairing!r}, granularity={self.granularity!r}, label_smoothing={self.label_smoothing})"
        )


def unpack_batch(images: Any, labels: Any) -> tuple[Any, Any]:
    """``(images, labels)`` from the two arguments, or from the pair ``images`` when ``labels`` is None.

    Raises:
        TypeError: ``labels`` missing and ``images`` is not a pair.
    """
    if labels is None:
        if isinstance(images, (tuple, list)) and len(images) == 2:
            return images[0], images[1]
        raise TypeError(
            "a mixer takes (images, labels), or one pair (images, labels) such as default_collate's output; "
            f"got a single {type(images).__name__} and no labels"
        )
    return images, labels


def unmixed(images: Tensor, source: Tensor) -> MixResult:
    """The result of not mixing: the batch itself, λ = 1, each image its own partner (label maps:
    ``targets`` and ``partner_targets`` both the maps)."""
    b, device = images.shape[0], images.device
    targets = source.clone()
    return MixResult(images, targets, torch.ones(b, device=device), torch.arange(b, device=device), source,
                     partner_targets=targets if is_label_map(source) else None)


def needs_grad(images: Tensor) -> bool:
    """Whether autograd records operations on ``images`` (then no ``out=`` kernels)."""
    return images.requires_grad and torch.is_grad_enabled()


def plain_view(images: Tensor) -> Tensor:
    """A tensor subclass (``tv_tensors.Image``) seen as a plain tensor: same storage, no
    ``__torch_function__`` on the hot path."""
    return images.as_subclass(Tensor) if isinstance(images, Tensor) else images


def rewrap(result: MixResult, like: Tensor, labels_like: Tensor | None = None) -> MixResult:
    """``result`` with its images in ``like``'s tensor subclass (torchvision's ``tv_tensors.wrap``),
    and, for label maps, its maps in ``labels_like``'s (``tv_tensors.Mask``)."""
    changes = {}
    if type(like) is not Tensor and type(result[0]) is not type(like):
        changes["images"] = result[0].as_subclass(type(like))
    kind = type(labels_like)
    if labels_like is not None and kind is not Tensor and is_label_map(result[1]):
        same = result.partner_targets is result[1]
        changes["targets"] = result[1].as_subclass(kind)
        changes["source_targets"] = result.source_targets.as_subclass(kind)
        if result.partner_targets is not None:
            changes["partner_targets"] = changes["targets"] if same else result.partner_targets.as_subclass(kind)
    return result.replace(**changes) if changes else result


def partner_of(images: Tensor, index: Tensor, pairing: str) -> Tensor:
    """``images[index]`` (a new tensor); a roll for the roll pairing, a flip for the flip pairing."""
    if pairing == "roll":
        return images.roll(1, 0)
    if pairing == "flip":
        return images.flip(0)
    return images.index_select(0, index.to(images.device))


def blend_with_partner(images: Tensor, index: Tensor, weight: Tensor, out: Tensor | None = None,
                       pairing: str | None = None, partner: Tensor | None = None) -> Tensor:
    """``out_i = w_i images_i + (1 - w_i) images_index[i]`` (one ``lerp``), ``weight`` (B, 1, 1, 1)
    or (1, 1, 1, 1) in the images' dtype, or any shape that broadcasts (a (B, 1, H, W) mask).

    With ``out`` given and the roll pairing, reads two shifted views instead of gathering a
    partner batch; ``out`` may be ``images`` (in place). ``out=None``: out of place, differentiable.
    ``partner``: ``images[index]`` when the caller has it already.
    """
    if partner is None and pairing == "roll" and out is not None and out is not images:
        w0, w1 = (weight[:1], weight[1:]) if weight.shape[0] > 1 else (weight, weight)
        torch.lerp(images[:-1], images[1:], w1, out=out[1:])
        torch.lerp(images[-1:], images[:1], w0, out=out[:1])
        return out
    if partner is None:
        partner = partner_of(images, index, pairing or "")
    return torch.lerp(partner, images, weight) if out is None else torch.lerp(partner, images, weight, out=out)


def select_from_partner(images: Tensor, index: Tensor, keep: Tensor, out: Tensor | None = None,
                        pairing: str | None = None) -> Tensor:
    """``images_i`` where the bool mask ``keep`` (B or 1, 1, H, W) is True, ``images_index[i]``
    elsewhere (one ``torch.where``; any dtype). Same ``out``/roll rules as :func:`blend_with_partner`."""
    if out is None:
        return torch.where(keep, images, partner_of(images, index, pairing or ""))
    if pairing == "roll" and out is not images:
        k0, k1 = (keep[:1], keep[1:]) if keep.shape[0] > 1 else (keep, keep)
        torch.where(k1, images[1:], images[:-1], out=out[1:])
        torch.where(k0, images[:1], images[-1:], out=out[:1])
        return out
    return torch.where(keep, images, partner_of(images, index, pairing or ""), out=out)
