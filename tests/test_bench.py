"""mixlab bench: protocols, the runner (plan, run, resume, jobs), the report and the plots.

The end-to-end tests run the ``smoke`` protocol (synthetic data, 1 epoch, 2 methods, 1 seed):
a few seconds in this process, about 15 s more for the ``--jobs 2`` subprocesses.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest

from mixlab.bench import command, report
from mixlab.bench.protocols import list_protocols, load_protocol, protocol_from_dict
from mixlab.bench.runner import plan, run_protocol, split_cores

PNG = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("results.csv", "results.md", "accuracy.png", "curves.png", "gallery.png")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mixlab")
    command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def _mtimes(bench: Path) -> dict[str, int]:
    return {str(p.relative_to(bench)): p.stat().st_mtime_ns
            for name in ("checkpoint.pt", "eval.json", "metrics.csv") for p in bench.glob(f"runs/*/{name}")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The smoke protocol, run once through the command (in this process)."""
    out = tmp_path_factory.mktemp("bench") / "smoke"
    assert command.run(_parse("smoke", "--out", str(out))) == 0
    return out


def _smoke_dict() -> dict:
    return {"base": {"data": {"name": "synthetic", "image_size": 16, "num_per_class": 8, "test_per_class": 4,
                              "batch_size": 16, "num_workers": 0},
                     "model": {"name": "resnet_small", "kwargs": {"width": 8}},
                     "optim": {"name": "sgd", "lr": 0.05, "epochs": 2, "warmup_epochs": 0},
                     "run": {"device": "cpu", "threads": 1, "progress": False, "tensorboard": False}},
            "methods": {"vanilla": {}, "mixup": {"alpha": 1.0}}, "seeds": [0],
            "eval": {"max_corruption_images": 4}}


# ------------------------------------------------------------------------------------- end to end
def test_smoke_writes_every_output(smoke: Path) -> None:
    for name in OUTPUTS:
        assert (smoke / name).is_file(), name
        if name.endswith(".png"):
            assert (smoke / name).read_bytes()[:8] == PNG, name
    rows = list(csv.DictReader(open(smoke / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("vanilla", "0"), ("cutmix", "0")]
    for r in rows:  # the last epoch's accuracy is the evaluation's, and the best one is labelled as such
        ev = json.loads((Path(r["run_dir"]) / "eval.json").read_text())
        assert float(r["top1"]) == pytest.approx(ev["clean"]["top1"], abs=1e-3)
        assert float(r["best_top1"]) >= float(r["top1"]) - 1e-3 and r["best_epoch"] == "1"
        assert int(r["corruption_images"]) == 16 and 0 <= float(r["fgsm_top1"]) <= 100
    md = (smoke / "results.md").read_text()
    assert "| vanilla | 1 |" in md and "| cutmix | 1 |" in md and "mixlab bench smoke --out" in md
    assert "one seed per method" in md and "torch" in md and "CPU cores" in md


def test_second_invocation_does_no_training(smoke: Path) -> None:
    before = _mtimes(smoke)
    assert len(before) == 6
    result = run_protocol(load_protocol("smoke"), smoke, log=lambda _: None)
    assert result["outcomes"] == {"vanilla-s0": "skipped", "cutmix-s0": "skipped"}
    assert _mtimes(smoke) == before
    assert len(result["rows"]) == 2


def test_dry_run_lists_and_writes_nothing(smoke: Path, tmp_path: Path, capsys) -> None:
    assert command.run(_parse("smoke", "--out", str(smoke), "--dry-run", "--seeds", "0,5")) == 0
    out = capsys.readouterr().out
    assert "vanilla-s0" in out and "done (skipped)" in out and "cutmix-s5" in out and "train + evaluate" in out
    assert not (smoke / "runs" / "cutmix-s5").exists()
    assert command.run(_parse("smoke", "--out", str(tmp_path / "b"), "--dry-run")) == 0
    assert not (tmp_path / "b").exists()


def test_jobs_run_in_subprocesses_with_the_same_results(smoke: Path, tmp_path: Path) -> None:
    out = tmp_path / "jobs"
    assert command.run(_parse("smoke", "--out", str(out), "--jobs", "2")) == 0
    for name in OUTPUTS:
        assert (out / name).is_file()
    first = {r["method"]: r for r in csv.DictReader(open(smoke / "results.csv"))}
    for r in csv.DictReader(open(out / "results.csv")):  # same seed, same threads: the same numbers
        assert (r["top1"], r["fgsm_top1"], r["corruption_top1"]) == \
            (first[r["method"]]["top1"], first[r["method"]]["fgsm_top1"], first[r["method"]]["corruption_top1"])
    log = (out / "runs" / "vanilla-s0" / "bench.log").read_text()
    assert "mixlab.cli train" in log and "--set run.threads=1" in log and "mixlab.cli eval" in log


def test_merge_adds_the_rows_of_another_bench_that_this_one_lacks(smoke: Path, tmp_path: Path) -> None:
    out = tmp_path / "more"
    result = run_protocol(load_protocol("smoke"), out, methods=["vanilla"], merge=smoke / "results.csv",
                          log=lambda _: None)
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    theirs = {r["method"]: r for r in csv.DictReader(open(smoke / "results.csv"))}
    assert sorted(rows) == ["cutmix", "vanilla"] and len(result["rows"]) == 2
    assert rows["cutmix"] == theirs["cutmix"]  # taken over as it was
    assert rows["vanilla"]["run_dir"].startswith(str(out.resolve()))  # this bench's own run wins
    md = (out / "results.md").read_text()
    assert f"1 run(s) taken from {smoke / 'results.csv'}" in md and "cutmix-s0" in md and "not finished" not in md
    assert (out / "curves.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="not a mixlab results.csv"):
        run_protocol(load_protocol("smoke"), out, merge=smoke / "results.md", log=lambda _: None)


def test_interrupted_run_resumes_and_other_config_is_refused(tmp_path: Path) -> None:
    from mixlab.engine import train

    protocol = protocol_from_dict(_smoke_dict(), "tiny")
    [run] = plan(protocol, tmp_path, methods=["mixup"])
    assert run.status == "new" and run.dir == tmp_path.resolve() / "runs" / "mixup-s0"
    run.config.run.stop_epoch = 1  # interrupted after epoch 1 of 2
    train(run.config)
    [run] = plan(protocol, tmp_path, methods=["mixup"])
    assert (run.status, run.epoch) == ("resume", 1)
    result = run_protocol(protocol, tmp_path, methods=["mixup"], log=lambda _: None)
    assert result["outcomes"] == {"mixup-s0": "trained"}
    assert [r["epoch"] for r in report.read_history(run.dir)] == [1.0, 2.0]
    assert "not finished, so not in the table (1): vanilla-s0" in (tmp_path / "results.md").read_text()
    other = _smoke_dict()
    other["base"]["optim"]["lr"] = 0.1
    with pytest.raises(ValueError, match=r"trained with another config \(optim.lr: 0.05 there, 0.1"):
        plan(protocol_from_dict(other, "tiny"), tmp_path, methods=["mixup"])


def test_method_variants_and_sparse_test_passes(tmp_path: Path) -> None:
    """``name@variant`` runs method ``name`` with its own parameters under its own label; with
    ``run.eval_every: 2`` over 3 epochs the test set is seen after epochs 2 and 3 only, and the
    report's best epoch and curves use those epochs."""
    d = _smoke_dict()
    d["base"]["optim"]["epochs"] = 3
    d["base"]["run"]["eval_every"] = 2
    d["methods"] = {"rrc": {}, "rrc@0.5": {"scale": [0.5, 1.0]}}
    result = run_protocol(protocol_from_dict(d, "variants"), tmp_path, log=lambda _: None)
    assert result["outcomes"] == {"rrc-s0": "trained", "rrc@0.5-s0": "trained"}
    config = (tmp_path / "runs" / "rrc@0.5-s0" / "config.yaml").read_text()
    assert "name: rrc\n" in config and "- 0.5" in config
    history = report.read_history(tmp_path / "runs" / "rrc@0.5-s0")
    assert [math.isnan(r["test_acc1"]) for r in history] == [True, False, False]
    assert all(r["train_time"] <= r["epoch_time"] for r in history)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["rrc", "rrc@0.5"] and all(r["best_epoch"] in ("2", "3") for r in rows)
    assert "| rrc@0.5 |" in (tmp_path / "results.md").read_text()


# ---------------------------------------------------------------------------- protocols and plans
def test_shipped_protocols_are_valid() -> None:
    names = list_protocols()
    assert {"smoke", "cifar10-quick", "cifar10-full"} <= set(names)
    quick, full = load_protocol("cifar10-quick"), load_protocol("cifar10-full")
    for p in (quick, full):
        assert list(p.methods) == ["vanilla", "mixup", "cutmix", "resizemix", "fmix", "saliencymix", "mixup-cutmix",
                                   "rrc", "rrc@0.01", "cropmix", "recursivemix", "recursivemix@rs",
                                   "recursivemix@rs+his", "automix", "samix", "adautomix", "regmixup",
                                   "mixup+decouple", "cutmix+decouple", "manifold-mixup", "puzzlemix"]
        assert p.methods["mixup"] == {"alpha": 1.0} and p.methods["cutmix"] == {"alpha": 1.0}
        assert p.methods["automix"]["alpha"] == 2.0  # the paper's α; stage: the second-to-last (l = 3)
        assert p.methods["manifold-mixup"] == {"alpha": 2.0, "stages": [0, 1, 2]}  # the AutoMix tables' α
        assert p.methods["puzzlemix"]["alpha"] == 1.0 and p.methods["puzzlemix"]["t_size"] == 4  # the code's CIFAR run
        # the CropMix paper's comparison: RRC at the usual and at CropMix's range, CropMix at (0.01, 1)
        assert p.config("rrc@0.01", 0).method.name == "rrc" and p.methods["rrc@0.01"] == {"scale": [0.01, 1.0]}
        assert p.config("cropmix", 1).method.params == {"scale": [0.01, 1.0]}
        assert p.base.optim.name == "sgd" and p.base.optim.lr == 0.1 and p.base.optim.weight_decay == 5e-4
        assert len(p.seeds) >= 2 and p.description
    assert quick.base.data.train_per_class == 100 and quick.eval.max_corruption_images == 1000
    assert quick.base.run.eval_every == 5 and full.base.run.eval_every == 1
    assert full.base.model.name == "resnet18" and full.base.optim.epochs == 200 and full.base.data.batch_size == 128
    assert full.base.run.amp == "bf16" and full.base.run.channels_last
    cfg = quick.config("fmix", 2)
    assert (cfg.method.name, cfg.method.params, cfg.run.seed) == ("fmix", {"alpha": 1.0, "decay_power": 3.0}, 2)

    # the self-supervised protocols: every quick protocol has its GPU twin with the same methods and claims
    for name in ("cifar10-ssl", "cifar10-mocov2"):
        quick, full = load_protocol(f"{name}-quick"), load_protocol(f"{name}-full")
        assert list(quick.methods) == list(full.methods) and quick.claims == full.claims
        assert quick.base.optim.epochs == 10 and full.base.optim.epochs == 200 and full.base.run.amp == "bf16"
    mae, mae_full = load_protocol("cifar10-mae-quick"), load_protocol("cifar10-mae-full")
    assert list(mae.methods) == list(mae_full.methods) == ["mae", "mae@cropmix"] and mae.claims == mae_full.claims
    assert mae.base.data.train_per_class == 500 and mae.eval.finetune.fractions == (1.0,)  # 10 % of CIFAR-10
    assert mae.config("mae@cropmix", 0).method.params == {"input": "cropmix", "cropmix_mix": "mixup"}
    mocov2 = load_protocol("cifar10-mocov2-quick")
    assert [mocov2.config(m, 0).method.params["views"] for m in mocov2.methods] == ["standard", "scalemix", "cropmix"]
    assert mocov2.eval.finetune.fractions == (0.01, 0.1) and mocov2.eval.finetune.head_lr_scale == 20


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(epochs=3), r"unknown key\(s\) 'epochs'"),
    (lambda d: d.pop("seeds"), "missing key"),
    (lambda d: d["methods"].update(mixupp={}), r"unknown method 'mixupp' \(did you mean 'mixup'\?\)"),
    (lambda d: d["methods"].update(mixup={"beta": 1}), "method 'mixup' has no hyper-parameter 'beta'"),
    (lambda d: d["methods"].update(mixup={"alpha": -1}), "alpha"),
    (lambda d: d["base"]["optim"].update(lrr=0.1), r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
    (lambda d: d["base"]["run"].update(seed=1), "base sets run.seed, which the runner sets"),
    (lambda d: d["base"].update(method={"name": "cutmix"}), "base sets method.name"),
    (lambda d: d["base"]["optim"].update(epochs=0), "optim.epochs must be an integer >= 1"),
    (lambda d: d.update(seeds=[0, 0]), "seeds must be distinct"),
    (lambda d: d.update(seeds=[-1]), "seeds must be a non-empty list of integers >= 0"),
    (lambda d: d.update(methods={}), "methods must be a non-empty mapping"),
    (lambda d: d.update(eval={"max_corruption_images": 0}), "eval.max_corruption_images must be null"),
    (lambda d: d.update(eval={"fgsm_eps": 1}), "eval must be a mapping with keys among"),
    (lambda d: d["methods"].update({"rrc@": {}}), "empty variant after '@'"),
    (lambda d: d.update(claims=[{"method": "mixup", "baseline": "cutmix", "claim": "x"}]),
     "claim 'x': baseline 'cutmix' is not one of the protocol's methods"),
    (lambda d: d.update(claims=[{"method": "mixup", "baseline": "vanilla"}]), "each claim must be a mapping"),
    (lambda d: d["methods"].update({"rcc@0.01": {}}), r"unknown method 'rcc' \(did you mean 'rrc'\?\)"),
    (lambda d: d["base"]["run"].update(eval_every=0), "run.eval_every must be an integer >= 1"),
])
def test_protocol_validation_errors(change, message) -> None:
    d = _smoke_dict()
    change(d)
    with pytest.raises(ValueError, match=message) as info:
        protocol_from_dict(d, "mine")
    assert "protocol 'mine'" in str(info.value)


def test_unknown_protocol_lists_the_shipped_ones(tmp_path: Path) -> None:
    shipped = ", ".join(sorted(list_protocols()))
    with pytest.raises(ValueError, match=r"unknown protocol 'cifar10-quik' \(did you mean 'cifar10-quick'\?\); "
                                         rf"available: {shipped} "):
        load_protocol("cifar10-quik")
    path = tmp_path / "mine.yaml"
    path.write_text("base: {}\nmethods: {vanilla: {}}\nseeds: [0]\n")
    assert load_protocol(path).name == "mine"
    with pytest.raises(ValueError, match="give a protocol: "):
        command.run(_parse())


def test_methods_filter_and_unknown_method(tmp_path: Path) -> None:
    protocol = protocol_from_dict(_smoke_dict(), "tiny")
    runs = plan(protocol, tmp_path, methods=["mixup"], seeds=[3, 1])
    assert [(r.method, r.seed, r.status) for r in runs] == [("mixup", 3, "new"), ("mixup", 1, "new")]
    assert [r.name for r in plan(protocol, tmp_path, seeds=[0, 1])] == ["vanilla-s0", "mixup-s0", "vanilla-s1",
                                                                       "mixup-s1"]
    with pytest.raises(ValueError, match="protocol 'tiny' has no method 'cutmix'; its methods: vanilla, mixup"):
        plan(protocol, tmp_path, methods=["cutmix"])
    with pytest.raises(SystemExit):  # argparse: not a list of seeds
        _parse("smoke", "--seeds", "a,b")


def test_missing_data_root_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the protocol's ../shared/data/... does not exist from here
    with pytest.raises(FileNotFoundError, match="imagefolder data not found at ../shared/data/cifar10-jpeg.zip"):
        plan(load_protocol("cifar10-quick"), tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=r"--data-root"):
        command.run(_parse("cifar10-quick", "--data-root", "nowhere.zip", "--dry-run"))


def test_split_cores() -> None:
    assert split_cores(1, num_workers=1, cores=2) == (2, 1)
    assert split_cores(2, num_workers=4, cores=2) == (1, 0)
    assert split_cores(3, num_workers=4, cores=2) == (1, 0)
    assert split_cores(1, num_workers=8, cores=16) == (16, 8)
    assert split_cores(4, num_workers=8, threads=2, cores=16) == (2, 3)


# ------------------------------------------------------------------------------------------ report
def _rows() -> list[dict]:
    values = {"vanilla": [50.4, 52.8, 55.2], "mixup": [57.4, 58.4, 56.4], "cutmix": [54.8, 55.2, 54.4],
              "fmix": [40.0, 41.0, 42.0]}
    return [{"method": m, "seed": s, "top1": v, "ece": 5.0 + s, "fgsm_top1": 10.0, "corruption_top1": v - 5,
             "epoch_time_s": {"vanilla": 2.0, "mixup": 2.2}.get(m, 3.0), "wall_time_s": 100.0,
             "corruption_images": 1000} for m, vs in values.items() for s, v in enumerate(vs)]


def test_claims_are_checked_against_the_seed_spread() -> None:
    rows = [{"method": m, "seed": s, "top1": v} for m, vals in
            (("a", [50.0, 51.0, 52.0]), ("b", [45.0, 46.0, 47.0]), ("c", [50.5, 51.5, 52.5])) for s, v in enumerate(vals)]
    assert report.check_claim(rows, "a", "b", "A beats B") == (
        "A beats B: a 51.00 vs b 46.00 (+5.00 points, threshold 2 x 1.00 = 2.00): supported here.")
    assert report.check_claim(rows, "b", "a", "B beats A").endswith("contradicted here (the difference is the other "
                                                                     "way, beyond the spread).")
    assert report.check_claim(rows, "c", "a", "C beats A").endswith("not resolved here (within the spread).")
    assert report.check_claim(rows, "a", "zz", "A beats Z") == "A beats Z: not checked (zz has no finished run)."
    claims = load_protocol("cifar10-quick").claims
    assert ("cropmix", "rrc@0.01") in {(c.method, c.baseline) for c in claims}
    assert ("recursivemix", "cutmix") in {(c.method, c.baseline) for c in claims}


def test_mean_std_and_pooled_std() -> None:
    assert report.mean_std([50.4, 52.8, 55.2]) == pytest.approx((52.8, 2.4))
    mean, std = report.mean_std([3.0])
    assert mean == 3.0 and math.isnan(std)
    assert report.mean_std([1.0, math.nan, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    # sqrt((2 * 2.4^2 + 2 * 1^2) / 4)
    assert report.pooled_std([[50.4, 52.8, 55.2], [57.4, 58.4, 56.4], [7.0]]) == pytest.approx(math.sqrt(3.38))


def test_summary_table_and_comparison(tmp_path: Path) -> None:
    summary = {s["method"]: s for s in report.summarize(_rows())}
    assert summary["vanilla"]["top1"] == pytest.approx((52.8, 2.4))
    assert summary["mixup"]["n"] == 3 and summary["mixup"]["time_ratio"] == pytest.approx(1.1)
    text = report.compare_to_baseline(_rows(), "top1", "top-1")
    s = math.sqrt((2.4 ** 2 + 1 + 0.4 ** 2 + 1) / 4)  # pooled over the four methods, 2 df each
    assert f"threshold 2 x {s:.2f}" in text
    assert "mixup (+4.60) is better than vanilla" in text and "fmix (-11.80) is worse than vanilla" in text
    assert "cutmix (+2.00) is within the seed-to-seed spread of vanilla" in text
    md = report.write_markdown(_rows(), tmp_path / "results.md", protocol=load_protocol("smoke"),
                               commands=["mixlab bench x"], machines=["2 CPU cores"], wall_clock_s=4000)
    assert "| vanilla | 3 | 52.80 ± 2.40 | 6.00 ± 1.00 | 10.00 ± 0.00 | 47.80 ± 2.40 | 2.0 ± 0.0 | 1.00x |" in md
    assert "| mixup | 3 | 57.40 ± 1.00 |" in md and "1.10x |" in md
    assert f"Seed-to-seed std of top-1: {s:.2f} points" in md and "1 h 06 min" in md
    single = report.compare_to_baseline([r for r in _rows() if r["seed"] == 0], "top1", "top-1")
    assert "no spread to judge them by" in single and "mixup +7.00" in single
