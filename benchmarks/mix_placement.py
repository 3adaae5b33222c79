"""Where to mix: in the DataLoader workers (``MixCollate``) or in the training process after the
transfer? Measured in one run on the same data and model.

    python benchmarks/mix_placement.py [--workers 2] [--images 5000] [--mixer cutmix]

For each placement it times one epoch of training the small CPU ResNet (forward, backward, SGD
step) on 32×32 images, batch 128, and prints images/s and the ratio to training without mixing.
On a GPU, mixing on the device costs microseconds and leaves the workers to decoding; this script
measures whichever device it runs on (``--device``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import mixlab
from mixlab.models import create_model


def epoch_rate(loader, model, opt, device, mixer=None) -> float:
    loss_fn = mixlab.SoftTargetCrossEntropy()
    n, t0 = 0, time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if mixer is not None:
            images, labels = mixer(images, labels)
        logits = model(images)
        loss = loss_fn(logits, labels) if labels.ndim == 2 else torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--mixer", default="cutmix", choices=["mixup", "cutmix", "fmix", "saliencymix", "resizemix"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    device = torch.device(args.device)
    cls = {"mixup": mixlab.Mixup, "cutmix": mixlab.CutMix, "fmix": mixlab.FMix,
           "saliencymix": mixlab.SaliencyMix, "resizemix": mixlab.ResizeMix}[args.mixer]
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.images, 3, 32, 32, generator=g), torch.randint(0, 10, (args.images,), generator=g))
    model = create_model("resnet_small", num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    common = dict(batch_size=128, shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0,
                  pin_memory=device.type == "cuda", drop_last=True)
    setups = {
        "no mixing": (DataLoader(data, **common), None),
        f"{args.mixer} in workers (MixCollate)": (DataLoader(data, collate_fn=mixlab.MixCollate(cls(10)), **common), None),
        f"{args.mixer} in the training process": (DataLoader(data, **common), cls(10)),
    }
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {args.workers} workers, "
          f"{args.images} images/epoch, best of {args.repeats} epochs")
    rates = {}
    for name, (loader, mixer) in setups.items():
        epoch_rate(loader, model, opt, device, mixer)  # warm-up epoch (starts the workers)
        rates[name] = max(epoch_rate(loader, model, opt, device, mixer) for _ in range(args.repeats))
    base = rates["no mixing"]
    print("\n| placement | img/s | × no mixing |\n|---|---:|---:|")
    for name, r in rates.items():
        print(f"| {name} | {r:.0f} | {r / base:.3f} |")


if __name__ == "__main__":
    main()
