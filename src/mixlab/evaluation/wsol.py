"""Weakly supervised object localization: MaxBoxAccV2 (Choe et al., CVPR 2020, "Evaluating Weakly
Supervised Object Localization Methods Right", §4.1 and Eq. 2), computed as the authors' official
code (``clovaai/wsolevaluation``: ``inference.py`` + ``evaluation.py``) computes it, in torch on
the CAMs' device (OpenCV is not needed).

For every image, the class activation map of its ground-truth class (the *GT-known* setting) is

1. resized to the image size with bicubic interpolation -- ``cv2.resize(cam, size,
   interpolation=cv2.INTER_CUBIC)`` in float64: half-pixel centres, A = -0.75, replicated border,
   coefficients computed in float32 as OpenCV does (:func:`resize_scoremaps`);
2. min-max normalised to [0, 1]; a constant map or one with a NaN becomes all zeros
   (``normalize_scoremap``, :func:`normalize_scoremaps`);
3. quantised ``u = uint8(255 · s)`` (truncation) and, for every CAM threshold τ of the sweep
   ``np.arange(0, 1, cam_curve_interval)`` (0.01 → τ = 0, 0.01, ..., 0.99), binarised as
   ``u > int(τ · max(u))`` (``cv2.threshold(..., THRESH_BINARY)``);
4. turned into boxes: the bounding rectangle ``(x, y, w, h)`` of *every* contour that
   ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_SIMPLE)`` returns (``multi_contour_eval=True``,
   the "V2"), as ``(x, y, min(x + w, W - 1), min(y + h, H - 1))``; a mask without contour gives the
   single box ``(0, 0, 0, 0)`` (:func:`scoremap_boxes`). ``RETR_TREE`` returns the outer border of
   every 8-connected foreground component *and* the border of every hole (a 4-connected background
   component not connected to the image frame). The outer border's bounding rectangle is the
   component's bounding box; a hole's border runs along the foreground pixels around it, so its
   rectangle is the hole's bounding box grown by one pixel on each side. Components are found on
   the device by :func:`component_boxes`;
5. scored by the IoU of the best box against the best ground-truth box of the image, with the
   official inclusive-pixel convention (``+1`` in every side, a degenerate union gives 0;
   :func:`box_iou_inclusive`).

An image counts as localised at (τ, δ) when that IoU is ``>= δ / 100``. ``BoxAcc(τ, δ)`` is the
percentage of localised images over the dataset, ``MaxBoxAcc(δ) = max_τ BoxAcc(τ, δ)`` (the best
threshold is chosen per δ) and MaxBoxAccV2 is the mean over δ ∈ {30, 50, 70}
(``multi_iou_eval=True``). :class:`MaxBoxAccV2` accumulates batches (``update``) and reports at the
end (``compute``), as the official ``BoxEvaluator``.

Ground-truth boxes are ``(x0, y0, x1, y1)`` pixel coordinates in the image the CAM is resized to,
in the official convention: for CUB, ``x1 = x + width`` of ``bounding_boxes.txt``, scaled to the
evaluated image size by :func:`mixlab.data.cub.resize_boxes` (the official ``resize_bbox``); the
synthetic shapes' half-open boxes are in the same convention.

Only the V2 protocol (all contours, three IoU thresholds) is implemented: the original MaxBoxAcc
(the largest contour by ``cv2.contourArea``, δ = 50 only) needs the contours' polygon areas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mixlab.evaluation.cam import class_activation_maps
from mixlab.evaluation.metrics import Data, iter_batches, model_device

__all__ = [
    "CAM_CURVE_INTERVAL",
    "IOU_THRESHOLDS",
    "MaxBoxAccV2",
    "localization_accuracy",
    "ScoremapBoxes",
    "box_iou_inclusive",
    "cam_thresholds",
    "component_boxes",
    "normalize_scoremaps",
    "quantize_scoremaps",
    "resize_scoremaps",
    "scoremap_boxes",
]

CAM_CURVE_INTERVAL = 0.01  # the official evaluation.py default (--cam_curve_interval)
IOU_THRESHOLDS = (30, 50, 70)  # δ in percent (--iou_threshold_list)
_CHUNK_ELEMENTS = 1 << 25  # images x thresholds x H x W per chunk (bounds the runs held at once)


def cam_thresholds(interval: float = CAM_CURVE_INTERVAL) -> Tensor:
    """The CAM thresholds τ of the sweep: ``np.arange(0, 1, interval)`` as float64, shape (T,).

    Raises:
        ValueError: ``interval`` not in (0, 1].
    """
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 1:
        raise ValueError(f"cam_curve_interval must be a number in (0, 1], got {interval!r}")
    return torch.from_numpy(np.arange(0, 1, interval, dtype=np.float64))


def _cubic_weights(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Source indices (n_out, 4) and float32 weights (n_out, 4) of OpenCV's INTER_CUBIC along one axis."""
    scale = 1.0 / (n_out / n_in)  # OpenCV: scale = 1 / inv_scale, inv_scale = dsize / ssize
    fx = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * scale - 0.5).float()
    sx = torch.floor(fx)
    x = fx - sx  # float32, as OpenCV
    a = torch.tensor(-0.75, dtype=torch.float32, device=device)
    x1, ix = x + 1, 1 - x
    w0 = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + 1
    w2 = ((a + 2) * ix - (a + 3)) * ix * ix + 1
    w3 = 1 - w0 - w1 - w2
    idx = (sx.long()[:, None] + torch.arange(-1, 3, device=device)).clamp_(0, n_in - 1)  # replicated border
    return idx, torch.stack([w0, w1, w2, w3], dim=1)


def resize_scoremaps(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """``cv2.resize(cam, (W, H), interpolation=cv2.INTER_CUBIC)`` for a batch of maps, in float64.

    Separable: horizontal pass, then vertical, each a 4-tap sum in OpenCV's order, with OpenCV's
    float32 coefficients (so non-integer scale factors agree with OpenCV too, not only to 1e-6 as
    ``F.interpolate(mode="bicubic")`` does). A map already of size ``size`` is returned unchanged
    (OpenCV copies it).

    Args:
        cams: (B, h, w) real maps.
        size: ``(H, W)`` of the output.

    Returns:
        (B, H, W) float64 on ``cams``' device.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be (B, h, w), got shape {tuple(cams.shape)}")
    out_h, out_w = (int(s) for s in size)
    x = cams.to(torch.float64)
    _, h, w = x.shape
    if (h, w) == (out_h, out_w):
        return x.clone()
    idx, wt = _cubic_weights(w, out_w, x.device)  # (W, 4)
    taps = x[:, :, idx]  # (B, h, W, 4)
    wt = wt.to(torch.float64)
    x = taps[..., 0] * wt[:, 0] + taps[..., 1] * wt[:, 1] + taps[..., 2] * wt[:, 2] + taps[..., 3] * wt[:, 3]
    idx, wt = _cubic_weights(h, out_h, x.device)  # (H, 4)
    taps = x[:, idx, :]  # (B, H, 4, W)
    wt = wt.to(torch.float64)[:, :, None]
    return taps[:, :, 0] * wt[:, 0] + taps[:, :, 1] * wt[:, 1] + taps[:, :, 2] * wt[:, 2] + taps[:, :, 3] * wt[:, 3]


def normalize_scoremaps(cams: Tensor) -> Tensor:
    """Min-max normalisation of each map to [0, 1] (the official ``normalize_scoremap``), float64;
    a constant map, or one containing a NaN, becomes all zeros.

    Args:
        cams: (B, H, W) maps.
    """
    x = cams.to(torch.float64)
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    bad = torch.isnan(x).any(dim=2, keepdim=True).any(dim=1, keepdim=True) | (span == 0)
    out = (x - lo) / torch.where(bad, torch.ones_like(span), span)
    return torch.where(bad, torch.zeros_like(out), out)


def quantize_scoremaps(scoremaps: Tensor) -> Tensor:
    """``(scoremap * 255).astype(np.uint8)`` for maps in [0, 1]: truncation, as int64 (B, H, W)."""
    return torch.floor(scoremaps.to(torch.float64) * 255).long()


# A stack of thresholded maps is never materialised: for values (B, H, W) and non-decreasing
# integer levels (B, T), mask (b, k) is ``values[b] > levels[b, k]`` ("above") or ``values[b] <=
# levels[b, k]`` ("below"), on a virtual (B*T, H, W) grid with flat index ((b*T + k)*H + r)*W + c.
# A pixel starts a run of mask (b, k) for a contiguous range of k (levels are sorted), found with
# searchsorted, so the work grows with the number of runs, not with T*H*W.
_OUTSIDE_ABOVE = -1  # a value off in every "above" mask (levels are >= 0)
_OUTSIDE_BELOW = 1 << 30  # a value off in every "below" mask


def _on(values: Tensor, levels: Tensor, below: bool, flat: Tensor) -> Tensor:
    """Whether the virtual-grid pixels ``flat`` are in their masks."""
    b_, h, w = values.shape
    t = levels.shape[1]
    pixel, mask = flat % (h * w), flat // (h * w)
    v = values.reshape(-1)[(mask // t) * (h * w) + pixel]
    level = levels.reshape(-1)[mask]
    return v <= level if below else v > level


def _level_runs(values: Tensor, levels: Tensor, below: bool) -> tuple[Tensor, Tensor]:
    """Maximal horizontal runs of every mask: virtual-grid flat indices of each run's first and
    last pixel, both (R,) sorted, so the i-th first and the i-th last bound the same run."""
    b, h, w = values.shape
    t = levels.shape[1]
    outside = _OUTSIDE_BELOW if below else _OUTSIDE_ABOVE
    left = torch.full_like(values, outside)
    left[:, :, 1:] = values[:, :, :-1]
    right = torch.full_like(values, outside)
    right[:, :, :-1] = values[:, :, 1:]

    def events(neighbour: Tensor) -> Tensor:
        # in mask k and the neighbour not: neighbour <= L_k < value ("above"), value <= L_k < neighbour ("below")
        lo, hi = (values, neighbour) if below else (neighbour, values)
        k_lo = torch.searchsorted(levels, lo.reshape(b, -1))  # #{k : L_k < lo}
        k_hi = torch.searchsorted(levels, hi.reshape(b, -1))
        count = (k_hi - k_lo).clamp_min(0).reshape(-1)
        pixel = torch.repeat_interleave(torch.arange(count.numel(), device=values.device), count)
        offset = torch.arange(pixel.numel(), device=values.device) - (torch.cumsum(count, 0) - count)[pixel]
        k = k_lo.reshape(-1)[pixel] + offset
        return (((pixel // (h * w)) * t + k) * (h * w) + pixel % (h * w)).sort().values

    return events(left), events(right)


def _run_labels(values: Tensor, levels: Tensor, below: bool, first: Tensor, connectivity: int) -> Tensor:
    """Component of every run (the index of the component's last run), (R,) int64.

    Two runs on consecutive rows touch iff a pixel next to the start of one of them (above it:
    up-left and up for 8-connectivity, up for 4; below it: down-left for 8, down for 4) lies in
    the other; those pairs are the graph's edges. Components by parallel union-find
    (Shiloach-Vishkin style): every round, each tree's root is hooked under the largest root it
    has an edge to (roots only grow, so no cycle forms), then the trees are flattened by pointer
    jumping; a round leaves one tree per local maximum of the roots, so rounds are few (a handful
    for the masks of thresholded CAMs).
    """
    _, h, w = values.shape
    row, col = (first // w) % h, first % w
    probes = [(row > 0, -w)] if connectivity == 4 else [(row > 0, -w), ((row > 0) & (col > 0), -w - 1)]
    probes.append((row < h - 1, w) if connectivity == 4 else ((row < h - 1) & (col > 0), w - 1))
    src, dst = [], []
    for inside, offset in probes:
        run = inside.nonzero().squeeze(1)
        pixel = first[run] + offset
        hit = _on(values, levels, below, pixel)
        src.append(run[hit])
        dst.append(torch.searchsorted(first, pixel[hit], right=True) - 1)  # the run holding that pixel
    src, dst = torch.cat(src), torch.cat(dst)
    parent = torch.arange(first.numel(), device=values.device)  # parent[i] >= i: a forest
    while True:
        a, b = parent[src], parent[dst]  # roots (the trees are flat)
        if torch.equal(a, b):
            return parent
        parent = parent.scatter_reduce(0, torch.minimum(a, b), torch.maximum(a, b), "amax")  # hook roots
        while True:  # flatten: every run points at its root
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped


def _level_components(values: Tensor, levels: Tensor, below: bool, connectivity: int
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Components of every mask (b, k): inclusive boxes ``(col0, row0, col1, row1)`` (C, 4), the
    mask ``b*T + k`` of each (C,), and the runs' first pixels (R,) with their component (R,)."""
    _, h, w = values.shape
    first, last = _level_runs(values, levels, below)
    labels = _run_labels(values, levels, below, first, connectivity)
    runs = torch.arange(first.numel(), device=values.device)
    roots = (labels == runs).nonzero().squeeze(1)
    number = torch.full_like(runs, -1)
    number[roots] = torch.arange(roots.numel(), device=values.device)
    comp = number[labels]  # (R,) component number of each run
    row, c0, c1 = (first // w) % h, first % w, last % w
    big = torch.full((roots.numel(),), h + w, dtype=torch.long, device=values.device)
    small = torch.full((roots.numel(),), -1, dtype=torch.long, device=values.device)
    boxes = torch.stack([big.scatter_reduce(0, comp, c0, "amin"), big.scatter_reduce(0, comp, row, "amin"),
                         small.scatter_reduce(0, comp, c1, "amax"), small.scatter_reduce(0, comp, row, "amax")], dim=1)
    return boxes, first[roots] // (h * w), first, comp


def component_boxes(mask: Tensor, connectivity: int = 8) -> tuple[Tensor, Tensor]:
    """Bounding box of every connected component of every mask of a batch.

    Computed on the mask's device without a loop over masks or pixels, on the horizontal runs of
    mask pixels (see ``_run_labels``); :func:`scoremap_boxes` runs the same code on all the
    thresholds of a map at once.

    Args:
        mask: (N, H, W) bool.
        connectivity: 8 (pixels touching by a corner are connected) or 4.

    Returns:
        ``(boxes, index)``: (C, 4) int64 inclusive ``(col0, row0, col1, row1)`` of each component
        and (C,) int64 the mask it lies in, ordered by mask, then by the component's last pixel.

    Raises:
        ValueError: ``mask`` not a (N, H, W) bool tensor, or ``connectivity`` not 4 or 8.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if not isinstance(mask, Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a (N, H, W) bool tensor, got {got}")
    levels = torch.zeros(mask.shape[0], 1, dtype=torch.long, device=mask.device)  # on iff value > 0
    boxes, index, _, _ = _level_components(mask.long(), levels, False, connectivity)
    return boxes, index


def _contour_rects(values: Tensor, levels: Tensor) -> tuple[Tensor, Tensor]:
    """Bounding rectangles ``(x, y, x + w, y + h)`` of every contour ``cv2.findContours(mask,
    RETR_TREE, ...)`` returns for the masks ``values[b] > levels[b, k]``: ((R, 4) int64, (R,) mask
    index ``b*T + k``)."""
    b, h, w = values.shape
    t = levels.shape[1]
    # outer borders: 8-connected foreground components -> their bounding boxes
    fg, fg_mask, _, _ = _level_components(values, levels, False, 8)
    outer = torch.cat([fg[:, :2], fg[:, 2:] + 1], dim=1)
    # hole borders: 4-connected background components away from the frame. The maps are padded
    # with a value in every background, so the outside is the component of the corner pixel.
    padded = torch.full((b, h + 2, w + 2), _OUTSIDE_ABOVE, dtype=values.dtype, device=values.device)
    padded[:, 1:-1, 1:-1] = values
    holes, hole_mask, first, comp = _level_components(padded, levels, True, 4)
    corner = torch.arange(b * t, device=values.device) * ((h + 2) * (w + 2))  # each mask's (0, 0): a run start
    keep = torch.ones(holes.shape[0], dtype=torch.bool, device=values.device)
    keep[comp[torch.searchsorted(first, corner)]] = False
    holes, hole_mask = holes[keep], hole_mask[keep]
    inner = torch.cat([holes[:, :2] - 2, holes[:, 2:] + 1], dim=1)  # un-pad, grow by one pixel, then + 1
    return torch.cat([outer, inner]), torch.cat([fg_mask, hole_mask])


@dataclass
class ScoremapBoxes:
    """Boxes of thresholded score maps, flattened over maps and thresholds.

    Attributes:
        boxes: (R, 4) int64 ``(x0, y0, x1, y1)``.
        image: (R,) int64 index of the map each box comes from.
        threshold: (R,) int64 index of the CAM threshold.
    """

    boxes: Tensor
    image: Tensor
    threshold: Tensor


def scoremap_boxes(scoremaps: Tensor, thresholds: Tensor) -> ScoremapBoxes:
    """Every contour's box of every thresholded map: the official ``compute_bboxes_from_scoremaps``
    with ``multi_contour_eval=True``, for a batch of maps and all thresholds at once.

    Args:
        scoremaps: (B, H, W) normalised maps in [0, 1] (:func:`normalize_scoremaps`).
        thresholds: (T,) CAM thresholds τ in [0, 1) (:func:`cam_thresholds`).

    Returns:
        :class:`ScoremapBoxes`: boxes ``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` of the
        contours of ``uint8(255 s) > int(τ · max uint8(255 s))``, and ``(0, 0, 0, 0)`` for an
        (image, threshold) without contour.
    """
    b, h, w = scoremaps.shape
    t = thresholds.numel()
    u = quantize_scoremaps(scoremaps)  # (B, H, W)
    level = torch.floor(thresholds.to(u.device, torch.float64)[None] * u.amax(dim=(1, 2))[:, None]).long()  # (B, T)
    rects, which = _contour_rects(u, level)  # masks u > level, every threshold at once
    rects[:, 2].clamp_(max=w - 1)
    rects[:, 3].clamp_(max=h - 1)
    empty = torch.bincount(which, minlength=b * t) == 0
    missing = empty.nonzero().squeeze(1)
    rects = torch.cat([rects, rects.new_zeros(missing.numel(), 4)])
    which = torch.cat([which, missing])
    return ScoremapBoxes(rects, which // t, which % t)


def box_iou_inclusive(boxes: Tensor, gt: Tensor) -> Tensor:
    """IoU of ``(x0, y0, x1, y1)`` boxes counting pixels inclusively (the official
    ``calculate_multiple_iou``: every side + 1); a union <= 0 gives IoU 0. float64.

    Args:
        boxes: (..., 4) integer boxes.
        gt: (..., 4) integer boxes, broadcastable with ``boxes``.
    """
    boxes, gt = boxes.long(), gt.long()
    iw = (torch.minimum(boxes[..., 2], gt[..., 2]) - torch.maximum(boxes[..., 0], gt[..., 0]) + 1).clamp_min(0)
    ih = (torch.minimum(boxes[..., 3], gt[..., 3]) - torch.maximum(boxes[..., 1], gt[..., 1]) + 1).clamp_min(0)
    inter = iw * ih
    area_a = (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)
    area_b = (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
    union = area_a + area_b - inter
    iou = inter.double() / torch.where(union > 0, union, torch.ones_like(union)).double()
    return torch.where(union > 0, iou, torch.zeros_like(iou))


def _pad_gt_boxes(gt_boxes: Tensor | Sequence[Tensor], batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Ground-truth boxes as (B, G, 4) int64 plus a (B, G) validity mask."""
    if isinstance(gt_boxes, Tensor):
        boxes = gt_boxes if gt_boxes.dim() == 3 else gt_boxes.unsqueeze(1)
        if boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
            raise ValueError(f"gt_boxes must be (B, 4) or (B, G, 4) with B = {batch}, "
                             f"got shape {tuple(gt_boxes.shape)}")
        boxes = boxes.to(device=device, dtype=torch.long)
        return boxes, torch.ones(boxes.shape[:2], dtype=torch.bool, device=device)
    if not isinstance(gt_boxes, Sequence) or len(gt_boxes) != batch:
        length = len(gt_boxes) if isinstance(gt_boxes, Sequence) else "?"
        raise ValueError(f"gt_boxes must be a tensor or a sequence of {batch} (n_i, 4) tensors (one per CAM), "
                         f"got {type(gt_boxes).__name__} of length {length}")
    per = [torch.as_tensor(g, dtype=torch.long).reshape(-1, 4).to(device) for g in gt_boxes]
    if any(p.shape[0] == 0 for p in per):
        raise ValueError("every image needs at least one ground-truth box; got an image with none")
    g = max(p.shape[0] for p in per)
    boxes = torch.zeros(batch, g, 4, dtype=torch.long, device=device)
    valid = torch.zeros(batch, g, dtype=torch.bool, device=device)
    for i, p in enumerate(per):
        boxes[i, :p.shape[0]] = p
        valid[i, :p.shape[0]] = True
    return boxes, valid


class MaxBoxAccV2:
    """Streaming MaxBoxAccV2 (see the module docstring for every step): ``update`` per batch of
    CAMs, ``compute`` at the end. Counts live on the CAMs' device; nothing is read back until
    ``compute``.

    Args:
        cam_curve_interval: step of the CAM threshold sweep; 0.01 (the official evaluation.py
            default: τ = 0, 0.01, ..., 0.99). The official training scripts pass 0.001.
        iou_thresholds: IoU thresholds δ in percent; default (30, 50, 70).

    Example:
        >>> metric = MaxBoxAccV2()
        >>> for images, labels, boxes in loader:   # boxes in the images' pixel coordinates
        ...     cams = class_activation_maps(model, images, classes=labels, upsample=None).cams[:, 0]
        ...     metric.update(cams, boxes, image_size=images.shape[-2:])
        >>> metric.compute()["maxboxacc"]
    """

    def __init__(self, cam_curve_interval: float = CAM_CURVE_INTERVAL,
                 iou_thresholds: Sequence[int] = IOU_THRESHOLDS) -> None:
        self.thresholds = cam_thresholds(cam_curve_interval)
        iou = tuple(iou_thresholds)
        if not iou or any(isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= 100 for d in iou):
            raise ValueError(f"iou_thresholds must be integers in (0, 100] (percent), got {iou_thresholds!r}")
        self.iou_thresholds = iou
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        self.num_correct: Tensor | None = None  # (len(iou_thresholds), T) int64, on the CAMs' device
        self.count = 0

    def update(self, cams: Tensor, gt_boxes: Tensor | Sequence[Tensor],
               image_size: Sequence[int] | None = None) -> None:
        """Add a batch of CAMs (one per image: the ground-truth class's map) and their GT boxes.

        Args:
            cams: (B, h, w) CAMs at any resolution, un-normalised.
            gt_boxes: (B, 4), (B, G, 4), or a sequence of B (n_i, 4) integer tensors of
                ``(x0, y0, x1, y1)`` boxes in the pixel coordinates of the ``image_size`` image;
                an image is localised if a box matches any of its GT boxes.
            image_size: ``(H, W)`` the CAMs are resized to (bicubic, as OpenCV) before
                thresholding; default: the CAMs' own size (no resize).

        Raises:
            ValueError: ``cams`` not (B, h, w), or ``gt_boxes`` of another batch size or shape.
        """
        if not isinstance(cams, Tensor) or cams.dim() != 3 or not (cams.is_floating_point()):
            raise ValueError(f"cams must be a (B, h, w) float tensor, got "
                             f"{tuple(cams.shape) if isinstance(cams, Tensor) else type(cams).__name__}")
        b = cams.shape[0]
        size = tuple(int(s) for s in (cams.shape[1:] if image_size is None else image_size))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be (H, W) with H, W >= 1, got {image_size!r}")
        gt, valid = _pad_gt_boxes(gt_boxes, b, cams.device)
        t = self.thresholds.numel()
        if self.num_correct is None:
            self.num_correct = torch.zeros(len(self.iou_thresholds), t, dtype=torch.long, device=cams.device)
        step = max(1, _CHUNK_ELEMENTS // (t * size[0] * size[1]))
        for start in range(0, b, step):
            end = min(b, start + step)
            maps = normalize_scoremaps(resize_scoremaps(cams[start:end], size))
            found = scoremap_boxes(maps, self.thresholds)
            iou = box_iou_inclusive(found.boxes[:, None], gt[start:end][found.image])  # (R, G)
            iou = torch.where(valid[start:end][found.image], iou, torch.full_like(iou, -1.0)).amax(dim=1)
            best = torch.full(((end - start) * t,), -1.0, dtype=torch.float64, device=cams.device)
            best = best.scatter_reduce(0, found.image * t + found.threshold, iou, "amax").view(end - start, t)
            for k, delta in enumerate(self.iou_thresholds):
                self.num_correct[k] += (best >= delta / 100).sum(dim=0)
        self.count += b

    def curves(self) -> Tensor:
        """BoxAcc(τ, δ) in percent, (len(iou_thresholds), T) float64 on the host."""
        if self.count == 0 or self.num_correct is None:
            raise ValueError("MaxBoxAccV2.compute/curves: no image was added (call update first)")
        return self.num_correct.double().cpu() * 100.0 / float(self.count)

    def compute(self) -> dict[str, float]:
        """``{"maxboxacc": mean over δ, "maxboxacc@δ": ..., "best_threshold@δ": τ*, "n": images}``,
        accuracies in percent; τ* is the first threshold reaching the maximum."""
        acc = self.curves()
        best = acc.amax(dim=1)
        out: dict[str, float] = {"maxboxacc": sum(best.tolist()) / len(self.iou_thresholds)}
        for k, delta in enumerate(self.iou_thresholds):
            first = int((acc[k] == best[k]).nonzero()[0])
            out[f"maxboxacc@{delta}"] = float(best[k])
            out[f"best_threshold@{delta}"] = round(float(self.thresholds[first]), 10)
        out["n"] = self.count
        return out


def localization_accuracy(model: nn.Module, data: Data, boxes: Tensor | Sequence[Tensor],
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          device: torch.device | str | None = None, *, batch_size: int | None = None,
                          cam_curve_interval: float = CAM_CURVE_INTERVAL,
                          iou_thresholds: Sequence[int] = IOU_THRESHOLDS) -> dict[str, Any]:
    """MaxBoxAccV2 of ``model`` over ``data`` in the GT-known setting: each image's map is the CAM
    (or Grad-CAM, :func:`~mixlab.evaluation.cam.class_activation_maps` with ``method="auto"``) of
    its *true* class at the feature resolution, resized to the image as the benchmark does
    (:class:`MaxBoxAccV2`). The images must be the whole images the boxes were drawn on (the
    benchmark's test transform is a plain resize, never a crop).

    Args:
        model: a classifier with ``forward_features``/``forward_head`` (every mixlab model).
        data: ``(images, labels)`` batches in the order of ``boxes`` (an ``eval_loader``), or one
            pair of tensors; ``uint8`` images are normalised on the device with ``mean``/``std``,
            float images are taken as normalised.
        boxes: the ground-truth boxes of every image, in order: (N, 4), (N, G, 4) or a sequence of
            N (n_i, 4) tensors of ``(x0, y0, x1, y1)`` pixels (the dataset's ``boxes``).
        mean, std: normalisation of ``uint8`` images.
        device: where to run (default: the model's).
        batch_size: slices a pair of tensors (default 256).
        cam_curve_interval, iou_thresholds: as :class:`MaxBoxAccV2`.

    Returns:
        :meth:`MaxBoxAccV2.compute`'s dict (``maxboxacc``, ``maxboxacc@δ``, ``best_threshold@δ``,
        ``n``; accuracies in %) plus ``cam`` (``"cam"`` or ``"gradcam"``), ``layer`` and
        ``cam_curve_interval``.

    Raises:
        ValueError: ``data`` has more or fewer images than ``boxes``, ``uint8`` images without
            ``mean``/``std``, or as :class:`MaxBoxAccV2`.
    """
    metric = MaxBoxAccV2(cam_curve_interval, iou_thresholds)  # arguments checked before any forward pass
    device = model_device(model, device)
    total = len(boxes)
    seen, used = 0, None
    for images, labels in iter_batches(data, batch_size):
        b = images.shape[0]
        if seen + b > total:
            raise ValueError(f"data holds more images than boxes has entries ({total}): boxes must give every "
                             f"image's ground-truth boxes, in the data's order")
        images = images.to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            if mean is None or std is None:
                raise ValueError("uint8 images need mean and std to be normalised (pass mean=, std=)")
            from mixlab.data import normalize_on_device

            images = normalize_on_device(images, mean, std)
        out = class_activation_maps(model, images, classes=labels.to(device), upsample=None)
        metric.update(out.cams[:, 0], boxes[seen:seen + b], image_size=images.shape[-2:])
        seen, used = seen + b, (out.method, out.layer)
    if seen != total:
        raise ValueError(f"data holds {seen} images but boxes has {total} entries: boxes must give every image's "
                         f"ground-truth boxes, in the data's order")
    return {**metric.compute(), "cam": used[0], "layer": used[1], "cam_curve_interval": cam_curve_interval}
