"""Fine-tuning from a pre-trained run: ``model.init``, ``mixlab.engine.finetune``, ``mixlab finetune``
and the fine-tuning columns of self-supervised benchmarks.

One tiny MoCo v3 pre-training on the synthetic set (module fixture, a few seconds) serves the tests;
each test that fine-tunes works on its own copy of its checkpoint.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from mixlab import registry
from mixlab.bench.protocols import protocol_from_dict
from mixlab.bench.runner import pending_evaluations, plan, run_protocol
from mixlab.cli import main
from mixlab.data import class_balanced_subset
from mixlab.engine import CheckpointError, load_config, train
from mixlab.engine.checkpoint import init_from_checkpoint
from mixlab.engine.finetune import FINETUNE_JSON, finetune, finetune_dir, labelled_per_class

TINY = ["data.num_per_class=20", "data.test_per_class=5", "data.image_size=16", "data.batch_size=32",
        "data.num_workers=0", "model.kwargs={width: 8}", "run.progress=false", "run.tensorboard=false",
        "run.threads=1"]
FAST = dict(epochs=2, progress=False, overrides=["run.threads=1"])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "pre"
    train(load_config(None, [*TINY, "method.name=mocov3", "method.params={dim: 16, mlp_dim: 32}", "optim.epochs=1",
                             f"run.out={out}"]))
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    target.mkdir()
    shutil.copy(run / "checkpoint.pt", target / "checkpoint.pt")
    return target


def test_init_loads_every_weight_but_the_classifier(pretrained: Path) -> None:
    saved = torch.load(pretrained / "checkpoint.pt", weights_only=True)["model"]
    model = registry.build_model("resnet_small", 10, width=8)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    kept = init_from_checkpoint(model, pretrained)
    assert sorted(kept) == sorted(fresh_head) and kept  # the classifier's keys, left at their initialisation
    for key, value in model.state_dict().items():
        expected = fresh_head[key] if key in fresh_head else saved[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)


def test_init_from_another_architecture_names_the_mismatch(pretrained: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model.init .*do not fit this run's model: .*other shapes"):
        init_from_checkpoint(registry.build_model("resnet_small", 10, width=16), pretrained)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        init_from_checkpoint(registry.build_model("resnet_small", 10), tmp_path / "nothing")
    with pytest.raises(ValueError, match="model.init"):
        train(load_config(None, [*TINY, "model.init=' '"]))


def test_labelled_subset_is_a_fraction_of_each_class_and_nested(pretrained: Path) -> None:
    cfg = load_config(None, [*TINY, "data.train_per_class=10"])
    assert labelled_per_class(cfg, 0.1) == 1 and labelled_per_class(cfg, 0.5) == 5 and labelled_per_class(cfg, 1) == 10
    assert labelled_per_class(cfg, 0.01) == 1  # at least one image per class
    cfg.data.train_per_class = None  # the whole synthetic split: 20 per class
    assert labelled_per_class(cfg, 0.25) == 5
    labels = torch.arange(10).repeat_interleave(20)
    small, large = (set(class_balanced_subset(labels, n, seed=3).tolist()) for n in (2, 8))
    assert small < large  # the same seed: the 1 % images are among the 10 % ones


def test_finetune_trains_a_run_of_its_own_and_is_not_redone(pretrained: Path, tmp_path: Path) -> None:
    run = _copy(pretrained, tmp_path)
    results = finetune(run, fraction=0.5, **FAST)
    out = finetune_dir(run, 0.5)
    assert out == run / "finetune-50pct" and results["run_dir"] == str(out)
    assert (results["per_class"], results["train_images"], results["epochs"]) == (10, 100, 2)
    assert 0 <= results["top1"] <= 100 and results["method"] == "vanilla"
    assert json.loads((out / FINETUNE_JSON).read_text()) == results
    config = (out / "config.yaml").read_text()
    assert f"init: {run / 'checkpoint.pt'}" in config and "train_per_class: 10" in config
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    assert finetune(run, fraction=0.5, **FAST) == results  # finished: the summary, no training
    assert (out / "checkpoint.pt").stat().st_mtime_ns == stamp
    again = finetune(run, fraction=0.5, **{**FAST, "epochs": 3})  # other settings: trained afresh
    assert again["epochs"] == 3 and (out / "checkpoint.pt").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0}, r"fraction must be a number in \(0, 1\]"), ({"fraction": 1.5}, "fraction"),
    ({"epochs": 0}, "epochs must be an integer >= 1"), ({"lr": -1.0}, "lr must be"),
    ({"optimizer": "adam"}, "optimizer must be 'adamw' or 'sgd'"), ({"batch_size": 1}, "batch_size"),
    ({"method": "mixupp"}, r"unknown method 'mixupp' \(did you mean 'mixup'\?\)"),
    ({"seed": -1}, "seed"), ({"device": "tpu"}, "device"),
])
def test_bad_arguments_are_named_before_any_work(pretrained: Path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        finetune(pretrained, **kwargs)
    assert not any(pretrained.glob("finetune-*"))


def test_cli_finetune(pretrained: Path, tmp_path: Path, capsys) -> None:
    run = _copy(pretrained, tmp_path)
    assert main(["finetune", str(run), "--fraction", "0.1", "--epochs", "1", "--no-progress", "--set",
                 "run.threads=1"]) == 0
    out = capsys.readouterr().out
    assert "with 10 % of the labels (2 per class, 20 images, 1 epochs): test top-1" in out
    assert (run / "finetune-10pct" / FINETUNE_JSON).is_file()
    with pytest.raises(SystemExit):
        main(["finetune", str(run), "--fraction", "2"])
    assert "expected a number in (0, 1]" in capsys.readouterr().err


def _ssl_protocol(fractions: list[float]) -> dict:
    base = {"data": {"name": "synthetic", "image_size": 16, "num_per_class": 20, "test_per_class": 5,
                     "batch_size": 32, "num_workers": 0},
            "model": {"name": "resnet_small", "kwargs": {"width": 8}},
            "optim": {"name": "adamw", "lr": 0.002, "epochs": 1, "warmup_epochs": 0},
            "run": {"device": "cpu", "threads": 1, "progress": False, "tensorboard": False}}
    return {"base": base, "methods": {"mocov3": {"dim": 16, "mlp_dim": 32}}, "seeds": [0],
            "eval": {"probe_epochs": 5, "corruptions": False,
                     "finetune": {"fractions": fractions, "epochs": 1, "optimizer": "sgd", "lr": 0.01,
                                  "weight_decay": 0, "head_lr_scale": 10}}}


def test_bench_fine_tunes_self_supervised_runs_and_reports_the_columns(tmp_path: Path) -> None:
    protocol = protocol_from_dict(_ssl_protocol([0.1, 0.5]), "ssl-tiny")
    result = run_protocol(protocol, tmp_path, log=lambda _: None)
    assert result["outcomes"] == {"mocov3-s0": "trained"}
    [row] = list(csv.DictReader(open(tmp_path / "results.csv")))
    run_dir = Path(row["run_dir"])
    for pct, key in ((10, "ft10_top1"), (50, "ft50_top1")):
        ft = json.loads((run_dir / f"finetune-{pct}pct" / FINETUNE_JSON).read_text())
        assert float(row[key]) == pytest.approx(ft["top1"], abs=1e-3)
    md = (tmp_path / "results.md").read_text()
    assert "fine-tune 10 % top-1" in md and "fine-tune 50 % top-1" in md and "`mixlab finetune`" in md
    # a protocol asking for one more fraction: only that fine-tuning is done
    bigger = protocol_from_dict(_ssl_protocol([0.1, 0.5, 1.0]), "ssl-tiny")
    [run] = plan(bigger, tmp_path)
    assert run.status == "evaluate" and pending_evaluations(run.dir, run.config, bigger.eval, 1) == ["finetune@1"]
    stamp = (run.dir / "probe.json").stat().st_mtime_ns
    run_protocol(bigger, tmp_path, jobs=2, log=lambda _: None)  # in a subprocess: `mixlab finetune`
    assert (run.dir / "finetune-100pct" / FINETUNE_JSON).is_file()
    assert (run.dir / "probe.json").stat().st_mtime_ns == stamp
    log = (run.dir / "bench.log").read_text()
    assert "mixlab.cli finetune" in log and "--fraction 1" in log and "mixlab.cli probe" not in log


def test_finetune_settings_are_validated() -> None:
    for fractions, message in (([0], "finetune.fractions"), ([0.1, 0.1], "distinct"), ("0.1", "list")):
        with pytest.raises(ValueError, match=message):
            protocol_from_dict(_ssl_protocol(fractions), "bad")  # type: ignore[arg-type]
    for key, value, message in (("epochs", 0, "finetune.epochs must be an integer >= 1"),
                                ("optimizer", "adam", "finetune.optimizer must be 'adamw' or 'sgd'"),
                                ("method", "mixupp", "finetune.method must be a method name"),
                                ("head_lr_scale", 0, "finetune.head_lr_scale must be a number > 0"),
                                ("steps", 3, "keys among fractions, epochs")):
        d = _ssl_protocol([0.1])
        d["eval"]["finetune"][key] = value
        with pytest.raises(ValueError, match=message):
            protocol_from_dict(d, "bad")
    settings = protocol_from_dict(_ssl_protocol([0.01, 0.1]), "ok").eval.finetune
    assert settings.fractions == (0.01, 0.1) and settings.recipe() == {
        "epochs": 1, "lr": 0.01, "optimizer": "sgd", "weight_decay": 0.0, "head_lr_scale": 10.0,
        "method": "vanilla", "batch_size": 128}


def test_head_lr_scale_gives_the_classifier_groups_of_its_own() -> None:
    from mixlab.engine.config import OptimConfig
    from mixlab.engine.optim import build_optimizer
    from mixlab.methods.base import Vanilla

    model = registry.build_model("resnet_small", 10, width=8)
    plain = build_optimizer(model, Vanilla(10), OptimConfig(name="sgd", lr=0.01))
    assert len(plain.param_groups) == 2 and {g["lr"] for g in plain.param_groups} == {0.01}
    scaled = build_optimizer(model, Vanilla(10), OptimConfig(name="sgd", lr=0.01, head_lr_scale=20))
    head = {id(p) for p in model.get_classifier().parameters()}
    for g in scaled.param_groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1  # a group is all head or all trunk
        assert g["lr"] == pytest.approx(0.2 if in_head == {True} else 0.01)
    assert sum(len(g["params"]) for g in scaled.param_groups) == len(list(model.parameters()))
