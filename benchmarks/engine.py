"""Input-pipeline overhead of the training engine.

Training images/s of ``resnet_small`` (32x32, batch 128, SGD, CutMix) fed two ways, in one run:

* ``loader``: the engine's own path: ``DataLoader`` with worker processes over the synthetic
  train set, standard CIFAR augmentation (random crop + flip) per image in the workers, uint8
  batches moved to the device and normalised there (``mixlab.engine.data``);
* ``tensor``: the same model and step fed from one pre-built, normalised tensor already on the
  device (no loading, no augmentation): the compute-only ceiling.

Blocks of steps of the two paths alternate and the median block is reported, so that load from
other processes on the machine affects both alike. Target: ``tensor / loader <= 1.15``.

    python benchmarks/engine.py                 # defaults: 2 workers, 12 blocks of 6 steps
    python benchmarks/engine.py --workers 0 --threads 2 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mixlab import registry
from mixlab.data import SyntheticShapes, cifar_train_transform, normalize_on_device, seed_worker
from mixlab.engine.config import OptimConfig
from mixlab.engine.data import EpochSampler, SeededItems, normalizer, to_device
from mixlab.engine.optim import build_optimizer, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = the engine's auto (cores - workers)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--blocks", type=int, default=12, help="timed blocks per path")
    p.add_argument("--steps", type=int, default=6, help="steps per block")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contiguous", action="store_true", help="NCHW instead of the engine's channels_last")
    args = p.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or max(1, cores - args.workers)
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = SyntheticShapes("train", num_per_class=300)
    model = registry.build_model("resnet_small", 10).to(device)
    method = registry.build_method("cutmix", 10).to(device)
    method.setup(model, torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, method, OptimConfig())
    channels_last = not args.contiguous
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    preprocess = normalizer(data.mean, data.std, channels_last)

    # the engine's path
    sampler = EpochSampler(len(data), seed=1)
    loader = torch.utils.data.DataLoader(
        SeededItems(data.with_transform(cifar_train_transform(normalize=False)), seed=2),
        batch_size=args.batch_size, sampler=sampler, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(3))

    def loader_batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            for batch in loader:
                yield to_device(batch, device, preprocess)
            epoch += 1

    # the compute-only path: one normalised tensor on the device, sliced
    n = len(data) // args.batch_size * args.batch_size
    images = normalize_on_device(data.images[:n].to(device), data.mean, data.std)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = data.labels[:n].to(device)

    def tensor_batches():
        while True:
            for i in range(0, n, args.batch_size):
                yield images[i:i + args.batch_size], labels[i:i + args.batch_size]

    sources = {"loader": loader_batches(), "tensor": tensor_batches()}

    def block(name: str, steps: int) -> float:
        it = sources[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, method, optimizer, next(it), 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps * args.batch_size / (time.perf_counter() - t0)

    for name in sources:  # warm-up: workers start, kernels are chosen
        block(name, 3)
    rates: dict[str, list[float]] = {"loader": [], "tensor": []}
    for _ in range(args.blocks):
        for name in sources:
            rates[name].append(block(name, args.steps))
    loader_rate, tensor_rate = (statistics.median(rates[k]) for k in ("loader", "tensor"))
    print(f"device {device}, torch threads {threads}, {args.workers} workers, batch {args.batch_size}, "
          f"{args.blocks} blocks x {args.steps} steps per path")
    print(f"loader (DataLoader + crop/flip + uint8 transfer + normalise on device): {loader_rate:8.1f} images/s")
    print(f"tensor (pre-built normalised tensor on the device):                 {tensor_rate:8.1f} images/s")
    print(f"overhead ratio tensor / loader: {tensor_rate / loader_rate:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
