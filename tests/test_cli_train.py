"""``mixlab train`` end to end, and the errors it gives for bad input (before any training)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixlab.cli import main

SMALL = ["--set", "data.num_per_class=20", "--set", "data.test_per_class=5", "--set", "run.progress=false",
         "--set", "run.threads=1", "--batch-size", "32"]


def _fails(capsys, *argv: str) -> str:
    """Run ``mixlab train ARGV``; it must exit with status 2; return its stderr."""
    assert main(["train", *argv]) == 2
    return capsys.readouterr().err


@pytest.mark.slow
def test_train_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "mixlab.cli", "train", *SMALL, "--epochs", "2", "--workers", "2",
                          "--train-per-class", "10", "--out", str(run_dir), "--no-eval"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(100 train / 50 test, 10 classes)" in out.stdout  # the class-balanced subset
    assert "final test accuracy:" in out.stdout and f"run directory: {run_dir}" in out.stdout
    for name in ("metrics.csv", "metrics.jsonl", "checkpoint.pt", "curves.png", "samples.png", "config.yaml"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_acc", "test_acc1", "test_acc5", "test_nll", "lr", "epoch_time", "images_per_s"):
        assert key in rows[-1], key
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_acc1" in header and "train_loss" in header


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "mixlab" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for word in ("--set", "--resume", "--data-root", "--train-per-class", "cutmix", "mixup-cutmix", "examples"):
        assert word in text, word


@pytest.mark.parametrize("argv, message", [
    (["--method", "cutmixx"], "unknown method 'cutmixx' (did you mean 'cutmix'?); valid methods: vanilla, mixup"),
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--dataset", "cifar11"], "unknown dataset 'cifar11'"),
    (["--set", "optim.lrr=0.1"], "did you mean 'optim.lr'"),
    (["--set", "method.params.alpah=0.4"], "method 'cutmix' has no hyper-parameter 'alpah'; valid: alpha"),
    (["--lr", "0"], "optim.lr must be a number > 0"),
    (["--lr", "-0.1"], "optim.lr must be a number > 0"),
    (["--epochs", "0"], "optim.epochs must be an integer >= 1"),
    (["--batch-size", "1"], "data.batch_size must be an integer >= 2"),
    (["--workers", "-1"], "data.num_workers must be an integer >= 0"),
])
def test_bad_arguments(capsys, argv, message):
    err = _fails(capsys, *SMALL, *argv)
    assert message in err


def test_missing_dataset_path(capsys, tmp_path):
    err = _fails(capsys, *SMALL, "--dataset", "imagefolder", "--data-root", str(tmp_path / "nowhere.zip"))
    assert "nowhere.zip" in err and "does not exist" in err


def test_zip_without_imagefolder_layout(capsys, tmp_path):
    import zipfile

    path = tmp_path / "flat.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "no class folders here")
    err = _fails(capsys, *SMALL, "--dataset", "imagefolder", "--data-root", str(path))
    assert "flat.zip" in err


def test_unwritable_run_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    err = _fails(capsys, *SMALL, "--out", str(blocker / "run"))
    assert "is not writable" in err and str(blocker / "run") in err


def test_missing_config_file(capsys, tmp_path):
    err = _fails(capsys, str(tmp_path / "nope.yaml"))
    assert "config file not found" in err


def test_corrupt_checkpoint_is_refused_and_kept(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated zip")
    err = _fails(capsys, *SMALL, "--resume", str(run_dir))
    assert "truncated or corrupt" in err and str(ckpt) in err
    assert ckpt.read_bytes() == b"PK\x03\x04 truncated zip"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]  # nothing written


def test_resume_with_another_model_is_refused(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--workers", "0", "--out", str(run_dir),
                 "--set", "run.stop_epoch=1", "--set", "model.kwargs={width: 8}"]) == 0
    capsys.readouterr()
    before = (run_dir / "checkpoint.pt").read_bytes()
    err = _fails(capsys, "--resume", str(run_dir), "--model", "preactresnet18")
    assert "model.name: checkpoint has 'resnet_small', this run 'preactresnet18'" in err
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    # and resuming as is finishes the run (the checkpoint's config is the starting point)
    assert main(["train", "--resume", str(run_dir), "--set", "run.progress=false", "--no-eval"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
