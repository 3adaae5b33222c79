"""Metrics of segmentation and detection models: mIoU from a confusion matrix, COCO mAP.

    cm = confusion_matrix(logits.argmax(1), masks, num_classes=11, ignore_index=255)
    scores = segmentation_scores(cm)              # {"miou": %, "pixel_acc": %, "iou": [% per class]}
    coco_map(predictions, targets)                # {"map": AP@[.5:.95] %, "map50": AP@.5 %}

* **mIoU** (the PASCAL VOC / Cityscapes measure): over every pixel of the test set whose label is
  not ``ignore_index``, the (K, K) confusion matrix C (rows: true class, columns: predicted);
  ``IoU_k = C_kk / (Σ_j C_kj + Σ_i C_ik - C_kk)``, and mIoU the mean over the classes that occur
  in the labels or the predictions (a class absent from both has no IoU, as in mmsegmentation's
  ``nanmean``). Pixel accuracy ``Σ_k C_kk / Σ C``. Confusion matrices of batches (or of
  data-parallel processes) add up, so the measure is exact over the whole set.
* **mAP**: COCO's box AP averaged over IoU thresholds 0.50:0.05:0.95 (and AP at 0.50), computed by
  pycocotools' ``COCOeval`` (the COCO team's reference implementation, ``mixlab[detection]``) on
  ground truth and detections held in memory: no JSON files. 100 detections per image, COCO's
  area ranges.
"""

from __future__ import annotations

import contextlib
import io
import math
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["confusion_matrix", "segmentation_scores", "coco_map", "evaluate_segmentation", "evaluate_detection"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """(K, K) int64 counts: entry (i, j) is the number of pixels of true class i predicted as j;
    pixels labelled ``ignore_index`` are left out. On the inputs' device, no host sync.

    Args:
        pred: integer predictions (any shape), in [0, K).
        target: integer labels of the same shape, in [0, K) or ``ignore_index``.

    Raises:
        ValueError: shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    index = torch.where(valid, target * num_classes + pred, num_classes * num_classes)  # invalid: an extra bin
    return torch.bincount(index, minlength=num_classes * num_classes + 1)[:-1].view(num_classes, num_classes)


def segmentation_scores(cm: Tensor) -> dict[str, Any]:
    """``{"miou", "pixel_acc"}`` in % and ``"iou"`` (% per class, NaN for a class absent from the
    labels and the predictions) from a confusion matrix (module docstring)."""
    cm = cm.double().cpu()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    present = ~iou.isnan()
    total = cm.sum()
    return {"miou": 100.0 * float(iou[present].mean()) if present.any() else math.nan,
            "pixel_acc": 100.0 * float(tp.sum() / total) if total > 0 else math.nan,
            "iou": [100.0 * v for v in iou.tolist()]}


def _xywh(boxes: Tensor) -> list[list[float]]:
    b = boxes.as_subclass(Tensor).detach().float().cpu()
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


def coco_map(predictions: Sequence[dict], targets: Sequence[dict]) -> dict[str, float]:
    """COCO box mAP (module docstring) of ``predictions`` against ``targets``, one dict per image.

    Args:
        predictions: ``{"boxes": (N, 4) XYXY, "scores": (N,), "labels": (N,)}`` per image (a
            torchvision detector's eval output).
        targets: ``{"boxes": (M, 4) XYXY, "labels": (M,)}`` per image (optionally ``"iscrowd"``).

    Returns:
        ``{"map": AP@[.50:.95], "map50": AP@.50}`` in %; 0 when there is ground truth and no
        detection, NaN when there is no ground truth at all.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets must have one entry per image, got {len(predictions)} and "
                         f"{len(targets)}")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations, detections, categories = [], [], set()
    for i, (p, t) in enumerate(zip(predictions, targets)):
        crowd = t.get("iscrowd", torch.zeros(len(t["labels"]), dtype=torch.int64)).tolist()
        for box, label, c in zip(_xywh(t["boxes"]), t["labels"].tolist(), crowd):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label), "bbox": box,
                                "area": box[2] * box[3], "iscrowd": int(c)})
            categories.add(int(label))
        for box, label, score in zip(_xywh(p["boxes"]), p["labels"].tolist(), p["scores"].tolist()):
            detections.append({"image_id": i, "category_id": int(label), "bbox": box, "score": float(score)})
            categories.add(int(label))
    if not annotations:
        return {"map": math.nan, "map50": math.nan}
    if not detections:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(targets))], "annotations": annotations,
                      "categories": [{"id": c} for c in sorted(categories)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map": 100.0 * max(0.0, float(evaluator.stats[0])), "map50": 100.0 * max(0.0, float(evaluator.stats[1]))}


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable, device: torch.device, num_classes: int,
                          ignore_index: int = 255, preprocess: Callable[[Tensor], Tensor] | None = None,
                          autocast: Callable[[], Any] = nullcontext,
                          all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """mIoU, pixel accuracy (%) and per-class IoU of ``model`` over ``(images, masks)`` batches;
    ``all_reduce`` adds the confusion matrices of data-parallel processes. ``n``: images."""
    was = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    n = 0
    try:
        for images, masks in loader:
            images = images.to(device, non_blocking=True)
            images = preprocess(images) if preprocess is not None else images
            with autocast():
                logits = model(images)
            cm += confusion_matrix(logits.argmax(1), masks.to(device, non_blocking=True), num_classes, ignore_index)
            n += images.shape[0]
    finally:
        model.train(was)
    if all_reduce is not None:
        counts = all_reduce(torch.cat([cm.view(-1), torch.tensor([n], device=device)]))
        cm, n = counts[:-1].view(num_classes, num_classes), int(counts[-1])
    return {**segmentation_scores(cm), "n": n}


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader: Iterable, device: torch.device,
                       preprocess: Callable[[Tensor], Tensor] | None = None, autocast: Callable[[], Any] = nullcontext,
                       gather: Callable[[list], list] | None = None) -> dict[str, Any]:
    """COCO mAP / AP50 (%) of a torchvision-style detector over ``(images, targets)`` batches;
    ``gather`` concatenates the per-image lists of data-parallel processes. ``n``: images."""
    was = model.training
    model.eval()
    predictions, targets = [], []
    try:
        for images, batch_targets in loader:
            images = images.to(device, non_blocking=True) if isinstance(images, Tensor) else \
                [im.to(device, non_blocking=True) for im in images]
            images = preprocess(images) if preprocess is not None else images
            with autocast():
                out = model(list(images))
            predictions += [{k: v.detach().cpu() for k, v in o.items()} for o in out]
            targets += [{k: t[k].as_subclass(Tensor).cpu() for k in ("boxes", "labels", "iscrowd") if k in t}
                        for t in batch_targets]
    finally:
        model.train(was)
    if gather is not None:
        predictions, targets = gather(predictions), gather(targets)
    return {**coco_map(predictions, targets), "n": len(targets)}
