"""The lower bound that AutoMix's own passes put on its step time, measured against vanilla in one run.

An AutoMix step (``mixlab.methods.automix``, Eq. 8-12) cannot cost less than the network passes
its definition requires:

* ``q_fb``: the classifier θq forward + backward (weights and activations), twice: once on the
  clean images (ℓ_CE) and once on the Mix Block's images (ℓ_MCE^cls);
* ``k_until``: the momentum encoder θk forward to stage l, no gradient (the Mix Block's features);
* ``k_gen``: θk forward on the Mix Block's images + backward to the input only (θk's parameters
  are frozen: the stop-gradient of the generation loss).

Each is timed on its own (same model, batch and threads as the vanilla step), blocks alternating
round robin with the whole AutoMix and vanilla steps, medians reported. ``floor`` =
``(2 q_fb + k_until + k_gen) / vanilla``, the ratio no implementation of these passes can beat
on this machine; ``automix`` is the measured step; ``overhead`` what it spends beyond the passes
(Mix Block attention, mask upsampling, mixing, EMA update, optimizer step).

    python benchmarks/automix_floor.py                       # resnet_small, batch 128, 32x32, CPU
    python benchmarks/automix_floor.py --model resnet18 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mixlab import registry
from mixlab.engine.config import OptimConfig
from mixlab.engine.optim import build_optimizer, train_step
from mixlab.models import forward_until


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed repetitions per block")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def setup(name: str):
        model = registry.build_model(args.model, 10).to(device).to(memory_format=torch.channels_last)
        method = registry.build_method(name, 10).to(device)
        method.setup(model, torch.Generator(device=device).manual_seed(0))
        return model, method, build_optimizer(model, method, OptimConfig(name="sgd", lr=0.01))

    vanilla, automix = setup("vanilla"), setup("automix")
    model, method, _ = automix
    encoder = method.momentum_model

    def q_fb() -> None:  # one classifier pass with backward (done twice per AutoMix step)
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    def k_until() -> None:
        with torch.no_grad():
            forward_until(encoder, x, method.feature_stage)

    def k_gen() -> None:
        xg = x.detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(encoder(xg), y).backward()

    parts = {"vanilla": lambda: train_step(*vanilla[:2], vanilla[2], (x, y), 0.5),
             "automix": lambda: train_step(*automix[:2], automix[2], (x, y), 0.5),
             "q_fb": q_fb, "k_until": k_until, "k_gen": k_gen}

    def block(fn) -> float:
        for _ in range(2):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(args.blocks):
        for name, fn in parts.items():
            times[name].append(block(fn))
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    floor = 2 * ms["q_fb"] + ms["k_until"] + ms["k_gen"]
    print(f"{args.model}, batch {args.batch_size} x {args.image_size}x{args.image_size}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.blocks} blocks "
          f"x {args.steps} repetitions")
    for name in ("vanilla", "q_fb", "k_until", "k_gen", "automix"):
        print(f"{name:<10}{ms[name]:9.1f} ms   {ms[name] / ms['vanilla']:6.3f} x vanilla")
    print(f"{'floor':<10}{floor:9.1f} ms   {floor / ms['vanilla']:6.3f} x vanilla   (2 q_fb + k_until + k_gen)")
    print(f"{'overhead':<10}{ms['automix'] - floor:9.1f} ms   {(ms['automix'] - floor) / ms['vanilla']:6.3f} x vanilla"
          f"   (automix - floor)")


if __name__ == "__main__":
    main()
