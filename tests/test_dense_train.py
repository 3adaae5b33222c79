"""Training, evaluating and transferring segmentation and detection models (``data.task``).

The metrics by hand on tiny tensors (mIoU with an ignore index, COCO mAP of perfect, empty and
wrong predictions), a 2-step run per task, resume bit for bit, eval.json, the transfer of a
classification run's backbone, and the bad task / method combinations named in the errors.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torchvision import tv_tensors

from mixlab import registry
from mixlab.cli import main
from mixlab.engine import train
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import load_config
from mixlab.engine.distributed import DistInfo
from mixlab.engine.eval_run import evaluate_checkpoint
from mixlab.engine.loop import setup
from mixlab.engine.transfer import transfer, transfer_config
from mixlab.evaluation.dense import coco_map, confusion_matrix, segmentation_scores
from mixlab.methods.dense import DetectionStep, SegmentationStep

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny(task: str, method: str, out, *extra: str):
    """A run of 2 steps per epoch: 20 training images of batch 8 (narrow ResNet), 10 test images."""
    size = ["data.image_size=32", "data.objects=3"] if task == "detection" else []
    return load_config(None, [f"data.task={task}", f"method.name={method}", "data.num_per_class=2",
                              "data.test_per_class=1", "data.batch_size=8", "data.eval_batch_size=10",
                              "data.num_workers=0", "model.kwargs={width: 8}", "optim.epochs=1",
                              "optim.warmup_epochs=0", "run.progress=false", "run.tensorboard=false", "run.threads=1",
                              f"run.out={out}", *size, *extra])


# ----------------------------------------------------------------------------------- metrics by hand
def test_confusion_matrix_leaves_out_ignored_pixels_and_miou_is_the_mean_of_the_classes_present():
    target = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 2]])  # the ignored pixel is predicted 2: it must not count
    cm = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    scores = segmentation_scores(cm)
    # IoU: class 0 1/(2+1-1), class 1 2/(2+3-2), class 2 1/1; class 3 absent from labels and predictions
    assert scores["iou"][:3] == pytest.approx([50.0, 200 / 3, 100.0])
    assert scores["iou"][3] != scores["iou"][3]  # NaN
    assert scores["miou"] == pytest.approx((50.0 + 200 / 3 + 100.0) / 3)
    assert scores["pixel_acc"] == pytest.approx(80.0)  # 4 of the 5 labelled pixels


def test_confusion_matrices_of_batches_add_up_to_the_whole_sets():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 8, 8), generator=g)
    target[0, :2] = 255
    pred = torch.randint(0, 5, (6, 8, 8), generator=g)
    whole = confusion_matrix(pred, target, 5)
    assert torch.equal(confusion_matrix(pred[:2], target[:2], 5) + confusion_matrix(pred[2:], target[2:], 5), whole)
    assert int(whole.sum()) == 6 * 64 - 16


def _boxes(*xyxy):
    return tv_tensors.BoundingBoxes(torch.tensor(xyxy, dtype=torch.float32), format="XYXY", canvas_size=(64, 64))


TARGETS = [{"boxes": _boxes([2, 3, 20, 30], [30, 30, 60, 50]), "labels": torch.tensor([1, 2])},
           {"boxes": _boxes([10, 10, 40, 40]), "labels": torch.tensor([3])}]


def test_map_of_perfect_predictions_is_100_and_of_none_is_0():
    perfect = [{"boxes": t["boxes"].clone(), "labels": t["labels"].clone(), "scores": torch.ones(len(t["labels"]))}
               for t in TARGETS]
    assert coco_map(perfect, TARGETS) == pytest.approx({"map": 100.0, "map50": 100.0})
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}] * 2
    assert coco_map(empty, TARGETS) == {"map": 0.0, "map50": 0.0}


def test_map_of_the_right_boxes_with_the_wrong_classes_is_0():
    wrong = [{"boxes": t["boxes"].clone(), "labels": t["labels"] + 3, "scores": torch.ones(len(t["labels"]))}
             for t in TARGETS]
    assert coco_map(wrong, TARGETS) == {"map": 0.0, "map50": 0.0}


def test_map_of_a_box_at_iou_0_6_counts_at_0_5_only():
    # predicted [2, 3, 20, 30] as [2, 3, 20, 19.2]: IoU = 16.2 / 27 = 0.6 with the true box
    pred = [{"boxes": _boxes([2, 3, 20, 19.2]), "labels": torch.tensor([1]), "scores": torch.ones(1)}]
    scores = coco_map(pred, [{"boxes": _boxes([2, 3, 20, 30]), "labels": torch.tensor([1])}])
    assert scores["map50"] == pytest.approx(100.0)
    assert scores["map"] == pytest.approx(100.0 * 3 / 10)  # thresholds 0.50, 0.55, 0.60 of the ten


# ----------------------------------------------------------------------------------- training
@pytest.mark.parametrize("task,method,metric", [("segmentation", "cutmix", "test_miou"),
                                                ("segmentation", "mixup", "test_miou"),
                                                ("detection", "mosaic", "test_map"),
                                                ("detection", "copypaste", "test_map")])
def test_a_two_step_run_trains_the_task_and_reports_its_metric(tmp_path, task, method, metric):
    m = train(tiny(task, method, tmp_path / "run"))
    assert m["step"] == 2 and torch.isfinite(torch.tensor(m["train_loss"]))
    assert 0.0 <= m[metric] <= 100.0
    assert "test_acc1" not in m
    if task == "detection":  # the detector's own losses, logged
        assert {"train_classification", "train_bbox_regression"} <= set(m)
    ev = evaluate_checkpoint(m["run_dir"], device="cpu", progress=False)
    assert ev["task"] == task and ev["fgsm"] is None and ev["corruptions"] is None
    assert ev["clean"][metric[len("test_"):]] == pytest.approx(m[metric])  # the same test pass as the last epoch's
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["task"] == task and saved["clean"][metric[len("test_"):]] == pytest.approx(m[metric])


@pytest.mark.parametrize("task,method", [("segmentation", "cutmix"), ("detection", "mosaic")])
def test_resume_continues_bit_for_bit(tmp_path, task, method):
    whole = train(tiny(task, method, tmp_path / "whole", "optim.epochs=2"))
    train(tiny(task, method, tmp_path / "half", "optim.epochs=2", "run.stop_epoch=1"))
    resumed = train(tiny(task, method, tmp_path / "half", "optim.epochs=2", f"run.resume={tmp_path / 'half'}"))
    a, b = load_checkpoint(whole["checkpoint"])["model"], load_checkpoint(resumed["checkpoint"])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train_loss"] == whole["train_loss"]


def test_the_task_selects_the_dense_step_and_model(tmp_path):
    seg = setup(tiny("segmentation", "fmix", tmp_path / "s"), CPU)
    assert isinstance(seg.method, SegmentationStep) and seg.num_classes == 11  # background + 10 shapes
    images, masks = next(iter(seg.data.train_loader))
    assert images.shape == (8, 3, 32, 32) and masks.shape == (8, 32, 32)
    assert seg.model(seg.data.preprocess(images)).shape == (8, 11, 32, 32)
    det = setup(tiny("detection", "vanilla", tmp_path / "d"), CPU)
    assert isinstance(det.method, DetectionStep) and det.method.mixer is None
    images, targets = next(iter(det.data.train_loader))
    assert images.dtype == torch.uint8 and len(targets) == 8 and {"boxes", "labels"} <= set(targets[0])
    assert det.data.preprocess(images).max() <= 1.0  # the detector normalises [0, 1] images itself


def test_task_at_the_top_of_a_config_file(tmp_path):
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump({"task": "segmentation", "method": {"name": "resizemix"}}))
    cfg = load_config(path)
    assert cfg.data.task == "segmentation" and cfg.method.name == "resizemix"
    assert load_config(None, ["task=detection"]).data.task == "detection"


# ----------------------------------------------------------------------------------- bad combinations
@pytest.mark.parametrize("task,method,words", [
    ("segmentation", "automix", ["'automix' does not train task 'segmentation'", "classification only",
                                 "vanilla, mixup, cutmix, resizemix, fmix, saliencymix"]),
    ("detection", "fmix", ["'fmix' does not train task 'detection'", "mosaic, copypaste"]),
    ("segmentation", "mosaic", ["'mosaic' does not train task 'segmentation'"]),
])
def test_a_method_that_does_not_train_the_task_is_named(tmp_path, task, method, words):
    with pytest.raises(ValueError) as e:
        train(tiny(task, method, tmp_path / "run"))
    assert all(w in str(e.value) for w in words)
    assert not (tmp_path / "run").exists()


def test_bad_task_and_hyper_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"data.task must be 'classification' or 'segmentation' or 'detection', "
                                         r"got 'depth'"):
        load_config(None, ["data.task=depth"])
    with pytest.raises(ValueError, match=r"method 'mosaic' of task 'detection' \(Mosaic\) has no hyper-parameter "
                                         r"'alpha'; valid: p, center_range"):
        registry.build_dense_method("detection", "mosaic", 11, alpha=1.0)
    with pytest.raises(ValueError, match="model 'lraspp_mobilenet_v3_large' is a segmentation model"):
        registry.build_dense_model("detection", "lraspp_mobilenet_v3_large", 11, image_size=32)


def test_the_cli_refuses_a_classification_method_for_a_dense_task(tmp_path, capsys):
    code = main(["train", "--task", "detection", "--method", "puzzlemix", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "method 'puzzlemix' does not train task 'detection'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- transfer
@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    cfg = load_config(None, ["method.name=cutmix", "data.num_per_class=2", "data.test_per_class=1",
                             "data.batch_size=8", "data.num_workers=0", "model.kwargs={width: 8}", "optim.epochs=1",
                             "run.progress=false", "run.tensorboard=false", "run.threads=1", f"run.out={out}"])
    return train(cfg)["run_dir"]


TINY_TRANSFER = ["data.num_per_class=2", "data.test_per_class=1", "data.batch_size=8", "data.eval_batch_size=10",
                 "data.num_workers=0", "optim.epochs=1", "run.progress=false", "run.tensorboard=false",
                 "run.threads=1"]


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_transfer_builds_the_task_model_on_the_runs_backbone_weights(classification_run, task):
    cfg = transfer_config(classification_run, task, TINY_TRANSFER + (["data.image_size=32"] if task == "detection"
                                                                      else []))
    assert (cfg.data.task, cfg.model.name, cfg.model.kwargs, cfg.method.name) == (task, "resnet_small", {"width": 8},
                                                                                   "vanilla")
    state = setup(cfg, CPU)
    saved = load_checkpoint(classification_run)["model"]
    body = state.model.backbone.body.state_dict()
    assert all(torch.equal(body[k], saved[k]) for k in saved if not k.startswith("fc."))
    assert not any(p.requires_grad for p in state.model.backbone.body.fc.parameters())  # the unused classifier


def test_transfer_command_fine_tunes_and_evaluates(classification_run, capsys):
    args = ["transfer", classification_run, "--task", "segmentation"] + [a for s in TINY_TRANSFER for a in ("--set", s)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "miou" in out and "transfer-segmentation" in out
    ev = json.loads((Path(classification_run) / "transfer-segmentation" / "eval.json").read_text())
    assert ev["task"] == "segmentation" and 0.0 <= ev["clean"]["miou"] <= 100.0


def test_transfer_refuses_a_classification_task_and_a_torchvision_model(classification_run, tmp_path):
    with pytest.raises(ValueError, match="task must be 'segmentation' or 'detection', got 'classification'"):
        transfer_config(classification_run, "classification")
    with pytest.raises(ValueError, match="model.init loads a classification run's backbone"):
        transfer(classification_run, "segmentation",
                 TINY_TRANSFER + ["model.name=lraspp_mobilenet_v3_large", "model.kwargs={}", f"run.out={tmp_path}/x"])


# ----------------------------------------------------------------------------------- protocols
def test_the_dense_quick_protocols_train_their_task_with_its_methods():
    from mixlab.bench.protocols import load_protocol

    for name, task, methods in (("synthetic-seg-quick", "segmentation", ["vanilla", "cutmix", "mixup"]),
                                ("synthetic-det-quick", "detection", ["vanilla", "mosaic", "copypaste"])):
        protocol = load_protocol(name)
        assert list(protocol.methods) == methods and list(protocol.seeds) == [0, 1, 2]
        assert protocol.config(methods[1], seed=2).data.task == task
        assert not protocol.eval.fgsm and not protocol.eval.corruptions
        assert {c.metric for c in protocol.claims} == {"miou" if task == "segmentation" else "map"}
    for name in ("voc-seg-full", "coco-det-full"):
        assert load_protocol(name).config("vanilla", 0).data.task in ("segmentation", "detection")


@pytest.mark.parametrize("change,words", [
    ({"methods": {"vanilla": {}, "automix": {}}}, "'automix' does not train task 'segmentation'"),
    ({"eval": {"fgsm": True, "corruptions": False}}, "its eval must say fgsm: false and corruptions: false"),
])
def test_a_dense_protocol_with_a_classification_method_or_evaluation_is_refused(change, words):
    from mixlab.bench.protocols import protocol_from_dict

    data = {"description": "d", "base": {"data": {"task": "segmentation"}}, "methods": {"vanilla": {}},
            "seeds": [0], "eval": {"fgsm": False, "corruptions": False}}
    protocol_from_dict(data)  # valid as it is
    with pytest.raises(ValueError, match=words):
        protocol_from_dict({**data, **change})


def test_the_report_of_dense_runs_tabulates_their_metric(tmp_path):
    from mixlab.bench.report import write_markdown

    rows = [{"method": m, "seed": s, "miou": v, "pixel_acc": 80.0 + v / 10, "top1": float("nan"),
             "epoch_time_s": 3.0, "wall_time_s": 60.0, "corruption_images": 0}
            for m, vs in (("vanilla", (10.0, 11.0)), ("cutmix", (20.0, 21.0))) for s, v in enumerate(vs)]

    class P:
        name, description = "p", "d"
        claims = [type("C", (), {"method": "cutmix", "baseline": "vanilla", "claim": "CutMix helps", "metric": "miou"})]

    text = write_markdown(rows, tmp_path / "r.md", protocol=P, commands=["c"], machines=["m"], wall_clock_s=1.0)
    assert "| method | seeds | mIoU % | pixel accuracy % | train s / epoch |" in text
    assert "| cutmix | 2 | 20.50 ± 0.71 |" in text
    assert "Test mIoU (last epoch) (vanilla 10.50" in text and "cutmix (+10.00) is better than vanilla" in text
    assert "CutMix helps: miou cutmix 20.50 vs vanilla 10.50 (+10.00 points" in text and "supported here" in text


def test_transfer_help_lists_its_flags_and_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["transfer", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--method", "--epochs", "--set", "--out", "--no-eval", "examples:", "mixlab transfer"):
        assert flag in text, flag
