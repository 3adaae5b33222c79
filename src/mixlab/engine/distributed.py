"""Small helpers for data-parallel training under ``torchrun``; every one is a no-op in a single process.

    torchrun --nproc_per_node=2 -m mixlab.cli train --epochs 30           # 2 processes, gloo on CPU
    torchrun --nproc_per_node=4 -m mixlab.cli train --model resnet18 ...  # 4 GPUs, nccl

``torchrun`` (or ``python -m torch.distributed.run``) starts one process per device and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (gloo on the CPU, nccl on CUDA,
each process on ``cuda:LOCAL_RANK``). Without those variables it returns rank 0 of 1 and
initialises nothing, so single-process code paths stay exactly as they were.

The training step runs through ``DistributedDataParallel``: :class:`StepModule` holds the model
and the method, its ``forward`` is ``method.training_step(model, batch, progress)``, and
:func:`build_step_module` wraps it in DDP (compiled first with ``run.compile``), so the gradients
are averaged in buckets that overlap the backward pass, whatever the method calls inside its step.
:func:`average_buffers` averages the BatchNorm statistics after each step; :func:`sync_batchnorm`
(``run.sync_bn``) normalises with the whole batch instead. See ``docs/distributed.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mixlab.methods.base import Method, StepOutput

__all__ = ["DistInfo", "init_distributed", "resolve_device", "is_distributed", "get_rank", "get_world_size",
           "is_main_process", "barrier", "all_reduce_sum", "broadcast_object", "all_gather_object", "broadcast_tensors",
           "average_tensors", "on_main", "weights_fingerprint", "cleanup", "StepModule", "build_step_module",
           "average_buffers", "sync_batchnorm"]


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


def weights_fingerprint(model: nn.Module | dict[str, Tensor]) -> str:
    """Exact digest of the weights and buffers of a model or a state dict (two float64 sums, as
    hex): to compare ranks, or a checkpoint's weights with those another run started from."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = [t.detach().double() for t in state.values() if t.is_floating_point()]
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
def average_tensors(tensors: Iterable[Tensor]) -> None:
    """Replace ``tensors`` (in place) by their mean over the processes, one ``all_reduce`` per dtype."""
    if not is_distributed():
        return
    world_size = dist.get_world_size()
    for group in _buckets(tensors).values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        _unflatten_into(flat.div_(world_size), group)


# --------------------------------------------------------------------- the data-parallel step
class StepModule(nn.Module):
    """The model and the method as one module whose ``forward`` is the training step.

    ``StepModule(model, method)(batch, progress)`` returns ``method.training_step(model, batch,
    progress)``. Wrapped in ``DistributedDataParallel`` (as Lightning wraps its ``training_step``),
    every parameter a step uses is seen by DDP's reducer, whatever the method calls inside:
    ``model(x)``, ``forward_features`` / ``forward_head``, the stages, a second forward for an input
    gradient, its own heads. Compiled (``run.compile``), the method's real path is compiled, not
    only ``model.forward``. Its state dict is the model's under ``model.`` and the method's under
    ``method.``; the engine saves ``model`` and ``method`` themselves, never this module.

    Attributes:
        averaged: the model's floating-point buffers that the engine averages across processes
            after each data-parallel step (the BatchNorm running statistics; those of a
            ``SyncBatchNorm`` are equal on every process already); empty in a single process.
    """

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.averaged: list[Tensor] = []

    def forward(self, batch: Any, progress: float) -> StepOutput:
        return self.method.training_step(self.model, batch, progress)


def build_step_module(model: nn.Module, method: Method, info: DistInfo, compile: bool = False) -> nn.Module:
    """The module the loop calls for each step's forward: a :class:`StepModule`, compiled in place
    with ``compile`` (``nn.Module.compile``: graph breaks allowed, so a method with host logic
    still runs), wrapped in ``DistributedDataParallel`` under data parallel.

    As PyTorch's guide to where to apply ``torch.compile`` recommends, the inner module is compiled
    and DDP wraps it (DDP's hooks stay eager). DDP is built with ``forward_sync_buffers=False``:
    the BatchNorm statistics are averaged after each step instead (:func:`average_buffers`,
    ``docs/distributed.md``), and a method's per-rank buffers (RecursiveMix's history) stay each
    rank's own. ``find_unused_parameters`` is the method's ``ddp_find_unused_parameters``: methods
    that leave some trainable parameter out of a step (the SSL frameworks never use the model's
    classifier; RecursiveMix's H' has nothing to do on its first step) declare it. Parameters
    with ``requires_grad=False`` (momentum encoders, teachers) are not DDP's.

    Call it before loading a checkpoint into ``model`` and ``method``: DDP broadcasts rank 0's
    parameters and buffers when it is built, which would overwrite each rank's own history.
    """
    module = StepModule(model, method)
    if compile:
        module.compile()
    if not info.distributed:
        return module
    module.averaged = [b for m in model.modules() if not isinstance(m, nn.SyncBatchNorm)
                       for b in m.buffers(recurse=False) if b.is_floating_point()]
    on_gpu = info.device.type == "cuda"
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[info.device] if on_gpu else None, output_device=info.device if on_gpu else None,
        forward_sync_buffers=False, find_unused_parameters=method.ddp_find_unused_parameters)


def average_buffers(step_module: nn.Module | None) -> None:
    """After a data-parallel step, the model's BatchNorm running statistics (its floating-point
    buffers, :attr:`StepModule.averaged`) become their mean over the processes, so the model stays
    the same on every rank; a no-op for a step module that is not data-parallel (or ``None``)."""
    if isinstance(step_module, nn.parallel.DistributedDataParallel):
        average_tensors(step_module.module.averaged)


def sync_batchnorm(model: nn.Module, info: DistInfo) -> nn.Module:
    """``run.sync_bn``: under data parallel, every BatchNorm of ``model`` becomes a ``SyncBatchNorm``
    that normalises with the mean and variance of the whole batch, all processes together (the
    maths of one process with the effective batch); same parameters, buffers and state-dict keys,
    so checkpoints load into a plain model. In a single process ``model`` is returned unchanged.

    Raises:
        ValueError: data parallel on the CPU: torch's ``SyncBatchNorm`` synchronises GPU batches only.
    """
    if not info.distributed:
        return model
    if info.device.type != "cuda":
        raise ValueError(f"run.sync_bn=true needs CUDA devices (torch's SyncBatchNorm synchronises GPU batches "
                         f"only), got {info.world_size} processes on {info.device.type}; set run.sync_bn=false "
                         f"(each process then normalises its own batch, docs/distributed.md)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
