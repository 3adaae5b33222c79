"""Data-parallel step time: ``DistributedDataParallel`` against hand-written gradient averaging.

Two processes (gloo on the CPU, nccl on GPUs) train the same model two ways, in one run, from the
same weights and on the same batches:

* ``ddp``: the engine's step: :func:`mixlab.engine.distributed.build_step_module` wraps the model
  and the method in ``DistributedDataParallel``, whose buckets of gradients are all-reduced while
  the backward pass still runs; :func:`mixlab.engine.optim.train_step` then averages the BatchNorm
  statistics and steps.
* ``hand``: what the engine did before: the method's step on the plain model, the whole backward
  pass, then every gradient (and the BatchNorm statistics) copied into one flat tensor per dtype,
  one ``all_reduce``, copied back (:func:`average_gradients` below, a compact copy of the engine's
  former ``distributed.average_gradients``), then the optimizer step.

Blocks of steps of the two alternate and the median block is reported, so that load from other
processes on the machine affects both alike; rank 0 prints ms per step and the ratio ddp / hand
(< 1: DDP is faster).

    python benchmarks/ddp.py                                   # starts 2 processes itself (gloo on the CPU)
    python benchmarks/ddp.py --model resnet18 --batch-size 32
    torchrun --nproc_per_node=2 benchmarks/ddp.py --device cuda  # 2 GPUs, nccl
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from mixlab import registry
from mixlab.engine.config import OptimConfig
from mixlab.engine.distributed import build_step_module, cleanup, init_distributed
from mixlab.engine.optim import build_optimizer, train_step


@torch.no_grad()
def average_gradients(params: list[nn.Parameter], buffers: list[torch.Tensor]) -> None:
    """The former engine's averaging after backward: gradients (a missing one counts as 0; one missing
    everywhere stays ``None``) and floating-point buffers, one flat ``all_reduce`` per dtype."""
    world = dist.get_world_size()
    buffers = [b for b in buffers if b.is_floating_point()]
    sends = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params] + buffers
    present = [float(p.grad is not None) for p in params] + [1.0] * len(buffers)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(sends):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for (dtype, device), idx in groups.items():
        flags = torch.tensor([present[i] for i in idx], dtype=dtype, device=device)
        flat = torch.cat([sends[i].reshape(-1) for i in idx] + [flags])
        dist.all_reduce(flat)
        flat.div_(world)
        pieces = flat[:-len(idx)].split([sends[i].numel() for i in idx])
        for i, piece, had in zip(idx, pieces, flat[-len(idx):].tolist()):
            piece = piece.view(sends[i].shape)
            if i >= len(params):
                buffers[i - len(params)].copy_(piece)
            elif had == 0:
                params[i].grad = None
            elif params[i].grad is None:
                params[i].grad = piece.clone()
            else:
                params[i].grad.copy_(piece)


def hand_step(model: nn.Module, method: nn.Module, optimizer: torch.optim.Optimizer, batch, progress: float) -> None:
    """One step as the engine ran it before DDP: backward, then :func:`average_gradients`, then the step."""
    out = method.training_step(model, batch, progress)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    average_gradients([p for g in optimizer.param_groups for p in g["params"]], list(model.buffers()))
    optimizer.step()
    method.after_optimizer_step(model, progress)


def run(args: argparse.Namespace) -> None:
    info = init_distributed(device=args.device)
    try:
        torch.set_num_threads(args.threads)
        device = info.device
        torch.manual_seed(0)  # the same weights on every rank and for both ways
        model = registry.build_model(args.model, 10).to(device, memory_format=torch.channels_last)
        twins = []
        for _ in range(2):
            m = copy.deepcopy(model)
            method = registry.build_method(args.method, 10).to(device)
            method.setup(m, torch.Generator(device).manual_seed(1 + info.rank))
            twins.append((m, method, build_optimizer(m, method, OptimConfig(name="sgd", lr=0.01))))
        (m_ddp, meth_ddp, opt_ddp), (m_hand, meth_hand, opt_hand) = twins
        step_module = build_step_module(m_ddp, meth_ddp, info)
        g = torch.Generator(device).manual_seed(100 + info.rank)  # each rank its own batches
        size = (args.batch_size, 3, args.image_size, args.image_size)
        batches = [(torch.randn(size, generator=g, device=device).contiguous(memory_format=torch.channels_last),
                    torch.randint(0, 10, (args.batch_size,), generator=g, device=device)) for _ in range(args.steps)]

        def block(ddp: bool) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for i, batch in enumerate(batches):
                if ddp:
                    train_step(m_ddp, meth_ddp, opt_ddp, batch, i / len(batches), step_module=step_module)
                else:
                    hand_step(m_hand, meth_hand, opt_hand, batch, i / len(batches))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) / len(batches)

        block(True), block(False)  # warm-up: DDP's first iteration builds its buckets, allocators settle
        times: dict[str, list[float]] = {"ddp": [], "hand": []}
        for _ in range(args.blocks):
            times["ddp"].append(block(True))
            times["hand"].append(block(False))
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, times)
        if info.is_main:  # a block lasts as long as its slowest rank
            med = {k: statistics.median(max(t[k][b] for t in gathered) for b in range(args.blocks)) for k in times}
            params = sum(p.numel() for p in m_ddp.parameters())
            print(f"{args.model} ({params / 1e6:.2f} M parameters), {args.method}, {info.world_size} processes x batch "
                  f"{args.batch_size} of {args.image_size}px on {device.type} ({dist.get_backend()}), "
                  f"{args.blocks} blocks of {args.steps} steps, median block:")
            print(f"  ddp  {1000 * med['ddp']:8.1f} ms/step   (DistributedDataParallel: buckets overlap backward)")
            print(f"  hand {1000 * med['hand']:8.1f} ms/step   (one flat all_reduce after backward)")
            print(f"  ratio ddp / hand = {med['ddp'] / med['hand']:.3f}")
    finally:
        cleanup()


def _spawned(rank: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(args.processes), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    run(args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--method", default="vanilla")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=8, help="timed blocks per way")
    p.add_argument("--steps", type=int, default=4, help="steps per block")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--processes", type=int, default=2, help="processes to start when not under torchrun")
    args = p.parse_args()
    if "RANK" in os.environ:  # under torchrun
        run(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_spawned, args=(port, args), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
