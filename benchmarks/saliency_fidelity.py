"""How far is mixlab's saliency from the SaliencyMix authors' scripts? Measured on CIFAR-10.

    python benchmarks/saliency_fidelity.py [--images 2000] [--zip ../shared/data/cifar10-jpeg.zip]

Needs ``opencv-contrib-python-headless`` (the ``test`` extra). For each test image it computes:

* the authors' map: ``cv2.saliency.StaticSaliencyFineGrained`` of the image as their scripts pass it,
  the normalised float32 RGB array (CIFAR mean/std of ``SaliencyMix_CIFAR/saliencymix.py``);
* OpenCV's map of the 8-bit image (BGR), and :func:`mixlab.core.fine_grained_saliency` of the same
  uint8 RGB tensor (bit-exactness is counted);
* :func:`mixlab.core.spectral_residual_saliency`;

and prints how often the peaks (np.argmax's first maximum) coincide, their mean distance, and the
time of the batched torch detector against OpenCV's per-image loop (CPU, one run).
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixlab.core import fine_grained_saliency, spectral_residual_saliency

CIFAR_MEAN = np.array([125.3, 123.0, 113.9]) / 255.0  # SaliencyMix_CIFAR/saliencymix.py
CIFAR_STD = np.array([63.0, 62.1, 66.7]) / 255.0


def load(zip_path: Path, n: int) -> torch.Tensor:
    """(n, 3, 32, 32) uint8 RGB test images, evenly spread over the sorted file names."""
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(x for x in z.namelist() if x.startswith("test/") and x.endswith(".jpg"))
        names = names[:: max(1, len(names) // n)][:n]
        arrays = [np.array(Image.open(io.BytesIO(z.read(x))).convert("RGB")) for x in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def peaks(maps: np.ndarray) -> np.ndarray:
    """(n, 2) (row, col) of each map's first maximum in row-major order."""
    flat = maps.reshape(len(maps), -1).argmax(1)
    return np.stack(np.divmod(flat, maps.shape[-1]), 1)


def report(name: str, a: np.ndarray, b: np.ndarray) -> None:
    d = np.abs(a - b).max(1)  # Chebyshev distance in pixels
    print(f"  {name:44s} same pixel {np.mean(d == 0):6.1%}   within 2 px {np.mean(d <= 2):6.1%}   "
          f"mean distance {d.mean():5.2f} px")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--zip", type=Path, default=Path("../shared/data/cifar10-jpeg.zip"))
    args = p.parse_args()
    import cv2

    detector = cv2.saliency.StaticSaliencyFineGrained_create()
    imgs = load(args.zip, args.images)
    n = len(imgs)
    rgb = imgs.permute(0, 2, 3, 1).numpy()
    authors = np.stack([detector.computeSaliency(((x / 255.0 - CIFAR_MEAN) / CIFAR_STD).astype(np.float32))[1]
                        for x in rgb])
    t0 = time.perf_counter()
    opencv_u8 = np.stack([detector.computeSaliency(np.ascontiguousarray(x[..., ::-1]))[1] for x in rgb])
    t_cv = time.perf_counter() - t0
    fine_grained_saliency(imgs[:8])  # warm-up
    t0 = time.perf_counter()
    ours = fine_grained_saliency(imgs).numpy()
    t_torch = time.perf_counter() - t0
    spectral = spectral_residual_saliency(imgs).numpy()
    exact = sum(np.array_equal(a, b) for a, b in zip(ours, opencv_u8))
    print(f"CIFAR-10 test images: {n}, 32x32; torch threads {torch.get_num_threads()}")
    print(f"fine-grained, torch vs OpenCV on the 8-bit image: {exact}/{n} maps bit-identical")
    print("peaks (first maximum, row-major):")
    p_auth, p_ours, p_sr = peaks(authors), peaks(ours), peaks(spectral)
    report("authors' (float input) vs fine-grained 8-bit", p_auth, p_ours)
    report("authors' (float input) vs spectral residual", p_auth, p_sr)
    report("fine-grained 8-bit vs spectral residual", p_ours, p_sr)
    for name, pk, maps in (("authors'", p_auth, authors), ("fine-grained 8-bit", p_ours, ours),
                           ("spectral residual", p_sr, spectral)):
        ties = (maps.reshape(n, -1) == maps.reshape(n, -1).max(1, keepdims=True)).sum(1)
        print(f"  {name:20s} mean peak row {pk[:, 0].mean():5.2f}, col {pk[:, 1].mean():5.2f} (centre 15.5); "
              f"pixels at the maximum: median {np.median(ties):.0f}")
    rng = np.random.default_rng(0)
    report("authors' vs a uniformly random pixel (chance)", p_auth, rng.integers(0, 32, (n, 2)))
    print(f"time for {n} images: OpenCV loop {t_cv:.3f} s, torch batched {t_torch:.3f} s "
          f"(ratio OpenCV / torch {t_cv / t_torch:.2f})")


if __name__ == "__main__":
    main()
