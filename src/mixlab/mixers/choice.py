"""Choosing a mixer per batch or per image, and mixing inside a DataLoader's ``collate_fn``."""

from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from mixlab.core.checks import check_choice, check_probability
from mixlab.core.random import generator_device, rand
from mixlab.core.result import MixResult
from mixlab.mixers.base import Mixer, needs_grad, plain_view, rewrap, unmixed, unpack_batch

__all__ = ["RandomChoice", "MixCollate", "CHOICE_GRANULARITIES"]

#: how often :class:`RandomChoice` chooses
CHOICE_GRANULARITIES = ("batch", "elem")


class RandomChoice:
    """Apply one mixer chosen at random, per batch (DeiT's Mixup/CutMix switch) or per image
    (timm's ``Mixup(mode="elem")`` with both α > 0).

    ``granularity="elem"``: each image i gets the output row of the mixer chosen for it, with
    that mixer's λ_i, partner ``index[i]`` and targets. Every candidate mixes the whole batch
    (each with its own pairing and draws) and the rows are selected with ``torch.where``: no
    loop over images, and the cost is the sum of the candidates' costs.

    ``granularity="batch"``: one mixer for the batch. Every candidate draws its parameters
    (cheap: λ, boxes), so the random stream does not depend on the choice; then, when the
    choice can be read for free (drawn on the CPU, outside ``torch.compile``), only the chosen
    mixer runs; otherwise (a CUDA generator, or inside a compiled graph) every candidate runs
    and the result is selected by tensor ops, so nothing waits for the device and the call
    compiles as one graph. Both paths return the same images, targets, λ and index. Where every
    candidate runs, each reads the caller's images, so none writes into them (their ``inplace``
    does not apply); the rows are selected into the first candidate's output.

    Fields of a selected result that not every candidate provides are ``None``: ``boxes`` is
    set only if every candidate is a box mixer, ``mask`` only if every candidate has a mask or
    boxes (Mixup rows have no mask: their per-pixel weight is ``lam``). Label maps: each row's
    ``targets``/``partner_targets`` are its mixer's (the exact map twice for a box or mask mixer,
    the two source maps for Mixup), so ``mixed_segmentation_loss`` is right row by row.

    Args:
        mixers: the candidate mixers (:class:`~mixlab.mixers.base.Mixer`); all must share
            ``num_classes``. Inputs are checked by the first one's rules.
        probabilities: one probability per mixer, summing to 1 (default: uniform).
        p: probability of mixing at all (per batch or per image, as ``granularity``; on top of
            each mixer's own ``p``); an unmixed row keeps its image, λ = 1 and the first
            mixer's (smoothed) targets.
        generator: randomness of the choice; also given to every sub-mixer that has none.
        granularity: ``"batch"`` (default) or ``"elem"``.

    Example:
        >>> switch = RandomChoice([Mixup(10, alpha=0.8), CutMix(10, alpha=1.0)], probabilities=[0.5, 0.5])
        >>> images, targets = switch(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> per_image = RandomChoice([Mixup(10, alpha=0.8, granularity="elem"),
        ...                           CutMix(10, alpha=1.0, granularity="elem")], granularity="elem")
    """

    name = "randomchoice"

    def __init__(
        self,
        mixers: Sequence[Mixer],
        probabilities: Sequence[float] | None = None,
        p: float = 1.0,
        generator: torch.Generator | None = None,
        granularity: str = "batch",
    ) -> None:
        mixers = list(mixers)
        if not mixers:
            raise ValueError("mixers must be a non-empty list of mixers")
        for m in mixers:
            if not isinstance(m, Mixer):
                raise TypeError(f"every entry of mixers must be a mixlab Mixer (Mixup, CutMix, ...), got {type(m).__name__}")
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
        self.granularity = check_choice(granularity, "granularity", CHOICE_GRANULARITIES)
        self.num_classes = classes.pop()
        self._cumulative = torch.tensor(probabilities, dtype=torch.float64).cumsum(0)
        self._cumulative_list = self._cumulative.tolist()
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

    def draw_choice(self, n: int = 1) -> Tensor:
        """(n,) int64 on the generator's device: the mixer of each of n draws, -1 for "leave unmixed"."""
        u = rand((2, n), self._generator).double()
        cumulative = self._cumulative.to(u.device, non_blocking=True)
        k = torch.searchsorted(cumulative, (u[1] * cumulative[-1]).contiguous(), right=True).clamp(max=len(self.mixers) - 1)
        return torch.where(u[0] < self.p, k, -1)

    def _host_choice(self) -> int:
        """:meth:`draw_choice` for one batch from the same two CPU draws, in Python (same float64
        arithmetic, ``bisect_right`` for ``searchsorted(right=True)``): no tensor ops."""
        coin, pick = (u[0] for u in rand((2, 1), self._generator).tolist())
        if coin >= self.p:
            return -1
        cumulative = self._cumulative_list
        return min(bisect.bisect_right(cumulative, pick * cumulative[-1]), len(self.mixers) - 1)

    def choose(self) -> Mixer | None:
        """The mixer for the next batch (``None``: leave the batch unmixed), drawn as a batch call draws it."""
        k = int(self.draw_choice(1)[0])
        return None if k < 0 else self.mixers[k]

    def __call__(self, images: Tensor | tuple | list, labels: Tensor | None = None) -> MixResult:
        images, labels = unpack_batch(images, labels)
        x = images if type(images) is Tensor else plain_view(images)
        first = self.mixers[0]
        source = first.source_targets(x, labels)
        b = x.shape[0]
        if b < 2 or self.p == 0.0:
            return rewrap(unmixed(images, source), images, labels)
        on_host = (self.granularity == "batch" and generator_device(self._generator).type == "cpu"
                   and not torch.compiler.is_compiling())  # the choice is a host value: read it, run one mixer
        choice = self._host_choice() if on_host else self.draw_choice(1 if self.granularity == "batch" else b)
        plans = [m.draw(x) for m in self.mixers]  # every candidate draws: the stream ignores the choice
        sources = [source if _same_targets(m, first) else m.soft_targets(labels, x.device) for m in self.mixers]
        if on_host:
            if choice < 0:
                return rewrap(unmixed(images, source), images, labels)
            return rewrap(self.mixers[choice].apply(x, sources[choice], *plans[choice]), images, labels)
        for _, params in plans:  # every candidate reads the caller's images: none may write into them
            params["fresh"] = True
        results = [m.apply(x, s, *plan) for m, s, plan in zip(self.mixers, sources, plans)]
        return rewrap(_select_rows(choice.to(x.device, non_blocking=True), results, x, source, self.p < 1.0),
                      images, labels)

    def __repr__(self) -> str:
        inner = ", ".join(f"{m!r}: {q}" for m, q in zip(self.mixers, self.probabilities))
        return f"RandomChoice({inner}, p={self.p}, granularity={self.granularity!r})"


def _same_targets(a: Mixer, b: Mixer) -> bool:
    return a.label_smoothing == b.label_smoothing and a.target_dtype == b.target_dtype


def _select_rows(choice: Tensor, results: list[MixResult], images: Tensor, source: Tensor,
                 unmixed_rows: bool) -> MixResult:
    """Row i of ``results[choice[i]]`` (``choice`` (B,) or (1,) for all rows; -1: ``images[i]``
    unmixed), field by field, with ``torch.where``; the images are selected into the first
    result's fresh buffer (no allocation) unless autograd records them."""
    with_boxes = all(r.boxes is not None for r in results)
    with_mask = not with_boxes and all(r.boxes is not None or r.mask is not None for r in results)
    fields = results[0].fields()
    fields["mask"] = results[0].mask if with_mask else None
    if not with_boxes:
        fields["boxes"] = None
    in_place = not needs_grad(images)
    rows_of = [(k, choice == k) for k in range(1, len(results))]
    dense = fields["partner_targets"] is not None  # label maps: every result has both maps
    if unmixed_rows:
        unmixed_value = {"images": images, "targets": source, "partner_targets": source,
                         "lam": torch.ones_like(fields["lam"]),
                         "index": torch.arange(images.shape[0], device=images.device), "source_targets": source,
                         "boxes": torch.zeros_like(fields["boxes"]) if with_boxes else None,
                         "mask": torch.ones_like(fields["mask"]) if with_mask else None}
        rows_of.append((-1, choice < 0))
    for k, rows in rows_of:
        r = unmixed_value if k < 0 else results[k].fields() | ({"mask": results[k].mask} if with_mask else {})
        for name in ("images", "targets", "partner_targets", "lam", "index", "source_targets", "boxes", "mask"):
            if fields[name] is None or (name == "partner_targets" and not dense):
                continue
            cond = rows.view(-1, *([1] * (fields[name].ndim - 1)))
            if in_place and name in ("images", "mask"):  # fresh buffers of the first result
                fields[name] = torch.where(cond, r[name], fields[name], out=fields[name])
            else:
                fields[name] = torch.where(cond, r[name], fields[name])
    if with_boxes:
        fields["mask"] = None  # built from the selected boxes on access
    return MixResult(**fields)


class MixCollate:
    """A ``collate_fn`` that collates a batch and mixes it in the DataLoader worker.

    Mixing in the workers overlaps with the training step on the CPU; mixing on the device after
    the transfer is usually faster on a GPU (see the README). In a worker, leave the mixer's
    generator as ``None``: torch seeds each worker's global RNG differently, whereas one
    generator object would be copied into every worker and repeat the same draws. uint8 batches
    work (a prefetcher pipeline that normalises on the device): box and mask mixers copy pixels,
    Mixup rounds as timm's ``FastCollateMixup``.

    Args:
        mixer: any mixer (``images, labels -> MixResult``).
        collate_fn: the collate to run first (default ``torch.utils.data.default_collate``).
        return_result: return the whole :class:`MixResult` instead of the plain tuple
            ``(images, targets)``.
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
        return result if self.return_result else (result[0], result[1])
