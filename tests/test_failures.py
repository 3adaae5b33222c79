"""Bad input and failure modes, tried as a new user would (issue 22 §4): each ends in one clear
error that names the problem and what to do, no traceback, and nothing half-written."""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixlab.cli import build_parser, main
from mixlab.engine import load_checkpoint, load_config, train
from mixlab.engine.checkpoint import CHECKPOINT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny synthetic run: 40 train / 20 test images of 16x16, 5 steps per epoch
TINY = ["--set", "data.num_per_class=4", "--set", "data.test_per_class=2", "--set", "data.image_size=16",
        "--set", "model.kwargs={width: 8}", "--set", "optim.warmup_epochs=0", "--set", "run.progress=false",
        "--set", "run.threads=1", "--batch-size", "8", "--workers", "0", "--no-eval"]
TINY_KEYS = [TINY[i + 1] for i in range(0, 14, 2)] + ["data.batch_size=8", "data.num_workers=0"]


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Decoded ImageFolder caches go to the test's folder, not ~/.cache."""
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "cache"))


def _fails(capsys, *argv: str, status: int = 2) -> str:
    """Run ``mixlab ARGV``: it must exit with ``status`` and print an error, not a traceback; its stderr."""
    assert main(list(argv)) == status
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run trained to its last epoch (3 of 3)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(overrides=[*TINY_KEYS, "optim.epochs=3", f"run.out={run_dir}"]))
    return run_dir


# ------------------------------------------------------- 1. test labels are the train split's
_COLOURS = {"a": (220, 30, 30), "b": (30, 200, 40), "c": (40, 60, 220), "d": (230, 230, 40)}


def _png(rgb: tuple[int, int, int], seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(-20, 21, (16, 16, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(tmp_path: Path, form: str, test_classes: str) -> Path:
    """An ImageFolder of one flat colour per class (trivially separable): train/{a,b,c} with 8
    images each, test/<test_classes> with 4 each, as a directory or a .zip."""
    files = {f"{split}/{c}/{i}.png": _png(_COLOURS[c], seed)
             for split, classes, n in (("train", "abc", 8), ("test", test_classes, 4))
             for seed, (c, i) in enumerate((c, i) for c in classes for i in range(n))}
    if form == "zip":
        root = tmp_path / "shapes.zip"
        with zipfile.ZipFile(root, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return root
    root = tmp_path / "shapes"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("form", ["dir", "zip"])
def test_a_test_split_without_a_class_is_labelled_by_the_train_split(tmp_path, capsys, form):
    """test/ lacks class 'a': its images of 'b' and 'c' keep the train split's labels 1 and 2
    (not 0 and 1), so the model that learnt the colours scores them right, in training and eval."""
    from mixlab.engine.eval_run import evaluate_checkpoint

    root = _folder(tmp_path, form, test_classes="bc")
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "imagefolder", "--data-root", str(root), "--method", "vanilla",
                 "--epochs", "4", "--set", "data.augment=none", "--out", str(run_dir)]) == 0
    assert "(24 train / 8 test, 3 classes)" in capsys.readouterr().out
    assert load_checkpoint(run_dir)["history"][-1]["test_acc1"] > 50  # shifted labels: 0 %
    results = evaluate_checkpoint(run_dir, fgsm=False, corruptions=False, progress=False)
    assert results["clean"]["top1"] > 50


@pytest.mark.parametrize("form", ["dir", "zip"])
def test_a_test_class_the_train_split_lacks_is_refused_before_training(tmp_path, capsys, form):
    root = _folder(tmp_path, form, test_classes="bcd")
    run_dir = tmp_path / "run"
    err = _fails(capsys, "train", *TINY, "--dataset", "imagefolder", "--data-root", str(root), "--out", str(run_dir))
    assert "has class(es) 'd' that its train split lacks" in err and str(root) in err
    assert not run_dir.exists()


def test_with_classes_relabels_by_name():
    from mixlab.data import ImageTensorDataset

    test = ImageTensorDataset(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]), ["cat", "dog"])
    relabelled = test.with_classes(["ant", "cat", "dog"])
    assert relabelled.labels.tolist() == [1, 2, 2] and relabelled.classes == ["ant", "cat", "dog"]
    assert test.labels.tolist() == [0, 1, 1]  # a view: the original keeps its labels
    with pytest.raises(ValueError, match="class\\(es\\) 'dog' of this dataset are not among the 2 classes"):
        test.with_classes(["ant", "cat"])


# ------------------------------------------------------------- 2. model kwargs the model lacks
@pytest.mark.parametrize("model, kwargs, takes", [
    ("resnet_small", "model.kwargs.foo=1", "it takes width, strides, in_chans"),
    ("vit_tiny_patch4", "model.kwargs={foo: 1}", "it takes img_size, patch_size"),  # forwarded to timm's class
])
def test_unknown_model_kwargs_name_the_accepted_ones(tmp_path, capsys, model, kwargs, takes):
    err = _fails(capsys, "train", *TINY, "--model", model, "--set", kwargs, "--out", str(tmp_path / "run"))
    assert "model " + repr(model) + " takes no argument 'foo' (model.kwargs.foo)" in err and takes in err
    assert not (tmp_path / "run").exists()


def test_a_misspelt_model_kwarg_gets_a_suggestion():
    from mixlab import registry

    with pytest.raises(ValueError, match="takes no argument 'widht' .* \\(did you mean 'width'\\?\\)"):
        registry.check_names(model="resnet_small", model_kwargs={"widht": 8})
    assert registry.model_arguments("wrn28_2") == (["depth", "widen_factor", "dropout", "in_chans", "drop_rate",
                                                    "zero_init_residual"], True)


# ------------------------------------------------------------------------ 3. a diverging run
def test_divergence_stops_at_the_first_non_finite_loss(tmp_path, capsys, monkeypatch):
    import mixlab.engine.loop as loop

    steps = []
    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    run_dir = tmp_path / "deep" / "run"
    err = _fails(capsys, "train", *TINY, "--lr", "1e30", "--epochs", "2", "--out", str(run_dir), status=1)
    assert "the training loss became nan at step 2 (epoch 1, batch 2 of 5)" in err
    assert "Lower the learning rate (optim.lr is 1e+30: --lr)" in err and "optim.clip_grad" in err
    assert len(steps) == 2  # stopped at once, not after the epoch
    assert not (tmp_path / "deep").exists()  # nothing left behind: no checkpoint had been written


@pytest.mark.slow
def test_divergence_stops_every_process_of_a_data_parallel_run(tmp_path):
    """Two processes read the flag together (every 10 steps and at the end of each epoch): both stop
    at the end of epoch 1 (5 steps) naming the first bad step, and rank 0 removes its run directory."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT")}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run([*launch, "-m", "mixlab.cli", "train", *TINY, "--batch-size", "4", "--lr", "1e30",
                          "--epochs", "2", "--out", str(tmp_path / "run")], cwd=tmp_path,
                         env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0
    assert out.stderr.count("the training loss became nan at step 2 (epoch 1, batch 2 of 5)") == 2, out.stderr[-3000:]
    assert "mixlab/engine" not in out.stderr  # no traceback of the processes (torchrun prints its own)
    assert not (tmp_path / "run").exists()


def test_loss_watch_reports_the_first_bad_step_when_read():
    """On a GPU the loop reads the flag every 10 steps and at the end of each epoch: the steps between
    reads only update tensors on the device, and a read names the first bad step and its loss."""
    from mixlab.engine.optim import LossWatch

    watch = LossWatch(torch.device("cpu"), every=10)
    for step, loss in enumerate([1.0, 2.0, 0.5, float("inf"), float("nan"), 3.0]):
        watch.update(torch.tensor(loss), step)
    assert [watch.due(s, end_of_epoch=False) for s in (6, 9, 10, 20)] == [False, False, True, True]
    assert watch.due(6, end_of_epoch=True)
    assert watch.bad(distributed=False) == (3, float("inf"))
    fine = LossWatch(torch.device("cpu"), every=10)
    fine.update(torch.tensor(0.1), 0)
    assert fine.bad(distributed=False) is None


# --------------------------------------------------------------- 4. a full disk at checkpoint time
class _FullDisk:
    """A file whose writes fail with ENOSPC once ``limit`` bytes are written (what a full disk does
    to ``torch.save``, which then raises ``RuntimeError: ... unexpected pos``)."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.left = f, limit

    def write(self, data) -> int:
        if len(data) > self.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _disk_full_after(monkeypatch, good_writes: int) -> None:
    """Checkpoint writes after the first ``good_writes`` fail on a full disk."""
    from mixlab.engine import checkpoint

    real = checkpoint.atomic_write_bytes
    calls = []

    def write(path, fn):
        calls.append(path)
        return real(path, fn if len(calls) <= good_writes else lambda f: fn(_FullDisk(f, limit=4096)))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", write)


def test_full_disk_keeps_the_old_checkpoint_and_removes_the_temporary(tmp_path, monkeypatch):
    from mixlab.engine.checkpoint import save_checkpoint

    state = {k: None for k in ("epoch", "step", "config", "num_classes", "model", "optimizer", "scaler", "ema",
                               "method", "rng", "history")}
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {**state, "epoch": 1})
    before = path.read_bytes()
    _disk_full_after(monkeypatch, good_writes=0)
    with pytest.raises(OSError, match=f"no space left on device while writing {path}") as e:
        save_checkpoint(path, {**state, "epoch": 2, "model": {"w": torch.zeros(10_000)}})
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_full_disk_during_training_is_one_clear_error(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    _disk_full_after(monkeypatch, good_writes=1)
    err = _fails(capsys, "train", *TINY, "--epochs", "3", "--out", str(run_dir))
    assert f"no space left on device while writing {run_dir / CHECKPOINT_NAME}" in err and "--resume" in err
    assert load_checkpoint(run_dir)["epoch"] == 1  # the last good checkpoint
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------ 5. temporaries of a killed checkpoint write
def test_stale_checkpoint_temporaries_are_removed_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    train(load_config(overrides=[*TINY_KEYS, "optim.epochs=2", "run.stop_epoch=1", f"run.out={run_dir}"]))
    stale = [run_dir / ".checkpoint.pt.k3j_9x2a.tmp", run_dir / ".checkpoint.pt.0a1b2c3d.tmp",
             run_dir / ".metrics.csv.0a1b2c3d.tmp"]
    foreign = [run_dir / ".checkpoint.pt.notes", run_dir / "my.tmp", run_dir / ".checkpoint.pt.0a1b2c3d.tmp.keep",
               run_dir / ".other.pt.0a1b2c3d.tmp"]
    for p in stale + foreign:
        p.write_bytes(b"x" * 100)
    train(load_config(overrides=[*TINY_KEYS, "optim.epochs=2", f"run.resume={run_dir}"]))
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"x" * 100 for p in foreign)


def test_stale_checkpoint_temporaries_are_removed_when_a_run_starts(tmp_path):
    """A run killed while it wrote its first checkpoint left only a temporary: starting again in the
    same directory removes it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".checkpoint.pt.abcdefgh.tmp").write_bytes(b"half a checkpoint")
    train(load_config(overrides=[*TINY_KEYS, "optim.epochs=1", f"run.out={run_dir}"]))
    assert not (run_dir / ".checkpoint.pt.abcdefgh.tmp").exists() and (run_dir / CHECKPOINT_NAME).is_file()


# ------------------------------------------------------ 6. no run directory without a checkpoint
def _fail_at_step(monkeypatch, step: int, error: BaseException) -> None:
    import mixlab.engine.loop as loop

    calls = []
    real_step = loop.train_step

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise error
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", failing)


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_directory(tmp_path, monkeypatch, error):
    monkeypatch.chdir(tmp_path)
    _fail_at_step(monkeypatch, 3, error)
    with pytest.raises(type(error)):
        train(load_config(overrides=[*TINY_KEYS, "optim.epochs=1"]))  # the default runs/<name>
    assert os.listdir(tmp_path) == []


def test_a_failed_run_leaves_a_given_directory_as_it_was(tmp_path, monkeypatch):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("my notes")
    _fail_at_step(monkeypatch, 2, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        train(load_config(overrides=[*TINY_KEYS, "optim.epochs=1", f"run.out={run_dir}"]))
    assert sorted(os.listdir(run_dir)) == ["notes.txt"] and (run_dir / "notes.txt").read_text() == "my notes"


def test_a_run_that_fails_after_its_first_checkpoint_keeps_it(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _fail_at_step(monkeypatch, 7, RuntimeError("boom"))  # in epoch 2 (5 steps an epoch)
    with pytest.raises(RuntimeError, match="boom"):
        train(load_config(overrides=[*TINY_KEYS, "optim.epochs=2", f"run.out={run_dir}"]))
    assert load_checkpoint(run_dir)["epoch"] == 1 and (run_dir / "config.yaml").is_file()


# ------------------------------------------------------------- 7. resuming a run with nothing left
def test_resume_with_nothing_to_train_leaves_the_run_untouched(finished_run, capsys):
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished_run.iterdir()}
    err = _fails(capsys, "train", "--resume", str(finished_run), "--epochs", "2", "--set", "run.progress=false")
    assert f"nothing to train: {finished_run / CHECKPOINT_NAME} is at epoch 3 of 3 and this run asks for 2 epochs" \
           in err and "--epochs N, N > 3" in err and f"mixlab eval {finished_run}" in err
    err = _fails(capsys, "train", "--resume", str(finished_run), "--set", "run.progress=false")
    assert "is at epoch 3 of 3 and this run asks for 3 epochs" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished_run.iterdir()} == files


# ---------------------------------------------------------- 8. eval of a self-supervised run
def test_eval_of_a_self_supervised_run_points_to_probe(tmp_path, capsys):
    run_dir = tmp_path / "ssl"
    train(load_config(overrides=[*TINY_KEYS, "optim.epochs=1", "method.name=mocov3", "data.batch_size=12",
                                 "method.params={dim: 16, mlp_dim: 32}", f"run.out={run_dir}"]))
    before = sorted(os.listdir(run_dir))
    err = _fails(capsys, "eval", str(run_dir), "--no-progress")
    assert "it is a self-supervised run (mocov3), whose classifier was never trained" in err
    assert f"`mixlab probe {run_dir}`" in err
    assert sorted(os.listdir(run_dir)) == before  # no eval.json


def test_is_self_supervised_is_the_methods_class_attribute():
    """Each registered name declares the class it builds, and the class declares whether it is
    self-supervised: the name, the built method and the class answer alike, without building."""
    from mixlab import registry
    from mixlab.methods.base import Method

    for name in registry.METHODS:
        method = registry.build_method(name, num_classes=10)
        assert type(method) is registry.method_class(name), name
        assert registry.is_self_supervised(name) == registry.is_self_supervised(method) \
            == type(method).self_supervised, name
    assert registry.self_supervised_methods() == ("mocov3", "mocov2", "samix-ssl", "dino", "mae")
    assert Method.self_supervised is False and Method.preview_lams == ()


# -------------------------------------------------------------- 9. other trainers' key names
@pytest.mark.parametrize("override, key, value", [
    ("optim.learning_rate=0.1", "optim.lr", 0.1), ("learning_rate=0.1", "optim.lr", 0.1), ("lr=0.1", "optim.lr", 0.1),
    ("wd=0.01", "optim.weight_decay", 0.01), ("optim.wd=0.01", "optim.weight_decay", 0.01),
    ("weight_decay=0.01", "optim.weight_decay", 0.01), ("momentum=0.5", "optim.momentum", 0.5),
    ("batch_size=64", "data.batch_size", 64), ("optim.batch_size=64", "data.batch_size", 64),
    ("epochs=7", "optim.epochs", 7), ("warmup=2", "optim.warmup_epochs", 2.0),
    ("smoothing=0.1", "method.label_smoothing", 0.1), ("workers=3", "data.num_workers", 3),
])
def test_common_spellings_of_config_keys(override, key, value):
    section, name = key.split(".")
    assert getattr(getattr(load_config(overrides=[override]), section), name) == value


def test_aliases_in_a_yaml_file_and_suggestions(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.02\n  wd: 0.001\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 0.02 and cfg.optim.weight_decay == 0.001
    with pytest.raises(ValueError, match="unknown config key 'optim.learningrate' \\(did you mean 'optim.lr'\\?\\)"):
        load_config(overrides=["optim.learningrate=0.1"])


@pytest.mark.parametrize("argv, hint", [
    (["train", "--foo"], "unrecognized arguments: --foo; settings without a flag go through --set key=value, "
                              "e.g. --set optim.lr=0.1; see mixlab train --help"),
    (["train", "--learning-rate", "0.1"], "e.g. --set optim.lr=0.1; see mixlab train --help"),
    (["train", "--num-epochs"], "e.g. --set optim.epochs=VALUE; see mixlab train --help"),
    (["pretrain", "--momentum=0.5"], "e.g. --set optim.momentum=0.5; see mixlab pretrain --help"),
    (["eval", "runs/x", "--foo"], "unrecognized arguments: --foo; see mixlab eval --help"),
])
def test_an_unknown_flag_points_to_set(capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and hint in capsys.readouterr().err


# ---------------------------------------------------------------- 10. timm train.py's flag names
def _config(*argv: str):
    from mixlab.cli import config_from_args

    return config_from_args(build_parser().parse_args(list(argv)))


def test_timm_flags_set_the_config(tmp_path):
    cfg = _config("train", "-b", "64", "-j", "3", "--opt", "sgd", "--lr", "0.2", "--weight-decay", "5e-4",
                  "--sched", "step", "--warmup-epochs", "2", "--smoothing", "0.1", "--clip-grad", "1.5", "--amp",
                  "--model-ema", "--data-dir", "/data/x.zip", "--dataset", "imagefolder", "--output", str(tmp_path))
    assert (cfg.data.batch_size, cfg.data.num_workers, cfg.data.root) == (64, 3, "/data/x.zip")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("sgd", 0.2, 5e-4, "step")
    assert (cfg.optim.warmup_epochs, cfg.optim.clip_grad, cfg.method.label_smoothing) == (2.0, 1.5, 0.1)
    assert cfg.run.amp == "auto" and cfg.model.ema_decay == 0.9998  # timm's default decay
    out = Path(cfg.run.out)  # timm's --output is the parent of the run directory
    assert out.parent == tmp_path and out.name.startswith("cutmix-resnet_small-imagefolder-")
    cfg = _config("train", "--amp", "bf16", "--model-ema-decay", "0.99", "--batch-size", "32", "--workers", "1")
    assert (cfg.run.amp, cfg.model.ema_decay, cfg.data.batch_size, cfg.data.num_workers) == ("bf16", 0.99, 32, 1)
    assert _config("train").model.ema_decay == 0.0 and _config("train").run.out is None


def test_timm_flags_of_pretrain_and_their_errors(tmp_path, capsys):
    cfg = _config("pretrain", "-b", "32", "--opt", "sgd", "--weight-decay", "0", "--clip-grad", "3")
    assert (cfg.data.batch_size, cfg.optim.name, cfg.optim.weight_decay, cfg.optim.clip_grad) == (32, "sgd", 0.0, 3.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--smoothing", "0.1"])  # no labels to smooth
    assert "unrecognized arguments: --smoothing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "a", "--output", "b"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="optim.name must be 'sgd' or 'adamw', got 'lamb'"):
        _config("train", "--opt", "lamb")


def test_download_flag_fetches_only_datasets_that_can(monkeypatch, tmp_path):
    """`--download` (data.download) reaches the dataset builder of cifar10/cifar100/cub200, whose
    torchvision-style readers fetch the official md5-checked archive; any other dataset is refused
    before anything is built."""
    from mixlab.engine.data import build_split

    cfg = _config("train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--download")
    assert cfg.data.download is True and _config("train").data.download is False
    seen = {}
    monkeypatch.setattr("mixlab.registry.build_dataset",
                        lambda name, split, root=None, **kw: seen.update(name=name, root=root, **kw))
    build_split(cfg, "train")
    assert seen == {"name": "cifar10", "root": str(tmp_path), "download": True}
    with pytest.raises(ValueError, match=r"data.download must be false for dataset 'synthetic' \(only cifar10"):
        _config("train", "--download")


# ------------------------------------------------------------------ 11. RecursiveMix's samples.png
@pytest.mark.parametrize("method, step", [("recursivemix", 2), ("cutmix", 1)])
def test_samples_png_draws_the_methods_preview_step(tmp_path, monkeypatch, method, step):
    """RecursiveMix's first step has no history (each image pasted into itself, labels 1.00):
    samples.png draws its second step, mixed with the first batch."""
    import mixlab.engine.writer as writer

    drawn = []
    monkeypatch.setattr(writer, "plot_samples", lambda images, targets, *a, title, **k: drawn.append((targets, title)))
    train(load_config(overrides=[*TINY_KEYS, "optim.epochs=1", f"method.name={method}", f"run.out={tmp_path / 'r'}"]))
    (targets, title), = drawn
    assert title == f"{method}: " + ("first training batch" if step == 1 else f"training batch of step {step}")
    assert (targets.max(1).values < 1).any()  # some images are mixed


# -------------------------------------------------------------- 12. the reliability diagram's legend
@pytest.mark.parametrize("confident", ["over", "under"])
def test_reliability_gap_is_hatched_and_unfilled(confident):
    """The gap between accuracy and confidence is an unfilled box with red hatching from one to the
    other: the accuracy bars stay the legend's opaque blue under it, whichever side it lies on."""
    from matplotlib.colors import to_rgba

    from mixlab.evaluation.calibration import ACCURACY_COLOR, GAP_COLOR, calibration_bins, reliability_figure

    g = torch.Generator().manual_seed(0)
    if confident == "over":  # confidence 0.8-0.99, half of them right
        conf, labels = 0.8 + 0.19 * torch.rand(1000, generator=g), torch.randint(0, 2, (1000,), generator=g)
    else:  # confidence 0.5-0.7, all right
        conf, labels = 0.5 + 0.2 * torch.rand(1000, generator=g), torch.zeros(1000, dtype=torch.long)
    probs = torch.stack([conf, 1 - conf], 1)
    counts, acc, mean_conf = calibration_bins(probs, labels)
    top = reliability_figure(probs, labels).axes[0]
    bars, gaps = top.containers
    assert (bars.get_label(), gaps.get_label()) == ("accuracy", "gap to confidence")
    filled = counts > 0
    assert ((acc > mean_conf) if confident == "under" else (acc < mean_conf))[filled].all()
    for m, (bar, gap) in enumerate(zip(bars, gaps)):
        assert bar.get_facecolor() == to_rgba(ACCURACY_COLOR)
        assert gap.get_facecolor()[3] == 0 and gap.get_hatch() and gap.get_edgecolor() == to_rgba(GAP_COLOR)
        if filled[m]:
            assert gap.get_y() == pytest.approx(min(acc[m], mean_conf[m]).item())
            assert gap.get_height() == pytest.approx(abs(acc[m] - mean_conf[m]).item())
            assert bar.get_height() == pytest.approx(acc[m].item())
    legend = {text.get_text(): handle for text, handle in zip(top.get_legend().get_texts(),
                                                              top.get_legend().legend_handles)}
    assert legend["gap to confidence"].get_facecolor()[3] == 0 and legend["gap to confidence"].get_hatch()
    assert legend["accuracy"].get_facecolor() == to_rgba(ACCURACY_COLOR)


# --------------------------------------------------------- 13. file modes and default output paths
def test_checkpoint_mode_follows_the_umask_like_the_other_files(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    mode = (finished_run / "config.yaml").stat().st_mode & 0o777
    assert (finished_run / CHECKPOINT_NAME).stat().st_mode & 0o777 == mode == 0o666 & ~umask


def test_show_and_bench_write_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "--method", "mixup", "--n", "3"]) == 0
    assert "wrote runs/show/mixup.png" in capsys.readouterr().out and (tmp_path / "runs/show/mixup.png").is_file()
    assert main(["bench", "smoke", "--dry-run", "--seeds", "0"]) == 0
    assert "in runs/bench/smoke/runs" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["runs"]
