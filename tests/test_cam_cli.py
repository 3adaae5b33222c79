"""The papers' analyses from the command line and in the bench: ``mixlab cam`` (CAMs of several runs),
the ``wsol`` and ``ood`` sections of ``mixlab eval`` (eval.json and the printed table), the
effective class number (``mixlab show --effective-classes``, ``mixlab eval --effective-classes``)
and their bench columns and claims.

Two tiny runs (1 epoch of a width-8 small ResNet on 16 px synthetic shapes, 40 test images) are
trained once for the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mixlab.bench import report
from mixlab.bench.protocols import load_protocol, protocol_from_dict
from mixlab.bench.runner import run_protocol
from mixlab.cli import main
from mixlab.engine.eval_run import evaluate_checkpoint
from mixlab.evaluation import evaluate_all, format_table, ood_detection

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--set", "data.image_size=16", "--set", "data.num_per_class=8", "--set", "data.test_per_class=4",
        "--set", "model.kwargs.width=8", "--set", "run.progress=false", "--set", "run.threads=1",
        "--set", "run.tensorboard=false", "--batch-size", "16", "--workers", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished runs, vanilla and CutMix, not evaluated."""
    root = tmp_path_factory.mktemp("cam")
    out = {}
    for method in ("vanilla", "cutmix"):
        out[method] = root / method
        assert main(["train", *TINY, "--method", method, "--out", str(out[method]), "--no-eval"]) == 0
    return out


# ------------------------------------------------------------------------------------------- cam
def test_cam_draws_every_run_on_the_same_images(runs, tmp_path, capsys):
    png = tmp_path / "cams.png"
    assert main(["cam", str(runs["vanilla"]), str(runs["cutmix"]), "--images", "3", "--topk", "2",
                 "--out", str(png)]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote {png}: 3 image(s) x 2 run(s), top-2 maps "
                                               f"(vanilla: cam, cutmix: cam)")
    assert png.read_bytes()[:8] == PNG
    with Image.open(png) as img:  # 3 rows, 1 + 2 x 2 columns
        assert img.size[0] > img.size[1] > 0


def test_cam_default_output_is_under_runs_cam(runs, tmp_path, monkeypatch):
    from mixlab.engine.cam import compare_cams

    monkeypatch.chdir(tmp_path)
    path, outputs = compare_cams([runs["vanilla"], runs["cutmix"]], indices=[0, 5], topk=1, device="cpu")
    assert path == Path("runs") / "cam" / "vanilla+cutmix.png" and (tmp_path / path).read_bytes()[:8] == PNG
    assert [name for name, _ in outputs] == ["vanilla", "cutmix"]
    for _, out in outputs:  # (images, k, H, W) maps at the image size, on the CPU
        assert out.cams.shape == (2, 1, 16, 16) and out.classes.shape == (2, 1) and out.cams.device.type == "cpu"


def test_cam_refuses_bad_arguments(runs, tmp_path, capsys):
    a = str(runs["vanilla"])
    with pytest.raises(SystemExit) as e:
        main(["cam", a, "--images", "0"])
    assert e.value.code == 2
    assert "must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cam", a, "--indices", "1,x"])
    assert "expected comma-separated test image indices >= 0 (e.g. 3,17,42), got '1,x'" in capsys.readouterr().err
    assert main(["cam", a, "--indices", "0,40", "--out", str(tmp_path / "x.png")]) == 2
    assert ("--indices [40] are out of range: the test split of " + a + " has 40 images (indices 0 to 39)"
            in capsys.readouterr().err)
    assert main(["cam", a, "--images", "33"]) == 2
    assert "--images must be an integer in [1, 32] (one row each), got 33" in capsys.readouterr().err
    assert main(["cam", a, "--topk", "11"]) == 2
    assert "--topk must be at most the number of classes (10), got 11" in capsys.readouterr().err
    assert main(["cam", a, str(tmp_path / "nowhere")]) == 2
    assert "no such checkpoint file or run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------- eval: wsol, ood
def test_eval_measures_localization_and_ood_on_a_dataset_with_boxes(runs, capsys):
    run = runs["cutmix"]
    assert main(["eval", str(run), "--no-corruptions", "--no-fgsm", "--ood-images", "30", "--no-progress"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((run / "eval.json").read_text())
    wsol = ev["wsol"]
    assert wsol["n"] == 40 and wsol["cam"] == "cam" and wsol["cam_curve_interval"] == 0.01
    assert wsol["maxboxacc"] == pytest.approx(sum(wsol[f"maxboxacc@{d}"] for d in (30, 50, 70)) / 3)
    assert all(0 <= wsol[f"maxboxacc@{d}"] <= 100 and 0 <= wsol[f"best_threshold@{d}"] < 1 for d in (30, 50, 70))
    ood = ev["ood"]
    assert sorted(ood["sets"]) == ["gaussian", "uniform"]
    assert all((r["n_in"], r["n_out"]) == (40, 30) for r in ood["sets"].values())
    for key in ("auroc", "fpr95"):  # the means over the two sets
        assert ood[key] == pytest.approx((ood["sets"]["gaussian"][key] + ood["sets"]["uniform"][key]) / 2)
    assert f"WSOL    MaxBoxAccV2 {wsol['maxboxacc']:.2f}%  (IoU 30/50/70: " in out
    assert (f"OOD     AUROC {ood['auroc']:.2f}%  FPR@95 {ood['fpr95']:.2f}%  (max softmax vs gaussian "
            f"{ood['sets']['gaussian']['auroc']:.2f} / {ood['sets']['gaussian']['fpr95']:.2f}, uniform ") in out
    assert "n=30 each)" in out


def test_no_wsol_and_no_ood_leave_them_out(runs, capsys):
    assert main(["eval", str(runs["vanilla"]), "--no-corruptions", "--no-fgsm", "--no-wsol", "--no-ood",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((runs["vanilla"] / "eval.json").read_text())
    assert ev["wsol"] is None and ev["ood"] is None and ev["effective_classes"] is None
    assert "WSOL" not in out and "OOD" not in out


def test_evaluate_all_ood_reuses_the_clean_logits_and_matches_ood_detection():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    images, labels = torch.randn(24, 3, 8, 8), torch.randint(0, 5, (24,))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    results = evaluate_all(model, (images, labels), mean, std, fgsm=False, corruptions=False, ood=("uniform",),
                           ood_images=16)
    alone = ood_detection(model, (images, labels), "uniform", mean, std, n_out=16)
    assert results["ood"]["sets"]["uniform"] == pytest.approx(alone)
    assert results["ood"]["auroc"] == pytest.approx(alone["auroc"]) and "OOD     AUROC" in format_table(results)

    def unread():  # with the logits and the images' shape given, the in-distribution data is not read
        raise AssertionError("in_data was read")
        yield

    with torch.no_grad():
        logits = model(images)
    assert ood_detection(model, unread(), "uniform", mean, std, n_out=16, in_logits=logits,
                         image_shape=(3, 8, 8)) == pytest.approx(alone)
    with pytest.raises(ValueError, match=r"in_logits must be None or the \(N, K\) logits of in_data, got \(24,\)"):
        ood_detection(model, (images, labels), "uniform", mean, std, in_logits=logits[:, 0])
    assert evaluate_all(model, (images, labels), mean, std, fgsm=False, corruptions=False)["ood"] is None
    for bad, message in ((("svhn",), r"ood must be distinct names among \['gaussian', 'uniform'\], got \('svhn',\)"),
                         ("gaussian", "ood must be distinct names"), (("uniform", "uniform"), "ood must be distinct")):
        with pytest.raises(ValueError, match=message):
            evaluate_all(model, (images, labels), mean, std, fgsm=False, corruptions=False, ood=bad)
    with pytest.raises(ValueError, match="ood_images must be None or an integer >= 1, got 0"):
        evaluate_all(model, (images, labels), mean, std, ood=("uniform",), ood_images=0)


def _folder(root: Path) -> Path:
    """A tiny ImageFolder tree of 16 px images in two classes (no boxes)."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_a_dataset_without_boxes_gets_no_wsol_and_wsol_required_is_an_error(tmp_path, capsys):
    data = _folder(tmp_path / "folder")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--method", "vanilla", "--dataset", "imagefolder", "--data-root", str(data),
                 "--out", str(run), "--no-eval"]) == 0
    ev = evaluate_checkpoint(run, fgsm=False, corruptions=False, progress=False, ood_images=8)
    assert ev["wsol"] is None and ev["ood"]["sets"]["uniform"]["n_in"] == 8
    capsys.readouterr()
    assert main(["eval", str(run), "--wsol", "--no-corruptions"]) == 2
    assert (f"cannot evaluate the localization of {run}: the test split of dataset 'imagefolder' has no object "
            f"boxes" in capsys.readouterr().err)


# -------------------------------------------------------------------------------- effective classes
def test_show_prints_the_effective_class_number(capsys):
    from mixlab.engine.show import show_effective_classes

    argv = ["show", "--method", "mixup", "--effective-classes", "3", "--set", "data.image_size=16",
            "--set", "data.num_per_class=4", "--set", "data.batch_size=8", "--set", "data.num_workers=0"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    measured = show_effective_classes("mixup", steps=3, overrides=argv[6::2])
    assert 1 < measured.mean <= 2  # Mixup: two classes a target, one when both images share a class
    assert out[0] == (f"mixup: {measured.mean:.3f} effective classes per target over the first 3 training steps "
                      f"(24 images; classes with weight > 0.0001, label smoothing off)")
    assert out[1].split() == ["steps", "1-3", *(f"{v:.2f}" for v in measured.per_step.tolist())]


def test_eval_effective_classes_of_the_run(runs, capsys):
    assert main(["eval", str(runs["cutmix"]), "--no-corruptions", "--no-fgsm", "--no-wsol", "--no-ood",
                 "--effective-classes", "4", "--no-progress"]) == 0
    effective = json.loads((runs["cutmix"] / "eval.json").read_text())["effective_classes"]
    assert effective["steps"] == 4 and len(effective["per_step"]) == 4 and effective["images"] == 64
    assert 1 <= effective["mean"] <= 2 and effective["threshold"] == 1e-4  # CutMix: two classes at most
    assert (f"classes {effective['mean']:.2f} effective classes per training target (weight > 0.0001, first 4 "
            f"steps, 64 images)") in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- bench
def _analysis_protocol(**eval_settings) -> dict:
    return {"base": {"data": {"name": "synthetic", "image_size": 16, "num_per_class": 4, "test_per_class": 4,
                              "batch_size": 16, "num_workers": 0},
                     "model": {"name": "resnet_small", "kwargs": {"width": 8}},
                     "optim": {"name": "sgd", "lr": 0.05, "epochs": 1, "warmup_epochs": 0},
                     "run": {"device": "cpu", "threads": 1, "progress": False, "tensorboard": False}},
            "methods": {"vanilla": {}, "cutmix": {"alpha": 1.0}}, "seeds": [0],
            "eval": {"corruptions": False, "fgsm": False, **eval_settings},
            "claims": [{"method": "cutmix", "baseline": "vanilla", "metric": "maxboxacc", "claim": "CutMix localizes"}]}


def test_bench_reports_localization_ood_and_effective_classes(tmp_path):
    protocol = protocol_from_dict(_analysis_protocol(wsol=True, effective_classes=2), "analysis")
    result = run_protocol(protocol, tmp_path / "b", log=lambda _: None)
    rows = {r["method"]: r for r in result["rows"]}
    for row in rows.values():
        ev = json.loads((Path(row["run_dir"]) / "eval.json").read_text())
        assert row["maxboxacc"] == ev["wsol"]["maxboxacc"] and row["ood_auroc"] == ev["ood"]["auroc"]
        assert row["ood_fpr95"] == ev["ood"]["fpr95"] and row["effective_classes"] == ev["effective_classes"]["mean"]
        assert ev["effective_classes"]["steps"] == 2
    assert rows["vanilla"]["effective_classes"] == 1.0  # one class a target
    md = (tmp_path / "b" / "results.md").read_text()
    assert "| OOD AUROC % | MaxBoxAccV2 % | effective classes | train s / epoch |" in md
    assert f"| {rows['cutmix']['maxboxacc']:.2f} | {rows['cutmix']['effective_classes']:.2f} |" in md
    assert (f"- CutMix localizes: maxboxacc cutmix {rows['cutmix']['maxboxacc']:.2f} vs vanilla "
            f"{rows['vanilla']['maxboxacc']:.2f}") in md and "MaxBoxAccV2: boxes from the true class's CAM" in md
    csv_rows = report.read_rows(tmp_path / "b" / "results.csv")
    assert [r["maxboxacc"] for r in csv_rows] == pytest.approx([rows["vanilla"]["maxboxacc"],
                                                                rows["cutmix"]["maxboxacc"]], abs=1e-4)
    # done: the same settings evaluate nothing again; other settings evaluate again
    again = run_protocol(protocol, tmp_path / "b", log=lambda _: None)
    assert set(again["outcomes"].values()) == {"skipped"}
    fewer = protocol_from_dict(_analysis_protocol(wsol=False, ood=False), "analysis")
    redone = run_protocol(fewer, tmp_path / "b", log=lambda _: None)
    assert set(redone["outcomes"].values()) == {"evaluated"}
    ev = json.loads((tmp_path / "b" / "runs" / "cutmix-s0" / "eval.json").read_text())
    assert ev["wsol"] is None and ev["ood"] is None and ev["effective_classes"] is None
    md = (tmp_path / "b" / "results.md").read_text()
    assert "MaxBoxAccV2 %" not in md and "OOD AUROC %" not in md
    assert "- CutMix localizes: not checked (cutmix has no finished run with maxboxacc)." in md


def test_bench_subprocess_passes_the_analysis_flags(tmp_path):
    protocol = protocol_from_dict(_analysis_protocol(wsol=False, ood=False, effective_classes=2), "analysis")
    result = run_protocol(protocol, tmp_path / "b", methods=["vanilla"], jobs=2, log=lambda _: None)
    assert result["outcomes"] == {"vanilla-s0": "trained"}
    log = (tmp_path / "b" / "runs" / "vanilla-s0" / "bench.log").read_text()
    assert "--no-ood --no-wsol --effective-classes 2" in log
    ev = json.loads((tmp_path / "b" / "runs" / "vanilla-s0" / "eval.json").read_text())
    assert ev["ood"] is None and ev["wsol"] is None and ev["effective_classes"]["steps"] == 2


def test_claims_on_the_analysis_metrics():
    rows = [{"method": m, "seed": s, "ood_fpr95": v, "maxboxacc": 100 - v} for m, vals in
            (("regmixup", [20.0, 21.0, 22.0]), ("mixup", [30.0, 31.0, 32.0])) for s, v in enumerate(vals)]
    assert report.check_claim(rows, "regmixup", "mixup", "R", key="ood_fpr95").endswith("supported here.")
    assert "ood_fpr95 (lower is better) regmixup 21.00 vs mixup 31.00" in \
        report.check_claim(rows, "regmixup", "mixup", "R", key="ood_fpr95")
    assert report.check_claim(rows, "regmixup", "mixup", "R", key="maxboxacc").endswith("supported here.")
    bad = _analysis_protocol()
    bad["claims"][0]["metric"] = "maxboxac"
    with pytest.raises(ValueError, match=r"metric must be one of .*maxboxacc, ood_auroc, ood_fpr95, .*got 'maxboxac'"):
        protocol_from_dict(bad, "analysis")
    for settings, message in (({"wsol": "yes"}, "eval.wsol must be true, false or null"),
                              ({"ood": 1}, "eval.ood must be true or false"),
                              ({"effective_classes": -1}, "eval.effective_classes must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            protocol_from_dict(_analysis_protocol(**settings), "analysis")
    quick = load_protocol("synthetic-wsol-quick")
    assert quick.eval.wsol is True and quick.eval.effective_classes == 100 and len(quick.seeds) == 3
    assert {("automix", "puzzlemix", "maxboxacc"), ("puzzlemix", "cutmix", "maxboxacc")} <= \
        {(c.method, c.baseline, c.metric) for c in quick.claims}
    full = load_protocol("cub200-wsol-full")
    assert full.base.data.name == "cub200" and full.base.model.kwargs == {"pretrained": True}


def test_a_claim_on_the_effective_class_number_needs_it_measured(tmp_path):
    claim = {"method": "cutmix", "baseline": "vanilla", "metric": "effective_classes", "claim": "CutMix mixes more"}
    data = {**_analysis_protocol(wsol=False, effective_classes=2), "claims": [claim]}
    result = run_protocol(protocol_from_dict(data, "analysis"), tmp_path / "b", log=lambda _: None)
    rows = {r["method"]: r for r in result["rows"]}
    md = (tmp_path / "b" / "results.md").read_text()
    delta = rows["cutmix"]["effective_classes"] - 1.0
    assert (f"- CutMix mixes more: effective_classes cutmix {rows['cutmix']['effective_classes']:.2f} vs vanilla "
            f"1.00 ({delta:+.2f} classes") in md
    with pytest.raises(ValueError, match="effective_classes needs eval.effective_classes"):
        protocol_from_dict({**_analysis_protocol(wsol=False), "claims": [claim]}, "analysis")
