"""Copy-Paste (Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data Augmentation Method for
Instance Segmentation"): instances of a partner image are pasted onto an image by their masks.

Per output i (built on image i and its partner ``index[i]``, as the other detection mixers):

1. A random subset of the partner's instances is chosen: each instance independently with
   probability ``instance_p`` (0.5 by default: every subset equally likely, the paper's "random
   subset").
2. Optional scale jitter of the partner (the paper applies large scale jittering to both images;
   give the image's own to a per-sample v2 transform): with ``scale=(lo, hi)`` the partner is
   resized by s ~ U(lo, hi) to ``round(s·H) × round(s·W)`` (bilinear; masks by nearest neighbour)
   and placed at a uniform integer offset, cropped by the canvas or padded (``(0.1, 2.0)`` is the
   paper's range). Its boxes follow: ``x' = ox + x·round(s·W)/W``, clipped to the canvas, and the
   pasted instances cut by the canvas follow the occlusion rule below.
3. The image's pixels under the union of the pasted masks become the partner's (composed as is:
   the paper found Gaussian blending of the edges unnecessary).
4. The image's own instances lose the pasted pixels: masks updated, boxes of the instances that
   lost pixels recomputed from their visible pixels, instances hidden above ``max_occlusion``
   dropped (default 1.0: only fully occluded ones, the paper's rule).
   (:func:`mixlab.mixers.detection.hide_instances`.)

Every target needs ``"masks"``. The result's ``mask`` (B, 1, H, W) is 1 where a pixel is the
image's own, ``lam`` its mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_probability, check_range
from mixlab.core.random import rand
from mixlab.mixers.detection import (
    DetectionBatch,
    DetectionMixer,
    concat_instances,
    crop_instances,
    hide_instances,
    mask_bytes,
    resize_image,
    select_instances,
    transform_instances,
)

__all__ = ["CopyPaste", "copy_paste"]


def copy_paste(image: Tensor, target: dict, partner: Tensor, partner_target: dict, selected: Tensor,
               scale: float = 1.0, offset: tuple[int, int] = (0, 0), max_occlusion: float = 1.0, min_size: float = 1.0
               ) -> tuple[Tensor, dict, Tensor]:
    """Functional Copy-Paste of one pair (module docstring), plain tensors, XYXY boxes.

    Args:
        image, partner: (C, H, W) images of one size.
        target, partner_target: their targets, with ``"masks"`` (N, H, W).
        selected: (N_partner,) bool, the partner's instances to paste.
        scale: the partner's resize factor s (its pasted size is ``round(s·H) × round(s·W)``).
        offset: ``(ox, oy)`` canvas position of the resized partner's top-left corner.
        max_occlusion, min_size: :func:`~mixlab.mixers.detection.keep_visible`'s filter.

    Returns:
        ``(image, target, alpha)``: the composed image, the own instances (occlusion-updated) then the
        pasted ones, and the (H, W) bool mask of pasted pixels.
    """
    c, h, w = image.shape
    th, tw = max(1, round(scale * h)), max(1, round(scale * w))
    ox, oy = offset
    window = (max(ox, 0), max(oy, 0), min(ox + tw, w), min(oy + th, h))
    chosen = select_instances(partner_target, selected)
    placed = transform_instances(chosen, (tw / w, th / h), (ox, oy), (h, w), (ox, oy, ox + tw, oy + th))
    pasted = crop_instances(placed, window, max_occlusion, min_size)
    alpha = mask_bytes(pasted["masks"]).amax(0) > 0 if len(pasted["boxes"]) else \
        torch.zeros(h, w, dtype=torch.bool, device=image.device)
    canvas = torch.zeros_like(image)
    x1, y1, x2, y2 = window
    if x2 > x1 and y2 > y1:
        canvas[:, y1:y2, x1:x2] = resize_image(partner, (th, tw), "bilinear")[:, y1 - oy:y2 - oy, x1 - ox:x2 - ox]
    out = torch.where(alpha, canvas, image)
    own = hide_instances(target, None, max_occlusion, min_size, occluder=alpha)
    return out, concat_instances(own, pasted), alpha


class CopyPaste(DetectionMixer):
    """Copy-Paste as a batch operation (module docstring).

    Args:
        instance_p: probability that each partner instance is pasted (default 0.5).
        scale: ``None`` (default: the partner as it is) or ``(lo, hi)``, the range of the
            partner's scale jitter (the paper's large scale jittering is (0.1, 2.0)).
        max_occlusion: own instances hidden above this fraction (of their mask's pixels) are
            dropped, and pasted ones cut by the canvas above it (default 1.0: only fully hidden).
        **kwargs: ``p``, ``pairing``, ``min_size``, ``generator`` (:class:`~mixlab.mixers.detection.DetectionMixer`).

    Raises (on call):
        ValueError: a target without ``"masks"``, and the checks of the other detection mixers.
    """

    name = "copypaste"
    need_masks = True

    def __init__(self, instance_p: float = 0.5, scale: tuple[float, float] | None = None,
                 max_occlusion: float = 1.0, **kwargs) -> None:
        super().__init__(max_occlusion=max_occlusion, **kwargs)
        self.instance_p = check_probability(instance_p, "instance_p")
        if scale is not None:
            scale = check_range(scale, "scale", 0.0, float("inf"))
            if scale[0] <= 0.0:
                raise ValueError(f"scale must satisfy 0 < min <= max, got {tuple(scale)}")
        self.scale = scale

    def make_params(self, batch: DetectionBatch, index: Tensor, mixed: Tensor) -> dict:
        b, h, w = batch.batch_size, *batch.images.shape[-2:]
        counts = [len(batch.targets[j]["boxes"]) for j in index.tolist()]
        picks = (rand((sum(counts),), self.generator) < self.instance_p).split(counts)
        s = torch.ones(b)
        if self.scale is not None:
            s = self.scale[0] + (self.scale[1] - self.scale[0]) * rand((b,), self.generator).double()
        u = rand((b, 2), self.generator).double().tolist()
        params = {"selected": [sel & m for sel, m in zip(picks, mixed.tolist())], "scale": s.tolist(), "offset": []}
        for i in range(b):
            th, tw = max(1, round(params["scale"][i] * h)), max(1, round(params["scale"][i] * w))
            lo_x, hi_x = min(0, w - tw), max(0, w - tw)
            lo_y, hi_y = min(0, h - th), max(0, h - th)
            params["offset"].append((lo_x + min(int(u[i][0] * (hi_x - lo_x + 1)), hi_x - lo_x),
                                     lo_y + min(int(u[i][1] * (hi_y - lo_y + 1)), hi_y - lo_y)))
        return params

    def mix(self, batch: DetectionBatch, index: Tensor, mixed: Tensor, params: dict):
        images, targets = batch.images, batch.targets
        rows, alphas, out_targets = [], [], []
        for i, j in enumerate(index.tolist()):  # instances are ragged: one pair at a time
            image, target, alpha = copy_paste(images[i], targets[i], images[j], targets[j],
                                              params["selected"][i].to(images.device), params["scale"][i],
                                              params["offset"][i], self.max_occlusion, self.min_size)
            rows.append(image)
            alphas.append(alpha)
            out_targets.append(target)
        keep = ~torch.stack(alphas).unsqueeze(1)  # (B, 1, H, W): 1 where the pixel is the image's own
        mask = keep.to(images.dtype if images.is_floating_point() else torch.float32)
        return torch.stack(rows), mask.mean(dim=(1, 2, 3)).float(), out_targets, mask

    def _hyper_repr(self) -> str:
        return f"instance_p={self.instance_p}, scale={self.scale}"
