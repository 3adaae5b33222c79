"""Tests for mixlab.data: synthetic shapes, ImageFolder (dir / zip / real CIFAR-10 zip), fake CIFAR
pickles, sampling and recipes."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixlab.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    ImageFolder,
    ImageTensorDataset,
    SyntheticShapes,
    build_dataset,
    cifar_train_transform,
    class_balanced_subset,
    denormalize,
    eval_transform,
    load_cifar,
    normalize_on_device,
    seed_worker,
)
from mixlab.data import cub as cub_module
from mixlab.data.cub import load_cub, resize_boxes
from mixlab.data.synthetic import mask_boxes

REAL_ZIP = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.zip"


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder, so nothing is written under ~/.cache."""
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "cache"))


# -- synthetic -----------------------------------------------------------------------------------
def test_synthetic_deterministic_balanced():
    t = time.perf_counter()
    a = SyntheticShapes("train", num_per_class=10, seed=3)
    print(f"\nsynthetic: 100 images of 32x32 in {time.perf_counter() - t:.3f}s")
    b = SyntheticShapes("train", num_per_class=10, seed=3)
    c = SyntheticShapes("train", num_per_class=10, seed=4)
    test = SyntheticShapes("test", num_per_class=10, seed=3)
    assert a.images.dtype == torch.uint8 and a.images.shape == (100, 3, 32, 32)
    assert a.labels.dtype == torch.int64 and a.labels.shape == (100,)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, test.images)  # splits use different derived seeds
    assert torch.bincount(a.labels, minlength=10).tolist() == [10] * 10
    assert a.num_classes == 10 and len(a.classes) == 10 and len(a.mean) == len(a.std) == 3
    img, label = a[0]
    assert img.shape == (3, 32, 32) and isinstance(label, int)


def test_synthetic_options_and_errors():
    ds = SyntheticShapes("test", num_per_class=3, image_size=48, num_classes=4)
    assert ds.images.shape == (12, 3, 48, 48) and ds.classes == ["disk", "ring", "square", "triangle"]
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("val", 2)
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes("train", 2, num_classes=11)
    with pytest.raises(ValueError, match="num_per_class"):
        SyntheticShapes("train", 0)


def test_synthetic_not_decidable_from_mean_colour():
    """A nearest-centroid classifier on the mean RGB colour stays near chance (10 %)."""
    train, test = SyntheticShapes("train", num_per_class=50), SyntheticShapes("test", num_per_class=30)
    f_train, f_test = (ds.images.float().mean((2, 3)) for ds in (train, test))
    centroids = torch.stack([f_train[train.labels == k].mean(0) for k in range(10)])
    acc = (torch.cdist(f_test, centroids).argmin(1) == test.labels).float().mean().item()
    assert acc < 0.2, acc


# SHA-256 of the images these settings gave before the boxes were added (commit 38306c5): the boxes
# come from the renderer without changing a single pixel or random draw.
_SYNTHETIC_SHA256 = {
    ("train", 20, 32, 0, 10): "ef779c0b899639e9baf400817794c9d0137203e2c55948c3c1ed64fdf0f14520",
    ("test", 7, 24, 5, 6): "26b09c074fbd2e81e224f87b91863a84f44ba376575c0c0c8eddbcec757afd31",
    ("train", 110, 16, 1, 10): "7d932ab73e88f8ac0178bbf3da73f9b81ffb615fdad740eeb4d9b94e4ae780f0",  # 2 chunks
}


@pytest.mark.parametrize("key", list(_SYNTHETIC_SHA256))
def test_synthetic_images_unchanged_by_the_boxes(key):
    split, per_class, size, seed, classes = key
    ds = SyntheticShapes(split, num_per_class=per_class, image_size=size, seed=seed, num_classes=classes)
    assert hashlib.sha256(ds.images.numpy().tobytes()).hexdigest() == _SYNTHETIC_SHA256[key]


def test_mask_boxes_by_hand():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = masks[1, 0, 5] = True
    assert mask_boxes(masks).tolist() == [[2, 1, 5, 3], [0, 0, 6, 5], [0, 0, 0, 0]]  # half-open; empty -> zeros


def test_synthetic_boxes_are_the_shapes():
    ds = SyntheticShapes("test", num_per_class=20, image_size=32)
    boxes = ds.boxes
    assert boxes.dtype == torch.int64 and boxes.shape == (200, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 32).all() and (w > 0).all() and (h > 0).all()
    # shape radius r in [0.4, 0.75] of the half-side: the disk (radius 0.95 r, aspect e^±0.15) spans
    # 0.95 * r * 32 * aspect pixels, 10..27 here (+-1 for pixel centres)
    disk = ds.labels == 0
    assert w[disk].min() >= 9 and w[disk].max() <= 28 and h[disk].min() >= 9 and h[disk].max() <= 28
    assert torch.equal(ds.subset(torch.tensor([5, 2])).boxes, boxes[[5, 2]])
    again = SyntheticShapes("test", num_per_class=20, image_size=32)
    assert torch.equal(again.boxes, boxes)
    # the shapes' parameters are drawn before any size-dependent draw, so at twice the resolution the
    # same shapes are drawn: their boxes double (to a pixel of rounding at either end)
    large = SyntheticShapes("test", num_per_class=20, image_size=64)
    assert (large.boxes - 2 * boxes).abs().max() <= 2


# -- ImageTensorDataset / build_dataset ------------------------------------------------------------
def test_tensor_dataset_view_and_subset():
    ds = SyntheticShapes("train", num_per_class=4)
    view = ds.with_transform(eval_transform(ds.mean, ds.std))
    assert view.images is ds.images and view.labels is ds.labels and ds.transform is None
    x, y = view[1]
    assert x.dtype == torch.float32 and y == int(ds.labels[1])
    sub = ds.subset(torch.tensor([0, 2]))
    assert len(sub) == 2 and torch.equal(sub.images[1], ds.images[2])
    with pytest.raises(TypeError, match="uint8"):
        ImageTensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ImageTensorDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a"])


def test_build_dataset_registry():
    assert set(DATASETS) == {"synthetic", "cifar10", "cifar100", "imagefolder", "cub200", "tiny-imagenet"}
    ds = build_dataset("Synthetic", "test", num_per_class=2)
    assert len(ds) == 20
    valid = r"valid names: cifar10, cifar100, cub200, imagefolder, synthetic, tiny-imagenet; did you mean 'cifar10'"
    with pytest.raises(ValueError, match=valid):
        build_dataset("cifar-10", "train")
    with pytest.raises(ValueError, match="root is required"):
        build_dataset("imagefolder", "train")
    with pytest.raises(ValueError, match="root is required for dataset 'cub200'"):
        build_dataset("cub200", "train")


# -- ImageFolder -----------------------------------------------------------------------------------
CLASSES = ["ant", "bee", "cat"]  # written in unsorted order below, must come back sorted


def _image_bytes(colour: int, fmt: str, size=(8, 8), mode="RGB") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "L" else (colour, 255 - colour, 0)).save(buf, format=fmt)
    return buf.getvalue()


def _tree(split: str) -> dict[str, bytes]:
    """2 images per class; PNG and JPEG mixed, one grayscale."""
    files = {}
    for ci, cls in enumerate(reversed(CLASSES)):
        files[f"{split}/{cls}/b.png"] = _image_bytes(40 * ci, "PNG")
        files[f"{split}/{cls}/a.jpg"] = _image_bytes(40 * ci + 10, "JPEG", mode="L" if cls == "bee" else "RGB")
    return files


def _write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in files.items():
            z.writestr(rel, data)
    return path


def _check_folder(ds: ImageFolder) -> None:
    assert ds.classes == CLASSES
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [f.split("/")[-1] for f in ds.files] == ["a.jpg", "b.png"] * 3
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (6, 3, 8, 8)  # grayscale -> 3 channels
    bee_gray = ds.images[2]
    assert torch.equal(bee_gray[0], bee_gray[1])


@pytest.mark.filterwarnings("error::DeprecationWarning")  # torchvision's decoder deprecation is silenced
def test_folder_from_directory_and_zip(tmp_path):
    files = {**_tree("train"), **_tree("test")}
    d = ImageFolder(_write_dir(tmp_path / "dir", files), "train")
    z = ImageFolder(_write_zip(tmp_path / "data.zip", files), "train")
    nested = ImageFolder(_write_zip(tmp_path / "nested.zip", {f"cifar/{k}": v for k, v in files.items()}), "train")
    for ds in (d, z, nested):
        _check_folder(ds)
    assert torch.equal(d.images, z.images) and torch.equal(z.images, nested.images)
    # the second load comes from the cache
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    again = ImageFolder(tmp_path / "data.zip", "train")
    assert torch.equal(again.images, z.images) and again.classes == CLASSES and again.files == z.files


def test_folder_mixed_sizes_decoded_lazily(tmp_path):
    files = _tree("train")
    files["train/cat/c.png"] = _image_bytes(7, "PNG", size=(12, 10))
    ds = ImageFolder(_write_zip(tmp_path / "mixed.zip", files), "train")
    assert ds.is_lazy and len(ds) == 7
    assert ds[6][0].shape == (3, 10, 12) and ds[0][0].shape == (3, 8, 8)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.zip"
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        ImageFolder(missing, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"expected layout <root>/<split>/<class>/<image>.*\(none: it is empty\)"):
        ImageFolder(tmp_path / "empty", "train")
    flat = _write_zip(tmp_path / "flat.zip", {"cat/a.png": _image_bytes(1, "PNG"), "dog/b.png": _image_bytes(2, "PNG")})
    with pytest.raises(ValueError, match=r"no 'train' split folder in .*flat.zip.*\['cat/', 'dog/'\]"):
        ImageFolder(flat, "train")
    no_classes = _write_zip(tmp_path / "noclass.zip", {"train/a.png": _image_bytes(1, "PNG")})
    with pytest.raises(ValueError, match=r"no class folders under .*noclass.zip:train/.*found \['a.png'\]"):
        ImageFolder(no_classes, "train")
    (tmp_path / "holes" / "train" / "dog").mkdir(parents=True)
    _write_dir(tmp_path / "holes", {"train/cat/a.png": _image_bytes(1, "PNG")})
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] under .*holes/train contain no images"):
        ImageFolder(tmp_path / "holes", "train")
    with pytest.raises(ValueError, match="neither a directory nor a readable .zip"):
        ImageFolder(_write_dir(tmp_path, {"not_a.zip": b"junk"}) / "not_a.zip", "train")
    files = _tree("train")
    files["train/bee/broken.jpg"] = b"\xff\xd8\xff\xe0 this is not really a jpeg"
    with pytest.raises(ValueError, match=r"bad.zip:train/bee/broken.jpg"):
        ImageFolder(_write_zip(tmp_path / "bad.zip", files), "train")
    files["train/bee/broken.jpg"] = b"plain text"
    with pytest.raises(ValueError, match=r"baddir/train/bee/broken.jpg"):
        ImageFolder(_write_dir(tmp_path / "baddir", files), "train")


def test_real_cifar10_jpeg_zip(monkeypatch, tmp_path):
    if not REAL_ZIP.is_file():
        pytest.skip(f"real data not present: {REAL_ZIP} (CIFAR-10 as JPEG ImageFolder zip)")
    t0 = time.perf_counter()
    train = ImageFolder(REAL_ZIP, "train")
    t1 = time.perf_counter()
    test = ImageFolder(REAL_ZIP, "test")
    t2 = time.perf_counter()
    cached = ImageFolder(REAL_ZIP, "train")
    t3 = time.perf_counter()
    print(f"\ncifar10-jpeg.zip: train decode {t1 - t0:.2f}s, test decode {t2 - t1:.2f}s, "
          f"train from cache {t3 - t2:.2f}s")
    assert len(train) == 50_000 and len(test) == 5_000
    assert train.num_classes == 10 and train.classes == test.classes == sorted(train.classes)
    assert torch.bincount(train.labels).tolist() == [5_000] * 10
    assert torch.bincount(test.labels).tolist() == [500] * 10
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(cached.images, train.images) and torch.equal(cached.labels, train.labels)
    assert train.mean == pytest.approx(CIFAR10_MEAN, abs=0.02)  # JPEG re-encoding shifts it a little


# -- CIFAR python-pickle format ----------------------------------------------------------------------
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def _fake_cifar(root: Path, num_classes: int, per_file: int = 4) -> dict[str, np.ndarray]:
    """Files in the real layout (python pickles, data (n, 3072) uint8, CHW row-major)."""
    rng = np.random.default_rng(0)
    if num_classes == 10:
        folder, names, key = root / "cifar-10-batches-py", [*TRAIN_BATCHES, "test_batch"], "labels"
        meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder, names, key = root / "cifar-100-python", ["train", "test"], "fine_labels"
        meta_name, meta = "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []}
    folder.mkdir(parents=True)
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        entry = {"data": data, key: rng.integers(0, num_classes, per_file).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        written[name] = entry
    (folder / meta_name).write_bytes(pickle.dumps(meta))
    return written


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_pickle_format(tmp_path, num_classes):
    written = _fake_cifar(tmp_path, num_classes)
    # torchvision md5-checks every file on each load: fake files fail it, with our message ...
    with pytest.raises(ValueError, match="md5 check.*verify=False"):
        load_cifar(num_classes, tmp_path, "train")
    # ... and verify=False (md5=None -> torchvision only checks the files exist) reads them
    train = build_dataset(f"cifar{num_classes}", "train", root=tmp_path, verify=False)
    test = build_dataset(f"cifar{num_classes}", "test", root=tmp_path, verify=False)
    train_names = TRAIN_BATCHES if num_classes == 10 else ["train"]
    first = written[train_names[0]]
    assert len(train) == 4 * len(train_names) and len(test) == 4
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert torch.equal(train.images[0], torch.from_numpy(first["data"][0]).view(3, 32, 32))
    key = "labels" if num_classes == 10 else "fine_labels"
    assert train.labels[:4].tolist() == first[key] and train.num_classes == num_classes
    if num_classes == 10:
        assert train.mean == CIFAR10_MEAN and train.std == CIFAR10_STD


def test_cifar_missing_tells_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py does not exist. Pass download=True"):
        build_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_cifar(10, tmp_path, "val")


# -- sampling and recipes ------------------------------------------------------------------------------
def test_class_balanced_subset():
    labels = torch.arange(5).repeat_interleave(torch.tensor([10, 7, 3, 9, 5]))[torch.randperm(34)]
    idx = class_balanced_subset(labels, 3, seed=1)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values) and idx.unique().numel() == 15
    assert torch.bincount(labels[idx]).tolist() == [3] * 5
    assert torch.equal(idx, class_balanced_subset(labels, 3, seed=1))
    assert not torch.equal(idx, class_balanced_subset(labels, 3, seed=2))
    with pytest.raises(ValueError, match=r"class 2 \('c'\) has only 3 items, fewer than per_class=4"):
        class_balanced_subset(labels, 4, seed=0, classes=list("abcde"))
    with pytest.raises(ValueError, match="class 5 has only 0 items"):
        class_balanced_subset(torch.cat([labels, torch.tensor([6])]), 1)  # no item of class 5


def test_seed_worker_and_recipes():
    import random

    torch.manual_seed(123)
    seed_worker(0)
    a = (random.random(), np.random.rand())
    torch.manual_seed(123)
    seed_worker(0)
    assert a == (random.random(), np.random.rand())

    imgs = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    on_dev = normalize_on_device(imgs, CIFAR10_MEAN, CIFAR10_STD)
    per_item = torch.stack([eval_transform(CIFAR10_MEAN, CIFAR10_STD)(im) for im in imgs])
    assert on_dev.dtype == torch.float32 and torch.allclose(on_dev, per_item, atol=1e-5)
    assert torch.allclose(denormalize(on_dev, CIFAR10_MEAN, CIFAR10_STD), imgs / 255, atol=1e-5)
    out = cifar_train_transform(CIFAR10_MEAN, CIFAR10_STD)(imgs[0])
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert cifar_train_transform(normalize=False)(imgs[0]).dtype == torch.uint8
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(imgs.float(), CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match="C = 3 channels"):
        normalize_on_device(imgs[:, :1], CIFAR10_MEAN, CIFAR10_STD)


# -- CUB-200-2011 (a fake tree, no download) -------------------------------------------------------
# id, class folder, file, (width, height), is_train, box (x, y, width, height) as in bounding_boxes.txt
_CUB = [
    (1, "001.Black_footed_Albatross", "Black_Footed_Albatross_0001.jpg", (20, 10), 1, "2.0 3.0 10.0 5.0"),
    (2, "001.Black_footed_Albatross", "Black_Footed_Albatross_0002.jpg", (16, 16), 0, "0.0 0.0 16.0 16.0"),
    (3, "002.Laysan_Albatross", "Laysan_Albatross_0001.jpg", (12, 24), 1, "1.0 4.0 9.0 18.0"),
    (4, "002.Laysan_Albatross", "Laysan_Albatross_0002.jpg", (30, 20), 0, "5.0 2.0 20.0 15.0"),
]


def _fake_cub(root: Path) -> Path:
    folder = root / "CUB_200_2011"
    for i, cls, name, (w, h), _, _ in _CUB:
        (folder / "images" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (40 * i, 10, 255 - 40 * i)).save(folder / "images" / cls / name, format="PNG")
    lines = {
        "images.txt": [f"{i} {cls}/{name}" for i, cls, name, *_ in _CUB],
        "image_class_labels.txt": [f"{i} {1 if cls.startswith('001') else 2}" for i, cls, *_ in _CUB],
        "train_test_split.txt": [f"{i} {t}" for i, _, _, _, t, _ in _CUB],
        "classes.txt": ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"],
        "bounding_boxes.txt": [f"{i} {box}" for i, *_, box in _CUB],
    }
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def test_cub_reader_split_labels_boxes(tmp_path):
    _fake_cub(tmp_path)
    train = load_cub(tmp_path, "train")
    assert train.is_lazy and len(train) == 2 and train.classes == ["Black_footed_Albatross", "Laysan_Albatross"]
    assert train.labels.tolist() == [0, 1]
    assert train.boxes.tolist() == [[2, 3, 12, 8], [1, 4, 10, 22]]  # (x, y, x + w, y + h)
    img, label = train[1]
    assert img.shape == (3, 24, 12) and label == 1 and img[0, 0, 0].item() == 120
    test = build_dataset("cub200", "test", root=tmp_path)
    assert test.labels.tolist() == [0, 1] and test.boxes.tolist() == [[0, 0, 16, 16], [5, 2, 25, 17]]
    assert torch.equal(test.subset([1]).boxes, test.boxes[[1]])


def test_cub_reader_resized_images_and_boxes(tmp_path):
    _fake_cub(tmp_path)
    ds = load_cub(tmp_path, "train", image_size=8)
    assert not ds.is_lazy and ds.images.shape == (2, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.images[0, :, 3, 3].tolist() == [40, 10, 215]  # a flat colour stays flat
    # int(x * 8 / 20), int(y * 8 / 10), ...: (2, 3, 12, 8) -> (0.8, 2.4, 4.8, 6.4); (1, 4, 10, 22) on 12 x 24
    assert ds.boxes.tolist() == [[0, 2, 4, 6], [0, 1, 6, 7]]
    assert resize_boxes(torch.tensor([[60, 27, 385, 331]]), torch.tensor([[500, 335]]), (224, 224)).tolist() == \
        [[26, 18, 172, 221]]  # CUB's first test image, as the WSOL benchmark's resize_bbox gives it


def test_cub_reader_errors(tmp_path):
    assert (cub_module.CUB_URL, cub_module.CUB_MD5) == (
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78")
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cub(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_cub(tmp_path, "val")
    with pytest.raises(ValueError, match="image_size"):
        load_cub(tmp_path, "train", image_size=0)
    folder = _fake_cub(tmp_path)
    (folder / "bounding_boxes.txt").write_text("1 2.0 3.0 10.0 5.0\n")
    with pytest.raises(ValueError, match="bounding_boxes.txt"):
        load_cub(tmp_path, "train")


def test_cub_download_checks_the_md5(tmp_path, monkeypatch, local_http):
    www, url = local_http
    source = tmp_path / "source"
    _fake_cub(source)
    with tarfile.open(www / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(source / "CUB_200_2011", arcname="CUB_200_2011")
    md5 = hashlib.md5((www / "CUB_200_2011.tgz").read_bytes()).hexdigest()
    monkeypatch.setattr(cub_module, "CUB_URL", f"{url}/CUB_200_2011.tgz")
    monkeypatch.setattr(cub_module, "CUB_MD5", "0" * 32)
    with pytest.raises(ValueError, match=f"failed the md5 check: expected {'0' * 32}, got {md5}"):
        load_cub(tmp_path / "bad", "train", download=True)
    assert not (tmp_path / "bad" / "CUB_200_2011").exists()  # nothing extracted from a bad archive
    monkeypatch.setattr(cub_module, "CUB_MD5", md5)
    ds = load_cub(tmp_path / "good", "test", download=True)
    assert len(ds) == 2 and ds.boxes.tolist() == [[0, 0, 16, 16], [5, 2, 25, 17]]
