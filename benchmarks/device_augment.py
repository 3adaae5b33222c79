"""Loader-bound throughput of the augmentation: per image in 2 loader workers vs batched in the
main process (``data.device_augment``), in one run.

For each pipeline (CropMix N = 2, 3, 4 + flip, as ``CropMixMethod``; MoCo v3's two BYOL views;
DINO's 2 global + 6 local crops) at 32² (from 32² images) and 224² (from 256² images):

* per image: a ``DataLoader`` with 2 workers over stored uint8 images with the per-image ``v2``
  pipeline (the engine's loader without the model), images/s over ``--batches`` batches after one
  warm-up batch;
* batched: the pipeline's batched twin (:func:`mixlab.transforms.device.batched_pipeline`) on
  uint8 batches gathered from the same images, in the main process with ``--threads`` torch
  threads (default 1: one core against the loader's two; on a machine loaded by other processes
  2 threads were 10x slower than 1, OpenMP threads waiting for each other), on the CPU and,
  with ``--device cuda``, on the GPU (then also the share of a ResNet-50 training step at 224²,
  batch 128, that the batched augmentation of a batch takes);

plus the colour-jitter kernel alone: torchvision's ``v2.functional`` ops, one call per image
(they take one factor per call), against :func:`mixlab.transforms.batched.color_jitter` with
per-sample factors on a (64, 3, 224, 224) float batch; and JPEG decoding of 64 images three ways.

    python benchmarks/device_augment.py                       # CPU, about 5 minutes on 2 cores
    python benchmarks/device_augment.py --device cuda --batches 10
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mixlab.transforms import CropMix, MultiCrop, TwoViews
from mixlab.transforms.batched import color_jitter
from mixlab.transforms.device import batched_pipeline


class Stored(Dataset):
    """uint8 images in memory with a per-image transform (labels 0)."""

    def __init__(self, images: torch.Tensor, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.transform(self.images[i]), 0


class Draws(Sampler):
    """``count`` random indices below ``n`` (with replacement); ``count`` may change between epochs."""

    def __init__(self, n: int, count: int) -> None:
        self.n, self.count, self.generator = n, count, torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(torch.randint(self.n, (self.count,), generator=self.generator).tolist())


def pipelines(size: int) -> dict[str, Any]:
    local = max(8, size * 96 // 224)
    return {**{f"CropMix N={n}": v2.Compose([CropMix(size, num_crops=n), v2.RandomHorizontalFlip()])
               for n in (2, 3, 4)},
            "MoCo v3 (2 views)": TwoViews(size),
            f"DINO (2x{size} + 6x{local})": MultiCrop(size, local, num_local=6)}


def per_image_rate(images: torch.Tensor, transform: Callable, batch: int, batches: int) -> float:
    """A warm-up epoch of one batch starts the (persistent) workers; the timed epoch of ``batches``
    batches runs from ``iter()`` (the workers start producing) to its last batch."""
    sampler = Draws(len(images), batch)
    loader = DataLoader(Stored(images, transform), batch_size=batch, sampler=sampler, num_workers=2,
                        persistent_workers=True, drop_last=True)
    for _ in loader:
        pass
    sampler.count = batch * batches
    t0 = time.perf_counter()
    for _ in loader:
        pass
    rate = batches * batch / (time.perf_counter() - t0)
    del loader
    return rate


def batched_rate(images: torch.Tensor, transform: Callable, batch: int, batches: int, device: torch.device) -> float:
    pipe = batched_pipeline(transform)
    g = torch.Generator().manual_seed(0)
    data = images.to(device)

    def one() -> None:
        idx = torch.randint(len(data), (batch,), generator=g).to(device)
        pipe(data.index_select(0, idx), g)

    one()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        one()
    sync()
    return batches * batch / (time.perf_counter() - t0)


def jitter_kernels(device: torch.device, batch: int = 64) -> tuple[float, float]:
    """ms per batch: torchvision's per-image functional jitter vs the batched kernel."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 224, 224, generator=g).to(device)
    order = torch.rand(batch, 4, generator=g).argsort(1)
    factors = torch.stack([0.6 + 0.8 * torch.rand(batch, generator=g) for _ in range(3)]
                          + [0.2 * torch.rand(batch, generator=g) - 0.1], 1)
    fl = factors.tolist()
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)

    def per_image() -> None:
        for i in range(batch):
            img = x[i]
            for k in order[i].tolist():
                img = ops[k](img, fl[i][k])

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for fn in (per_image, lambda: color_jitter(x, order, factors)):
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / 3 * 1e3)
    return times[0], times[1]


def jpeg_decoding(count: int = 64) -> str:
    """ms to decode ``count`` 320x256 JPEGs: ``decode_jpeg`` on the batch (the device path's decoder
    without workers; nvJPEG on a GPU), ``decode_image`` per item (the workers'), PIL per item."""
    import io

    import numpy as np
    from PIL import Image

    from mixlab.data.tensor_dataset import decode_rgb, decode_rgb_batch

    g = torch.Generator().manual_seed(0)
    datas = []
    for _ in range(count):
        small = torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8, generator=g).numpy()
        buf = io.BytesIO()
        Image.fromarray(small).resize((320, 256), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    names = [f"{i}.jpg" for i in range(count)]
    runs = {"decode_jpeg on the batch": lambda: decode_rgb_batch(datas, names),
            "decode_image per item": lambda: [decode_rgb(d, n) for d, n in zip(datas, names)],
            "PIL per item": lambda: [np.asarray(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))
                                     for d in datas]}
    out = []
    for name, fn in runs.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        out.append(f"{name} {(time.perf_counter() - t0) / 3 * 1e3:.0f} ms")
    return f"{count} JPEGs of 320x256, CPU: " + ", ".join(out)


def resnet50_step_ms(device: torch.device, batch: int = 128) -> float:
    import torchvision

    model = torchvision.models.resnet50().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 10 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=4, help="timed batches per measurement")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the batched path also on the GPU")
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the batched path on the CPU")
    parser.add_argument("--only", default="", help="only the pipelines whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.batches} timed batches" + (f", {torch.cuda.get_device_name()}" if gpu else ""))
    header = "| pipeline | size | per image, 2 workers (img/s) | batched, CPU main process (img/s) | CPU ratio |"
    header += " batched on GPU (img/s) | GPU ms / batch of 128 |" if gpu else ""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    step_ms = resnet50_step_ms(device) if gpu else None
    for size in (int(s) for s in args.sizes.split(",")):
        source = size if size <= 64 else round(size * 256 / 224)
        images = torch.randint(0, 256, (256, 3, source, source), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(size))
        for name, t in pipelines(size).items():
            if args.only not in name:
                continue
            per = per_image_rate(images, t, args.batch, args.batches)
            cpu = batched_rate(images, t, args.batch, args.batches, torch.device("cpu"))
            row = f"| {name} | {size} | {per:.0f} | {cpu:.0f} | {cpu / per:.2f}x |"
            if gpu:
                rate = batched_rate(images, t, 128, 3 * args.batches, device)
                row += f" {rate:.0f} | {128 / rate * 1e3:.2f} |"
            print(row, flush=True)
    tv, ours = jitter_kernels(torch.device("cpu"), args.batch)
    print(f"\ncolour jitter, ({args.batch}, 3, 224, 224) float, CPU: torchvision v2.functional per image "
          f"{tv:.1f} ms, batched per-sample kernel {ours:.1f} ms ({tv / ours:.2f}x)")
    print(jpeg_decoding())
    if gpu:
        tv, ours = jitter_kernels(device, args.batch)
        print(f"colour jitter on {device}: per image {tv:.1f} ms, batched {ours:.1f} ms ({tv / ours:.2f}x)")
        print(f"ResNet-50 training step (batch 128, 224², bf16 autocast, channels_last): {step_ms:.1f} ms")


if __name__ == "__main__":
    main()
