"""Training step time with ``run.compile``: the compiled step module against the eager one.

One process trains the same model two ways, in one run, from the same weights and on the same
batches: ``eager`` runs :class:`mixlab.engine.distributed.StepModule` as it is, ``compiled`` the
same module after ``.compile()`` (what ``run.compile: true`` does: the method's ``training_step``
with the model inside, graph breaks allowed), both through :func:`mixlab.engine.optim.train_step`.
The first compiled steps (compilation, recompilations) are timed apart; then blocks of steps of
the two alternate and the median block is reported, so that load from other processes affects
both alike. Prints ms per step and the ratio compiled / eager (< 1: compiling pays).

    python benchmarks/compile.py                                  # resnet_small, vanilla, CPU
    python benchmarks/compile.py --method cutmix --threads 2
    python benchmarks/compile.py --device cuda --model resnet18 --batch-size 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from mixlab import registry
from mixlab.engine.config import OptimConfig
from mixlab.engine.distributed import DistInfo, build_step_module
from mixlab.engine.optim import build_optimizer, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--method", default="vanilla")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=6, help="compiled steps before timing (compilation included)")
    p.add_argument("--blocks", type=int, default=8, help="timed blocks per way")
    p.add_argument("--steps", type=int, default=4, help="steps per block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = DistInfo(0, 1, 0, device)
    torch.manual_seed(0)
    model = registry.build_model(args.model, 10).to(device, memory_format=torch.channels_last)
    ways = {}
    for name in ("eager", "compiled"):
        m = copy.deepcopy(model)
        method = registry.build_method(args.method, 10).to(device)
        method.setup(m, torch.Generator(device).manual_seed(1))
        ways[name] = (m, method, build_optimizer(m, method, OptimConfig(name="sgd", lr=0.01)),
                      build_step_module(m, method, info, compile=name == "compiled"))
    g = torch.Generator(device).manual_seed(2)
    size = (args.batch_size, 3, args.image_size, args.image_size)
    batches = [(torch.randn(size, generator=g, device=device).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (args.batch_size,), generator=g, device=device)) for _ in range(args.steps)]

    def block(name: str, steps: int) -> float:
        model, method, optimizer, step_module = ways[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            train_step(model, method, optimizer, batches[i % len(batches)], i / steps, step_module=step_module)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    first = block("compiled", 1)
    rest = block("compiled", args.warmup - 1) if args.warmup > 1 else 0.0
    block("eager", 2)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.blocks):
        for name in times:
            times[name].append(block(name, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model}, {args.method}, batch {args.batch_size} of {args.image_size}px on {device.type} "
          f"({args.threads} threads), {args.blocks} blocks of {args.steps} steps, median block:")
    print(f"  first compiled step {first:.1f} s, the next {args.warmup - 1}: {rest:.2f} s/step")
    print(f"  eager    {1000 * med['eager']:8.1f} ms/step")
    print(f"  compiled {1000 * med['compiled']:8.1f} ms/step")
    print(f"  ratio compiled / eager = {med['compiled'] / med['eager']:.3f}")


if __name__ == "__main__":
    main()
