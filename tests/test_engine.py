"""The engine: config loading, schedules, checkpoints, exact resume (also after SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mixlab.engine import (CheckpointError, OptimConfig, TrainConfig, build_optimizer, config_to_dict,
                           load_checkpoint, load_config, lr_factor, save_checkpoint, train)
from mixlab.engine.checkpoint import CHECKPOINT_NAME
from mixlab.methods.base import Vanilla
from mixlab.models import create_model

# a tiny run: 40 train / 20 test images of 16x16, 5 steps per epoch, 1 thread (stable timings)
TINY = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
        "model.kwargs={width: 8}", "optim.warmup_epochs=0.5", "run.progress=false", "run.threads=1"]


def _tiny(tmp_path: Path, name: str, *extra: str) -> TrainConfig:
    return load_config(overrides=TINY + [f"run.out={tmp_path / name}", *extra])


# ------------------------------------------------------------------------------------ config
def test_default_yaml_is_the_default_config():
    import importlib.resources

    text = importlib.resources.files("mixlab").joinpath("configs/default.yaml").read_text()
    assert config_to_dict(load_config(overrides=[])) == config_to_dict(TrainConfig())
    cfg = load_config(importlib.resources.files("mixlab").joinpath("configs/default.yaml"))
    assert config_to_dict(cfg) == config_to_dict(TrainConfig()), "configs/default.yaml drifted from TrainConfig"
    assert "cutmix" in text


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0.05, "epochs": 3}, "method": {"name": "mixup"}}))
    cfg = load_config(path, ["optim.lr=1e-3", "method.params.alpha=0.4", "optim.betas=[0.9, 0.95]",
                             "data.train_per_class=null"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.epochs == 3 and cfg.method.name == "mixup"
    assert cfg.method.params == {"alpha": 0.4} and cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.train_per_class is None


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "did you mean 'optim.lr'"),
    ("learningrate=0.1", "did you mean 'optim.lr'"),
    ("optim.epoch=3", "did you mean 'optim.epochs'"),
    ("trainer.lr=0.1", "unknown config key 'trainer.lr'"),
    ("optim.lr=0", "optim.lr must be a number > 0"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("optim.epochs=0", "optim.epochs must be an integer >= 1"),
    ("optim.epochs=2.5", "optim.epochs must be an integer"),
    ("data.batch_size=1", "data.batch_size must be an integer >= 2"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs must be a number in [0, optim.epochs=25]"),
    ("method.label_smoothing=1.5", "method.label_smoothing must be in [0, 1)"),
    ("run.amp=fp8", "run.amp must be 'auto', 'bf16', 'fp16' or 'none'"),
    ("optim.lr", "must look like key=value"),
])
def test_override_errors(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=[override])


def test_unknown_yaml_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match="unknown config key 'optimizer'"):
        load_config(path)


# ------------------------------------------------------------------------- optimizer / lr
def test_lr_schedule_and_weight_decay_groups():
    cfg = OptimConfig(name="sgd", lr=0.1, epochs=10, warmup_epochs=1, min_lr=0.001)
    assert lr_factor(0, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 10, cfg) == pytest.approx(0.01)  # min_lr / lr at the end
    step = OptimConfig(lr=0.1, epochs=10, warmup_epochs=0, schedule="step", milestones=[5, 8], gamma=0.1)
    assert [lr_factor(s, 10, step) for s in (0, 49, 50, 80)] == pytest.approx([1, 1, 0.1, 0.01])
    model = create_model("resnet_small", 10, width=8)
    opt = build_optimizer(model, Vanilla(10), cfg)
    decay, no_decay = opt.param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == cfg.weight_decay
    assert all(p.ndim < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


# ---------------------------------------------------------------------------- checkpoints
def test_save_is_atomic_and_failure_keeps_the_old_file(tmp_path):
    state = {k: None for k in ("epoch", "step", "config", "num_classes", "model", "optimizer", "scaler", "ema",
                               "method", "rng", "history")}
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {**state, "epoch": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, {**state, "epoch": 2, "model": lambda: None})  # unpicklable
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME]  # no temporary file left
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_truncated_and_foreign_checkpoints(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a mixlab checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="has no checkpoint.pt"):
        load_checkpoint(tmp_path)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()},
            **{f"ema.{k}": v for k, v in (ckpt["ema"] or {}).items()},
            **{f"opt.{i}.{k}": v for i, s in ckpt["optimizer"]["state"].items() for k, v in s.items()}}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_identical(tmp_path, workers):
    """2 epochs straight == 1 epoch, stop, resume, 1 epoch: weights, EMA, optimizer state, metrics."""
    extra = [f"data.num_workers={workers}", "optim.epochs=2", "model.ema_decay=0.9", "method.name=mixup-cutmix"]
    straight = train(_tiny(tmp_path, "straight", *extra))
    train(_tiny(tmp_path, "split", *extra, "run.stop_epoch=1"))
    assert load_checkpoint(tmp_path / "split")["epoch"] == 1
    resumed = train(_tiny(tmp_path, "split", *extra, f"run.resume={tmp_path / 'split'}"))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("train_loss", "train_acc", "test_acc1", "test_nll", "ema_test_acc1"):
        assert straight[key] == resumed[key], key
    rows = [line for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2


def test_resume_mismatch_is_refused_before_training(tmp_path):
    train(_tiny(tmp_path, "r", "optim.epochs=2", "run.stop_epoch=1", "data.num_workers=0"))
    ckpt_bytes = (tmp_path / "r" / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(CheckpointError, match=r"model.name: checkpoint has 'resnet_small', this run 'preactresnet18'"):
        train(_tiny(tmp_path, "r", "model.name=preactresnet18", "model.kwargs={}", f"run.resume={tmp_path / 'r'}"))
    with pytest.raises(CheckpointError, match=r"method.name: checkpoint has 'cutmix', this run 'mixup'"):
        train(_tiny(tmp_path, "r", "method.name=mixup", f"run.resume={tmp_path / 'r'}"))
    with pytest.raises(CheckpointError, match="cannot load the saved model weights into this run: .*size mismatch"):
        _resume_with_tampered_kwargs(tmp_path)
    assert (tmp_path / "r" / CHECKPOINT_NAME).read_bytes() == ckpt_bytes  # never overwritten on failure
    with pytest.raises(ValueError, match="already holds a checkpoint.pt"):
        train(_tiny(tmp_path, "r", "optim.epochs=2"))


def _resume_with_tampered_kwargs(tmp_path: Path):
    """A checkpoint whose config claims the current model but whose weights are another width."""
    ckpt = torch.load(tmp_path / "r" / CHECKPOINT_NAME, weights_only=True)
    ckpt["config"]["model"]["kwargs"] = {"width": 4}
    (tmp_path / "t").mkdir()
    torch.save(ckpt, tmp_path / "t" / CHECKPOINT_NAME)
    return train(_tiny(tmp_path, "t", "model.kwargs={width: 4}", f"run.resume={tmp_path / 't'}"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """Kill -9 a running ``mixlab train`` after its first checkpoint (mid-epoch, or even while it
    writes the next one); resuming from the run directory finishes the run."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mixlab.cli", "train", "--epochs", "6", "--batch-size", "16", "--workers", "0",
           "--out", str(run_dir), "--set", "data.num_per_class=40", "--set", "data.test_per_class=2",
           "--set", "data.image_size=16",
           "--set", "model.kwargs={width: 8}", "--set", "run.progress=false", "--set", "run.threads=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = run_dir / CHECKPOINT_NAME
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.communicate()[0]}"
    time.sleep(0.2)  # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = load_checkpoint(run_dir)  # whatever moment the kill hit, the checkpoint is whole
    assert 1 <= first["epoch"] < 6
    out = subprocess.run([sys.executable, "-m", "mixlab.cli", "train", "--resume", str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "final test accuracy" in out.stdout
    final = load_checkpoint(run_dir)
    assert final["epoch"] == 6 and [row["epoch"] for row in final["history"]] == [1, 2, 3, 4, 5, 6]
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 6


def test_soft_label_text_and_plots(tmp_path):
    from mixlab.engine.plots import plot_curves, plot_samples, soft_label_text

    assert soft_label_text(torch.tensor([0.38, 0.0, 0.62]), ["dog", "cow", "cat"]) == "cat .62 / dog .38"
    assert soft_label_text(torch.tensor([0.0, 1.0, 0.0]), ["dog", "cow", "cat"]) == "cow 1.00"
    history = [{"epoch": e, "train_loss": 2.0 / e, "test_acc1": 10.0 * e, "test_nll": 1.0} for e in (1, 2)]
    plot_curves(history, tmp_path / "curves.png")
    images = torch.randn(6, 3, 8, 8)
    plot_samples(images, torch.softmax(torch.randn(6, 3), 1), ["a", "b", "c"], tmp_path / "samples.png",
                 mean=(0.5,) * 3, std=(0.2,) * 3)
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "samples.png").stat().st_size > 0


def test_curves_are_plotted_after_the_first_and_last_epoch_and_in_between_at_most_every_30_s(tmp_path,
                                                                                              monkeypatch):
    """matplotlib costs about a tenth of a short epoch: a run of short epochs plots its curves after
    epoch 1, then only when ``RunWriter.PLOT_EVERY_S`` has passed, and after its last epoch."""
    import mixlab.engine.writer as writer

    plotted = []
    monkeypatch.setattr(writer, "plot_curves", lambda history, path: plotted.append(len(history)))
    train(_tiny(tmp_path, "a", "optim.epochs=4"))
    assert plotted == [1, 4]
    plotted.clear()
    monkeypatch.setattr(writer.RunWriter, "PLOT_EVERY_S", 0.0)
    train(_tiny(tmp_path, "b", "optim.epochs=3"))
    assert plotted == [1, 2, 3]


def test_train_step_clips_gradients():
    from mixlab.engine import train_step

    torch.manual_seed(0)
    model = create_model("resnet_small", 10, width=8)
    method = Vanilla(10)
    opt = build_optimizer(model, method, OptimConfig(lr=0.0))
    batch = (torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    out = train_step(model, method, opt, batch, 0.0, clip_grad=1e-3)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert torch.isfinite(out.loss) and norm <= 1e-3 * (1 + 1e-4)
