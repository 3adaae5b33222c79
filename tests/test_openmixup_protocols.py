"""The openmixup protocols (issue 29): openmixup's CIFAR-100 and Tiny-ImageNet ResNet-18 recipes,
its per-method hyper-parameters and its published top-1 beside mixlab's in results.md.

Every number pinned here was read from Westlake-AI/openmixup at commit 37e1372 (the configs named in
each protocol's description and docs/en/mixup_benchmarks/Mixup_cifar.md / Mixup_imagenet.md).
The smoke runs train every method of cifar100-openmixup for two steps on synthetic 32x32 shapes
(tests/test_tiny_imagenet.py runs tiny-imagenet-openmixup's on a fake release in its real layout).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mixlab import registry
from mixlab.bench import report
from mixlab.bench.protocols import load_protocol, method_name, protocol_from_dict
from mixlab.engine.data import default_transforms
from mixlab.engine.loop import train
from mixlab.models import create_model, forward_until

pytestmark = pytest.mark.usefixtures("one_thread")

CIFAR100 = ("cifar100-openmixup", "cifar100-openmixup-400ep", "cifar100-openmixup-800ep", "cifar100-openmixup-1200ep")
METHODS = ["vanilla", "mixup", "cutmix", "manifold-mixup", "saliencymix", "fmix", "puzzlemix", "resizemix", "automix",
           "samix"]
# openmixup's tables, ResNet-18 (Mixup_cifar.md "Classical Mixup Benchmark on CIFAR-100"; Mixup_imagenet.md
# "Tiny-ImageNet Dataset"), in METHODS order
PUBLISHED = {
    "cifar100-openmixup": [76.42, 78.52, 79.45, 79.18, 79.75, 78.91, 79.96, 79.56, 80.12, 81.21],
    "cifar100-openmixup-400ep": [77.73, 79.34, 79.58, 80.18, 79.64, 79.91, 80.82, 79.19, 81.78, 81.97],
    "cifar100-openmixup-800ep": [78.04, 79.12, 78.17, 80.35, 79.12, 79.69, 81.13, 80.01, 82.04, 82.30],
    "cifar100-openmixup-1200ep": [78.55, 79.24, 78.29, 80.21, 77.66, 79.50, 81.10, 79.23, 81.95, 82.41],
    "tiny-imagenet-openmixup": [61.68, 63.86, 65.53, 64.15, 64.60, 63.47, 65.81, 63.74, 67.33, 68.89],
}
COMMIT = "37e1372446ab35c03fcf77302539bd4a5bee47eb"


# ------------------------------------------------------------------------------ configuration level
def test_cifar100_protocol_is_openmixups_r18_recipe():
    p = load_protocol("cifar100-openmixup")
    d, o = p.base.data, p.base.optim
    # _base_/datasets/cifar100/sz32_bs100.py: batch 100, RandomCrop(32, padding=4, reflect) + flip
    assert (d.name, d.batch_size, d.augment, d.download, d.train_per_class) == (
        "cifar100", 100, "crop-flip-reflect", True, None)
    # r18_mixups_CE_none.py: SGD lr 0.1, momentum 0.9, weight decay 1e-4, CosineAnnealing to 0, no warm-up
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay, o.schedule, o.min_lr, o.warmup_epochs, o.epochs) == (
        "sgd", 0.1, 0.9, False, 1e-4, "cosine", 0.0, 0.0, 200)
    assert p.base.model.name == "resnet18" and p.base.method.label_smoothing == 0.0 and p.seeds == (0, 1, 2)
    assert list(p.methods) == METHODS
    # the Beta column of the table and the mix_args of r18_mixups_CE_none.py / r18_puzzlemix_CE_soft.py
    assert {m: p.methods[m].get("alpha") for m in METHODS} == {
        "vanilla": None, "mixup": 1.0, "cutmix": 0.2, "manifold-mixup": 2.0, "saliencymix": 0.2, "fmix": 0.2,
        "puzzlemix": 1.0, "resizemix": None, "automix": 2.0, "samix": 2.0}
    assert p.methods["manifold-mixup"]["stages"] == [0, 1, 2]  # layer=(0, 3): randint over the input, stage 1, 2
    assert p.methods["fmix"]["decay_power"] == 3.0
    assert p.methods["puzzlemix"] == {"alpha": 1.0, "block_nums": [2, 4, 8, 16], "n_labels": 3, "beta": 1.2,
                                      "gamma": 0.5, "eta": 0.2, "neigh_size": 4, "t_size": 4, "t_eps": 0.8}
    assert p.methods["resizemix"] == {"scale": [0.1, 0.8]}  # use_alpha with alpha 1: uniform on the scope
    # automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py and samix/basic/r18_l2_a2_bili_..._mlr5e_2.py
    assert p.methods["automix"] == {"alpha": 2.0, "lam_concat": False, "value": "partner", "momentum": 0.999,
                                    "lam_margin": 0.08, "upsampling": "nearest"}
    assert p.methods["samix"] == {"alpha": 2.0, "eta": 0.5, "lam_rescale": 0.25, "momentum": 0.999,
                                  "lam_margin": 0.08, "mask_loss": 0.1, "mask_margin": 0.1, "upsampling": "bilinear"}
    # min_lr=5e-2 for the momentum pipelines only
    assert {m: p.config(m, 0).optim.min_lr for m in METHODS} == {m: 0.05 if m in ("automix", "samix") else 0.0
                                                                  for m in METHODS}


def test_cifar100_budgets_differ_only_in_epochs_and_published_numbers():
    base = load_protocol("cifar100-openmixup")
    for name, epochs in zip(CIFAR100, (200, 400, 800, 1200)):
        p = load_protocol(name)
        assert p.base.optim.epochs == epochs and f"{epochs} epochs" in p.references.source
        same = load_protocol("cifar100-openmixup").base
        same.optim.epochs = epochs
        assert p.base == same
        assert (p.methods, p.overrides, p.seeds, p.claims, p.eval) == (
            base.methods, base.overrides, base.seeds, base.claims, base.eval)
        assert p.description and (p.description == base.description) == (epochs == 200)


def test_tiny_imagenet_protocol_is_openmixups_r18_recipe():
    p = load_protocol("tiny-imagenet-openmixup")
    d, o = p.base.data, p.base.optim
    # _base_/datasets/tiny_imagenet/sz64_bs100.py: batch 100, RandomResizedCrop(64, bicubic) + flip, no test crop
    assert (d.name, d.batch_size, d.augment, d.download) == ("tiny-imagenet", 100, "rrc-flip", True)
    # tiny_imagenet/mixups/basic/r18_mixups_CE_none.py: SGD lr 0.2, momentum 0.9, weight decay 1e-4, cosine, 400 epochs
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay, o.schedule, o.min_lr, o.warmup_epochs, o.epochs) == (
        "sgd", 0.2, 0.9, False, 1e-4, "cosine", 0.0, 0.0, 400)
    assert p.base.model.name == "resnet18" and list(p.methods) == METHODS
    assert {m: p.methods[m].get("alpha") for m in METHODS} == {
        "vanilla": None, "mixup": 1.0, "cutmix": 1.0, "manifold-mixup": 0.2, "saliencymix": 1.0, "fmix": 1.0,
        "puzzlemix": 1.0, "resizemix": None, "automix": 2.0, "samix": 2.0}
    # block_num=4: 2 ** randint(1, 4) blocks a side; t_size=-1: transport whole blocks
    assert p.methods["puzzlemix"]["block_nums"] == [2, 4, 8] and p.methods["puzzlemix"]["t_size"] == -1
    # the Mix Block at lr 0.1 beside the model's 0.2 (paramwise_options), SAMix's lam_mul_k=-1 (no rescaling)
    assert p.methods["automix"]["mix_block_lr_scale"] == p.methods["samix"]["mix_block_lr_scale"] == 0.5
    assert p.methods["samix"]["lam_rescale"] is None and p.methods["automix"]["lam_concat"] is False
    assert {m: p.config(m, 0).optim.min_lr for m in METHODS} == {m: 0.05 if m in ("automix", "samix") else 0.0
                                                                  for m in METHODS}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_every_method_builds_and_the_published_table_is_pinned(name):
    p = load_protocol(name)
    classes = 200 if name.startswith("tiny") else 100
    for label, params in p.methods.items():
        method = registry.build_method(method_name(label), classes, p.base.method.label_smoothing, **params)
        assert method is not None
    assert p.references.name == "openmixup" and COMMIT in p.references.source
    assert p.references.top1 == dict(zip(METHODS, PUBLISHED[name]))
    assert ("Mixup_imagenet.md" if classes == 200 else "Mixup_cifar.md") in p.references.source
    assert f"commit {COMMIT}" in p.description or p.description.startswith("cifar100-openmixup (")


@pytest.mark.parametrize("size, maps", [(32, [32, 16, 8, 4]), (64, [64, 32, 16, 8])])
def test_resnet18_is_the_cifar_variant_openmixup_uses(size, maps):
    """ResNet_CIFAR / ResNet_Mix_CIFAR: a 3x3 stride-1 stem without max-pool, also at 64x64."""
    model = create_model("resnet18", num_classes=200).eval()
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    x = torch.zeros(1, 3, size, size)
    assert [forward_until(model, x, stage).shape[-1] for stage in (1, 2, 3, 4)] == maps


def test_openmixup_augmentations():
    """crop-flip-reflect: openmixup's RandomCrop(32, padding=4, padding_mode="reflect"); rrc-flip:
    RandomResizedCrop to the image's size, bicubic; neither adds a test transform (64x64 as is)."""
    from torchvision.transforms import v2

    cifar = load_protocol("cifar100-openmixup").config("vanilla", 0)
    tiny = load_protocol("tiny-imagenet-openmixup").config("vanilla", 0)

    class Fake:
        is_lazy = False

        def __init__(self, size):
            self.images = torch.zeros(2, 3, size, size, dtype=torch.uint8)

    crop_train, crop_test = default_transforms(Fake(32), cifar)
    crop, flip = crop_train.transforms
    assert isinstance(crop, v2.RandomCrop) and (crop.size, crop.padding, crop.padding_mode) == (
        (32, 32), [4, 4, 4, 4], "reflect") and isinstance(flip, v2.RandomHorizontalFlip) and crop_test is None
    rrc_train, rrc_test = default_transforms(Fake(64), tiny)
    rrc, flip = rrc_train.transforms
    assert isinstance(rrc, v2.RandomResizedCrop) and rrc.size == (64, 64) and rrc.scale == (0.08, 1.0)
    assert rrc.interpolation == v2.InterpolationMode.BICUBIC and isinstance(flip, v2.RandomHorizontalFlip)
    assert rrc_test is None
    out = rrc_train(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8


# ------------------------------------------------------------------------------ the protocol keys
def _tiny_dict() -> dict:
    return {"base": {"data": {"name": "synthetic", "image_size": 16, "num_per_class": 2, "test_per_class": 1,
                              "batch_size": 10, "num_workers": 0},
                     "model": {"name": "resnet_small", "kwargs": {"width": 8}},
                     "optim": {"name": "sgd", "lr": 0.05, "epochs": 2, "warmup_epochs": 0},
                     "run": {"device": "cpu", "threads": 1, "progress": False, "tensorboard": False}},
            "methods": {"vanilla": {}, "mixup": {"alpha": 1.0}, "automix": {}}, "seeds": [0]}


def test_overrides_set_config_keys_per_method_label():
    d = _tiny_dict()
    d["overrides"] = {"automix": {"optim.min_lr": 0.01, "lr": 0.2}}  # an alias is resolved
    p = protocol_from_dict(d, "mine")
    assert p.overrides == {"automix": {"optim.min_lr": 0.01, "optim.lr": 0.2}}
    assert (p.config("automix", 0).optim.min_lr, p.config("automix", 0).optim.lr) == (0.01, 0.2)
    assert (p.config("mixup", 0).optim.min_lr, p.config("mixup", 0).optim.lr) == (0.0, 0.05)
    assert p.base.optim.lr == 0.05  # the base is left alone


@pytest.mark.parametrize("key, value, message", [
    ("overrides", {"cutmix": {"optim.min_lr": 0.1}}, "overrides: 'cutmix' is not one of the protocol's methods"),
    ("overrides", {"mixup": {"run.seed": 1}}, "overrides of 'mixup': 'run.seed' is not a config key a method label"),
    ("overrides", {"mixup": {"method.params.alpha": 2}}, "'method.params.alpha' is not a config key a method label"),
    ("overrides", {"mixup": {"optim.lrr": 2}}, "'optim.lrr' is not a config key"),
    ("overrides", {"mixup": {"optim.epochs": 0}}, "overrides of 'mixup': optim.epochs must be an integer >= 1"),
    ("overrides", {"mixup": 0.1}, "overrides must map method labels to"),
    ("references", {"name": "x", "top1": {"mixup": 1.0}}, "references must be a mapping with keys name, source, top1"),
    ("references", {"name": "x", "source": "", "top1": {"mixup": 1.0}}, "references.source must be a non-empty"),
    ("references", {"name": "x", "source": "y", "top1": {"cutmix": 1.0}},
     "references.top1: 'cutmix' is not one of the protocol's methods"),
    ("references", {"name": "x", "source": "y", "top1": {"mixup": 101}}, r"references.top1.mixup must be a top-1 % in"),
    ("references", {"name": "x", "source": "y", "top1": {}}, "references.top1 must map method labels"),
])
def test_override_and_reference_errors(key, value, message):
    d = _tiny_dict()
    d[key] = value
    with pytest.raises(ValueError, match=message) as info:
        protocol_from_dict(d, "mine")
    assert "protocol 'mine'" in str(info.value)


def test_extends_merges_base_sections_and_replaces_the_other_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    parent = tmp_path / "parent.yaml"
    parent.write_text("description: parent\nbase: {optim: {name: sgd, lr: 0.05, epochs: 2}, "
                      "data: {name: synthetic, batch_size: 10}}\nmethods: {vanilla: {}, mixup: {}}\nseeds: [0, 1]\n"
                      "references: {name: paper, source: Table 1, top1: {vanilla: 50.0}}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\ndescription: child\nbase: {optim: {epochs: 7}}\n"  # from its folder
                     "references: {name: paper, source: Table 2, top1: {mixup: 60.0}}\n")
    p = load_protocol(child.relative_to(tmp_path.parent))
    assert (p.name, p.description, p.base.optim.epochs, p.base.optim.lr, p.base.data.batch_size) == (
        "child", "child", 7, 0.05, 10)
    assert list(p.methods) == ["vanilla", "mixup"] and p.seeds == (0, 1) and p.references.top1 == {"mixup": 60.0}
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ValueError, match="extends loops"):
        load_protocol(loop)
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: cifar100-openmixupp\n")
    with pytest.raises(ValueError, match=r"did you mean 'cifar100-openmixup'"):
        load_protocol(bad)


# ------------------------------------------------------------------------------ the report's column
def _fake_run(run_dir: Path, accuracies: list[float]) -> str:
    """A run directory whose metrics.csv has these test top-1 values, one per epoch."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,test_acc1\n" + "".join(f"{e},{a}\n" for e, a in
                                                                       enumerate(accuracies, 1)))
    return str(run_dir)


def test_reference_column_beside_top1_on_a_fake_results_table(tmp_path):
    """openmixup's statistic (the median test top-1 of a run's last 10 epochs) and its published
    number beside mixlab's last-epoch top-1; "—" for a method the table lacks."""
    protocol = load_protocol("cifar100-openmixup")
    # 12 epochs: the last 10 are 3..12; their median is the mean of the 5th and 6th smallest
    curve = [10.0, 90.0] + [70.0, 71.0, 72.0, 73.0, 74.0, 75.0, 76.0, 77.0, 78.0, 79.0]  # median 74.5
    rows = [{"method": m, "seed": s, "top1": v + s, "ece": 2.0, "fgsm_top1": 10.0, "corruption_top1": 40.0,
             "epoch_time_s": 5.0, "wall_time_s": 100.0, "corruption_images": 1000,
             "run_dir": _fake_run(tmp_path / "runs" / f"{m}-s{s}", [a + v - 76.0 + s for a in curve])}
            for m, v in (("vanilla", 76.0), ("mixup", 78.0), ("regmixup", 79.0)) for s in range(3)]
    rows[-1]["run_dir"] = str(tmp_path / "elsewhere")  # a merged row: its run directory is not here
    md = report.write_markdown(rows, tmp_path / "results.md", protocol=protocol, commands=["mixlab bench x"],
                               machines=["1 GPU"], wall_clock_s=60)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert header.startswith("| method | seeds | top-1 % (last epoch) | median top-1 %, last 10 epochs | "
                             "openmixup top-1 % | ECE % |")
    assert "| vanilla | 3 | 77.00 ± 1.00 | 75.50 ± 1.00 | 76.42 | 2.00 ± 0.00 |" in md
    assert "| mixup | 3 | 79.00 ± 1.00 | 77.50 ± 1.00 | 78.52 |" in md
    assert "| regmixup | 3 | 80.00 ± 1.00 | 78.00 ± 0.71 | — |" in md  # two runs found; openmixup lacks it
    assert all(line.count("|") == header.count("|") for line in lines if line.startswith("| "))
    assert f"openmixup top-1 %: the published numbers, from Westlake-AI/openmixup docs/en/mixup_benchmarks/" \
           f"Mixup_cifar.md (commit {COMMIT})" in md
    headers, cells, _ = report.reference_column(protocol, ["samix", "x"])
    assert headers[1] == "openmixup top-1 %" and cells == [["–", "81.21"], ["–", "—"]]
    plain = report.write_markdown(rows, tmp_path / "plain.md", protocol=load_protocol("smoke"), commands=[],
                                  machines=[], wall_clock_s=1)
    assert "top-1 % (last epoch) | ECE % |" in plain and "openmixup" not in plain and "median" not in plain
    assert report.reference_column(load_protocol("smoke"), []) is None


# ------------------------------------------------------------------------------ two-step smoke runs
@pytest.mark.parametrize("method", METHODS)
def test_cifar100_protocol_trains_two_steps_on_synthetic_images(method, tmp_path):
    cfg = load_protocol("cifar100-openmixup").config(method, 0)
    cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.image_size = "synthetic", None, False, 32
    cfg.data.num_per_class, cfg.data.test_per_class, cfg.data.batch_size = 1, 1, 5  # 10 shapes: two batches of 5
    cfg.data.num_workers, cfg.optim.epochs = 0, 1
    cfg.run.device, cfg.run.amp, cfg.run.threads, cfg.run.out = "cpu", "none", 1, str(tmp_path / method)
    row = train(cfg)
    assert row["step"] == 2 and math.isfinite(row["train_loss"])
    assert cfg.model.name == "resnet18" and cfg.data.augment == "crop-flip-reflect"


def test_a_downloading_protocol_may_name_a_data_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    """The first run downloads into data.root; planning (--dry-run) writes nothing there. A protocol
    that does not download still needs its data in place."""
    from mixlab.bench.runner import plan

    monkeypatch.chdir(tmp_path)
    runs = plan(load_protocol("tiny-imagenet-openmixup"), tmp_path / "bench", methods=["mixup"], seeds=[0])
    assert runs[0].config.data.root == str(tmp_path / "data" / "tiny-imagenet") and runs[0].status == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the data folder nor the bench directory
    d = _tiny_dict()
    d["base"]["data"] = {"name": "cifar100", "root": "data/cifar100"}
    with pytest.raises(FileNotFoundError, match="cifar100 data not found at data/cifar100"):
        plan(protocol_from_dict(d, "mine"), tmp_path / "bench")
