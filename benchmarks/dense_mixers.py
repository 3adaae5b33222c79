"""Cost of mixing dense targets against the image-only mixers, in one interleaved run.

    python benchmarks/dense_mixers.py [--size 512] [--batch 8] [--boxes 10] [--repeats 15] [--threads 2] [--device cpu]

For a batch of B images of size² (float32), prints the median time of each mixer with class labels
(B,) (the image-only cost), the same mixer with segmentation label maps (B, H, W) (uint8, as VOC and
the synthetic shapes give them, and int64; 4 rows of ignored pixels each), and the detection
mixers on torchvision targets (``--boxes`` boxes per image, with and without (N, H, W) instance
masks), each with its ratio to the image-only mixer of its family measured in the same run
(Mosaic and Copy-Paste against CutMix, the cheapest pixel paste). Rows are timed round-robin
(:func:`mixers.interleaved_medians`) so load drift affects them alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from torchvision import tv_tensors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixers import interleaved_medians  # noqa: E402 - the timing loop every mixer benchmark shares

import mixlab  # noqa: E402
from mixlab.mixers import CopyPaste, DetectionCutMix, DetectionMixup, DetectionResizeMix, Mosaic  # noqa: E402


def detection_targets(b: int, n: int, size: int, masks: bool, g: torch.Generator) -> list[dict]:
    """B targets of n random boxes each (and their box-shaped instance masks)."""
    out = []
    for _ in range(b):
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = (torch.rand(n, 2, generator=g) * 0.3 + 0.02) * size
        boxes = torch.cat([xy, xy + wh], 1).round().clamp(0, size)
        t = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(size, size)),
             "labels": torch.randint(1, 20, (n,), generator=g)}
        if masks:
            m = torch.zeros(n, size, size, dtype=torch.bool)
            for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                m[k, y1:y2, x1:x2] = True
            t["masks"] = tv_tensors.Mask(m)
        out.append(t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, s, k = args.batch, args.size, 21
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, s, s, generator=g).to(args.device)
    labels = torch.randint(0, k, (b,), generator=g).to(args.device)
    maps = torch.randint(0, k, (b, s, s), generator=g).to(args.device)  # int64; VOC and the shapes give uint8
    maps[:, :4] = 255  # ignored pixels, as VOC's outlines
    maps8 = maps.to(torch.uint8)
    boxes_only = detection_targets(b, args.boxes, s, False, g)
    with_masks = detection_targets(b, args.boxes, s, True, g)
    gen = torch.Generator().manual_seed(1)

    def mk(cls, **kw):
        return cls(k, generator=gen, **kw)

    families: list[tuple[str, Callable[[], object], list[tuple[str, Callable[[], object]]]]] = [
        ("Mixup (elem)", lambda m=mk(mixlab.Mixup, granularity="elem"): m(x, labels),
         [("label maps uint8", lambda m=mk(mixlab.Mixup, granularity="elem"): m(x, maps8)),
          ("label maps int64", lambda m=mk(mixlab.Mixup, granularity="elem"): m(x, maps))]),
        ("CutMix (elem)", lambda m=mk(mixlab.CutMix, granularity="elem"): m(x, labels),
         [("label maps uint8", lambda m=mk(mixlab.CutMix, granularity="elem"): m(x, maps8)),
          ("label maps int64", lambda m=mk(mixlab.CutMix, granularity="elem"): m(x, maps)),
          ("DetectionCutMix, boxes", lambda m=DetectionCutMix(generator=gen): m(x, boxes_only)),
          ("DetectionCutMix, boxes + masks", lambda m=DetectionCutMix(generator=gen): m(x, with_masks)),
          ("Mosaic, boxes", lambda m=Mosaic(generator=gen): m(x, boxes_only)),
          ("Mosaic, boxes + masks", lambda m=Mosaic(generator=gen): m(x, with_masks)),
          ("CopyPaste, boxes + masks", lambda m=CopyPaste(generator=gen): m(x, with_masks))]),
        ("ResizeMix (elem)", lambda m=mk(mixlab.ResizeMix, granularity="elem"): m(x, labels),
         [("label maps uint8", lambda m=mk(mixlab.ResizeMix, granularity="elem"): m(x, maps8)),
          ("DetectionResizeMix, boxes", lambda m=DetectionResizeMix(generator=gen, interpolation="nearest"):
           m(x, boxes_only)),
          ("DetectionResizeMix, boxes + masks", lambda m=DetectionResizeMix(generator=gen, interpolation="nearest"):
           m(x, with_masks))]),
        ("FMix", lambda m=mk(mixlab.FMix): m(x, labels), [("label maps uint8", lambda m=mk(mixlab.FMix): m(x, maps8))]),
    ]
    fns = {"clone (floor)": lambda: x.clone()}
    for name, base, rows in families:
        fns[name] = base
        for row, fn in rows:
            fns[f"{name} | {row}"] = fn
    fns["DetectionMixup, boxes"] = lambda m=DetectionMixup(generator=gen): m(x, boxes_only)
    med = interleaved_medians(fns, args.repeats)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, batch {b}x3x{s}x{s}, "
          f"{args.boxes} boxes per image, median of {args.repeats}\n")
    print("| mixer | targets | median ms | × image-only |\n|---|---|---:|---:|")
    print(f"| clone (floor) | | {med['clone (floor)']:.2f} | |")
    for name, _, rows in families:
        print(f"| {name} | class labels (B,) | {med[name]:.2f} | 1.00 |")
        for row, _ in rows:
            key = f"{name} | {row}"
            print(f"| {name} | {row} | {med[key]:.2f} | {med[key] / med[name]:.2f} |")
    ratio = med["DetectionMixup, boxes"] / med["Mixup (elem)"]
    print(f"| Mixup (elem) | DetectionMixup, boxes | {med['DetectionMixup, boxes']:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
