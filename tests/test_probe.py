"""``mixlab.engine.probe``: the linear probe of a run's frozen backbone, and ``mixlab probe``.

One briefly trained synthetic run (module fixture, ~6 s on a CPU) serves every test; each test that
writes probes works on its own copy of the run's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pytest
import torch
from torch import nn

from mixlab import registry
from mixlab.cli import build_parser, main
from mixlab.data import normalize_on_device
from mixlab.engine import CheckpointError, TrainConfig, extract_features, linear_probe, train
from mixlab.engine.config import DataConfig, MethodConfig, ModelConfig, OptimConfig, RunConfig
from mixlab.evaluation import predict
from mixlab.engine.probe import PROBE_JSON, PROBE_WEIGHTS, fold_into_classifier

WIDTH = 8  # resnet_small(width=8): 64 pooled features
FAST = dict(corruptions=False, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Vanilla training of resnet_small (width 8) for 4 epochs on 2000 synthetic 24 px images (500
    test images): its own classifier reaches ~20 % test top-1 (chance 10 %)."""
    out = tmp_path_factory.mktemp("probe") / "run"
    train(TrainConfig(
        data=DataConfig(num_per_class=200, test_per_class=50, image_size=24, batch_size=64, num_workers=0,
                        augment="none"),
        model=ModelConfig(kwargs={"width": WIDTH}),
        optim=OptimConfig(epochs=4, lr=5e-3, warmup_epochs=0),
        method=MethodConfig(name="vanilla"),
        run=RunConfig(out=str(out), progress=False, tensorboard=False, threads=1, eval_every=4)))
    return out


def _copy(run, tmp_path, name="copy"):
    """A run directory holding only a copy of ``run``'s checkpoint (probes write beside it)."""
    target = tmp_path / name
    target.mkdir()
    shutil.copy(run / "checkpoint.pt", target / "checkpoint.pt")
    return target


@pytest.fixture(scope="module")
def probed(run, tmp_path_factory):
    """``(run copy, results)`` of one probe with the defaults but 30 epochs and 16 corruption images."""
    target = _copy(run, tmp_path_factory.mktemp("probed"))
    digest = hashlib.sha256((target / "checkpoint.pt").read_bytes()).hexdigest()
    results = linear_probe(target, epochs=30, max_corruption_images=16, progress=False)
    assert hashlib.sha256((target / "checkpoint.pt").read_bytes()).hexdigest() == digest  # left untouched
    return target, results


def _model(ckpt):
    return registry.build_model("resnet_small", ckpt["num_classes"], width=WIDTH)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------- accuracy
def test_probe_of_a_briefly_trained_run_beats_chance(probed):
    _, results = probed
    # 500 test images: chance is 10 % +- 1.3 % (one standard deviation); the probe reaches 22 % here,
    # 18.6-21.2 % with the run seeds 1-4 (the run's own classifier: 19-23 %)
    assert results["clean"]["n"] == 500 and results["clean"]["top1"] >= 15.0
    assert results["train_acc1"] >= results["clean"]["top1"]  # it fits its own training features
    assert 0 <= results["clean"]["top5"] <= 100 and math.isfinite(results["clean"]["nll"])
    corr = results["corruptions"]  # evaluate_all's entry, on 16 evenly strided test images
    assert corr["n"] == 16 and len(corr["accuracy"]) == 12 and 0 <= corr["mCA"] <= 100


def test_results_describe_the_run_and_the_protocol(probed):
    target, results = probed
    assert (results["checkpoint"], results["epoch"]) == (str(target / "checkpoint.pt"), 4)
    assert (results["method"], results["model"], results["dataset"]) == ("vanilla", "resnet_small", "synthetic")
    assert results["probe"] == {"epochs": 30, "lr": 0.1, "batch_size": 256, "momentum": 0.9, "weight_decay": 0.0,
                                "augment": False, "seed": 0, "train_images": 2000, "feature_dim": 8 * WIDTH}
    assert set(results["clean"]) == {"top1", "top5", "nll", "ece", "rms", "n"}


# ---------------------------------------------------------------------------------------- frozen
def test_backbone_and_batchnorm_statistics_are_untouched(probed):
    """Every entry of the probed state_dict but the classifier (weights, BN running mean / var /
    count) is bit-identical to the checkpoint's."""
    target, _ = probed
    before, after = _load(target / "checkpoint.pt")["model"], _load(target / PROBE_WEIGHTS)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    assert any(k.endswith("running_var") for k in before)  # the model has BatchNorm statistics to check


def test_extract_features_normalises_as_the_trainer_and_leaves_the_model_as_it_was(run):
    ckpt = _load(run / "checkpoint.pt")
    model = _model(ckpt)
    model.load_state_dict(ckpt["model"])
    model.train()  # extract_features switches to eval mode and back
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = registry.build_dataset("synthetic", "test", num_per_class=3, image_size=24, seed=0)
    features, labels = extract_features(model, dataset, "cpu", dataset.mean, dataset.std, batch_size=7)
    assert features.dtype == torch.float32 and features.shape == (30, 8 * WIDTH)
    assert labels.dtype == torch.int64 and torch.equal(labels, dataset.labels)
    assert model.training and all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        x = normalize_on_device(dataset.images, dataset.mean, dataset.std)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, expected)
    loader = [(dataset.images[:16], dataset.labels[:16]), (dataset.images[16:], dataset.labels[16:])]
    torch.testing.assert_close(extract_features(model, loader, None, dataset.mean, dataset.std)[0], expected)


# ---------------------------------------------------------------------------------------- folding
def test_folded_classifier_equals_the_linear_layer_on_standardised_features(run):
    ckpt = _load(run / "checkpoint.pt")
    model = _model(ckpt).eval()
    model.load_state_dict(ckpt["model"])
    dataset = registry.build_dataset("synthetic", "test", num_per_class=4, image_size=24, seed=1)
    features, _ = extract_features(model, dataset, "cpu", dataset.mean, dataset.std)
    mean, std = features.mean(0), features.std(0) + 1e-3
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(features.shape[1], 10)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g))
        linear.bias.copy_(torch.randn(10, generator=g))
    assert fold_into_classifier(model, linear, mean, std) is model
    with torch.no_grad():
        logits = model(normalize_on_device(dataset.images, dataset.mean, dataset.std))
        expected = linear((features - mean) / std)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"classifier must be an nn.Linear with bias mapping 64 features to 7 classes "
                                         r"to receive the probe, got \(10, 64\)"):
        fold_into_classifier(model, nn.Linear(features.shape[1], 7), mean[:7], std[:7])


# ---------------------------------------------------------------------------------------- outputs
def test_same_seed_gives_the_same_probe(run, tmp_path):
    first = linear_probe(_copy(run, tmp_path, "a"), epochs=5, seed=3, **FAST)
    second = linear_probe(_copy(run, tmp_path, "b"), epochs=5, seed=3, **FAST)
    assert (first["train_acc1"], first["clean"]) == (second["train_acc1"], second["clean"])
    assert torch.equal(_load(tmp_path / "a" / PROBE_WEIGHTS)["fc.weight"],
                       _load(tmp_path / "b" / PROBE_WEIGHTS)["fc.weight"])
    other = linear_probe(_copy(run, tmp_path, "c"), epochs=5, seed=4, **FAST)
    assert not torch.equal(_load(tmp_path / "a" / PROBE_WEIGHTS)["fc.weight"],
                           _load(tmp_path / "c" / PROBE_WEIGHTS)["fc.weight"])
    assert other["probe"]["seed"] == 4


def test_probe_json_and_probe_pt_are_written_and_load_into_a_fresh_model(probed):
    target, results = probed
    written = json.loads((target / PROBE_JSON).read_text())
    assert written == json.loads(json.dumps(results))
    assert (results["probe_json"], results["probe_weights"]) == (str(target / PROBE_JSON),
                                                                 str(target / PROBE_WEIGHTS))
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temporary left behind
    model = _model(_load(target / "checkpoint.pt"))
    model.load_state_dict(_load(target / PROBE_WEIGHTS))  # an ordinary classifier
    test_set = registry.build_dataset("synthetic", "test", num_per_class=50, image_size=24, seed=0)
    logits, labels = predict(model, (test_set.images, test_set.labels), mean=test_set.mean, std=test_set.std)
    assert 100.0 * float((logits.argmax(1) == labels).double().mean()) == pytest.approx(written["clean"]["top1"])


def test_probe_trains_on_the_class_balanced_subset_of_the_run(run, tmp_path):
    ckpt = _load(run / "checkpoint.pt")
    ckpt["config"]["data"]["train_per_class"] = 5
    target = tmp_path / "subset"
    target.mkdir()
    torch.save(ckpt, target / "checkpoint.pt")
    results = linear_probe(target / "checkpoint.pt", epochs=2, **FAST)
    assert results["probe"]["train_images"] == 50 and results["corruptions"] is None


def test_augmented_probe_gives_a_finite_result(run, tmp_path):
    results = linear_probe(_copy(run, tmp_path), epochs=2, augment=True, **FAST)
    assert results["probe"]["augment"] is True and results["probe"]["train_images"] == 2000
    assert math.isfinite(results["clean"]["nll"]) and 0 <= results["clean"]["top1"] <= 100
    assert 0 <= results["train_acc1"] <= 100


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, "epochs must be an integer >= 1, got 2.5"),
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
    ({"momentum": -0.1}, r"momentum must be a number in \[0, 1\), got -0.1"),
    ({"max_corruption_images": 0}, "max_corruption_images must be None or an integer >= 1, got 0"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"augment": "yes"}, "augment must be True or False, got 'yes'"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message, tmp_path):
    """The path does not exist: the argument is checked first."""
    with pytest.raises(ValueError, match=message) as e:
        linear_probe(tmp_path / "nowhere", **kwargs)
    assert not isinstance(e.value, CheckpointError)


def test_missing_or_empty_path_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file or run directory"):
        linear_probe(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="has no checkpoint.pt"):
        linear_probe(tmp_path)


# ---------------------------------------------------------------------------------------- CLI
def test_cli_probe_prints_the_top1_and_where_the_results_went(run, tmp_path, capsys):
    target = _copy(run, tmp_path)
    assert main(["probe", str(target), "--epochs", "3", "--no-corruptions", "--no-progress", "--seed", "1",
                 "--lr", "0.05", "--batch-size", "128", "--momentum", "0.5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    results = json.loads((target / PROBE_JSON).read_text())
    assert results["probe"] | {"train_images": 0, "feature_dim": 0} == {
        "epochs": 3, "lr": 0.05, "batch_size": 128, "momentum": 0.5, "weight_decay": 0.0, "augment": False,
        "seed": 1, "train_images": 0, "feature_dim": 0}
    lines = out.splitlines()
    assert lines[0].startswith(f"{target / 'checkpoint.pt'} (epoch 4): vanilla | resnet_small | synthetic | cpu")
    assert lines[1].startswith(f"linear probe top-1 {results['clean']['top1']:.2f}% "
                               f"(train top-1 {results['train_acc1']:.2f}%")
    assert lines[2].startswith("clean   top-1") and "mCA" not in out
    assert lines[-1] == f"probe written to {target / PROBE_JSON} (weights {target / PROBE_WEIGHTS})"


def test_cli_probe_errors_exit_with_status_2(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "nowhere"), "--lr", "-1"]) == 2
    assert "mixlab probe: error: lr must be a finite number > 0, got -1.0" in capsys.readouterr().err
    assert main(["probe", str(tmp_path / "nowhere")]) == 2
    assert "no such checkpoint file or run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["probe", str(tmp_path), "--epochs", "0"])  # argparse: N >= 1
    assert e.value.code == 2


def test_cli_probe_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["probe", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "mixlab probe" in text
    action = next(a for a in build_parser()._actions if a.dest == "command")
    for flag_action in action.choices["probe"]._actions:
        for flag in flag_action.option_strings or [flag_action.metavar]:
            assert flag in text, flag
