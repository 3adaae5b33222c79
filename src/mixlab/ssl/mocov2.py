"""MoCo v2 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning";
Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning"), in the
improved version the CropMix paper trains (Han et al. 2022, §5.1 and Appendix B.2, after Wang et
al. 2022, Asym-Siam), with CropMix or ScaleMix query views.

Views (:meth:`MoCoV2.views`), a query x_q and a key x_k of each image:

* ``"standard"``: two independent MoCo v2 views (:func:`~mixlab.transforms.views.mocov2_view`:
  crop scale (0.2, 1), colour jitter, grayscale, blur, flip).
* ``"cropmix"`` (§5, Appendix B.2.1): the key is standard; the query is a
  :class:`~mixlab.transforms.views.MixedQuery`: N = 2 crops from §3.2's even split of the crop-scale
  range (0.2, 1), i.e. (0.2, 0.6) and (0.6, 1.0), each with its own full MoCo v2 augmentation, then
  CutMix with λ ~ U(0, 1): a box of area ≈ 1 − λ from the large-scale view is pasted into the
  small-scale view.
* ``"scalemix"`` (§5: "a special case of CropMix, where the setting is N = 2, mixing in a CutMix
  manner, but two views are obtained via same-scale cropping"; Wang et al. 2022): the same with
  both query crops from the whole range (0.2, 1).

Model. The query encoder is the backbone f_q followed by the improved projector g_q, "a fully
connected layer (2048 dimension, with BatchNorm) before the projection head (2-layer MLP)" (§5.1)::

    g(h) = W3 · ReLU(W2 · ReLU(BN(W1 · h)))        W1: D → 2048, W2: 2048 → 2048, W3: 2048 → 128

The key encoder f_k, g_k is a momentum copy of both. With q = g_q(f_q(x_q)) / ‖·‖ and
k₊ = g_k(f_k(x_k)) / ‖·‖ (no gradient), and the queue {k_1 … k_K} of the keys of earlier batches,
the loss is MoCo's InfoNCE (He et al. 2020, Eq. 1), one-directional (only x_q is a query)::

    L_q = −log  exp(q·k₊ / τ) / ( exp(q·k₊ / τ) + Σ_{i=1..K} exp(q·k_i / τ) )

i.e. the cross-entropy of the logits [q·k₊, q·k_1, …, q·k_K] / τ with the label 0. After the
optimiser step the key encoder follows the query encoder, ``θ_k ← m θ_k + (1 − m) θ_q`` (Eq. 2)
with m constant (MoCo v2 has no momentum schedule, unlike MoCo v3's cosine), and the batch's keys,
those of every data-parallel process, enter the queue while the oldest leave it (the queue and its
pointer are buffers: checkpoints hold them, and resuming continues exactly).

Shuffling BN (He et al. 2020, §3.3): BatchNorm statistics shared by a query and its own key let
the model cheat the pretext task, so the keys are encoded from a shuffled batch. Under
data-parallel training the key images of every process are gathered, permuted with one
permutation (rank 0's, broadcast), each process encodes its share and the keys are put back in
order, as MoCo does across its GPUs. In one process there is nothing to shuffle across: with
``bn_splits`` > 1 the key batch is permuted and encoded in ``bn_splits`` sub-batches (default 4,
the paper's 4 GPUs, B.2.1), so each key's BatchNorm statistics come from a random quarter of the
batch. MoCo's own CIFAR-10 demo simulates its GPUs the same way (SplitBatchNorm) but in both
encoders; here only the key encoder, the method's own copy, is split: the query encoder is the
user's model and keeps whole-batch statistics. ``shuffle_bn=False`` encodes the keys as one batch.

Defaults and where they come from: τ = 0.2, m = 0.999 (MoCo v2, kept by Asym-Siam and CropMix);
output 128 and hidden 2048 (§5.1; the Asym-Siam code sizes the hidden layers by the backbone's
width, which is 2048 for its ResNet-50); queue K = 4096, where MoCo's ImageNet queue holds 65 536
keys (5 % of its 1.28 M images): on CIFAR's 50 000 images a queue that size would always hold
each image's own earlier key as a negative, and the MoCo authors' CIFAR-10 demo found K saturated
at 4096. The optimiser (SGD, lr 0.03 per 256 images, momentum 0.9, weight decay 1e-4, cosine,
B.2.1) is the trainer's configuration.

Where the official code (JunlinHan/CropMix ``contrastive/``, built on facebookresearch/asym-siam
and facebookresearch/moco) and this file differ:

* the queue takes any batch size: keys go to positions (ptr + i) mod K and a batch larger than K
  keeps its last K keys (the code asserts K % batch == 0);
* the momentum update and the enqueue run in :meth:`after_optimizer_step`; the code runs the update
  at the start of the next forward and the enqueue at the end of the same one: every loss sees the
  same encoders and queue either way;
* shuffle-BN in one process, as described above (the code supports DDP only);
* the CutMix box: the code indexes ``view[:, x1:x2, y1:y2]``, a transposed box that only matters
  for non-square images; here x indexes columns. Side ⌊√(1 − λ)·side⌋, uniform centre, clipped, as
  the code; the patch goes from the large-scale view into the small-scale one, as the code (§3.2's
  general recipe picks the order at random);
* views are augmented as ``uint8`` and mixed before the engine normalises them (the code
  normalises first; the patch is a pixel copy, so the result is the same);
* 32 px views: Gaussian blur with a 3-pixel kernel, σ ~ U(0.1, 2) (the code: PIL's radius-σ blur on
  224 px images);
* the queue starts as random unit vectors, as the code, drawn from the method's generator.

The paper's Table 8 (mixing operations for contrastive learning) lists the numbers of Table 3's
CropMix row under "+ Mixup", while its text says Mixup "performs poorly" there and Figure 2 and the
official code use CutMix: the table's row labels look swapped; CutMix is used here.
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
    CropMix or ScaleMix query views as options. The module docstring gives the equations.

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
        """k₊ = g_k(f_k(x_k)) / ‖·‖ with shuffle-BN (module docstring), no gradient.

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
