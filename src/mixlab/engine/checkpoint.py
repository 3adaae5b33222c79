"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is one ``torch.save`` dict (loadable with ``weights_only=True``)::

    format       "mixlab-checkpoint-1"
    epoch        epochs completed
    step         optimizer steps taken
    epoch_step   steps taken in the epoch in progress: 0 after an epoch, > 0 mid-epoch (run.checkpoint_every)
    steps_per_epoch  of the run that wrote it (a mid-epoch position is only valid for the same)
    config       the run's config as a plain dict
    num_classes  K of the model's head
    model, optimizer, scaler, ema, method     state_dicts (ema is None without an EMA)
    rng          python / numpy / torch (+ cuda) states and the engine's generators
    history      the metrics rows so far (of completed epochs)
    epoch_sums   mid-epoch: each rank's training sums of the epoch so far (``EpochMeter.state_dict``), else None
    samples      mid-epoch: the pending (images, targets) of ``samples.png``, else None

It is written to a temporary file in the same directory (``.checkpoint.pt.<8 characters>.tmp``),
flushed and fsync'ed, then moved over the old one with ``os.replace``: a crash leaves either the old
or the new checkpoint, never half of one. A write that fails (a full disk) removes its temporary
file and raises :class:`CheckpointWriteError`; a process killed while writing leaves its temporary
file behind, which :func:`remove_stale_temporaries` (called when a run starts or resumes) deletes.
Files are created with mode ``0o666`` minus the umask, as ``open()`` creates the run's other files.
"""

from __future__ import annotations

import errno
import os
import random
import re
import secrets
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mixlab import registry

__all__ = ["CheckpointError", "CheckpointWriteError", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint",
           "resolve_checkpoint", "rng_state", "set_rng_state", "atomic_write_bytes", "remove_stale_temporaries",
           "init_from_checkpoint", "load_state", "check_resumable", "check_epochs_left", "check_mid_epoch"]

FORMAT = "mixlab-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"
_REQUIRED = ("epoch", "step", "config", "num_classes", "model", "optimizer", "scaler", "ema", "method", "rng",
             "history")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run."""


class CheckpointWriteError(OSError):
    """A file of the run could not be written (a full disk, a quota, an I/O error); the file it was to
    replace, if any, is untouched and no temporary file is left. ``errno`` is the cause's."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported everywhere (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    """``.<name>.<8 random characters>.tmp`` next to ``path`` (the pattern of :func:`remove_stale_temporaries`)."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def _os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, or one in its chain (``torch.save`` turns a failed
    write of its file object into ``RuntimeError: ... unexpected pos``, the ``OSError`` as context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync, then replace ``path``.

    The temporary file is created with mode ``0o666`` minus the umask (as ``open()`` does) and
    removed if anything fails; ``path`` is then left as it was.

    Raises:
        CheckpointWriteError: writing failed for lack of space (the message says "no space left on
            device while writing <path>") or another OS error (its reason, and ``path``).
        Exception: whatever ``write`` raises for another reason (an unpicklable object, ...).
    """
    path = Path(path)
    while True:
        tmp = _temporary_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # 2**32 names: a clash is rare, try another
            continue
        except OSError as e:
            raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cause = _os_error(e)
        if cause is not None and isinstance(e, (OSError, RuntimeError)):
            raise _write_error(path, cause) from None
        raise
    _fsync_dir(path.parent)


def _write_error(path: Path, cause: OSError) -> CheckpointWriteError:
    if cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        what = "no space left on device" if cause.errno == errno.ENOSPC else "disk quota exceeded"
        text = (f"{what} while writing {path}; it was left as it was (the previous version, if any, is intact) "
                f"and no partial file remains: free some space and run again (`--resume` continues a run from "
                f"its last checkpoint)")
    else:
        text = f"cannot write {path}: {cause.strerror or cause}; it was left as it was and no partial file remains"
    error = CheckpointWriteError(text)
    error.errno = cause.errno
    return error


_STALE = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp")


def remove_stale_temporaries(run_dir: str | Path, names: tuple[str, ...] = (CHECKPOINT_NAME,)) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write_bytes` leaves in ``run_dir`` when the
    process is killed mid-write (``.checkpoint.pt.<8 characters>.tmp``, one per kill, as large as a
    checkpoint), for the files ``names``. Other files are untouched.

    Returns:
        the paths removed.
    """
    run_dir = Path(run_dir)
    removed = []
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _STALE.fullmatch(entry.name)
        if match and match["name"] in names and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) states and the given generators' states."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        if k not in state["generators"]:
            raise CheckpointError(f"checkpoint has no state for the {k!r} generator")
        g.set_state(state["generators"][k])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see the module docstring) atomically to ``path``."""
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing {missing}")
    atomic_write_bytes(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or ``<run dir>/checkpoint.pt`` for a run directory.

    Raises:
        CheckpointError: nothing to resume at ``path``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
        if not p.is_file():
            raise CheckpointError(f"cannot resume from {path}: the directory has no {CHECKPOINT_NAME}")
    elif not p.is_file():
        raise CheckpointError(f"cannot resume from {path}: no such checkpoint file or run directory")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a checkpoint (on the CPU).

    Raises:
        CheckpointError: missing, truncated, corrupt, or not a mixlab checkpoint.
    """
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, unpickling errors
        raise CheckpointError(f"cannot read checkpoint {p}: the file is truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a mixlab checkpoint (expected format {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {p} is incomplete: missing {', '.join(missing)}")
    ckpt["path"] = str(p)
    return ckpt


def init_from_checkpoint(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load a run's model weights into ``model`` except its classifier (``model.get_classifier()``),
    which keeps its fresh initialisation: a pre-trained backbone to fine-tune (``model.init``).

    A self-supervised run's classifier was never trained, and a supervised run's may have another
    number of classes, so the head is never taken from the checkpoint. Every other tensor must be
    there with the same shape.

    Returns:
        The state-dict keys left at their initialisation (the classifier's).

    Raises:
        CheckpointError: ``path`` is not a mixlab checkpoint or run directory, or its model weights do
            not fit ``model`` (missing, unexpected or mis-shaped tensors outside the classifier).
    """
    ckpt = load_checkpoint(path)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    prefix = next((f"{name}." for name, m in model.named_modules() if m is head and name), None)
    state = {k: v for k, v in ckpt["model"].items() if prefix is None or not k.startswith(prefix)}
    own = model.state_dict()
    kept = [k for k in own if prefix is not None and k.startswith(prefix)]
    missing = [k for k in own if k not in state and k not in kept]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
                    if keys]
        raise CheckpointError(f"model.init {ckpt['path']}: its model weights ({ckpt['config']['model']['name']}) do "
                              f"not fit this run's model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return kept


def load_state(load: Callable[[], Any], what: str) -> None:
    """``load()`` (a ``load_state_dict``), its error turned into a ``CheckpointError`` that starts
    with ``what`` (which checkpoint, which state) and quotes the first lines of the cause."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as e:
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:3])[:600]
        raise CheckpointError(f"{what}: {detail}") from None


def check_resumable(ckpt: dict[str, Any], cfg) -> None:
    """Raise ``CheckpointError`` naming each setting that differs from the checkpoint's run."""
    old = ckpt["config"]
    diffs = [f"{section}.{key}: checkpoint has {old[section][key]!r}, this run {getattr(getattr(cfg, section), key)!r}"
             for section, key in (("model", "name"), ("model", "kwargs"), ("method", "name"), ("data", "name"))
             if old.get(section, {}).get(key) != getattr(getattr(cfg, section), key)]
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not match this run: " + "; ".join(diffs))


def check_epochs_left(ckpt: dict[str, Any], cfg) -> None:
    """Raise ``ValueError`` when the checkpoint is already at (or past) the epoch this run stops at."""
    o, r = cfg.optim, cfg.run
    end = min(o.epochs, r.stop_epoch or o.epochs)
    if ckpt["epoch"] < end:
        return
    run = Path(ckpt["path"]).parent
    asked = f"{o.epochs} epochs (optim.epochs)" + (f", stopping after epoch {r.stop_epoch} (run.stop_epoch)"
                                                  if r.stop_epoch else "")
    score = (f"`mixlab probe {run}` evaluates it" if registry.is_self_supervised(cfg.method.name)
             else f"`mixlab eval {run}` evaluates it")
    raise ValueError(f"nothing to train: {ckpt['path']} is at epoch {ckpt['epoch']} of "
                     f"{ckpt['config']['optim']['epochs']} and this run asks for {asked}; the run was left untouched. "
                     f"To train it longer, resume with more epochs (--epochs N, N > {ckpt['epoch']}); {score}")


def check_mid_epoch(ckpt: dict[str, Any], steps_per_epoch: int) -> None:
    """Raise ``CheckpointError`` when ``ckpt`` was written mid-epoch by a run whose epochs had another
    number of steps (its position would point elsewhere in the permutation)."""
    if ckpt.get("epoch_step", 0) and ckpt["steps_per_epoch"] != steps_per_epoch:
        raise CheckpointError(
            f"checkpoint {ckpt['path']} was written mid-epoch (step {ckpt['epoch_step']} of "
            f"{ckpt['steps_per_epoch']} of epoch {ckpt['epoch'] + 1}) and this run has {steps_per_epoch} steps per "
            f"epoch: resume it with the data.batch_size, training set and number of processes it ran with")
