"""``mixlab eval``, ``show``, ``list``, the evaluation at the end of ``mixlab train``, and every ``--help``."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import mixlab
from mixlab import registry
from mixlab.cli import build_parser, main
from mixlab.engine.eval_run import evaluate_checkpoint

TINY = ["--set", "data.num_per_class=20", "--set", "data.test_per_class=5", "--set", "run.progress=false",
        "--set", "run.threads=1", "--set", "run.tensorboard=false", "--batch-size", "32", "--workers", "0",
        "--epochs", "1"]
CLEAN_KEYS = {"top1", "top5", "nll", "ece", "rms", "n"}


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 1-epoch run on a tiny synthetic set (200 train / 50 test images), not evaluated."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out), "--no-eval"]) == 0
    assert not (out / "eval.json").exists()  # --no-eval
    return out


# ----------------------------------------------------------------------------------------- eval
def test_eval_writes_eval_json_and_prints_the_table(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--max-corruption-images", "64", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for text in ("clean   top-1", "FGSM    top-1", "(eps=8/255)", "mCA", "gaussian_noise", "jpeg_compression",
                 f"evaluation written to {run_dir / 'eval.json'}"):
        assert text in out, text
    results = json.loads((run_dir / "eval.json").read_text())
    assert CLEAN_KEYS <= set(results["clean"]) and results["clean"]["n"] == 50
    assert results["fgsm"]["epsilon"] == pytest.approx(8 / 255) and 0 <= results["fgsm"]["top1"] <= 100
    corr = results["corruptions"]
    assert corr["n"] == 50 and corr["severities"] == [1, 2, 3, 4, 5] and len(corr["accuracy"]) == 12
    assert all(len(accs) == 5 for accs in corr["accuracy"].values()) and 0 <= corr["mCA"] <= 100
    assert results["ema"] is None and results["epoch"] == 1
    assert (results["method"], results["model"], results["dataset"]) == ("cutmix", "resnet_small", "synthetic")
    with Image.open(run_dir / "calibration.png") as img:
        assert img.size[0] > 0 and img.size[1] > 0
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".eval")]  # no temporary left behind


def test_evaluate_checkpoint_file_matches_the_trainer(run_dir):
    """Same test split, normalisation and weights as the trainer: its last test top-1 and NLL."""
    results = evaluate_checkpoint(run_dir / "checkpoint.pt", fgsm=False, corruptions=False, progress=False)
    assert results["fgsm"] is None and results["corruptions"] is None
    assert results["eval_json"] == str(run_dir / "eval.json")
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert results["clean"]["top1"] == pytest.approx(row["test_acc1"])
    assert results["clean"]["nll"] == pytest.approx(row["test_nll"], rel=1e-4)


def test_eval_errors_name_the_path(run_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["eval", str(missing)]) == 2
    assert f"cannot evaluate {missing}: no such checkpoint file or run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty)]) == 2
    assert "has no checkpoint.pt" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    assert main(["eval", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and "truncated or corrupt" in err
    with pytest.raises(ValueError, match="max_corruption_images must be None or an integer >= 1"):
        evaluate_checkpoint(run_dir, max_corruption_images=0)
    assert _exit_code(["eval", str(run_dir), "--max-corruption-images", "0"]) == 2  # argparse
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        evaluate_checkpoint(run_dir, device="tpu")
    with pytest.raises(ValueError, match=f"cannot evaluate {missing}"):
        evaluate_checkpoint(missing)


def test_eval_missing_dataset_asks_for_data_root(run_dir, tmp_path, capsys):
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["data"].update(name="imagefolder", root=str(tmp_path / "moved.zip"))
    moved = tmp_path / "moved-run"
    moved.mkdir()
    torch.save(ckpt, moved / "checkpoint.pt")
    assert main(["eval", str(moved), "--no-fgsm", "--no-corruptions"]) == 2
    err = capsys.readouterr().err
    assert f"cannot evaluate {moved}" in err and "moved.zip" in err and "--data-root" in err


def test_train_evaluates_the_final_checkpoint_with_its_ema(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--set", "model.ema_decay=0.9",
                 "--eval-corruption-images", "8"]) == 0
    text = capsys.readouterr().out
    assert "evaluating the final checkpoint" in text and "EMA weights:" in text and "mCA" in text
    results = json.loads((out / "eval.json").read_text())
    assert results["corruptions"]["n"] == 8 and CLEAN_KEYS <= set(results["ema"]["clean"])
    assert results["ema"]["corruptions"]["n"] == 8
    # the OOD score (cheap) is in; the localization (a third more time) is left to `mixlab eval`
    assert results["wsol"] is None and sorted(results["ood"]["sets"]) == ["gaussian", "uniform"]
    assert "OOD     AUROC" in text and "WSOL" not in text and "adds the localization" in text
    assert (out / "calibration.png").is_file() and (out / "calibration-ema.png").is_file()


def test_train_stopped_early_is_not_evaluated(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--set", "run.stop_epoch=1", "--out", str(out)]) == 0
    assert "not evaluated" in capsys.readouterr().out and not (out / "eval.json").exists()


# ----------------------------------------------------------------------------------------- show
@pytest.mark.parametrize("method", list(registry.METHODS))
def test_show_every_method(method, tmp_path, capsys):
    path = tmp_path / f"{method}.png"
    assert main(["show", "--method", method, "--n", "4", "--seed", "1", "--out", str(path)]) == 0
    out = capsys.readouterr().out
    # the self-supervised frameworks mix only with their mixing option (below), but SAMix's always mixes
    unmixed = ("vanilla", *(name for name in registry.self_supervised_methods() if name != "samix-ssl"))
    assert str(path) in out and ("no mixing" in out) == (method in unmixed)
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0


@pytest.mark.parametrize("method, option", [("mocov3", "sdmp=true"), ("dino", "sdmp=true"),
                                            ("mocov2", "views=cropmix"), ("mocov2", "views=scalemix"),
                                            ("mae", "input=cropmix")])
def test_show_mixes_the_self_supervised_frameworks_with_their_mixing_option(method, option, tmp_path, capsys):
    path = tmp_path / f"{method}-mixed.png"
    assert main(["show", "--method", method, "--n", "4", "--seed", "1", "--out", str(path),
                 "--set", f"method.params.{option}"]) == 0
    out = capsys.readouterr().out
    assert "mean lambda" in out and str(path) in out and path.is_file()


def test_show_hyper_parameters_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "--method", "mixup", "--n", "3", "--set", "method.params.alpha=0.2"]) == 0
    assert "runs/show/mixup.png" in capsys.readouterr().out and (tmp_path / "runs/show/mixup.png").is_file()
    assert main(["show", "--method", "cutmixx"]) == 2
    assert "unknown method 'cutmixx' (did you mean 'cutmix'?)" in capsys.readouterr().err
    assert main(["show", "--method", "mixup", "--set", "method.params.alpah=0.2"]) == 2
    assert "has no hyper-parameter 'alpah'" in capsys.readouterr().err
    assert main(["show", "--method", "mixup", "--n", "1"]) == 2
    assert "--n must be in [2, 32]" in capsys.readouterr().err


def test_plot_mix_draws_masks_and_global_mixes(tmp_path):
    from mixlab.engine.plots import plot_mix

    images, labels = torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 2])
    for name in ("cutmix", "mixup"):  # a box mask, and mask=None (a flat tile at lambda)
        mixed = registry.build_method(name, 3).mix_preview(images, labels)
        plot_mix(images, labels, mixed, ["a", "b", "c"], tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------- list
@pytest.fixture(scope="module")
def listing() -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["list"]) == 0
    return buf.getvalue()


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_list_every_method(method, listing):
    spec = registry.METHODS[method]
    block = listing.split(f"  {method} ", 1)[1]
    assert spec.paper in block.split("\n  ", 3)[1]
    for key, value in spec.defaults.items():
        assert f"{key}={value}" in block.split("\n", 3)[2]


def test_list_models_and_datasets(listing, capsys):
    from mixlab.models import create_model

    for name in registry.model_names() + registry.dataset_names():
        assert f"  {name} " in listing, name
    small = sum(p.numel() for p in create_model("resnet_small", num_classes=10).parameters())
    assert f"{small / 1e6:6.2f}M" in listing.split("  resnet_small", 1)[1].splitlines()[0]
    assert "--data-root: not needed" in listing.split("  synthetic", 1)[1]
    assert main(["list", "datasets"]) == 0
    only = capsys.readouterr().out
    assert "cifar10" in only and "resnet18" not in only and "mixup" not in only


# ----------------------------------------------------------------------------------------- help
def _subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", ["train", "eval", "show", "list"])
def test_help_of_every_command(command, capsys):
    assert _exit_code([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "mixlab " + command in text
    for action in _subparsers()[command]._actions:
        for flag in action.option_strings or [action.metavar or action.dest]:
            assert flag in text, flag


def test_top_level_help_version_and_no_command(capsys):
    assert _exit_code(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("train", "eval", "show", "list", "--version", "examples:"):
        assert command in text, command
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mixlab {mixlab.__version__}"
    assert main([]) == 2
    assert "usage: mixlab" in capsys.readouterr().out


# -------------------------------------------------------------------------------------- presets
def test_recipe_values_come_from_presets_yaml_and_the_functions_defaults():
    """The commands' recipe values are written once: configs/presets.yaml, or the signature of the
    function a command calls (its flags default to them)."""
    import importlib.resources
    import inspect

    import yaml

    from mixlab.engine.finetune import finetune
    from mixlab.engine.presets import PRESETS
    from mixlab.engine.probe import linear_probe

    assert PRESETS == yaml.safe_load(importlib.resources.files("mixlab").joinpath("configs/presets.yaml").read_text())
    parse = build_parser().parse_args
    assert parse(["train"]).eval_corruption_images == PRESETS["corruption_images"]
    assert parse(["pretrain"]).probe_corruption_images == PRESETS["corruption_images"]
    assert parse(["pretrain"]).probe_epochs == inspect.signature(linear_probe).parameters["epochs"].default
    probe, tune = vars(parse(["probe", "runs/x"])), vars(parse(["finetune", "runs/x"]))
    for args, fn in ((probe, linear_probe), (tune, finetune)):
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                    if k in args and k != "overrides" and p.default is not p.empty}  # (--set: a list)
        assert defaults and all(args[k] == v for k, v in defaults.items()), (fn.__name__, defaults)


def test_pretrain_heads_are_the_presets_under_the_configs_own():
    from mixlab.engine.presets import PRESETS, pretrain_config

    cfg = pretrain_config(None, framework="mocov2", cropmix="")
    assert cfg.method.params == {**PRESETS["small_heads"]["mocov2"], "views": "cropmix"}
    cfg = pretrain_config(None, ["method.params.queue_size=64"], framework="mocov2")
    assert cfg.method.params == {**PRESETS["small_heads"]["mocov2"], "queue_size": 64}
    cfg = pretrain_config(None, framework="mae")  # no heads to size; its own run settings (a ViT)
    assert cfg.method.params == {} and cfg.model.name == "vit_tiny_patch4"
    with pytest.raises(ValueError, match="method 'cutmix' is not self-supervised; `mixlab pretrain` takes mocov3, "
                                         "mocov2, samix-ssl, dino, mae"):
        pretrain_config(None, framework="cutmix")
