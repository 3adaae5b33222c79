"""Cost of CropMix against torchvision's RandomResizedCrop, in one run.

Three measurements, all on 32x32 images (CIFAR size):

1. per image: the median µs of one call of ``mixlab.CropMix(32, num_crops=N)`` for N in {2, 3, 4}
   and (2, 3, 4), and of ``v2.RandomResizedCrop(32, scale=(0.01, 1))``, on a uint8 CHW tensor,
   one thread (as in a DataLoader worker); ratio to RRC;
2. training images/s of ``resnet_small`` (batch 128, AdamW, vanilla cross-entropy) on the synthetic
   set, the loader at 2 workers (the engine's path: ``SeededItems`` + uint8 batches normalised on
   the device), CropMix vs RRC + flip. Blocks of steps alternate between the two loaders (a fresh
   iterator per block, 2 warm-up steps discarded, so only one loader's workers run at a time) and
   the median block is reported, so load from other processes affects both alike. Target:
   CropMix >= 0.9x RRC;
3. the batched version: ``cropmix_batch`` on a (128, 3, 32, 32) batch vs 128 per-image calls.

    python benchmarks/cropmix.py                      # defaults: 8 blocks of 6 steps
    python benchmarks/cropmix.py --blocks 10 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
from torchvision.transforms import v2

from mixlab import registry
from mixlab.data import SyntheticShapes, seed_worker
from mixlab.engine.config import OptimConfig
from mixlab.engine.data import EpochSampler, SeededItems, normalizer, to_device
from mixlab.engine.optim import build_optimizer, train_step
from mixlab.transforms import CropMix, CropMixBatch


def median_us(fn: Callable[[], object], calls: int = 200, repeats: int = 15) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` calls, in µs."""
    for _ in range(calls):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) * 1e6


def per_image() -> dict[str, float]:
    torch.set_num_threads(1)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(32, scale=(0.01, 1.0))
    rows = {"RRC (0.01, 1)": median_us(lambda: rrc(image))}
    for n in (2, 3, 4, (2, 3, 4)):
        t = CropMix(32, num_crops=n)
        rows[f"CropMix N={n}"] = median_us(lambda t=t: t(image))
    t = CropMix(32, mix="cutmix")
    rows["CropMix N=2 cutmix"] = median_us(lambda: t(image))
    return rows


def batched(device: torch.device) -> dict[str, float]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g)
    x = (u8.float() / 255).to(device)
    rows = {}
    for n in (2, (2, 3, 4)):
        bt = CropMixBatch(num_crops=n, generator=g)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        rows[f"cropmix_batch N={n}, 128x3x32x32 float, {device}"] = median_us(lambda bt=bt: (bt(x), sync()), calls=5)
        rows[f"cropmix_batch N={n}, 128x3x32x32 uint8, cpu"] = median_us(lambda bt=bt: bt(u8), calls=5)
        t = CropMix(32, num_crops=n)
        rows[f"128 per-image CropMix N={n} calls"] = median_us(lambda t=t: [t(u8[i]) for i in range(128)], calls=1)
    return rows


def training(blocks: int, steps: int, workers: int, device: torch.device) -> dict[str, float]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores - workers))
    torch.manual_seed(0)
    data = SyntheticShapes("train", num_per_class=300)
    model = registry.build_model("resnet_small", 10).to(device).to(memory_format=torch.channels_last)
    method = registry.build_method("vanilla", 10).to(device)
    optimizer = build_optimizer(model, method, OptimConfig())
    preprocess = normalizer(data.mean, data.std, True)
    transforms = {
        "RRC": v2.Compose([v2.RandomResizedCrop(32, scale=(0.01, 1.0)), v2.RandomHorizontalFlip()]),
        "CropMix": registry.build_method("cropmix", 10).train_transform(v2.RandomCrop(32)),
    }
    loaders = {}
    for name, transform in transforms.items():
        sampler = EpochSampler(len(data), seed=1)
        loaders[name] = torch.utils.data.DataLoader(
            SeededItems(data.with_transform(transform), seed=2), batch_size=128, sampler=sampler, drop_last=True,
            num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(3))
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for block in range(blocks):
        for name in list(loaders)[:: 1 if block % 2 == 0 else -1]:  # alternate which path goes first
            loader = loaders[name]
            loader.sampler.set_epoch(block)
            it = iter(loader)
            for _ in range(2):  # workers start, queue fills
                train_step(model, method, optimizer, to_device(next(it), device, preprocess), 0.0)
            t0 = time.perf_counter()
            for _ in range(steps):
                out = train_step(model, method, optimizer, to_device(next(it), device, preprocess), 0.0)
            float(out.loss.detach())  # wait for the last step
            rates[name].append(steps * 128 / (time.perf_counter() - t0))
            del it
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"load average at start: {os.getloadavg()}")

    rows = per_image()
    base = rows["RRC (0.01, 1)"]
    print("\n1. per image, 32x32 uint8, 1 thread (median µs per call; ratio to v2.RandomResizedCrop)")
    for name, us in rows.items():
        print(f"  {name:<30} {us:8.1f} µs   {us / base:5.2f}x")

    rows = training(args.blocks, args.steps, args.workers, device)
    print(f"\n2. training resnet_small, batch 128, loader {args.workers} workers, {device} "
          f"(median of {args.blocks} blocks of {args.steps} steps)")
    for name, rate in rows.items():
        print(f"  {name:<10} {rate:8.1f} images/s")
    ratio = rows["CropMix"] / rows["RRC"]
    print(f"  CropMix / RRC = {ratio:.3f}  (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")

    rows = batched(device)
    print("\n3. batched vs per-image, one batch of 128 (median µs per batch), 1 thread")
    for name, us in rows.items():
        print(f"  {name:<48} {us / 1e3:8.2f} ms   {us / 128:7.1f} µs/image")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
