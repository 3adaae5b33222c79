"""Cost of one training step of model-aware methods against the plain mixers, in one run.

For each method (default: vanilla, mixup, cutmix, recursivemix), the engine's ``train_step``
(forward, the method's loss, backward, SGD step, the method's update) on the same model, the same
batch of random images already on the device and the same optimizer settings. Blocks of steps
of the methods alternate (round robin, 2 warm-up steps per block discarded) and the median block
is reported, so load from other processes affects all alike. Printed: ms per step, the ratio to
each reference method, the method's own state (its buffers and extra parameters: RecursiveMix's
history and H′, AutoMix's Mix Block and momentum copy), and on CUDA the peak memory of a step.

Self-supervised methods get the multi-view batch their own transform makes (two views for MoCo
v3, DINO's 2 global + n local crops), random tensors of those shapes. ``--protocol`` takes each
method's parameters (and ``name@variant`` labels) from a benchmark protocol.

Targets: RecursiveMix <= 1.05x CutMix (issue 12); AutoMix <= 2.0x vanilla (issue 13); issue 14
asks for the pre-training step time with and without SDMP; TransMix <= 1.05x CutMix (issue 27, with
MixPro and SMMix reported beside it). ``--model-kwargs`` sizes the model, ``--method-params`` sets
each method label's parameters (``transmix@always: {mixup_alpha: 0}`` times only its CutMix branch).

    python benchmarks/step_cost.py                                  # resnet_small, batch 128, CPU
    python benchmarks/step_cost.py --model resnet18 --device cuda --methods vanilla,mixup,automix
    python benchmarks/step_cost.py --protocol cifar10-ssl-quick --methods mocov3,mocov3@sdmp,dino,dino@sdmp \
        --reference mocov3,dino
    python benchmarks/step_cost.py --protocol cifar10-vit-quick --batch-size 64 --reference cutmix,mixup-cutmix \
        --methods vanilla,cutmix,mixup-cutmix,transmix,transmix@always,mixpro,mixpro@always,smmix,smmix@always \
        --method-params "{transmix@always: {mixup_alpha: 0}, mixpro@always: {maskmix_prob: 1}, smmix@always: {mixup_alpha: 0}}"
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from mixlab import registry
from mixlab.bench.protocols import load_protocol, method_name
from mixlab.engine.config import OptimConfig
from mixlab.engine.optim import build_optimizer, train_step


def state_bytes(method: torch.nn.Module) -> int:
    """Bytes of the method's own parameters and buffers (what it adds to the deployed model)."""
    return sum(t.numel() * t.element_size() for t in [*method.parameters(), *method.buffers()])


def views_like(method: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Random views of the shapes the method's multi-view transform gives for images like ``x``."""
    transform = method.train_transform(None, image_size=x.shape[-1])
    shapes = [v.shape for v in transform(torch.randint(0, 256, x.shape[1:], dtype=torch.uint8))]
    return [torch.randn(x.shape[0], *s, device=x.device).contiguous(memory_format=torch.channels_last) for s in shapes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="vanilla,mixup,cutmix,recursivemix")
    p.add_argument("--reference", default="vanilla,mixup,cutmix",
                   help="ratios against these methods (those that are run)")
    p.add_argument("--model", default=None, help="default: the protocol's, else resnet_small")
    p.add_argument("--model-kwargs", default=None,
                   help="YAML mapping of model arguments, e.g. '{depth: 6}' (default: the protocol's, else none)")
    p.add_argument("--protocol", default=None, help="take the methods' parameters from this benchmark protocol")
    p.add_argument("--method-params", default="{}",
                   help="YAML mapping method label -> parameters (after the protocol's), e.g. '{transmix: {mixup_alpha: 0}}'")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed steps per block")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.methods.split(",")
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    protocol = load_protocol(args.protocol) if args.protocol else None
    args.model = args.model or (protocol.base.model.name if protocol else "resnet_small")
    if args.model_kwargs is not None:
        model_kwargs = yaml.safe_load(args.model_kwargs) or {}
    else:
        model_kwargs = dict(protocol.base.model.kwargs) if protocol and args.model == protocol.base.model.name else {}
    method_params = yaml.safe_load(args.method_params) or {}
    runs = {}
    for name in names:
        torch.manual_seed(0)  # the same initial model for every method
        model = registry.build_model(args.model, 10, **model_kwargs).to(device).to(memory_format=torch.channels_last)
        params = {**(protocol.methods.get(name, {}) if protocol else {}), **method_params.get(name, {})}
        method = registry.build_method(method_name(name), 10, **params).to(device)
        method.setup(model, torch.Generator(device=device).manual_seed(0))
        optimizer = build_optimizer(model, method, OptimConfig(name="sgd", lr=0.01))
        batch = (views_like(method, x), y) if registry.is_self_supervised(method) else (x, y)
        runs[name] = (model, method, optimizer, batch)

    def block(name: str, steps: int) -> float:
        model, method, optimizer, batch = runs[name]
        for _ in range(2):
            train_step(model, method, optimizer, batch, 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, method, optimizer, batch, 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.blocks):
        for name in names:
            times[name].append(block(name, args.steps))
    peaks = {}
    if device.type == "cuda":
        for name in names:
            torch.cuda.reset_peak_memory_stats()
            block(name, 1)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**20

    ms = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    refs = [r for r in args.reference.split(",") if r in ms]
    print(f"{args.model} {model_kwargs or ''}, batch {args.batch_size} x {args.image_size}x{args.image_size}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.blocks} blocks "
          f"x {args.steps} steps")
    width = {r: max(12, len(r) + 3) for r in refs}
    header = f"{'method':<16}{'ms/step':>9}" + "".join(f"{'/ ' + r:>{width[r]}}" for r in refs) + f"{'state MiB':>11}"
    header += f"{'peak MiB':>10}" if peaks else ""
    print(header)
    for n in names:
        line = f"{n:<16}{ms[n]:9.1f}" + "".join(f"{ms[n] / ms[r]:{width[r]}.3f}" for r in refs)
        line += f"{state_bytes(runs[n][1]) / 2**20:11.2f}"
        line += f"{peaks[n]:10.0f}" if peaks else ""
        print(line)


if __name__ == "__main__":
    main()
