"""Small helpers for data-parallel training under ``torchrun``; every one is a no-op in a single process.

    torchrun --nproc_per_node=2 -m mixlab.cli train --epochs 30           # 2 processes, gloo on CPU
    torchrun --nproc_per_node=4 -m mixlab.cli train --model resnet18 ...  # 4 GPUs, nccl

``torchrun`` (or ``python -m torch.distributed.run``) starts one process per device and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (gloo on the CPU, nccl on CUDA,
each process on ``cuda:LOCAL_RANK``). Without those variables it returns rank 0 of 1 and
initialises nothing, so single-process code paths stay exactly as they were.

The trainer synchronises explicitly rather than through ``DistributedDataParallel``: after each
backward pass :func:`average_gradients` averages every gradient (and the model's floating-point
buffers, the BatchNorm statistics) across processes in one flattened ``all_reduce`` per dtype. See
``docs/distributed.md`` for why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistInfo", "init_distributed", "resolve_device", "is_distributed", "get_rank", "get_world_size",
           "is_main_process", "barrier", "all_reduce_sum", "broadcast_object", "all_gather_object", "broadcast_tensors",
           "average_gradients", "on_main", "weights_fingerprint", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``; rank 0 writes the files and prints.
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (selects ``cuda:local_rank``).
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1, what: str = "run.device") -> torch.device:
    """The device a setting names, the one place it is decided: ``auto`` is CUDA when available
    (``cuda:local_rank`` under data parallel, ``cuda`` in a single process), else the CPU; ``cpu``,
    ``cuda`` and (single process) ``cuda:N`` as written.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        local_rank, world_size: this process's place on its machine and the number of processes.
        what: the setting's name in error messages (``run.device``, ``device``).

    Raises:
        ValueError: another name, CUDA asked for but not available, ``cuda:N`` for several
            processes, or more processes than GPUs.
    """
    if not isinstance(name, str) or not (name in ("auto", "cpu") or name.startswith("cuda")):
        raise ValueError(f"{what} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    cuda = torch.cuda.is_available()
    if name.startswith("cuda") and not cuda:
        raise ValueError(f"{what} is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    if name == "cpu" or (name == "auto" and not cuda):
        return torch.device("cpu")
    if world_size == 1:
        try:
            return torch.device("cuda" if name == "auto" else name)
        except RuntimeError as e:  # torch.device("cuda:x")
            raise ValueError(f"{what} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r} ({e})") from None
    if name not in ("auto", "cuda"):
        raise ValueError(f"{what} is {name!r}, one GPU for all {world_size} processes; use 'auto' or 'cuda' "
                         f"(each process then takes cuda:LOCAL_RANK)")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; start at "
                         f"most that many processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def init_distributed(backend: str = "auto", device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that ``torchrun`` set up, or describe the single process.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. With ``WORLD_SIZE`` unset or 1 nothing is
    initialised. A process group that already exists (set up by the caller) is used as it is.

    Args:
        backend: ``"auto"`` (nccl when the device is CUDA, else gloo), ``"gloo"`` or ``"nccl"``.
        device: the ``run.device`` setting: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
            (``"cuda:N"`` only in a single process).
        timeout_s: how long a collective waits for the other processes before failing.

    Returns:
        :class:`DistInfo` of this process.

    Raises:
        ValueError: an unknown backend, nccl without CUDA, a device that cannot be used, or
            malformed torchrun variables.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    else:
        world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a process of the job")
    dev = resolve_device(device, local_rank, world_size)
    if world_size == 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and dev.type != "cuda":
            raise ValueError("the nccl backend needs CUDA devices; use backend 'gloo' (or 'auto') on the CPU")
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, dev)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the process that writes files and prints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the processes, in place; returns it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], Any], info: DistInfo, share: bool = True) -> Any:
    """``fn()`` on rank 0 only; its result is broadcast to every rank (``share``) or returned on
    rank 0 alone (``None`` elsewhere). A ``ValueError``/``OSError`` it raises is raised on every
    rank, so that no process is left waiting for a rank 0 that stopped."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = e
    if info.distributed:
        result_or_none, error = broadcast_object((result if share else None, error))
        result = result if info.is_main else result_or_none
    if error is not None:
        raise error
    return result


def weights_fingerprint(model: nn.Module) -> str:
    """Exact digest of the weights and buffers (two float64 sums, as hex), to compare ranks."""
    tensors = [t.detach().double() for t in model.state_dict().values() if t.is_floating_point()]
    total = sum(float(t.sum()) for t in tensors)
    squares = sum(float(t.square().sum()) for t in tensors)
    return f"{total.hex()}/{squares.hex()}"


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------- flattened collectives
def _buckets(tensors: Iterable[Tensor]) -> dict[tuple[torch.dtype, torch.device], list[Tensor]]:
    out: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.dtype, t.device), []).append(t)
    return out


def _unflatten_into(flat: Tensor, tensors: list[Tensor]) -> None:
    """Copy consecutive pieces of ``flat`` back into ``tensors`` (any memory format)."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place) with rank ``src``'s values, one broadcast per dtype."""
    if not is_distributed():
        return
    for group in _buckets(tensors).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=src)
        with torch.no_grad():
            _unflatten_into(flat, [t.detach() for t in group])


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], buffers: Iterable[Tensor] = ()) -> None:
    """Average ``p.grad`` over the processes, and the floating-point ``buffers`` with them.

    What ``DistributedDataParallel`` does after backward, minus the overlap with it: every
    gradient (and buffer) of one dtype goes into one flat tensor and one ``all_reduce``. A
    parameter without a gradient on some process counts as a zero gradient there; one without a
    gradient on every process keeps ``grad = None`` (so the optimizer skips it, as in a single
    process). Every process must pass the same parameters in the same order (the optimizer's).

    Args:
        params: the parameters being optimised.
        buffers: tensors to average in place too (BatchNorm running statistics); non-floating
            ones (``num_batches_tracked``, equal on every process) are skipped.
    """
    if not is_distributed():
        return
    world_size = dist.get_world_size()
    params = list(params)
    buffers = [b for b in buffers if b.is_floating_point()]
    sends = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params] + buffers
    present = [float(p.grad is not None) for p in params] + [1.0] * len(buffers)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(sends):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for (dtype, device), idx in groups.items():
        flags = torch.tensor([present[i] for i in idx], dtype=dtype, device=device)  # who has this gradient
        flat = torch.cat([sends[i].reshape(-1) for i in idx] + [flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        pieces = flat[:-len(idx)].split([sends[i].numel() for i in idx])
        anyone = flat[-len(idx):].tolist()
        for i, piece, had in zip(idx, pieces, anyone):
            piece = piece.view(sends[i].shape)
            if i >= len(params):
                buffers[i - len(params)].copy_(piece)
            elif had == 0:
                params[i].grad = None  # no process computed it
            elif params[i].grad is None:
                params[i].grad = piece.clone()
            else:
                params[i].grad.copy_(piece)
