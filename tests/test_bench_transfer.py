"""mixlab bench with ``eval.transfer``: each finished classification run's backbone transferred to
the dense tasks (``mixlab transfer``), the transfers resumed or redone as their record says, the
``transfer_*`` columns in the report and the claims on them.

The end-to-end protocol is tiny: two methods, one seed, one epoch of a width-8 ResNet on 16x16
shapes, each transferred to segmentation for one epoch on 22 images.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from mixlab.bench import command, report
from mixlab.bench.protocols import load_protocol, protocol_from_dict
from mixlab.bench.runner import TRANSFER_NAME, plan, run_protocol
from mixlab.engine.checkpoint import load_checkpoint, save_checkpoint
from mixlab.engine.config import config_to_dict, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TRANSFER = ["data.num_per_class=2", "data.test_per_class=1", "data.batch_size=8", "data.eval_batch_size=11",
                 "optim.epochs=1", "optim.warmup_epochs=0"]


def _tiny() -> dict:
    return {"base": {"data": {"name": "synthetic", "image_size": 16, "num_per_class": 8, "test_per_class": 4,
                              "batch_size": 16, "num_workers": 0},
                     "model": {"name": "resnet_small", "kwargs": {"width": 8}},
                     "optim": {"name": "sgd", "lr": 0.05, "epochs": 1, "warmup_epochs": 0},
                     "run": {"device": "cpu", "threads": 1, "progress": False, "tensorboard": False}},
            "methods": {"vanilla": {}, "cutmix": {"alpha": 1.0}}, "seeds": [0],
            "eval": {"fgsm": False, "corruptions": False, "ood": False, "wsol": False,
                     "transfer": ["segmentation"], "transfer_overrides": list(TINY_TRANSFER)},
            "claims": [{"method": "cutmix", "baseline": "vanilla", "metric": "transfer_miou",
                        "claim": "CutMix backbones transfer better"}]}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mixlab")
    command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def _mtimes(bench: Path) -> dict[str, int]:
    return {str(p.relative_to(bench)): p.stat().st_mtime_ns for p in bench.glob("runs/*/**/*")
            if p.name in ("checkpoint.pt", "eval.json", TRANSFER_NAME)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The tiny protocol, run once in this process."""
    out = tmp_path_factory.mktemp("bench") / "transfer"
    result = run_protocol(protocol_from_dict(_tiny(), "tiny-transfer"), out, log=lambda _: None)
    assert result["outcomes"] == {"vanilla-s0": "trained", "cutmix-s0": "trained"}
    return out


# ------------------------------------------------------------------------------------- the protocol
def test_synthetic_transfer_quick_is_the_default_run_of_four_methods_then_both_transfers() -> None:
    protocol = load_protocol("synthetic-transfer-quick")
    assert list(protocol.methods) == ["vanilla", "cutmix", "recursivemix", "automix"]
    quick = load_protocol("cifar10-quick")  # the same method parameters
    assert all(protocol.methods[m] == quick.methods[m] for m in protocol.methods)
    assert protocol.seeds == (0, 1, 2) and protocol.eval.transfer == ("segmentation", "detection")
    assert protocol.eval.transfer_overrides == () and protocol.eval.max_corruption_images == 250
    # base: `mixlab train` with no arguments, the method and the console / TensorBoard output aside
    default = config_to_dict(load_config(None, ["method.name=automix", "method.params={alpha: 2.0, momentum: 0.99}",
                                                "run.progress=false", "run.tensorboard=false"]))
    assert config_to_dict(protocol.config("automix", 0)) == default
    metrics = {(c.method, c.baseline, c.metric) for c in protocol.claims}
    assert {("cutmix", "vanilla", "transfer_miou"), ("cutmix", "vanilla", "transfer_map"),
            ("recursivemix", "vanilla", "transfer_miou"), ("recursivemix", "vanilla", "transfer_map"),
            ("automix", "vanilla", "transfer_map")} <= metrics
    assert "estimate" in protocol.description and "not measured" in protocol.description


@pytest.mark.parametrize("change, message", [
    (lambda ev: ev.update(transfer=["classification"]),
     r"eval.transfer must be a list of distinct tasks among segmentation, detection .*got \['classification'\]"),
    (lambda ev: ev.update(transfer=["segmentation", "segmentation"]), "eval.transfer must be a list of distinct"),
    (lambda ev: ev.update(transfer="segmentation"), r"eval.transfer must be a list .*got 'segmentation'"),
    (lambda ev: ev.update(transfer_overrides=["optim.epochs"]),
     "eval.transfer_overrides must be a list of key=value strings"),
    (lambda ev: ev.update(transfer_overrides=["optim.epoch=2"]),
     r"eval.transfer_overrides of the transfer to segmentation: unknown config key 'optim.epoch'"),
    (lambda ev: ev.update(transfer_overrides=["data.task=detection"]),
     "eval.transfer_overrides of the transfer to segmentation: data.task must be 'segmentation'"),
    (lambda ev: ev.update(transfer_overrides=["run.out=elsewhere"]),
     r"eval.transfer_overrides: 'run.out=elsewhere' sets a key the runner sets"),
    (lambda ev: ev.update(transfer=["detection"]),  # the claim on transfer_miou needs the segmentation transfer
     r"claim 'CutMix backbones transfer better': metric transfer_miou is measured by the transfer to segmentation, "
     r"which eval.transfer does not list"),
])
def test_bad_transfer_settings_are_named_in_the_error(change, message) -> None:
    d = _tiny()
    change(d["eval"])
    with pytest.raises(ValueError, match=message) as info:
        protocol_from_dict(d, "mine")
    assert "protocol 'mine'" in str(info.value)


def test_only_supervised_classification_runs_are_transferred() -> None:
    d = _tiny()
    d["methods"], d["claims"] = {"mocov3": {}}, []
    with pytest.raises(ValueError, match="eval.transfer transfers supervised runs' backbones; mocov3 is "
                                         "self-supervised"):
        protocol_from_dict(d, "mine")
    d = _tiny()
    d["base"]["data"]["task"], d["claims"] = "segmentation", []
    d["eval"]["transfer"] = ["detection"]
    with pytest.raises(ValueError, match="eval.transfer transfers classification backbones; this protocol's task is "
                                         "'segmentation'"):
        protocol_from_dict(d, "mine")


# ------------------------------------------------------------------------------------- end to end
def test_each_run_is_transferred_and_reported_with_its_claim(bench: Path) -> None:
    for method in ("vanilla", "cutmix"):
        out = bench / "runs" / f"{method}-s0" / "transfer-segmentation"
        ev = json.loads((out / "eval.json").read_text())
        assert ev["task"] == "segmentation" and ev["epoch"] == 1
        record = json.loads((out / TRANSFER_NAME).read_text())
        assert record["source_epoch"] == 1 and record["config"]["optim"]["epochs"] == 1
        assert not (bench / "runs" / f"{method}-s0" / "transfer-detection").exists()
    with open(bench / "results.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    miou = {}
    for method, row in rows.items():
        ev = json.loads((bench / "runs" / f"{method}-s0" / "transfer-segmentation" / "eval.json").read_text())
        miou[method] = ev["clean"]["miou"]
        assert float(row["transfer_miou"]) == pytest.approx(miou[method], abs=1e-3)
        assert math.isnan(float(row["transfer_map"])) and math.isnan(float(row["transfer_map50"]))
    md = (bench / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "transfer mIoU %" in header and "transfer mAP %" not in header
    vanilla, cutmix = miou["vanilla"], miou["cutmix"]
    assert (f"- CutMix backbones transfer better: transfer_miou cutmix {cutmix:.2f} vs vanilla {vanilla:.2f} "
            f"({cutmix - vanilla:+.2f} points; one seed each: no spread to judge by).") in md
    assert "- Transfer mIoU (segmentation): vanilla" in md  # the comparison with vanilla


def test_a_second_invocation_does_nothing(bench: Path, capsys) -> None:
    before = _mtimes(bench)
    assert len(before) == 2 * 2 + 2 * 3  # the runs' checkpoint and eval.json, their transfers' and records
    result = run_protocol(protocol_from_dict(_tiny(), "tiny-transfer"), bench, log=lambda _: None)
    assert result["outcomes"] == {"vanilla-s0": "skipped", "cutmix-s0": "skipped"}
    assert _mtimes(bench) == before


def test_a_retrained_run_has_its_transfer_redone(bench: Path, tmp_path: Path, capsys) -> None:
    """A checkpoint with other weights (the run trained again) is not the one transferred: the
    run's status is "evaluate" with only the transfer left, and the dry run lists it."""
    copy_dir = tmp_path / "b"
    shutil.copytree(bench, copy_dir)
    path = copy_dir / "runs" / "cutmix-s0" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    ckpt.pop("path")
    ckpt["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(path, ckpt)
    protocol = protocol_from_dict(_tiny(), "tiny-transfer")
    runs = {r.name: r for r in plan(protocol, copy_dir)}
    assert (runs["vanilla-s0"].status, runs["cutmix-s0"].status) == ("done", "evaluate")
    spec = tmp_path / "tiny-transfer.yaml"
    spec.write_text(yaml.safe_dump(_tiny()))
    assert command.run(_parse(str(spec), "--out", str(copy_dir), "--dry-run")) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert lines["cutmix-s0"].endswith(" evaluate only: transfer@segmentation")
    assert lines["vanilla-s0"].endswith(" done (skipped)")
    assert command.run(_parse(str(spec), "--out", str(tmp_path / "new"), "--dry-run")) == 0
    assert "  vanilla-s0" in (listing := capsys.readouterr().out)
    assert " train + evaluate + transfer@segmentation\n" in listing


def test_other_transfer_settings_redo_it_and_an_interrupted_transfer_resumes(bench: Path, tmp_path: Path,
                                                                              monkeypatch) -> None:
    import mixlab.engine.transfer as engine_transfer

    copy_dir = tmp_path / "b"
    shutil.copytree(bench, copy_dir)
    longer = _tiny()
    longer["eval"]["transfer_overrides"] = [o for o in TINY_TRANSFER if not o.startswith("optim.epochs")] + [
        "optim.epochs=2"]
    protocol = protocol_from_dict(longer, "tiny-transfer")
    assert [r.status for r in plan(protocol, copy_dir, methods=["vanilla"])] == ["evaluate"]

    real, calls = engine_transfer.transfer, []

    def interrupted(run, task, overrides=(), values=None):  # trains epoch 1 of 2, then the process "dies"
        calls.append(list(overrides))
        real(run, task, [*overrides, "run.stop_epoch=1"], values)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_transfer, "transfer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(protocol, copy_dir, methods=["vanilla"], log=lambda _: None)
    out = (copy_dir / "runs" / "vanilla-s0" / "transfer-segmentation").resolve()
    assert load_checkpoint(out)["epoch"] == 1 and not (out / "eval.json").exists()  # the old evaluation is gone

    def recorded(run, task, overrides=(), values=None):
        calls.append(list(overrides))
        return real(run, task, overrides, values)

    monkeypatch.setattr(engine_transfer, "transfer", recorded)
    result = run_protocol(protocol, copy_dir, methods=["vanilla"], log=lambda _: None)
    assert result["outcomes"] == {"vanilla-s0": "evaluated"}
    assert not any(o.startswith("run.resume=") for o in calls[0]) and f"run.resume={out}" in calls[1]
    assert [row["epoch"] for row in load_checkpoint(out)["history"]] == [1, 2]
    assert json.loads((out / "eval.json").read_text())["epoch"] == 2
    assert [r.status for r in plan(protocol, copy_dir, methods=["vanilla"])] == ["done"]


def test_jobs_run_the_transfer_in_a_subprocess(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "jobs"
    result = run_protocol(protocol_from_dict(_tiny(), "tiny-transfer"), out, methods=["vanilla"], jobs=2,
                          log=lambda _: None)
    assert result["outcomes"] == {"vanilla-s0": "trained"}
    log = (out / "runs" / "vanilla-s0" / "bench.log").read_text()
    assert "mixlab.cli transfer" in log and "--task segmentation" in log and "--set optim.epochs=1" in log
    with open(bench / "results.csv", newline="") as f:
        first = next(r for r in csv.DictReader(f) if r["method"] == "vanilla")
    assert result["rows"][0]["transfer_miou"] == pytest.approx(float(first["transfer_miou"]), abs=1e-3)
    timing = json.loads((out / "runs" / "vanilla-s0" / "bench-timing.json").read_text())
    assert timing["transfer_s"] > 0


def test_merged_rows_without_the_transfer_columns_are_reported_without_them(tmp_path: Path) -> None:
    """Rows of an older results.csv (``--merge``) lack the transfer_* columns: the table and the
    comparison read them as missing, and a claim on them says which method has no number."""
    rows = [{"method": m, "seed": s, "top1": 50.0 + s, "ece": 1.0, "fgsm_top1": 10.0, "corruption_top1": 40.0,
             "epoch_time_s": 1.0, "wall_time_s": 10.0, "corruption_images": 100,
             **({"transfer_miou": 20.0 + s} if m == "vanilla" else {})} for m in ("vanilla", "cutmix") for s in (0, 1)]
    md = report.write_markdown(rows, tmp_path / "results.md", protocol=protocol_from_dict(_tiny(), "t"),
                               commands=[], machines=[], wall_clock_s=1.0)
    assert "| vanilla | 2 | 50.50 ± 0.71 | 1.00 ± 0.00 | 10.00 ± 0.00 | 40.00 ± 0.00 | 20.50 ± 0.71 |" in md
    assert "| cutmix | 2 | 50.50 ± 0.71 | 1.00 ± 0.00 | 10.00 ± 0.00 | 40.00 ± 0.00 | – |" in md
    assert "- CutMix backbones transfer better: not checked (cutmix has no finished run with transfer_miou)." in md
