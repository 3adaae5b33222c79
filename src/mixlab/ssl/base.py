"""What every self-supervised objective shares: :class:`SelfSupervised`.

A self-supervised method is a :class:`~mixlab.methods.base.Method` whose batches are
``(views, labels)``: ``views`` is the list of augmented views the method's own
:meth:`~SelfSupervised.train_transform` produced (two BYOL views for MoCo v3, DINO's multi-crop,
MAE's one view), each a (B, C, h, w) tensor, and the labels are never used. The trainer sees
``self_supervised = True`` and monitors the backbone with a kNN classifier instead of the
(untrained) classification head (``mixlab.evaluation.knn``); ``StepOutput.logits`` is ``None``.

The backbone is the user's model; the method owns everything else (projector, predictor, heads,
the momentum copy, MAE's decoder), so those modules travel with the method's ``state_dict`` into checkpoints and
their parameters go to the optimizer through :meth:`param_groups`. The backbone's representation
is ``model.forward_head(model.forward_features(x), pre_logits=True)`` (the pooled vector, timm's
convention, which every mixlab model and every timm model offers); the model's classification
head is not used during pre-training.
"""

from __future__ import annotations

import abc
from typing import Callable

import torch
from torch import Tensor, nn

from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets
from mixlab.methods.base import Method

__all__ = ["SelfSupervised", "embed", "feature_dim", "gather_batch", "positive_int"]


def positive_int(value, name: str, low: int = 1) -> int:
    """``value`` if it is an int >= ``low`` (bools refused); ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def embed(model: nn.Module, images: Tensor) -> Tensor:
    """The backbone's pooled representation (B, D): ``forward_head(forward_features(x), pre_logits=True)``."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def feature_dim(model: nn.Module) -> int:
    """D, the width of :func:`embed` (the input width of the model's classifier)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    width = getattr(head, "in_features", None)
    if isinstance(width, int) and width > 0:
        return width
    raise TypeError(f"{type(model).__name__} has no get_classifier() with in_features; a self-supervised method "
                    f"needs a model with forward_features / forward_head(pre_logits=True) / get_classifier() "
                    f"(every mixlab model and timm model has them)")


@torch.no_grad()
def gather_batch(x: Tensor) -> tuple[Tensor, int]:
    """``(cat of x over every data-parallel process, offset of this process's rows)``; ``(x, 0)``
    outside a process group. No gradient flows through the gathered tensor (MoCo's keys)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts), dist.get_rank() * x.shape[0]


class SelfSupervised(Method, abc.ABC):
    """Base class of the self-supervised frameworks (MoCo v3, DINO, MAE).

    Subclasses implement :meth:`views` (the per-image multi-view transform) and
    :meth:`training_step`. The image side used by :meth:`views` comes from the trainer (the
    dataset's image size) unless ``image_size`` was given.

    Args:
        image_size: side of the (global) views; ``None``: the training images' side.
    """

    self_supervised = True
    ddp_find_unused_parameters = True  # the model's classifier is not used in pre-training

    def __init__(self, image_size: int | None = None) -> None:
        super().__init__(num_classes=0)
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size < 8):
            raise ValueError(f"image_size must be an int >= 8 or None, got {image_size!r}")
        self.image_size = image_size

    @abc.abstractmethod
    def views(self, image_size: int) -> Callable:
        """The per-image transform ``image -> [view, view, ...]`` at ``image_size``."""

    def train_transform(self, default: Callable | None, image_size: int | None = None) -> Callable:
        """The multi-view transform replaces the supervised default."""
        size = self.image_size or image_size
        if size is None:
            raise ValueError(f"{type(self).__name__} needs the image size: pass image_size=... or let the trainer "
                             f"pass the dataset's")
        return self.views(size)

    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult | None:
        """SDMP's mix of a batch (for ``samples.png`` / the benchmark gallery), the targets showing the
        source teacher's weights in class terms (λ on the image's class, 1 − λ on its partner's);
        ``None`` without SDMP."""
        mixing = getattr(self, "mixing", None)
        if not getattr(self, "sdmp", False) or mixing is None:
            return None
        from mixlab.ssl.sdmp import flip_partner

        mixed, lam = mixing.apply(images, mixing.draw(images))
        index = flip_partner(images.shape[0], images.device)
        source = nn.functional.one_hot(labels.long(), int(labels.max()) + 1).float()
        return MixResult(mixed, mix_targets(source, index, lam), lam, index, source)

    @staticmethod
    def unpack(batch) -> list[Tensor]:
        """The list of views of a ``(views, labels)`` batch (labels are ignored)."""
        views = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], (list, tuple)) \
            else batch
        if not isinstance(views, (list, tuple)) or not all(isinstance(v, Tensor) and v.ndim == 4 for v in views):
            raise TypeError("a self-supervised batch is (views, labels) with views a list of (B, C, H, W) tensors; "
                            "use the method's train_transform (e.g. mixlab.transforms.TwoViews) in the loader")
        return list(views)
