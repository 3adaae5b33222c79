"""The run directory and the console: :class:`RunWriter` (rank 0 writes, every rank agrees on the path).

    writer = RunWriter(cfg, info, resumed=ckpt_path)   # checks the directory; writes nothing yet
    writer.write_checkpoint(checkpoint)           # mid-epoch (run.checkpoint_every): checkpoint.pt (+ config.yaml)
    writer.write_epoch(state, row, checkpoint)    # checkpoint.pt, config.yaml, metrics, figures, TensorBoard
    writer.close()

A run directory receives ``checkpoint.pt`` (every epoch, and every ``run.checkpoint_every`` steps
mid-epoch), ``metrics.csv`` / ``metrics.jsonl`` (one
row per epoch), ``curves.png``, ``samples.png`` (the mixed batch of step ``method.preview_step``),
``config.yaml``, and the method's ``epoch_figures`` (rewritten every epoch: MAE's
``reconstructions.png``). Nothing is written into it before the first checkpoint (``config.yaml``
and the TensorBoard log follow it); a run that fails before then removes the directories it
created (:meth:`RunWriter.discard`), and stale checkpoint temporaries (of a process killed while
writing one) are deleted when a run starts or resumes there.
"""

from __future__ import annotations

import csv
import math
import io
import json
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import Tensor, nn

from mixlab.engine.checkpoint import (CHECKPOINT_NAME, atomic_write_bytes, remove_stale_temporaries,
                                      save_checkpoint)
from mixlab.engine.config import TrainConfig, config_to_dict
from mixlab.engine.distributed import DistInfo, on_main
from mixlab.engine.plots import plot_curves, plot_rows, plot_samples
from mixlab.methods.base import ImageRows, Method, StepOutput

__all__ = ["RunWriter", "default_run_dir", "prepare_run_dir", "write_metrics", "write_epoch_figures",
           "preview_batch"]

_WRITTEN = (CHECKPOINT_NAME, "config.yaml", "metrics.csv", "metrics.jsonl")  # atomically, through temporaries


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/<method>-<model>-<dataset>-<YYYYmmdd-HHMMSS>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.method.name}-{cfg.model.name}-{cfg.data.name}-{stamp}".replace(":", "_").replace("/", "_")
    return Path("runs") / name


def prepare_run_dir(path: Path) -> list[Path]:
    """Create the run directory and prove it is writable, or raise ``ValueError``; returns the
    directories this created (``path`` and any missing parents), deepest first."""
    created = []
    for p in (path, *path.parents):
        if p.exists():
            break
        created.append(p)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"run directory {path} is not writable: {e.strerror or e}") from None
    return created


def write_metrics(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.jsonl`` from the full history (one row per epoch).

    Rewriting (rather than appending) keeps the files consistent with the checkpoint after a
    resume, and lets columns appear later (a method that starts logging a term mid-run).
    """
    run_dir = Path(run_dir)
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    # each written whole or not at all (CheckpointWriteError names a full disk)
    atomic_write_bytes(run_dir / "metrics.csv", lambda f: f.write(text.getvalue().encode()))
    atomic_write_bytes(run_dir / "metrics.jsonl",
                       lambda f: f.write("".join(json.dumps(row) + "\n" for row in history).encode()))


@contextmanager
def _untouched_rng(method: Method) -> Iterator[None]:
    """No gradients, and the method's generator and the global CPU RNG restored afterwards: pictures
    drawn inside do not change training."""
    g = method.generator
    state = g.get_state() if g is not None else None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        if g is not None:
            g.set_state(state)


def preview_batch(method: Method, out: StepOutput, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(images, soft targets) of a training batch for ``samples.png``: the step's own mix, else
    ``method.mix_preview`` (with the method's generator restored afterwards, so the preview does not
    change training), else the batch as it is."""
    if out.mixed is not None:
        return out.mixed.images[:16].detach().cpu(), out.mixed.targets[:16].detach().cpu()
    with _untouched_rng(method):
        mixed = method.mix_preview(images, labels)
    if mixed is None:
        return images.detach().cpu(), labels.detach().cpu()
    return mixed.images.detach().cpu(), mixed.targets.detach().cpu()


def write_epoch_figures(method: Method, model: nn.Module, images: Tensor, run_dir: Path,
                        mean: tuple[float, ...], std: tuple[float, ...]) -> list[Path]:
    """Write ``method.epoch_figures(model, images)`` into ``run_dir`` (model and method in eval mode,
    no gradients, RNGs untouched; their modes restored); returns the paths written.

    Raises:
        ValueError: a figure name that is not a plain ``.png`` file name.
    """
    modes = model.training, method.training
    model.eval()
    method.eval()
    try:
        with _untouched_rng(method):
            figures = method.epoch_figures(model, images)
    finally:
        model.train(modes[0])
        method.train(modes[1])
    paths = []
    for name, figure in figures.items():
        if Path(name).name != name or not name.endswith(".png"):
            raise ValueError(f"{type(method).__name__}.epoch_figures: figure names must be plain .png file names, "
                             f"got {name!r}")
        if isinstance(figure, ImageRows):
            plot_rows(figure.rows, run_dir / name, mean, std, title=figure.title)
        else:
            figure.savefig(run_dir / name)
        paths.append(run_dir / name)
    return paths


def _tensorboard(run_dir: Path):
    """A TensorBoard ``SummaryWriter`` in ``run_dir/tensorboard``, or ``None`` if it is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class RunWriter:
    """The run directory of one run, written by rank 0 (the other ranks only learn its path).

    Creating it picks the path (``run.out``, else the directory of ``resumed``, the checkpoint file
    the run continues, else
    :func:`default_run_dir`, rank 0's name on every rank), refuses one that already holds another
    run's checkpoint, creates it (proving it writable) and removes stale temporaries: nothing is
    written yet.

    Raises:
        ValueError: the directory holds a checkpoint and this run does not resume it, or it is not
            writable.
    """

    PLOT_EVERY_S = 30.0

    def __init__(self, cfg: TrainConfig, info: DistInfo, resumed: str | None = None) -> None:
        self.cfg, self.main = cfg, info.is_main
        self.created: list[Path] = []  # the directories this run made, deepest first
        self.kept = False  # a checkpoint was written: the directories stay
        self.tensorboard = None
        self.first = True  # the next checkpoint is this process's first (config.yaml follows it)
        self.plotted_at = -math.inf  # time.monotonic() of the last curves.png

        def prepare() -> str:
            r = cfg.run
            path = Path(r.out) if r.out else Path(resumed).parent if resumed is not None else default_run_dir(cfg)
            if resumed is None and (path / CHECKPOINT_NAME).exists():
                raise ValueError(f"run directory {path} already holds a {CHECKPOINT_NAME}; pass --resume {path} "
                                 f"to continue it, or choose another --out")
            self.created = prepare_run_dir(path)
            remove_stale_temporaries(path, _WRITTEN)  # left by a process killed while it wrote one of them
            return str(path)

        self.path = Path(on_main(prepare, info))

    def discard(self) -> None:
        """Remove the directories this run created (only while empty, so never anything else's),
        unless it wrote a checkpoint: for a run that failed before its first one."""
        if self.kept:
            return
        for p in self.created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break

    def start(self, state) -> None:
        """The run's first console line: what trains on what, for how long, where it is written."""
        if not self.main:
            return
        cfg, info, data = self.cfg, state.info, state.data
        d = cfg.data
        procs = (f" | {info.world_size} processes x batch {d.batch_size} ({info.world_size * d.batch_size} in all)"
                 if info.distributed else "")
        print(f"mixlab: {cfg.method.name} | {cfg.model.name} | {d.name} ({len(data.train_set)} train / "
              f"{len(data.test_set)} test, {state.num_classes} classes) | {cfg.optim.epochs} epochs x "
              f"{state.steps_per_epoch} steps | {info.device}{procs} | run dir {self.path}", flush=True)

    def write_checkpoint(self, checkpoint: dict[str, Any] | None) -> None:
        """The checkpoint (rank 0; ``checkpoint`` is ``None`` on the other ranks), then ``config.yaml``
        after this process's first: what a mid-epoch checkpoint writes (``run.checkpoint_every``; no
        metrics row), and the start of :meth:`write_epoch`."""
        if not self.main:
            return
        save_checkpoint(self.path / CHECKPOINT_NAME, checkpoint)
        if self.first:  # this process's first checkpoint: the config.yaml it ran with
            atomic_write_bytes(self.path / "config.yaml",
                               lambda f: f.write(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False).encode()))
            self.first = False
        self.kept = True

    def write_epoch(self, state, row: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        """After an epoch (rank 0): :meth:`write_checkpoint`, the metrics, curves (after the first
        and the last epoch, in between at most every :attr:`PLOT_EVERY_S` seconds: a plot costs about a
        tenth of an epoch of the default run), ``samples.png``
        (once), the method's figures, TensorBoard and the console line. ``checkpoint`` is the dict
        to save (``None`` on the other ranks)."""
        if not self.main:
            return
        cfg, run_dir = self.cfg, self.path
        self.write_checkpoint(checkpoint)
        if self.tensorboard is None and cfg.run.tensorboard:
            self.tensorboard = _tensorboard(run_dir)
        write_metrics(run_dir, state.history)
        now = time.monotonic()
        if row["epoch"] >= state.end_epoch or now - self.plotted_at >= self.PLOT_EVERY_S:
            plot_curves(state.history, run_dir / "curves.png")
            self.plotted_at = now
        data = state.data
        if state.samples is not None:
            at = state.preview_at
            plot_samples(*state.samples, data.train_set.classes, run_dir / "samples.png", data.train_set.mean,
                         data.train_set.std, title=f"{cfg.method.name}: " + (f"training batch of step {at + 1}" if at
                                                                              else "first training batch"))
            state.samples = None
        write_epoch_figures(state.method, state.model, data.figure_images, run_dir, data.train_set.mean,
                            data.train_set.std)
        if self.tensorboard is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.tensorboard.add_scalar(k, v, row["epoch"])
        self._print(row, state.ema is not None)

    def _print(self, row: dict[str, Any], ema: bool) -> None:
        test = f"  kNN top-1 {row['knn_acc1']:.2f}%" if "knn_acc1" in row else ""
        for key, label in (("test_miou", "test mIoU"), ("test_map", "test mAP")):  # segmentation, detection
            if key in row:
                test = f"  {label} {row[key]:.2f}%"
        if "test_acc1" in row:
            ema_text = f" (EMA {row['ema_test_acc1']:.1f}%)" if ema else ""
            test = (f"  test top-1 {row['test_acc1']:.2f}%{ema_text}  top-5 {row['test_acc5']:.2f}%  "
                    f"nll {row['test_nll']:.3f}")
        print(f"epoch {row['epoch']}/{self.cfg.optim.epochs}  loss {row['train_loss']:.4f}{test}  lr {row['lr']:.4g}  "
              f"{row['epoch_time']:.1f}s  {row['images_per_s']:.0f} img/s", flush=True)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
