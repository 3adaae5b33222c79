"""The template every stateless batch mixer follows (torchvision v2's make_params/transform split).

``Mixer.__call__`` checks the inputs, builds the un-mixed soft targets, draws the pairing and the
mixer's parameters once (:meth:`Mixer.make_params`), then applies them deterministically
(:meth:`Mixer.mix`). Subclasses only say how to sample and how to apply. Nothing is written to the
caller's tensors unless ``inplace=True``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from mixlab.core.checks import check_choice, check_images, check_labels, check_probability
from mixlab.core.lam import GRANULARITIES, sample_lambda
from mixlab.core.pairing import PAIRINGS, pair_index
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets

__all__ = ["Mixer", "partner_of"]


class Mixer(ABC):
    """Base class of the stateless batch mixers.

    Args:
        num_classes: K, the width of the soft targets.
        p: probability of mixing a batch (per batch); otherwise the batch passes unchanged with
            one-hot (smoothed) targets and λ = 1.
        pairing: ``"roll"`` (default, any B, no self-pairs), ``"flip"`` (timm/SDMP; on an odd
            batch the middle image mixes with itself) or ``"random"`` (derangement).
        granularity: λ per ``"batch"`` (default), per ``"pair"`` (needs ``pairing="flip"``) or per
            ``"elem"``.
        label_smoothing: ε applied to the targets before mixing.
        inplace: write the mixed images into the caller's tensor (saves one allocation).
        check_finite: also reject images or probability labels with NaN/inf (costs a reduction).
        generator: ``torch.Generator`` for all randomness (default: the global torch seed).
        target_dtype: dtype of the soft targets (default float32).
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
        generator: torch.Generator | None = None,
        target_dtype: torch.dtype = torch.float32,
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
        self.inplace = bool(inplace)
        self.check_finite = bool(check_finite)
        self.generator = generator
        self.target_dtype = target_dtype

    # ---------------------------------------------------------------- what subclasses provide
    @abstractmethod
    def make_params(self, images: Tensor, index: Tensor) -> dict:
        """Draw everything random for this batch (λ, boxes, masks), on the images' device."""

    @abstractmethod
    def mix(self, images: Tensor, index: Tensor, params: dict) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Apply the parameters; return ``(mixed, exact λ (B,), mask or None, boxes or None)``."""

    # ---------------------------------------------------------------- the fixed template
    def sample_lambda(self, batch_size: int, alpha: float, index: Tensor, device, distribution: str = "beta") -> Tensor:
        """λ (B,) at this mixer's granularity."""
        return sample_lambda(
            batch_size, alpha, self.granularity, distribution, index=index, generator=self.generator, device=device
        )

    def __call__(self, images: Tensor, labels: Tensor) -> MixResult:
        """Mix a batch.

        Args:
            images: float (B, C, H, W), B >= 2.
            labels: (B,) int class indices in [0, K) or (B, K) probabilities (rows sum to 1).

        Returns:
            :class:`MixResult`; unpacks as ``images, targets``.

        Raises:
            TypeError, ValueError: on malformed images or labels (nothing is modified).
        """
        check_images(images, check_finite=self.check_finite)
        check_labels(labels, images.shape[0], self.num_classes, check_finite=self.check_finite)
        b, device = images.shape[0], images.device
        source = soft_targets(labels.to(device), self.num_classes, self.label_smoothing, self.target_dtype)
        if self.p < 1.0 and float(rand((1,), self.generator)) >= self.p:
            ones = torch.ones(b, device=device)
            return MixResult(images, source.clone(), ones, torch.arange(b, device=device), source)
        index = pair_index(b, self.pairing, self.generator, device=device)
        params = self.make_params(images, index)
        mixed, lam, mask, boxes = self.mix(images, index, params)
        targets = mix_targets(source, index, lam)
        return MixResult(mixed, targets, lam, index, source, mask=mask, boxes=boxes)

    def _out(self, images: Tensor) -> Tensor:
        """The tensor to write the result into: the caller's (inplace) or a fresh one."""
        return images if self.inplace else torch.empty_like(images)

    def _hyper_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._hyper_repr()
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}{', ' + extra if extra else ''}, p={self.p}, "
            f"pairing={self.pairing!r}, granularity={self.granularity!r}, label_smoothing={self.label_smoothing})"
        )


def partner_of(images: Tensor, index: Tensor, pairing: str) -> Tensor:
    """``images[index]`` (a new tensor); a roll for the roll pairing, a flip for the flip pairing."""
    if pairing == "roll":
        return images.roll(1, 0)
    if pairing == "flip":
        return images.flip(0)
    return images.index_select(0, index.to(images.device))

