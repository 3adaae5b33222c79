"""Choosing a mixer per batch, and mixing inside a DataLoader's ``collate_fn``."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from mixlab.core.checks import check_probability
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.mixers.base import Mixer

__all__ = ["RandomChoice", "MixCollate"]


class RandomChoice:
    """Apply one mixer per batch, chosen at random (e.g. DeiT's Mixup/CutMix switch).

    Args:
        mixers: the candidate mixers; all must share ``num_classes``.
        probabilities: one probability per mixer, summing to 1 (default: uniform).
        p: probability of mixing the batch at all (on top of each mixer's own ``p``).
        generator: randomness of the choice; also given to every sub-mixer that has none.

    Example:
        >>> switch = RandomChoice([Mixup(10, alpha=0.8), CutMix(10, alpha=1.0)], probabilities=[0.5, 0.5])
        >>> images, targets = switch(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    """

    name = "randomchoice"

    def __init__(
        self,
        mixers: Sequence[Mixer],
        probabilities: Sequence[float] | None = None,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        mixers = list(mixers)
        if not mixers:
            raise ValueError("mixers must be a non-empty list of mixers")
        for m in mixers:
            if not callable(m) or not hasattr(m, "num_classes"):
                raise TypeError(f"every entry of mixers must be a mixer with num_classes, got {type(m).__name__}")
        classes = {m.num_classes for m in mixers}
        if len(classes) != 1:
            raise ValueError(f"all mixers must have the same num_classes, got {sorted(classes)}")
        if probabilities is None:
            probabilities = [1.0 / len(mixers)] * len(mixers)
        probabilities = [check_probability(q, "probabilities[i]") for q in probabilities]
        if len(probabilities) != len(mixers):
            raise ValueError(f"probabilities must have one entry per mixer: {len(probabilities)} != {len(mixers)}")
        if not math.isclose(sum(probabilities), 1.0, abs_tol=1e-6):
            raise ValueError(f"probabilities must sum to 1, got {sum(probabilities)}")
        self.mixers = mixers
        self.probabilities = probabilities
        self.p = check_probability(p, "p")
        self.num_classes = classes.pop()
        self._cumulative = torch.tensor(probabilities, dtype=torch.float64).cumsum(0)
        self.generator = generator

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    @generator.setter
    def generator(self, generator: torch.Generator | None) -> None:
        self._generator = generator
        for m in self.mixers:
            if generator is not None and getattr(m, "generator", None) is None:
                m.generator = generator

    def choose(self) -> Mixer | None:
        """The mixer for the next batch (``None``: leave the batch unmixed)."""
        u = rand((2,), self._generator).double()
        if float(u[0]) >= self.p:
            return None
        i = int(torch.searchsorted(self._cumulative, u[1:] * self._cumulative[-1], right=True).clamp(max=len(self.mixers) - 1))
        return self.mixers[i]

    def __call__(self, images: Tensor, labels: Tensor) -> MixResult:
        mixer = self.choose()
        if mixer is None:  # mix with probability 0: validation and one-hot targets from the first mixer
            first = self.mixers[0]
            saved, first.p = first.p, 0.0
            try:
                return first(images, labels)
            finally:
                first.p = saved
        return mixer(images, labels)

    def __repr__(self) -> str:
        inner = ", ".join(f"{m!r}: {q}" for m, q in zip(self.mixers, self.probabilities))
        return f"RandomChoice({inner}, p={self.p})"


class MixCollate:
    """A ``collate_fn`` that collates a batch and mixes it in the DataLoader worker.

    Mixing in the workers overlaps with the training step on the CPU; mixing on the device after
    the transfer is usually faster on a GPU (see the README). In a worker, leave the mixer's
    generator as ``None``: torch seeds each worker's global RNG differently, whereas one
    generator object would be copied into every worker and repeat the same draws.

    Args:
        mixer: any mixer (``images, labels -> MixResult``).
        collate_fn: the collate to run first (default ``torch.utils.data.default_collate``).
        return_result: return the whole :class:`MixResult` instead of ``(images, targets)``.
    """

    def __init__(self, mixer: Callable[[Tensor, Tensor], MixResult], collate_fn: Callable | None = None,
                 return_result: bool = False) -> None:
        if not callable(mixer):
            raise TypeError(f"mixer must be callable, got {type(mixer).__name__}")
        if collate_fn is None:
            from torch.utils.data import default_collate

            collate_fn = default_collate
        self.mixer = mixer
        self.collate_fn = collate_fn
        self.return_result = return_result

    def __call__(self, samples: list) -> tuple[Tensor, Tensor] | MixResult:
        images, labels = self.collate_fn(samples)
        result = self.mixer(images, labels)
        return result if self.return_result else (result.images, result.targets)
