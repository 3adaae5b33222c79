"""MaxBoxAccV2 throughput (``mixlab.evaluation.wsol``) against the official per-image OpenCV loop,
measured in one run.

For each CAM geometry (feature map -> image size) the same random CAMs and boxes go through
``MaxBoxAccV2.update`` (torch, batched, all 100 thresholds at once) and through the official
procedure (``cv2.resize`` INTER_CUBIC, min-max, then per threshold ``cv2.threshold`` +
``cv2.findContours(RETR_TREE)`` + ``boundingRect`` + the IoU, one image at a time), blocks
alternating, medians reported; the two must agree exactly. Random smooth CAMs have more
components than a trained model's, so both sides are slower than on real maps.

    python benchmarks/wsol_speed.py                  # CPU: synthetic (4 -> 32) and CUB (7 / 28 -> 224) sizes
    python benchmarks/wsol_speed.py --device cuda    # the torch side on the GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mixlab.evaluation.wsol import MaxBoxAccV2, box_iou_inclusive


def official(cams: np.ndarray, gts: np.ndarray, size: int, cv2) -> list[float]:
    """The clovaai/wsolevaluation procedure, image by image, with OpenCV."""
    thresholds = np.arange(0, 1, 0.01)
    correct = np.zeros((3, len(thresholds)))
    for cam, gt in zip(cams, gts):
        cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)
        cam = np.zeros_like(cam) if cam.min() == cam.max() else (cam - cam.min()) / (cam - cam.min()).max()
        u = np.expand_dims((cam * 255).astype(np.uint8), 2)
        for k, tau in enumerate(thresholds):
            _, binary = cv2.threshold(u, int(tau * np.max(u)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            boxes = [(x, y, min(x + w, size - 1), min(y + h, size - 1))
                     for x, y, w, h in (cv2.boundingRect(c) for c in contours)] or [(0, 0, 0, 0)]
            best = box_iou_inclusive(torch.tensor(boxes), torch.tensor(gt)[None]).max().item()
            for d, delta in enumerate((30, 50, 70)):
                correct[d, k] += best >= delta / 100
    return (correct * 100.0 / len(cams)).max(axis=1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cv2
        cv2.setNumThreads(args.threads)
    except ImportError:
        cv2 = None
    print(f"device {args.device}, {args.threads} thread(s); ms per image, median of {args.repeats}")
    print(f"{'CAM -> image':>14} {'images':>6} {'torch':>8} {'opencv':>8} {'ratio':>6}  agree")
    for feat, size, n in ((4, 32, 256), (7, 224, 8), (28, 224, 4)):
        rng = np.random.default_rng(size + feat)
        cams = rng.standard_normal((n, feat, feat))
        xy = rng.integers(0, size // 2, (n, 2))
        gts = np.concatenate([xy, xy + rng.integers(size // 8, size // 2, (n, 2))], axis=1)
        times: dict[str, list[float]] = {"torch": [], "opencv": []}
        for _ in range(args.repeats):
            metric = MaxBoxAccV2()
            t = time.perf_counter()
            metric.update(torch.from_numpy(cams).to(args.device), torch.from_numpy(gts), image_size=(size, size))
            out = metric.compute()
            times["torch"].append((time.perf_counter() - t) / n * 1e3)
            if cv2 is not None:
                t = time.perf_counter()
                expected = official(cams, gts, size, cv2)
                times["opencv"].append((time.perf_counter() - t) / n * 1e3)
        ours = statistics.median(times["torch"])
        if cv2 is None:
            print(f"{feat:>5} -> {size:<5} {n:>6} {ours:>8.1f} {'-':>8} {'-':>6}  (no cv2)")
            continue
        ref = statistics.median(times["opencv"])
        agree = [out["maxboxacc@30"], out["maxboxacc@50"], out["maxboxacc@70"]] == expected
        print(f"{feat:>5} -> {size:<5} {n:>6} {ours:>8.1f} {ref:>8.1f} {ref / ours:>6.2f}  {agree}")


if __name__ == "__main__":
    main()
