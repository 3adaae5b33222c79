"""Tiny-ImageNet-200 reader: the release's layout (train/<wnid>/images, val/images labelled by
val_annotations.txt), from the extracted folder or the zip in place, and the md5-checked download;
two training steps of every method of the tiny-imagenet-openmixup protocol on the fake release.

The fixture is a tiny release in the real layout: 3 WordNet ids, 2 training and 2 validation
JPEGs each (64x64 flat colours, one grayscale), boxes files and an unlabelled test folder.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mixlab.bench.protocols import load_protocol
from mixlab.data import build_dataset, load_tiny_imagenet
from mixlab.data import tiny_imagenet as tiny_module
from mixlab.engine.config import load_config, validate_config
from mixlab.engine.loop import train

WNIDS = ("n03", "n01", "n02")  # wnids.txt order; the classes are the sorted ids
SHADE = {"n01": 30, "n02": 120, "n03": 210}  # each class a flat grey level, so a label can be read off its image
# val file -> wnid, not in class order
VAL = {"val_0.JPEG": "n02", "val_1.JPEG": "n03", "val_2.JPEG": "n01", "val_3.JPEG": "n01", "val_4.JPEG": "n03",
       "val_5.JPEG": "n02"}


def _jpeg(path: Path, shade: int, channels: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB" if channels == 3 else "L", (64, 64), (shade,) * channels).save(path, "JPEG", quality=95)


def fake_tiny_imagenet(root: Path) -> Path:
    """``root/tiny-imagenet-200`` in the release's layout; returns it."""
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in (*WNIDS, "n99")))
    for w in WNIDS:
        for k in range(2):
            channels = 1 if (w, k) == ("n02", 1) else 3  # one grayscale JPEG
            _jpeg(folder / "train" / w / "images" / f"{w}_{k}.JPEG", SHADE[w], channels)
        (folder / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t10\t10\n")
    for name, w in VAL.items():
        _jpeg(folder / "val" / "images" / name, SHADE[w])
    (folder / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t1\t2\t30\t40\n" for n, w in VAL.items()))
    _jpeg(folder / "test" / "images" / "test_0.JPEG", 5)
    return folder


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f.relative_to(folder.parent).as_posix())
    return archive


def _label_of_shade(images: torch.Tensor) -> list[int]:
    """The class whose grey level each image shows (JPEG keeps a flat colour within a few levels)."""
    shades = torch.tensor([SHADE[w] for w in sorted(WNIDS)], dtype=torch.float32)
    return (images.float().mean((1, 2, 3))[:, None] - shades).abs().argmin(1).tolist()


def test_reads_the_release_layout_from_the_folder_and_from_the_zip(tmp_path):
    folder = fake_tiny_imagenet(tmp_path / "extracted")
    archive = _zip(folder, tmp_path / "tiny-imagenet-200.zip")
    train, test = (load_tiny_imagenet(tmp_path / "extracted", split) for split in ("train", "test"))
    assert train.classes == ["n01", "n02", "n03"] and test.classes == train.classes
    assert train.images.shape == (6, 3, 64, 64) and train.images.dtype == torch.uint8 and not train.is_lazy
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] == _label_of_shade(train.images)
    gray = train.files.index("train/n02/images/n02_1.JPEG")
    assert (train.images[gray, 0] == train.images[gray, 1]).all()  # a grayscale JPEG becomes 3 equal channels
    # the validation images are labelled by val_annotations.txt, not by their folder (they share one)
    assert test.files == [f"val/images/{n}" for n in sorted(VAL)]
    assert test.labels.tolist() == [sorted(WNIDS).index(VAL[n]) for n in sorted(VAL)] == _label_of_shade(test.images)
    assert (train.mean, train.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet's, as openmixup
    # the same data from the zip given directly, from a folder holding the zip, and from the extracted folder itself
    (tmp_path / "holder").mkdir()
    (tmp_path / "holder" / "tiny-imagenet-200.zip").write_bytes(archive.read_bytes())
    for root in (archive, tmp_path / "holder", folder):
        for split, ref in (("train", train), ("test", test), ("val", test)):
            ds = load_tiny_imagenet(root, split)
            assert torch.equal(ds.images, ref.images) and torch.equal(ds.labels, ref.labels) and ds.files == ref.files
    via_registry = build_dataset("tiny-imagenet", "test", root=archive)
    assert torch.equal(via_registry.labels, test.labels)


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_tiny_imagenet(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'val'"):
        load_tiny_imagenet(tmp_path, "validation")
    with pytest.raises(ValueError, match="root is required for dataset 'tiny-imagenet'"):
        build_dataset("tiny-imagenet", "train")
    folder = fake_tiny_imagenet(tmp_path)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn77\t1\t2\t3\t4\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt, line 1: expected '<file>\\t<wnid of wnids.txt>"):
        load_tiny_imagenet(tmp_path, "test")
    annotations.write_text("val_9.JPEG\tn01\t1\t2\t3\t4\n")
    with pytest.raises(ValueError, match="line 1: val_9.JPEG is not in"):
        load_tiny_imagenet(tmp_path, "test")
    _jpeg(folder / "train" / "n55" / "images" / "n55_0.JPEG", 0)
    with pytest.raises(ValueError, match="class folder 'n55' is not in wnids.txt"):
        load_tiny_imagenet(tmp_path, "train")
    (folder / "wnids.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no wnids.txt"):
        load_tiny_imagenet(tmp_path, "train")


def test_download_checks_the_md5_and_reads_the_zip_in_place(tmp_path, monkeypatch, local_http):
    assert (tiny_module.TINY_IMAGENET_URL, tiny_module.TINY_IMAGENET_MD5) == (
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")
    www, url = local_http
    archive = _zip(fake_tiny_imagenet(tmp_path / "source"), www / "tiny-imagenet-200.zip")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(tiny_module, "TINY_IMAGENET_URL", f"{url}/tiny-imagenet-200.zip")
    monkeypatch.setattr(tiny_module, "TINY_IMAGENET_MD5", "0" * 32)
    with pytest.raises(ValueError, match=f"failed the md5 check: expected {'0' * 32}, got {md5}"):
        load_tiny_imagenet(tmp_path / "bad", "train", download=True)
    monkeypatch.setattr(tiny_module, "TINY_IMAGENET_MD5", md5)
    ds = load_tiny_imagenet(tmp_path / "good", "test", download=True)  # a folder that does not exist yet
    assert len(ds) == 6 and ds.classes == ["n01", "n02", "n03"]
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == ["tiny-imagenet-200.zip"]  # not extracted
    www.joinpath("tiny-imagenet-200.zip").unlink()  # a second load finds the zip: no download
    assert len(load_tiny_imagenet(tmp_path / "good", "train", download=True)) == 6


def test_download_flag_reaches_the_reader(tmp_path, monkeypatch, local_http):
    """``mixlab train --dataset tiny-imagenet --data-root DIR --download`` fetches the md5-checked
    zip into DIR (here from a local server) and trains on it."""
    from mixlab.cli import build_parser, config_from_args

    www, url = local_http
    archive = _zip(fake_tiny_imagenet(tmp_path / "source"), www / "tiny-imagenet-200.zip")
    monkeypatch.setattr(tiny_module, "TINY_IMAGENET_URL", f"{url}/tiny-imagenet-200.zip")
    monkeypatch.setattr(tiny_module, "TINY_IMAGENET_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    args = build_parser().parse_args(["train", "--dataset", "tiny-imagenet", "--data-root", str(tmp_path / "data"),
                                      "--download", "--model", "resnet_small", "--epochs", "1", "-b", "3",
                                      "--output", str(tmp_path / "run"), "--set", "run.device=cpu",
                                      "--set", "run.threads=1",
                                      "--set", "data.num_workers=0", "--set", "data.augment=rrc-flip"])
    cfg = config_from_args(args)
    validate_config(cfg)
    assert (cfg.data.name, cfg.data.download, cfg.data.augment) == ("tiny-imagenet", True, "rrc-flip")
    assert train(cfg)["step"] == 2 and (tmp_path / "data" / "tiny-imagenet-200.zip").is_file()
    with pytest.raises(ValueError, match="data.augment must be one of 'crop-flip', 'crop-flip-reflect', 'rrc-flip', "
                                         "'none'"):
        validate_config(load_config(overrides=["data.augment=rrc"]))


@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    return _zip(fake_tiny_imagenet(root), root / "tiny-imagenet-200.zip")


@pytest.mark.parametrize("method", list(load_protocol("tiny-imagenet-openmixup").methods))
def test_tiny_imagenet_protocol_trains_two_steps_on_a_fake_release(method, tmp_path, tiny_zip, one_thread):
    """The protocol's config of each method (ResNet-18 at 64x64, RandomResizedCrop, its hyper-parameters)
    on the fake release read from its zip: 6 training images, two batches of 3."""
    cfg = load_protocol("tiny-imagenet-openmixup").config(method, 0)
    assert cfg.data.download  # the zip is at data.root: nothing is fetched
    cfg.data.root, cfg.data.batch_size, cfg.data.num_workers, cfg.optim.epochs = str(tiny_zip), 3, 0, 1
    cfg.run.device, cfg.run.amp, cfg.run.threads, cfg.run.out = "cpu", "none", 1, str(tmp_path / method)
    row = train(cfg)
    assert row["step"] == 2 and math.isfinite(row["train_loss"]) and 0 <= row["test_acc1"] <= 100
