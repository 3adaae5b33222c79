"""PuzzleMix: saliency-guided block masks by graph cut, and an optimal-transport move of the blocks.

Kim, Choo & Song 2020, "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup"
(ICML 2020, arXiv:2009.06962), §3-4, Eq. 1-6, Algorithms 1-2; the defaults are the authors' CIFAR
command (snu-mllab/PuzzleMix). One step: the saliency ‖∇_x ℓ‖₂ from one extra forward and
input-only backward (:func:`input_saliency`); λ ~ Beta(α, α) and n × n blocks; a graph cut labels
each block own / half / partner (:func:`puzzle_energy`, Eq. 3-4, solved by gco-wrapper); the
transport moves each image's salient blocks to where the mask shows it (Eq. 5-6); the label is the
mask's exact area.

The defaults and their source, the deviations from the official code and why the graph cut runs
in gco-wrapper: docs/methods/puzzlemix.md.

Usage in any training loop (the trainer does the same in :meth:`PuzzleMix.training_step`)::

    pm = PuzzleMix(num_classes=10)
    pm.setup(model, torch.Generator().manual_seed(0))
    for images, labels in loader:
        saliency, _ = pm.saliency(model, images, labels)    # (B, H, W), the extra pass
        mixed = pm.mix(images, labels, saliency).mixed      # MixResult: images, soft targets, mask
        loss = soft_cross_entropy(model(mixed.images), mixed.targets)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core.checks import check_alpha, check_bool, check_choice
from mixlab.core.lam import sample_lambda
from mixlab.core.losses import soft_cross_entropy
from mixlab.core.pairing import PAIRINGS, pair_index
from mixlab.core.random import randint
from mixlab.core.result import MixResult
from mixlab.core.targets import mix_targets, soft_targets
from mixlab.methods.base import Method, StepOutput

__all__ = ["PuzzleMix", "PuzzleMixParts", "GridEnergy", "input_saliency", "puzzle_energy", "solve_graph_cut",
           "transport_plan", "permute_blocks", "block_grid"]

#: CIFAR-10's per-channel std in [0, 1] units (the code un-normalises with it)
CIFAR10_PIXEL_STD = (0.2470, 0.2435, 0.2616)
_COST_SCALE = 1e6  # integer graph-cut costs: units of 1e-6
_GCO_HINT = "PuzzleMix's graph cut needs gco-wrapper: pip install gco-wrapper (or pip install 'mixlab[puzzlemix]')"


def _real(value: Any, name: str, low: float, low_open: bool = False) -> float:
    """A finite real number >= low (> low with ``low_open``); ``TypeError``/``ValueError`` naming it."""
    bound = f"> {low}" if low_open else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number {bound}, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------- 1. saliency
def input_saliency(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int,
                   train_mode: bool = False) -> tuple[Tensor, Tensor]:
    """Per-pixel saliency ``‖∇_x ℓ(f(x), y)‖₂`` over the channels, by one forward and backward pass.

    The model runs in eval mode (BatchNorm on its running statistics, nothing updated) unless
    ``train_mode``; its mode is restored afterwards. Only the input gradient is computed
    (``torch.autograd.grad``): parameters' ``.grad`` are left as they were.

    Args:
        model: the classifier.
        images: (B, C, H, W) float batch.
        labels: (B,) class indices or (B, K) probabilities.
        num_classes: K.
        train_mode: run the pass in training mode and keep its graph (for a clean loss).

    Returns:
        ``(saliency (B, H, W) float32, per-sample cross-entropy (B,))``; the loss keeps its graph to
        the parameters when ``train_mode``, else it is detached.
    """
    was = model.training
    x = images.detach().requires_grad_(True)
    model.train(train_mode)
    try:
        with torch.enable_grad():
            loss = soft_cross_entropy(model(x), soft_targets(labels, num_classes).to(x.device), reduction="none")
            # the sum: each image's gradient is its own loss's (eval-mode BatchNorm couples nothing)
            (grad,) = torch.autograd.grad(loss.sum(), x, retain_graph=train_mode)
    finally:
        model.train(was)
    saliency = grad.float().square().sum(dim=1).sqrt()  # (B, H, W)
    return saliency, loss if train_mode else loss.detach()


# ---------------------------------------------------------------------------------- grids
class Grid(NamedTuple):
    """A block grid: ``rows × cols`` blocks of ``height × width`` pixels."""

    rows: int
    cols: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


def block_grid(image_size: tuple[int, int], block_num: int, t_size: int, neigh_size: int) -> tuple[Grid, Grid, int]:
    """The mask grid (n × n blocks), the transport grid and the smoothness pooling size of an image.

    As the code: the transport blocks are ``min(t_size, block side)`` pixels (``t_size = -1``: the
    mask's blocks), the pooling size ``min(neigh_size, block side)``; each must divide the block.

    Raises:
        ValueError: a side not divisible by ``block_num``, or a transport / pooling size that does
            not divide the block.
    """
    h, w = image_size
    if h % block_num or w % block_num:
        raise ValueError(f"PuzzleMix needs image sides divisible by every number of blocks in block_nums: "
                         f"{h}x{w} is not divisible by {block_num}")
    bh, bw = h // block_num, w // block_num
    th, tw = (bh, bw) if t_size == -1 else (min(t_size, bh), min(t_size, bw))
    neigh = min(neigh_size, bh, bw)
    if bh % th or bw % tw:
        raise ValueError(f"t_size={t_size} must divide the {bh}x{bw} blocks of {block_num}x{block_num} on {h}x{w} "
                         "images")
    if bh % neigh or bw % neigh:
        raise ValueError(f"neigh_size={neigh_size} must divide the {bh}x{bw} blocks of {block_num}x{block_num} on "
                         f"{h}x{w} images")
    return Grid(block_num, block_num, bh, bw), Grid(h // th, w // tw, th, tw), neigh


def pool_blocks(values: Tensor, grid: Grid) -> Tensor:
    """(B, H, W) -> (B, rows, cols): the mean over each block, normalised to sum 1 per image."""
    pooled = F.avg_pool2d(values.unsqueeze(1).float(), (grid.height, grid.width)).squeeze(1)
    return pooled / pooled.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------- 2. the energy (Eq. 3-4)
@dataclass
class GridEnergy:
    """A multi-label energy on n × n grids, one per image:
    ``E(l) = Σ_p unary[p, l_p] + Σ_(p,q) w_pq (l_p − l_q)² / (m − 1)²``.

    Label l gives the own image the weight ``1 − l / (m − 1)`` (l = 0: the own image).

    Attributes:
        unary: (B, n, n, m) cost of each label at each block.
        vertical: (B, n − 1, n) weight of the edge between blocks (r, c) and (r + 1, c).
        horizontal: (B, n, n − 1) weight of the edge between blocks (r, c) and (r, c + 1).
    """

    unary: Tensor
    vertical: Tensor
    horizontal: Tensor

    @property
    def n_labels(self) -> int:
        return self.unary.shape[-1]

    def distance(self) -> Tensor:
        """(m, m) label distance (l − l')² / (m − 1)²."""
        l = torch.arange(self.n_labels, dtype=self.unary.dtype, device=self.unary.device)
        return (l[:, None] - l[None, :]).square() / (self.n_labels - 1) ** 2

    def energy(self, labels: Tensor) -> Tensor:
        """(B,) energy of a labelling (B, n, n) int64."""
        d = self.distance()
        unary = self.unary.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(dim=(1, 2))
        vertical = (self.vertical * d[labels[:, :-1, :], labels[:, 1:, :]]).sum(dim=(1, 2))
        horizontal = (self.horizontal * d[labels[:, :, :-1], labels[:, :, 1:]]).sum(dim=(1, 2))
        return unary + vertical + horizontal


def _boundary_differences(top: Tensor, bottom: Tensor, k_rows: int, k_cols: int, n: int) -> tuple[Tensor, Tensor]:
    """The code's ``neigh_penalty``: mean absolute colour difference across each block boundary.

    ``top``/``bottom`` are (B, C, H', W') pooled images; returns the vertical edges' (B, n − 1, n)
    (last pooled row of block (r, c) in ``top`` vs first row of block (r + 1, c) in ``bottom``) and
    the horizontal edges' (B, n, n − 1) (last column in ``top`` vs first in ``bottom``).
    """
    b = top.shape[0]
    dv = (top[:, :, :-1, :] - bottom[:, :, 1:, :])[:, :, k_rows - 1::k_rows, :]  # (B, C, n-1, W')
    dv = dv.abs().mean(dim=1).view(b, n - 1, n, k_cols).mean(dim=-1)
    dh = (top[:, :, :, :-1] - bottom[:, :, :, 1:])[:, :, :, k_cols - 1::k_cols]  # (B, C, H', n-1)
    dh = dh.abs().mean(dim=1).view(b, n, k_rows, n - 1).mean(dim=2)
    return dv, dh


def label_prior(lam: Tensor, n_labels: int, eps: float = 1e-8) -> Tensor:
    """(B, m) −log P(label) of the code's binomial prior: label l (own weight 1 − l/(m − 1)) has
    probability C(m−1, l) λ^{m−1−l} (1 − λ)^l."""
    lam = lam.double().view(-1, 1)
    l = torch.arange(n_labels, dtype=torch.float64, device=lam.device)
    k = n_labels - 1
    log_binom = math.lgamma(k + 1) - torch.lgamma(l + 1) - torch.lgamma(k - l + 1)
    prob = torch.exp(log_binom) * lam ** (k - l) * (1 - lam) ** l
    return -torch.log(prob + eps)


def puzzle_energy(images: Tensor, saliency: Tensor, index: Tensor, lam: Tensor, block_num: int, *,
                  n_labels: int = 3, beta: float = 1.2, gamma: float = 0.5, eta: float = 0.2,
                  neigh_size: int = 4, pixel_std: float | tuple[float, ...] = CIFAR10_PIXEL_STD) -> GridEnergy:
    """The labelling energy of Eq. 3-4 for each image i mixed with ``index[i]`` (docs/methods/puzzlemix.md, step 3).

    Args:
        images: (B, C, H, W) normalised batch.
        saliency: (B, H, W) per-pixel saliency.
        index: (B,) partners.
        lam: (B,) the mixing ratio λ of the prior.
        block_num: n, blocks per side.
        n_labels, beta, gamma, eta, neigh_size: the paper's m, β, γ, η and the pooling size.
        pixel_std: the normalisation's std (scalar or per channel): differences in [0, 1] units.

    Returns:
        :class:`GridEnergy` on the images' device, float32.
    """
    b, c, h, w = images.shape
    grid, _, neigh = block_grid((h, w), block_num, -1, neigh_size)
    n = block_num
    own = pool_blocks(saliency, grid)  # (B, n, n), sums to 1
    partner = own[index]
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=images.device).reshape(-1)
    if std.numel() not in (1, c):
        raise ValueError(f"pixel_std must be one number or one per channel ({c}), got {std.numel()} values")
    pooled = F.avg_pool2d(images.float() * std.view(1, -1, 1, 1), neigh)  # (B, C, H/neigh, W/neigh)
    k_rows, k_cols = grid.height // neigh, grid.width // neigh
    beta_n = beta / n / 16  # the code's normalisation
    # d[a][b]: top/left block shows source a, bottom/right block source b (0: partner, 1: own)
    srcs = (pooled[index], pooled)
    dv, dh = {}, {}
    for a in (0, 1):
        for s in (0, 1):
            v, hz = _boundary_differences(srcs[a], srcs[s], k_rows, k_cols, n)
            dv[a, s], dh[a, s] = beta_n * gamma * v, beta_n * gamma * hz
    # cost when the block shows the own image (weight z) / the partner (weight 1 - z): saliency lost
    cost_own, cost_partner = partner.clone(), own.clone()
    # data smoothness, split into unary parts and a symmetric pairwise part (exact for two labels)
    cost_own[:, :-1, :] += (dv[1, 0] + dv[1, 1]) / 2
    cost_partner[:, :-1, :] += (dv[0, 1] + dv[0, 0]) / 2
    cost_own[:, 1:, :] += (dv[0, 1] + dv[1, 1]) / 2
    cost_partner[:, 1:, :] += (dv[1, 0] + dv[0, 0]) / 2
    cost_own[:, :, :-1] += (dh[1, 0] + dh[1, 1]) / 2
    cost_partner[:, :, :-1] += (dh[0, 1] + dh[0, 0]) / 2
    cost_own[:, :, 1:] += (dh[0, 1] + dh[1, 1]) / 2
    cost_partner[:, :, 1:] += (dh[1, 0] + dh[0, 0]) / 2
    vertical = (beta_n + (dv[1, 0] + dv[0, 1] - dv[1, 1] - dv[0, 0]) / 2).clamp_min(0)
    horizontal = (beta_n + (dh[1, 0] + dh[0, 1] - dh[1, 1] - dh[0, 0]) / 2).clamp_min(0)
    z = 1 - torch.arange(n_labels, device=images.device, dtype=torch.float32) / (n_labels - 1)  # own weight
    prior = (eta * label_prior(lam, n_labels) / n**2).float().to(images.device)  # (B, m)
    unary = z * cost_own.unsqueeze(-1) + (1 - z) * cost_partner.unsqueeze(-1) + prior[:, None, None, :]
    return GridEnergy(unary, vertical, horizontal)


# ---------------------------------------------------------------------------------- 3. the graph cut
def _gco():
    try:
        import gco
    except ImportError as e:
        raise ImportError(_GCO_HINT) from e
    return gco


def solve_graph_cut(energy: GridEnergy) -> Tensor:
    """α-β-swap graph cuts (gco-wrapper) of each image's energy; (B, n, n) int64 labels on the
    energy's device. Costs become integers at a resolution of 10⁻⁶ (docs/methods/puzzlemix.md)."""
    import numpy as np

    gco = _gco()
    m = energy.n_labels
    scale = _COST_SCALE
    limit = 2**30  # int32 headroom for the solver's sums of a few terms
    unary = (energy.unary.double() * scale).round().clamp(-limit, limit).to(torch.int32).cpu().numpy()
    # w (l - l')^2 / (m - 1)^2 == [w / (m - 1)^2] * (l - l')^2: integer label distance, scaled weights
    per_unit = scale / (m - 1) ** 2
    vertical = (energy.vertical.double() * per_unit).round().clamp(0, limit).to(torch.int32).cpu().numpy()
    horizontal = (energy.horizontal.double() * per_unit).round().clamp(0, limit).to(torch.int32).cpu().numpy()
    l = np.arange(m, dtype=np.int32)
    distance = np.ascontiguousarray((l[:, None] - l[None, :]) ** 2, dtype=np.int32)
    n_rows, n_cols = unary.shape[1:3]
    labels = np.stack([gco.cut_grid_graph(unary[i], distance, vertical[i], horizontal[i], algorithm="swap")
                       for i in range(unary.shape[0])])  # the C++ solver, one small grid per image
    return torch.from_numpy(labels.reshape(-1, n_rows, n_cols).astype(np.int64)).to(energy.unary.device)


# ---------------------------------------------------------------------------------- 4. transport (Eq. 5-6)
def position_cost(grid: Grid, device: torch.device | str | None = None) -> Tensor:
    """(N, N) squared distance between block positions, normalised by (max side − 1)² (the code's C)."""
    r = torch.arange(grid.rows, device=device).repeat_interleave(grid.cols).float()
    c = torch.arange(grid.cols, device=device).repeat(grid.rows).float()
    d = (r[:, None] - r[None, :]).square() + (c[:, None] - c[None, :]).square()
    return d / max(max(grid.rows, grid.cols) - 1, 1) ** 2


def _first_winners(choice: Tensor, cost: Tensor) -> Tensor:
    """(B, N) bool: source k keeps its chosen destination (the cheapest of its choosers; ties: the
    lowest source index)."""
    b, n = choice.shape
    lowest = torch.full((b, n), math.inf, device=cost.device, dtype=cost.dtype)
    lowest = lowest.scatter_reduce(1, choice, cost, "amin")
    src = torch.arange(n, device=choice.device).expand(b, n)
    cheapest = cost <= lowest.gather(1, choice)
    first = torch.full((b, n), n, device=choice.device, dtype=torch.long)
    first = first.scatter_reduce(1, choice, torch.where(cheapest, src, n), "amin")
    return first.gather(1, choice) == src


def transport_plan(saliency: Tensor, visible: Tensor, positions: Tensor, t_eps: float,
                   n_iter: int | None = None) -> Tensor:
    """Algorithm 2 of the paper, made a permutation: where each destination block takes its content.

    Minimises (approximately) Σ_k t_eps·C[k, π(k)] − s_k·visible[π(k)] over permutations π of the
    blocks: salient blocks move to where the mask shows their image, at a cost for the distance.
    Each round, every unplaced block picks its cheapest destination; each destination keeps the
    cheapest of the blocks that picked it (ties: the lowest index); the others pay +1 on that
    destination and pick again (``n_iter`` rounds, default the grid's side as the code). The blocks
    left without a destination then fill the empty destinations in raster order.

    Args:
        saliency: (B, N) block saliency (normalised per image).
        visible: (B, N) bool, where the mask shows this image (z > 0).
        positions: (N, N) position cost C (:func:`position_cost`).
        t_eps: the weight of the distance.
        n_iter: rounds; default ``round(sqrt(N))``.

    Returns:
        (B, N) int64 ``source``: destination d receives block ``source[:, d]``; each row is a
        permutation of 0..N-1.
    """
    b, n = saliency.shape
    if n_iter is None:
        n_iter = max(int(round(math.sqrt(n))), 1)
    # (B, N source, N destination): t_eps C[k, d] - s_k 1(visible d), in one pass
    cost = torch.baddbmm(t_eps * positions.to(saliency.dtype), saliency[:, :, None],
                         visible[:, None, :].to(saliency.dtype), alpha=-1.0)
    choice = cost.argmin(dim=-1)  # (B, N) each block's destination
    best = cost.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    keep = _first_winners(choice, best)
    for _ in range(n_iter - 1):
        if bool(keep.all()):
            break
        bl, kl = (~keep).nonzero(as_tuple=True)  # the losers pay +1 and pick again (their rows only)
        cost[bl, kl, choice[bl, kl]] += 1.0
        rows = cost[bl, kl]  # (L, N)
        new = rows.argmin(dim=-1)
        choice[bl, kl] = new
        best[bl, kl] = rows.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        keep = _first_winners(choice, best)
    source = torch.full((b, n), -1, dtype=torch.long, device=saliency.device)
    bw, kw = keep.nonzero(as_tuple=True)
    source[bw, choice[bw, kw]] = kw
    # completion: blocks without a destination, in raster order, to the empty destinations in raster
    # order (as many of each per image, since the kept pairs are one-to-one)
    be, de = (source < 0).nonzero(as_tuple=True)
    _, ku = (~keep).nonzero(as_tuple=True)
    source[be, de] = ku
    return source


def permute_blocks(images: Tensor, source: Tensor, grid: Grid) -> Tensor:
    """``images`` with block d of each image replaced by its block ``source[:, d]`` (raster order).

    Args:
        images: (B, C, H, W) with H = rows × height, W = cols × width.
        source: (B, N) int64, N = rows × cols.
    """
    b, c, h, w = images.shape
    blocks = images.reshape(b, c, grid.rows, grid.height, grid.cols, grid.width).permute(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(b, c, grid.size, grid.height * grid.width)
    moved = blocks.gather(2, source.view(b, 1, grid.size, 1).expand(b, c, grid.size, grid.height * grid.width))
    moved = moved.view(b, c, grid.rows, grid.cols, grid.height, grid.width).permute(0, 1, 2, 4, 3, 5)
    return moved.reshape(b, c, h, w)


def _upsample(mask: Tensor, grid: Grid, size: tuple[int, int]) -> Tensor:
    """(B, rows, cols) -> (B, 1, H, W), each block's value repeated over its pixels."""
    rows = mask.repeat_interleave(size[0] // grid.rows, dim=1)
    return rows.repeat_interleave(size[1] // grid.cols, dim=2).unsqueeze(1)


# ---------------------------------------------------------------------------------- the method
class PuzzleMixParts(NamedTuple):
    """One PuzzleMix batch and how it was made.

    Attributes:
        mixed: the :class:`MixResult` (``mask``: the own image's weight at each pixel, constant on
            each of the n × n blocks; ``lam``: its mean, the exact fraction of the own image).
        block_num: n, the blocks per side of the mask.
        labels: (B, n, n) int64 graph-cut labels (own weight ``1 − l / (m − 1)``).
        energy: the :class:`GridEnergy` that was minimised.
        grid: the transport grid.
        source: (B, N) the own image's transport plan (destination -> source block), or ``None``.
        partner_source: (B, N) the partner's, or ``None``.
    """

    mixed: MixResult
    block_num: int
    labels: Tensor
    energy: GridEnergy
    grid: Grid
    source: Tensor | None
    partner_source: Tensor | None


class PuzzleMix(Method):
    """PuzzleMix (docs/methods/puzzlemix.md has the equations and every choice made).

    Args:
        num_classes: K.
        label_smoothing: ε of the one-hot targets, applied before mixing.
        alpha: α of λ ~ Beta(α, α), > 0. Default 1 (the code's CIFAR command; the AutoMix tables).
        block_nums: the numbers of blocks per side n to draw from, distinct ints >= 2 dividing the
            image sides. Default ``(2, 4, 8, 16)`` (the code's draw on 32×32 images).
        n_labels: m, mask values {0, 1/(m−1), ..., 1}, an int >= 2. Default 3.
        beta: β, label smoothness, >= 0. Default 1.2.
        gamma: γ, data local smoothness, >= 0. Default 0.5.
        eta: η, weight of the label prior, >= 0. Default 0.2.
        neigh_size: pooling size of the data smoothness term, an int >= 1. Default 4.
        transport: move the salient blocks (Algorithm 2). Default True.
        t_size: side in pixels of the transported blocks, an int >= 1, or -1 for the mask's blocks.
            Default 4 (the code's CIFAR command).
        t_eps: weight of the distance in the transport cost, >= 0. Default 0.8.
        clean_weight: weight of a cross-entropy on the clean images (from the saliency pass, then
            run in train mode), >= 0. Default 0 (the code's CIFAR command).
        pixel_std: the std the images were normalised with (one number or one per channel), > 0,
            to measure colour differences in [0, 1] units. Default CIFAR-10's.
        pairing: partner draw, one of :data:`mixlab.core.pairing.PAIRINGS`; default ``"random"``.

    Raises:
        TypeError / ValueError: an argument of the wrong type or outside its range, named.
    """

    name = "puzzlemix"

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        *,
        alpha: float = 1.0,
        block_nums: tuple[int, ...] | list[int] = (2, 4, 8, 16),
        n_labels: int = 3,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        transport: bool = True,
        t_size: int = 4,
        t_eps: float = 0.8,
        clean_weight: float = 0.0,
        pixel_std: float | tuple[float, ...] | list[float] = CIFAR10_PIXEL_STD,
        pairing: str = "random",
    ) -> None:
        super().__init__(num_classes, label_smoothing)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for PuzzleMix, got {num_classes}")
        self.alpha = check_alpha(alpha)
        if not isinstance(block_nums, (tuple, list)) or not block_nums:
            raise TypeError(f"block_nums must be a non-empty tuple or list of ints >= 2, got {block_nums!r}")
        for n in block_nums:
            _int(n, "every entry of block_nums", 2)
        if len(set(block_nums)) != len(block_nums):
            raise ValueError(f"block_nums must be distinct (each is drawn with probability 1 / len), "
                             f"got {block_nums!r}")
        self.block_nums = tuple(block_nums)
        self.n_labels = _int(n_labels, "n_labels", 2)
        self.beta = _real(beta, "beta", 0.0)
        self.gamma = _real(gamma, "gamma", 0.0)
        self.eta = _real(eta, "eta", 0.0)
        self.neigh_size = _int(neigh_size, "neigh_size", 1)
        self.transport = check_bool(transport, "transport")
        if isinstance(t_size, bool) or not isinstance(t_size, int) or not (t_size == -1 or t_size >= 1):
            raise ValueError(f"t_size must be an int >= 1 (pixels) or -1 (the mask's blocks), got {t_size!r}")
        self.t_size = t_size
        self.t_eps = _real(t_eps, "t_eps", 0.0)
        self.clean_weight = _real(clean_weight, "clean_weight", 0.0)
        std = (pixel_std,) if isinstance(pixel_std, Real) and not isinstance(pixel_std, bool) else pixel_std
        if not isinstance(std, (tuple, list)) or not std:
            raise TypeError(f"pixel_std must be a number or a tuple of numbers > 0, got {pixel_std!r}")
        self.pixel_std = tuple(_real(s, "pixel_std", 0.0, low_open=True) for s in std)
        self.pairing = check_choice(pairing, "pairing", PAIRINGS)
        self._model: list[nn.Module] = []  # the model, for previews (a list: not a submodule)

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Keep the model for :meth:`mix_preview` and check that the graph-cut solver is installed.

        Raises:
            ImportError: gco-wrapper is missing (the message has the install command).
        """
        super().setup(model, generator)
        _gco()
        self._model = [model]

    # ------------------------------------------------------------------ the pieces of a step
    def saliency(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`input_saliency` with the method's settings: (B, H, W) saliency and the clean
        per-sample cross-entropy (with its graph when ``clean_weight > 0``)."""
        return input_saliency(model, images, labels, self.num_classes, train_mode=self.clean_weight > 0)

    def draw(self, batch_size: int, device: torch.device) -> tuple[Tensor, int, Tensor]:
        """λ (B,) (one value per batch), the number of blocks n and the partner index (B,)."""
        lam = sample_lambda(batch_size, self.alpha, "batch", generator=self.generator, device=device)
        block_num = self.block_nums[int(randint(len(self.block_nums), (1,), self.generator))]
        index = pair_index(batch_size, self.pairing, self.generator, device=device)
        return lam, block_num, index

    @torch.no_grad()
    def mix(self, images: Tensor, labels: Tensor, saliency: Tensor) -> PuzzleMixParts:
        """Steps 2-5 of docs/methods/puzzlemix.md: draw, cut, transport, mix and label.

        Args:
            images: (B, C, H, W) float batch (normalised, on the training device).
            labels: (B,) class indices or (B, K) probabilities.
            saliency: (B, H, W) per-pixel saliency (:meth:`saliency`).

        Raises:
            ValueError: images not (B, C, H, W) floats, a saliency of another size, or image sides
                that the block numbers do not divide.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a (B, C, H, W) float tensor, got {tuple(images.shape)} {images.dtype}")
        b, _, h, w = images.shape
        if saliency.shape != (b, h, w):
            raise ValueError(f"saliency must be (B, H, W) = {(b, h, w)}, got {tuple(saliency.shape)}")
        for n in self.block_nums:  # the same error whichever number is drawn
            block_grid((h, w), n, self.t_size, self.neigh_size)
        lam, block_num, index = self.draw(b, images.device)
        grid, t_grid, _ = block_grid((h, w), block_num, self.t_size, self.neigh_size)
        energy = puzzle_energy(images, saliency, index, lam, block_num, n_labels=self.n_labels, beta=self.beta,
                               gamma=self.gamma, eta=self.eta, neigh_size=self.neigh_size, pixel_std=self.pixel_std)
        labels_cut = solve_graph_cut(energy)  # (B, n, n)
        mask = 1 - labels_cut.float() / (self.n_labels - 1)  # the own image's weight per block
        own, partner = images, images[index]
        source = partner_source = None
        if self.transport:
            fine = mask.repeat_interleave(t_grid.rows // grid.rows, 1).repeat_interleave(t_grid.cols // grid.cols, 2)
            sal = pool_blocks(saliency, t_grid).flatten(1)  # (B, N)
            plans = transport_plan(torch.cat([sal, sal[index]]), torch.cat([fine > 0, fine < 1]).flatten(1),
                                   position_cost(t_grid, images.device), self.t_eps,
                                   n_iter=max(t_grid.rows, t_grid.cols))
            source, partner_source = plans[:b], plans[b:]
            own, partner = permute_blocks(own, source, t_grid), permute_blocks(partner, partner_source, t_grid)
        pixel_mask = _upsample(mask, grid, (h, w)).to(images.dtype)  # (B, 1, H, W)
        out = torch.empty_like(images)  # keeps the memory format (channels_last)
        out.copy_(torch.lerp(partner, own, pixel_mask))  # z ⊙ Π_i(x_i) + (1 − z) ⊙ Π_j(x_j)
        frac = mask.mean(dim=(1, 2))  # exact: every block has the same number of pixels
        targets = soft_targets(labels, self.num_classes, self.label_smoothing).to(images.device)
        mixed = MixResult(out, mix_targets(targets, index, frac), frac, index, targets, mask=pixel_mask)
        return PuzzleMixParts(mixed, block_num, labels_cut, energy, t_grid, source, partner_source)

    # ------------------------------------------------------------------ the trainer's step
    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        saliency, clean = self.saliency(model, images, labels)
        parts = self.mix(images, labels, saliency)
        logits = model(parts.mixed.images)
        loss_mix = soft_cross_entropy(logits, parts.mixed.targets)
        loss = loss_mix + self.clean_weight * clean.mean() if self.clean_weight > 0 else loss_mix
        logs = {"loss_mix": loss_mix.detach(), "loss_clean": clean.detach().mean(), "lam": parts.mixed.lam.mean(),
                "block_num": float(parts.block_num)}
        return StepOutput(loss=loss, logits=logits, logs=logs, mixed=parts.mixed)

    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """A PuzzleMix batch with the saliency of the model given to :meth:`setup` (in eval mode:
        its BatchNorm statistics are not touched; gradients are enabled for the pass even under
        ``torch.no_grad()``)."""
        if not self._model:
            raise RuntimeError("PuzzleMix.setup(model, generator) must be called before previewing: the saliency "
                               "needs the model")
        model = self._model[0]
        saliency, _ = input_saliency(model, images, labels, self.num_classes)
        return self.mix(images, labels, saliency).mixed

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, block_nums={self.block_nums}, "
                f"n_labels={self.n_labels}, beta={self.beta}, gamma={self.gamma}, eta={self.eta}, "
                f"neigh_size={self.neigh_size}, transport={self.transport}, t_size={self.t_size}, "
                f"t_eps={self.t_eps}, clean_weight={self.clean_weight}, pixel_std={self.pixel_std}, "
                f"pairing={self.pairing!r}")
