"""Checkpoints every N steps (``run.checkpoint_every``), resumed exactly mid-epoch (issue 23 §4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mixlab.engine import CheckpointError, load_checkpoint, load_config, train
from mixlab.engine.checkpoint import CHECKPOINT_NAME
from mixlab.engine.data import EpochSampler, SeededItems
from mixlab.engine.presets import run_config
from mixlab.engine.writer import RunWriter

# 40 train / 20 test images of 16x16, 5 steps per epoch, 1 thread
TINY = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
        "model.kwargs={width: 8}", "optim.warmup_epochs=0.5", "run.progress=false", "run.threads=1",
        "data.num_workers=0"]
TIMINGS = ("epoch_time", "train_time", "images_per_s")  # wall-clock: the only keys that may differ


def _run(tmp_path: Path, name: str, *extra: str) -> dict[str, Any]:
    return train(load_config(overrides=[*TINY, f"run.out={tmp_path / name}", *extra]))


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def _same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` equal all the way down, tensors by ``torch.equal``."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _same_final_state(straight: Path, resumed: Path) -> None:
    """The final checkpoints hold the same weights, EMA, optimizer, method and RNG states, and the
    metrics files the same rows (timings aside)."""
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for key in ("epoch", "step", "epoch_step", "model", "ema", "optimizer", "scaler", "method", "rng", "rng_per_rank",
                "method_per_rank"):
        _same(a[key], b[key], key)
    assert _rows(straight) == _rows(resumed)
    assert len(_rows(resumed)) == a["epoch"]  # one row per epoch: mid-epoch checkpoints added none


class _Killed(BaseException):
    """Stands for the process dying right after a checkpoint was written."""


def _die_after_checkpoint(monkeypatch, step: int) -> None:
    real = RunWriter.write_checkpoint

    def write(self, checkpoint):
        real(self, checkpoint)
        if checkpoint["step"] == step:
            raise _Killed

    monkeypatch.setattr(RunWriter, "write_checkpoint", write)


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("value, message", [
    ("-1", ("run.checkpoint_every must be an integer >= 0 (optimizer steps between checkpoints; 0 = at epoch ends "
            "only), got -1")),
    ("2.5", "run.checkpoint_every must be an integer, got 2.5"),
    ("often", "run.checkpoint_every must be an integer, got 'often'"),
])
def test_checkpoint_every_takes_a_step_count(value, message):
    assert load_config(overrides=[]).run.checkpoint_every == 0  # default: at epoch ends only
    assert load_config(overrides=["run.checkpoint_every=500"]).run.checkpoint_every == 500
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=[f"run.checkpoint_every={value}"])


# --------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("world_size", [1, 3])
def test_sampler_resumes_inside_the_same_permutation(world_size):
    for rank in range(world_size):
        sampler = EpochSampler(23, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        whole = list(sampler)
        for start in (0, 1, 4, len(whole)):
            sampler.set_epoch(2, start=start)
            assert list(sampler) == whole[start:] and len(sampler) == len(whole) - start
        sampler.set_epoch(3)  # the next epoch starts at its beginning again
        assert len(list(sampler)) == len(whole) and list(sampler) != whole
    with pytest.raises(ValueError, match=r"start must be an integer in \[0, 23\].*got 24"):
        EpochSampler(23, seed=5).set_epoch(0, start=24)


def test_skipped_positions_are_never_loaded():
    loaded = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 20

        def __getitem__(self, index: int):
            loaded.append(index)
            return torch.zeros(1), index

    sampler = EpochSampler(20, seed=0)
    loader = torch.utils.data.DataLoader(SeededItems(Counting(), seed=1), batch_size=4, sampler=sampler,
                                         drop_last=True)
    sampler.set_epoch(0)
    whole = torch.cat([labels for _, labels in loader]).tolist()
    loaded.clear()
    sampler.set_epoch(0, start=12)
    rest = torch.cat([labels for _, labels in loader]).tolist()
    assert rest == whole[12:] and sorted(loaded) == sorted(whole[12:])


# --------------------------------------------------------------------------- mid-epoch, in process
@pytest.mark.parametrize("killed_at", [3, 9])  # in epoch 1 (its samples.png batch pending), in epoch 2
def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(tmp_path, monkeypatch, killed_at):
    """RecursiveMix (a history carried from step to step, reset at epoch starts; samples.png of step
    2), an EMA, 2 epochs of 5 steps, a checkpoint every 3 steps: a run that dies right after the
    checkpoint of step ``killed_at`` and is resumed ends where an uninterrupted run ends."""
    extra = ["optim.epochs=2", "method.name=recursivemix", "model.ema_decay=0.9", "run.checkpoint_every=3"]
    straight = _run(tmp_path, "straight", *extra)
    _die_after_checkpoint(monkeypatch, killed_at)
    with pytest.raises(_Killed):
        _run(tmp_path, "split", *extra)
    monkeypatch.undo()
    mid = load_checkpoint(tmp_path / "split")
    assert (mid["epoch"], mid["step"], mid["epoch_step"]) == (killed_at // 5, killed_at, killed_at % 5)
    assert len(mid["history"]) == len(_rows(tmp_path / "split")) == killed_at // 5  # no row for a partial epoch
    assert (mid["samples"] is not None) == (killed_at < 5)  # drawn at step 2, written at the end of epoch 1
    assert (tmp_path / "split" / "config.yaml").is_file()
    resumed = _run(tmp_path, "split", *extra, f"run.resume={tmp_path / 'split'}")
    _same_final_state(tmp_path / "straight", tmp_path / "split")
    assert {k: v for k, v in straight.items() if k not in TIMINGS + ("run_dir", "checkpoint")} == \
        {k: v for k, v in resumed.items() if k not in TIMINGS + ("run_dir", "checkpoint")}
    assert (tmp_path / "split" / "samples.png").is_file()


def test_epoch_end_checkpoints_go_on_and_steps_count_over_the_run(tmp_path, monkeypatch):
    """Checkpoints at steps 3, 6, 9 (mid-epoch) and at the ends of epochs (5, 10): a step that ends
    an epoch writes the epoch's checkpoint only."""
    written = []
    real = RunWriter.write_checkpoint
    monkeypatch.setattr(RunWriter, "write_checkpoint",
                        lambda self, c: written.append((c["step"], c["epoch_step"])) or real(self, c))
    _run(tmp_path, "run", "optim.epochs=2", "run.checkpoint_every=3")
    assert written == [(3, 3), (5, 0), (6, 1), (9, 4), (10, 0)]
    written.clear()
    _run(tmp_path, "every5", "optim.epochs=2", "run.checkpoint_every=5")
    assert written == [(5, 0), (10, 0)]


def test_a_mid_epoch_checkpoint_resumes_only_with_the_same_steps_per_epoch(tmp_path, monkeypatch):
    _die_after_checkpoint(monkeypatch, 3)
    with pytest.raises(_Killed):
        _run(tmp_path, "run", "optim.epochs=2", "run.checkpoint_every=3")
    monkeypatch.undo()
    before = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(CheckpointError, match=r"written mid-epoch \(step 3 of 5 of epoch 1\) and this run has 10 "
                                              r"steps per epoch: resume it with the data.batch_size"):
        _run(tmp_path, "run", "optim.epochs=2", "data.batch_size=4", f"run.resume={tmp_path / 'run'}")
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == before


def test_divergence_after_a_mid_epoch_checkpoint_names_it(tmp_path, monkeypatch, capsys):
    import mixlab.engine.loop as loop

    real = loop.train_step
    steps = []

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        steps.append(1)
        if len(steps) == 5:  # step 5 (batch 5 of epoch 1) diverges, after the checkpoint of step 3
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(loop, "train_step", step)
    with pytest.raises(FloatingPointError, match=r"step 5 \(epoch 1, batch 5 of 5\).*its last checkpoint "
                                                 r"\(step 3, in epoch 1\) is untouched"):
        _run(tmp_path, "run", "optim.epochs=2", "run.checkpoint_every=3")
    assert load_checkpoint(tmp_path / "run")["step"] == 3


# ------------------------------------------------------------------------ SIGKILL, in a subprocess
def _env() -> dict[str, str]:
    """This checkout's sources first; no torchrun variables of an outer job; one OpenMP thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    path = os.pathsep.join(p for p in (str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _train_command(settings: list[str], *args: str, processes: int = 1) -> list[str]:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
              if processes > 1 else [sys.executable])
    return [*launch, "-m", "mixlab.cli", "train", "--no-eval", *(x for s in settings for x in ("--set", s)), *args]


def _kill_after_first_checkpoint(cmd: list[str], run_dir: Path) -> dict[str, Any]:
    """Start ``cmd`` in a session of its own, SIGKILL the whole session (the training processes and
    their loader workers) as soon as ``run_dir`` holds a checkpoint; returns that checkpoint."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
    ckpt = run_dir / CHECKPOINT_NAME
    deadline = time.time() + 300
    try:
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{proc.stdout.read()}"
    return load_checkpoint(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume(tmp_path, workers):
    """``mixlab train`` (2 epochs of 25 steps, a checkpoint every 10 steps) is killed with SIGKILL as
    soon as its first checkpoint (step 10, mid-epoch) appears; resuming finishes it with the
    weights, optimizer, RNG states and metrics rows of an uninterrupted run, with 0 and 2 workers."""
    settings = ["data.num_per_class=40", "data.test_per_class=2", "data.image_size=16", "data.batch_size=16",
                f"data.num_workers={workers}", "model.kwargs={width: 8}", "optim.warmup_epochs=0.5",
                "run.progress=false", "run.threads=1", "optim.epochs=2", "run.checkpoint_every=10"]
    train(load_config(overrides=[*settings, f"run.out={tmp_path / 'straight'}"]))
    run_dir = tmp_path / "killed"
    killed = _kill_after_first_checkpoint(_train_command(settings, "--out", str(run_dir)), run_dir)
    assert killed["epoch"] == 0 and killed["epoch_step"] in (10, 20), "killed after a mid-epoch checkpoint"
    assert _rows(run_dir) == []  # no metrics row before the first epoch ends
    train(run_config(None, resume=str(run_dir)))  # as `mixlab train --resume <run dir>` does
    _same_final_state(tmp_path / "straight", run_dir)


@pytest.mark.slow
def test_two_processes_resume_a_mid_epoch_checkpoint_exactly(tmp_path):
    """torchrun, 2 processes (gloo), RecursiveMix keeping a history per rank across epochs, 10 steps
    per epoch, a checkpoint every 3 steps: the job killed after its first checkpoint (mid-epoch,
    both ranks' epoch sums in it) and resumed ends as the uninterrupted 2-process run."""
    settings = ["data.num_per_class=16", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
                "data.num_workers=0", "model.kwargs={width: 8}", "optim.warmup_epochs=0.5", "run.progress=false",
                "run.threads=1", "optim.epochs=2", "run.checkpoint_every=3", "method.name=recursivemix",
                "method.params={reset_each_epoch: false}"]
    straight, run_dir = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_train_command(settings, "--out", str(straight), processes=2), env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _kill_after_first_checkpoint(_train_command(settings, "--out", str(run_dir), processes=2), run_dir)
    assert killed["epoch"] == 0 and killed["epoch_step"] in (3, 6, 9) and killed["steps_per_epoch"] == 10
    assert len(killed["epoch_sums"]) == 2 and killed["epoch_sums"][0]["seen"] == 8 * killed["epoch_step"]
    done = subprocess.run(_train_command([], "--resume", str(run_dir), processes=2), env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_final_state(straight, run_dir)
