"""Dense targets of the data: the synthetic shapes' instance masks, semantic maps and boxes (one-
and multi-object), their torchvision-format views, and the VOC segmentation / COCO detection readers
on small fixtures written here (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

import mixlab
from mixlab import registry
from mixlab.core.boxes import mask_boxes
from mixlab.data import DENSE_DATASETS, SyntheticShapes, build_dataset
from mixlab.data.dense import detection_collate
from mixlab.mixers import CopyPaste, DetectionCutMix, Mosaic


# ----------------------------------------------------------------------------- synthetic shapes
def test_one_object_masks_are_the_shapes_of_the_boxes_and_the_images_are_unchanged():
    ds = SyntheticShapes("train", num_per_class=20, image_size=32, seed=0)
    # the images these settings always gave (tests/test_data.py pins them the same way)
    assert hashlib.sha256(ds.images.numpy().tobytes()).hexdigest() == \
        "ef779c0b899639e9baf400817794c9d0137203e2c55948c3c1ed64fdf0f14520"
    assert ds.instance_masks.shape == (200, 1, 32, 32) and ds.instance_masks.dtype == torch.bool
    assert torch.equal(ds.instance_labels[:, 0], ds.labels)
    assert torch.equal(mask_boxes(ds.instance_masks[:, 0]), ds.boxes), "the box is the box of the mask"
    sem = ds.semantic_masks
    assert sem.dtype == torch.uint8 and sem.shape == (200, 32, 32)
    assert torch.equal(sem, torch.where(ds.instance_masks[:, 0], ds.labels.view(-1, 1, 1) + 1, 0).to(torch.uint8))
    assert ds.semantic_classes == ["background", *ds.classes]
    area = ds.instance_masks.flatten(1).sum(1).float() / 1024
    assert area.min() > 0.02 and area.max() < 0.7


def test_multi_object_variant():
    ds = SyntheticShapes("test", num_per_class=6, image_size=48, objects=4, seed=2)
    again = SyntheticShapes("test", num_per_class=6, image_size=48, objects=4, seed=2)
    assert torch.equal(ds.images, again.images) and torch.equal(ds.instance_masks, again.instance_masks)
    assert not torch.equal(ds.images, SyntheticShapes("test", num_per_class=6, image_size=48, seed=2).images)
    masks, labels = ds.instance_masks, ds.instance_labels
    assert masks.shape == (60, 4, 48, 48) and labels.shape == (60, 4)
    assert int(masks.sum(1).max()) == 1, "visible masks are disjoint"
    assert torch.equal(labels[:, 0], ds.labels), "shape 0 is on top: never hidden, the image's label"
    counts = (labels >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() == 4 and len(counts.unique()) >= 3
    assert torch.equal(masks.flatten(2).any(2), labels >= 0)
    assert torch.equal(mask_boxes(masks.flatten(0, 1)).view(60, 4, 4), ds.instance_boxes)
    sub = ds.subset([3, 1])
    assert torch.equal(sub.instance_masks, masks[[3, 1]]) and torch.equal(sub.semantic_masks, ds.semantic_masks[[3, 1]])
    with pytest.raises(ValueError, match="objects must be an int in \\[1, 8\\]"):
        SyntheticShapes("test", num_per_class=1, objects=0)


def test_views_in_torchvision_formats_with_joint_transforms():
    ds = SyntheticShapes("test", num_per_class=3, image_size=32, objects=3)
    flip = v2.RandomHorizontalFlip(p=1.0)
    seg = ds.segmentation(transforms=flip)
    image, mask = seg[4]
    assert type(image) is tv_tensors.Image and type(mask) is tv_tensors.Mask and mask.shape == (32, 32)
    assert torch.equal(image, ds.images[4].flip(-1)) and torch.equal(mask, ds.semantic_masks[4].flip(-1))
    assert seg.num_classes == 11 and seg.ignore_index == 255 and seg.mean == ds.mean
    det = ds.detection()
    image, target = det[5]
    n = int((ds.instance_labels[5] >= 0).sum())
    assert type(target["boxes"]) is tv_tensors.BoundingBoxes and target["boxes"].canvas_size == (32, 32)
    assert target["boxes"].tolist() == ds.instance_boxes[5][ds.instance_labels[5] >= 0].float().tolist()
    assert target["labels"].tolist() == (ds.instance_labels[5][ds.instance_labels[5] >= 0] + 1).tolist()
    assert type(target["masks"]) is tv_tensors.Mask and target["masks"].shape == (n, 32, 32) and target["image_id"] == 5
    assert det.num_classes == 11 and det.classes[0] == "background"
    assert "masks" not in ds.detection(with_masks=False)[0][1]


def test_views_batch_and_mix():
    ds = SyntheticShapes("train", num_per_class=2, image_size=32, objects=3)
    images, masks = next(iter(DataLoader(ds.segmentation(), batch_size=8, collate_fn=default_collate)))
    r = mixlab.CutMix(num_classes=11, generator=torch.Generator().manual_seed(0))(images.float() / 255, masks)
    assert r.targets.shape == (8, 32, 32) and r.targets.dtype == torch.uint8
    loader = DataLoader(ds.detection(), batch_size=6, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 6
    for mixer in (DetectionCutMix(), Mosaic(), CopyPaste()):
        out = mixer(images, targets)
        assert len(out.targets) == 6 and all(type(t["boxes"]) is tv_tensors.BoundingBoxes for t in out.targets)


def test_registry_builds_dense_datasets():
    assert set(DENSE_DATASETS) == {"segmentation", "detection"}
    seg = build_dataset("synthetic", "test", task="segmentation", num_per_class=2)
    det = registry.build_dataset("Synthetic", "test", task="detection", num_per_class=2, objects=2, with_masks=False)
    assert len(seg) == 20 and len(det) == 20 and "masks" not in det[0][1]
    with pytest.raises(ValueError, match="unknown detection dataset name 'cocoo'; valid names: coco, synthetic; did you mean 'coco'"):
        build_dataset("cocoo", "train", task="detection")
    with pytest.raises(ValueError, match="task must be one of"):
        build_dataset("synthetic", "train", task="depth")
    with pytest.raises(ValueError, match="root is required for dataset 'voc'"):
        build_dataset("voc", "train", task="segmentation")


# ----------------------------------------------------------------------------- VOC segmentation
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3) + [224, 224, 192] * 1


def _voc_tree(root, names=("2007_000032", "2007_000039")):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    maps = {}
    for k, name in enumerate(names):
        h, w = 20 + 4 * k, 30
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        m = np.zeros((h, w), np.uint8)
        m[2:10, 3:15] = 1 + k  # a class-(1 + k) object with its void outline
        m[1, 2:16] = 255
        png = Image.fromarray(m, mode="P")
        png.putpalette(VOC_PALETTE[:768] + [0] * (768 - len(VOC_PALETTE[:768])))
        png.save(base / "SegmentationClass" / f"{name}.png")
        maps[name] = m
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text(names[0] + "\n")
    return maps


def test_voc_segmentation_reader_on_a_tiny_tree(tmp_path):
    maps = _voc_tree(tmp_path)
    ds = build_dataset("voc", "train", root=tmp_path, task="segmentation")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.classes[15] == "person" and ds.ignore_index == 255
    image, mask = ds[1]
    assert type(image) is tv_tensors.Image and image.dtype == torch.uint8 and image.shape == (3, 24, 30)
    assert type(mask) is tv_tensors.Mask and mask.shape == (24, 30)
    assert torch.equal(mask.to(torch.uint8), torch.from_numpy(maps["2007_000039"])), "palette indices, 255 kept"
    val = build_dataset("voc", "val", root=tmp_path, task="segmentation",
                        transforms=v2.Compose([v2.RandomCrop(16), v2.ToDtype(torch.float32, scale=True)]))
    image, mask = val[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and mask.shape == (16, 16)
    cropped = build_dataset("voc", "train", root=tmp_path, task="segmentation", transforms=v2.RandomCrop(16))
    images, masks = default_collate([cropped[0], cropped[1]])
    r = mixlab.CutMix(21, generator=torch.Generator().manual_seed(0))(images, masks)  # uint8 images, 255 kept
    assert r.targets.shape == (2, 16, 16) and set(r.targets.unique().tolist()) <= {0, 1, 2, 255}


def test_voc_reader_checks_the_archive_and_the_tree(tmp_path):
    with pytest.raises(ValueError, match="no VOC 2012 under .*VOCdevkit/VOC2012 with JPEGImages/"):
        build_dataset("voc", "train", root=tmp_path, task="segmentation")
    (tmp_path / "VOCtrainval_11-May-2012.tar").write_bytes(b"not the archive")
    with pytest.raises(ValueError, match="fails torchvision's md5 check \\(expected 6cd6e144f989b92b3379bac3b3de84fd\\)"):
        build_dataset("voc", "train", root=tmp_path, task="segmentation")
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("voc", "extra", root=tmp_path, task="segmentation")


# ----------------------------------------------------------------------------- COCO detection
def _coco_tree(root):
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(root / "val2017" / "000000000001.png")
    Image.fromarray(np.full((24, 24, 3), 30, np.uint8)).save(root / "val2017" / "000000000002.png")
    ann = {
        "images": [{"id": 1, "file_name": "000000000001.png", "height": 30, "width": 40},
                   {"id": 2, "file_name": "000000000002.png", "height": 24, "width": 24}],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                       {"id": 3, "name": "dog", "supercategory": "animal"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [4.0, 5.0, 10.0, 8.0], "area": 80.0, "iscrowd": 0,
             "segmentation": [[4.0, 5.0, 14.0, 5.0, 14.0, 13.0, 4.0, 13.0]]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [20.0, 10.0, 12.0, 15.0], "area": 180.0, "iscrowd": 0,
             "segmentation": [[20.0, 10.0, 32.0, 10.0, 32.0, 25.0, 20.0, 25.0]]},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "area": 25.0, "iscrowd": 1,
             "segmentation": [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 5.0]]},
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' decode on NumPy 2
def test_coco_detection_reader_on_a_tiny_set(tmp_path):
    pytest.importorskip("pycocotools", reason="CocoDetection needs pycocotools (mixlab[detection])")
    _coco_tree(tmp_path)
    ds = build_dataset("coco", "val", root=tmp_path, task="detection")
    assert len(ds) == 2 and ds.classes == ["background", "cat", "N/A", "dog"] and ds.num_classes == 4
    image, t = ds[0]
    assert type(image) is tv_tensors.Image and image.shape == (3, 30, 40)
    assert type(t["boxes"]) is tv_tensors.BoundingBoxes and t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert t["boxes"].tolist() == [[4, 5, 14, 13], [20, 10, 32, 25]], "XYWH -> XYXY, the crowd box removed"
    assert t["labels"].tolist() == [3, 1] and t["image_id"] == 1
    assert type(t["masks"]) is tv_tensors.Mask and t["masks"].shape == (2, 30, 40)
    assert int(t["masks"][0, 6:12, 5:13].min()) == 1 and int(t["masks"][0].sum()) >= 80 - 20
    empty = ds[1][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 24, 24)
    resized = build_dataset("coco", "val", root=tmp_path, task="detection",
                            transforms=v2.Compose([v2.Resize((32, 32)), v2.SanitizeBoundingBoxes()]))
    images, targets = detection_collate([resized[0], resized[1]])
    out = DetectionCutMix(generator=torch.Generator().manual_seed(0))(images, targets)
    assert len(out.targets) == 2 and out.images[0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="needs the image folder .*train2017 and the annotation file"):
        build_dataset("coco", "train", root=tmp_path, task="detection")
