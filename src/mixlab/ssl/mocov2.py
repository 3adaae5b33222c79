"""MoCo v2 (He et al. 2020; Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive
Learning"), in the improved version the CropMix paper trains (Han et al. 2022, §5.1, Appendix B.2),
with the CropMix or ScaleMix query as an option.

A query encoder (backbone, an extra FC + BatchNorm, MoCo v2's 2-layer MLP) against a momentum key
encoder and a queue of negatives, one-directional InfoNCE at τ = 0.2, shuffle-BN. The query view is
a MoCo v2 view, or two crops at distinct scales CutMix'ed (CropMix; ScaleMix: the same scales).

The defaults and their source and the deviations from the official code: docs/methods/mocov2.md.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.boxes import box_area_fraction, paste_boxes, rand_boxes
from mixlab.core.checks import check_bool, check_choice, check_probability, check_range
from mixlab.core.momentum import frozen_copy, momentum_update_
from mixlab.core.random import rand, randn, randperm
from mixlab.core.result import MixResult
from mixlab.core.targets import soft_targets
from mixlab.methods.base import StepOutput
from mixlab.ssl.base import SelfSupervised, embed, feature_dim, gather_batch, positive_int
from mixlab.transforms.cropmix import scale_ranges
from mixlab.transforms.views import MixedQuery, TwoViews, mocov2_view

__all__ = ["MoCoV2", "improved_head", "VIEWS"]

VIEWS = ("standard", "cropmix", "scalemix")
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect ratios


def improved_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The improved MoCo v2 projector (§5.1): Linear(in, hidden) → BN → ReLU, then MoCo v2's
    2-layer MLP Linear(hidden, hidden) → ReLU → Linear(hidden, out)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class MoCoV2(SelfSupervised):
    """MoCo v2 pre-training of the model's backbone (improved head, queue of negatives), with
    CropMix or ScaleMix query views as options. docs/methods/mocov2.md gives the equations.

    Args:
        dim: output width of the projector, the keys' width (128).
        hidden_dim: width of the extra FC layer and of the MLP's hidden layer (2048).
        queue_size: K, the number of negative keys in the queue (4096; ImageNet's is 65 536).
        temperature: τ of the InfoNCE, > 0 (0.2).
        momentum: m of the key encoder, in [0, 1], constant (0.999).
        views: ``"standard"`` (default), ``"cropmix"`` or ``"scalemix"``: how the query is made.
        scale: the crop-scale range of the key and standard views, which CropMix splits in two and
            ScaleMix uses for both query crops ((0.2, 1.0)).
        shuffle_bn: encode the keys from a shuffled batch (default True): across processes under
            data-parallel training, in ``bn_splits`` sub-batches in one process.
        bn_splits: sub-batches of the one-process shuffle-BN (4; 1 = the whole batch); at least
            2 images each (fewer sub-batches for small batches).
        image_size: side of the views (default: the training images').

    Example:
        >>> method = MoCoV2(views="cropmix", hidden_dim=512, queue_size=1024)
        >>> method.setup(model, torch.Generator().manual_seed(0))
        >>> loss = method.training_step(model, ([query_views, key_views], labels), progress=0.0).loss
    """

    name = "mocov2"

    def __init__(self, dim: int = 128, hidden_dim: int = 2048, queue_size: int = 4096, temperature: float = 0.2,
                 momentum: float = 0.999, views: str = "standard", scale: tuple[float, float] = (0.2, 1.0),
                 shuffle_bn: bool = True, bn_splits: int = 4, image_size: int | None = None) -> None:
        super().__init__(image_size)
        self.dim = positive_int(dim, "dim")
        self.hidden_dim = positive_int(hidden_dim, "hidden_dim")
        self.queue_size = positive_int(queue_size, "queue_size")
        if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.momentum = check_probability(momentum, "momentum")
        self.views_mode = check_choice(views, "views", VIEWS)
        self.scale = check_range(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1 (area fractions), got {scale!r}")
        self.shuffle_bn = check_bool(shuffle_bn, "shuffle_bn")
        self.bn_splits = positive_int(bn_splits, "bn_splits")
        self.register_buffer("queue", torch.zeros(self.queue_size, self.dim))  # (K, dim), unit rows
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # the oldest key's row
        self.projector: nn.Module | None = None  # sized by the backbone in setup()
        self.momentum_encoder: nn.Module | None = None
        self.momentum_projector: nn.Module | None = None
        self._new_keys: Tensor | None = None  # this step's keys (every process's), enqueued after the step

    # ------------------------------------------------------------------ views
    def query_scales(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The (base, patch) crop-scale ranges of the mixed query; ``None`` for standard views."""
        if self.views_mode == "cropmix":
            small, large = scale_ranges(self.scale, 2)  # §3.2: (0.2, 0.6), (0.6, 1.0)
            return small, large
        if self.views_mode == "scalemix":
            return self.scale, self.scale
        return None

    def views(self, image_size: int) -> Callable:
        """``image -> [query, key]``: the query by ``views``, the key a MoCo v2 view at ``scale``."""
        scales = self.query_scales()
        query = mocov2_view(image_size, self.scale) if scales is None else MixedQuery(image_size, *scales)
        return TwoViews(first=query, second=mocov2_view(image_size, self.scale))

    # ------------------------------------------------------------------ setup
    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Build the projector for the backbone's width, the momentum copies, and a queue of random
        unit vectors (drawn from ``generator``), on the model's device."""
        super().setup(model, generator)
        device = next(model.parameters()).device
        if self.projector is None:
            self.projector = improved_head(feature_dim(model), self.hidden_dim, self.dim).to(device)
        self.momentum_encoder = frozen_copy(model)
        self.momentum_projector = frozen_copy(self.projector)
        self.queue = F.normalize(randn(tuple(self.queue.shape), generator, device=device), dim=1)
        self.queue_ptr = torch.zeros((), dtype=torch.long, device=device)

    def _ready(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        if self.projector is None or self.momentum_encoder is None or self.momentum_projector is None:
            raise RuntimeError("MoCoV2.setup(model) must be called before training (the trainer does it)")
        return self.projector, self.momentum_encoder, self.momentum_projector

    def param_groups(self, base_lr: float) -> list[dict]:
        """The projector, with the backbone's lr and schedule."""
        projector, _, _ = self._ready()
        return [{"params": list(projector.parameters())}]

    # ------------------------------------------------------------------ the loss
    def query(self, model: nn.Module, images: Tensor) -> Tensor:
        """q = g_q(f_q(x_q)) / ‖·‖, (B, dim)."""
        projector, _, _ = self._ready()
        return F.normalize(projector(embed(model, images)), dim=1)

    @torch.no_grad()
    def _encode_key(self, images: Tensor) -> Tensor:
        _, encoder, projector = self._ready()
        return F.normalize(projector(embed(encoder, images)), dim=1)

    @torch.no_grad()
    def keys(self, images: Tensor, encode: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """k₊ = g_k(f_k(x_k)) / ‖·‖ with shuffle-BN (docs/methods/mocov2.md), no gradient.

        Args:
            images: (B, C, H, W) key views.
            encode: what the key encoder computes per (sub-)batch, rows (n, d) in the images' order
                (default: the keys, d = dim); SAMix's SSL variant adds θk's feature maps as columns.

        Returns:
            ``(keys of this process's images (B, dim), keys of every process's images in rank
            order (world·B, dim))``; the same tensor twice in one process.
        """
        encode = self._encode_key if encode is None else encode
        b = images.shape[0]
        if _distributed():
            if not self.shuffle_bn:
                own = encode(images)
                return own, gather_batch(own)[0]
            everyone, offset = gather_batch(images)  # (world·B, C, H, W), rank r's rows at r·B
            perm = randperm(everyone.shape[0], self.generator, device=images.device)
            torch.distributed.broadcast(perm, src=0)  # one permutation for every process
            share = encode(everyone[perm[offset:offset + b]])
            every_key = gather_batch(share)[0][perm.argsort()]  # back in the original order
            return every_key[offset:offset + b], every_key
        splits = min(self.bn_splits, b // 2) if self.shuffle_bn else 1
        if splits <= 1:
            k = encode(images)
            return k, k
        perm = randperm(b, self.generator, device=images.device)
        k = torch.cat([encode(part) for part in images[perm].tensor_split(splits)])[perm.argsort()]
        return k, k

    def contrastive(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """MoCo's InfoNCE (Eq. 1) of unit queries ``q`` (B, dim) against their keys ``k`` (B, dim)
        and the queue's K negatives. Returns ``(loss, logits (B, 1 + K) with the positive first)``."""
        positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
        negative = q @ self.queue.T  # (B, K)
        logits = torch.cat([positive, negative], dim=1).float() / self.temperature
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target), logits

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        views = self.unpack(batch)
        if len(views) != 2:
            raise ValueError(f"MoCo v2 takes two views per image (query, key), got {len(views)}")
        x_q, x_k = views
        q = self.query(model, x_q)
        k, every_key = self.keys(x_k)
        loss, logits = self.contrastive(q, k)
        if self.training:
            self._new_keys = every_key
        accuracy = (logits.detach().argmax(dim=1) == 0).float().mean() * 100  # the positive ranks first
        return StepOutput(loss=loss, logs={"contrast_acc": accuracy})

    # ------------------------------------------------------------------ after the step
    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Dequeue the oldest keys and enqueue ``keys`` (n, dim): they go to rows
        (ptr + i) mod K and the pointer moves by n, so the queue always holds the last K keys
        (``keys[-K:]`` when n > K) and the pointer marks the oldest."""
        n, size = keys.shape[0], self.queue_size
        m = min(n, size)
        rows = (self.queue_ptr + (n - m) + torch.arange(m, device=self.queue.device)) % size
        self.queue.index_copy_(0, rows, keys[n - m:].to(self.queue))
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q for backbone and projector (Eq. 2, m constant), then the
        step's keys (every process's) into the queue."""
        projector, encoder, momentum_projector = self._ready()
        momentum_update_(encoder.parameters(), model.parameters(), self.momentum)
        momentum_update_(momentum_projector.parameters(), projector.parameters(), self.momentum)
        if self._new_keys is not None:
            self.enqueue(self._new_keys)
            self._new_keys = None

    # ------------------------------------------------------------------ preview
    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult | None:
        """The mixed queries of a batch (``samples.png``, ``mixlab show``); ``None`` for standard views.

        Per image, the base and patch crops of :meth:`query_scales` (torchvision's sampler, resized
        bilinearly without antialiasing: :func:`~mixlab.transforms.batched.resized_crops`) and
        the CutMix box of the patch, drawn from the method's generator. Only the geometry: the
        per-view colour augmentation, blur and flips of training are left out (the preview works on
        normalised batches). The partner is the image itself (``index`` is the identity), λ is
        the exact fraction of the base view kept, and the labels are unchanged.
        """
        scales = self.query_scales()
        if scales is None:
            return None
        from mixlab.transforms.batched import resized_crops, sample_crop_boxes

        b, _, h, w = images.shape
        lo = torch.tensor([scales[0][0], scales[1][0]], dtype=torch.float64).repeat(b)
        hi = torch.tensor([scales[0][1], scales[1][1]], dtype=torch.float64).repeat(b)
        crops = sample_crop_boxes(lo, hi, h, w, RATIO, self.generator).view(b, 2, 4)
        views = resized_crops(images.float(), crops, (h, w))  # (B, 2, C, h, w): base, patch
        lam = rand((b,), self.generator)  # λ ~ U(0, 1): the patch covers about 1 − λ
        boxes = rand_boxes(1.0 - lam, h, w, generator=self.generator).to(images.device)
        mixed = paste_boxes(views[:, 0].contiguous(), views[:, 1], boxes).to(images.dtype)
        targets = soft_targets(labels.long(), int(labels.max()) + 1)
        kept = 1.0 - box_area_fraction(boxes, h, w)
        return MixResult(mixed, targets, kept, torch.arange(b, device=images.device), targets, boxes=boxes)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, queue_size={self.queue_size}, "
                f"temperature={self.temperature}, momentum={self.momentum}, views={self.views_mode!r}, "
                f"scale={self.scale}, shuffle_bn={self.shuffle_bn}, bn_splits={self.bn_splits}")
