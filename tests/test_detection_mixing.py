"""Specification of the detection mixers: CutMix, ResizeMix, Mixup, Mosaic and Copy-Paste on
torchvision's detection targets (a list of dicts with BoundingBoxes, labels, masks).

Box coordinates are checked against hand computations; pixels against constant-colour images (each
image, or each instance, painted with its own value, so every output pixel says where it came from).
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from mixlab.core.boxes import mask_boxes
from mixlab.mixers.copypaste import CopyPaste, copy_paste
from mixlab.mixers.detection import (
    DetectionCutMix,
    DetectionMixup,
    DetectionResizeMix,
    crop_instances,
    hide_instances,
    read_detection_batch,
)
from mixlab.mixers.mosaic import Mosaic, MosaicDataset, mosaic


def boxes_of(rows, size=(40, 40), fmt="XYXY"):
    return tv_tensors.BoundingBoxes(torch.tensor(rows, dtype=torch.float32).view(-1, 4), format=fmt, canvas_size=size)


def target(rows, labels=None, size=(40, 40), masks=False, **extra):
    t = {"boxes": boxes_of(rows, size), "labels": torch.tensor(labels or list(range(1, len(rows) + 1)))}
    if masks:  # each instance's mask is its (integer) box
        m = torch.zeros(len(rows), *size, dtype=torch.bool)
        for k, (x1, y1, x2, y2) in enumerate(rows):
            m[k, int(y1):int(y2), int(x1):int(x2)] = True
        t["masks"] = tv_tensors.Mask(m)
    t.update(extra)
    return t


def constant_images(b, size=(40, 40)):
    return torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, *size).clone()


def rows(t):
    return t["boxes"].as_subclass(torch.Tensor).tolist()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- CutMix and ResizeMix
def test_cutmix_boxes_by_hand():
    """Paste region (10, 10, 30, 30) from image 1 into image 0 (max_occlusion 0.8: at least 20 % visible)."""
    own = target([[0, 0, 20, 20], [12, 12, 28, 28], [25, 0, 40, 15]])  # 75 % visible, hidden, 25/225 hidden
    partner = target([[0, 0, 15, 15], [5, 5, 35, 35], [20, 20, 25, 40]], labels=[7, 8, 9])
    mixer = DetectionCutMix()
    batch = read_detection_batch(constant_images(2), [own, partner])
    params = {"boxes": torch.tensor([[10, 10, 30, 30], [0, 0, 0, 0]])}
    images, lam, targets, _ = mixer.mix(batch, torch.tensor([1, 0]), torch.tensor([True, False]), params)
    # own: [0,0,20,20] keeps 300/400; [12,12,28,28] is fully covered; [25,0,40,15] keeps 200/225
    # partner: [0,0,15,15] -> [10,10,15,15] keeps 25/225 < 0.2 (dropped); [5,5,35,35] -> [10,10,30,30]
    # keeps 400/900; [20,20,25,40] -> [20,20,25,30] keeps 50/100
    assert targets[0]["boxes"].tolist() == [[0, 0, 20, 20], [25, 0, 40, 15], [10, 10, 30, 30], [20, 20, 25, 30]]
    assert targets[0]["labels"].tolist() == [1, 3, 8, 9]
    assert targets[1]["boxes"].tolist() == rows(partner), "an unmixed image keeps its boxes"
    assert torch.equal(images[0, 0, 10:30, 10:30], torch.full((20, 20), 2.0)) and float(images[0].sum()) == 3 * (1600 + 400)
    assert lam.tolist() == [0.75, 1.0]


def test_cutmix_end_to_end_follows_its_reported_box():
    torch.manual_seed(0)
    images = constant_images(4)
    targets = [target([[4 * k, 4 * k, 4 * k + 16, 4 * k + 20]], labels=[k + 1]) for k in range(4)]
    r = DetectionCutMix(generator=gen(3), max_occlusion=1.0)(tv_tensors.Image(images), targets)
    as_list = DetectionCutMix(generator=gen(3), max_occlusion=1.0)(list(images), targets)
    assert torch.equal(as_list.mask, r.mask) and torch.allclose(r.mask.mean((1, 2, 3)), r.lam)
    for i in range(4):
        x1, y1, x2, y2 = r.boxes[i].tolist()
        j = int(r.index[i])
        assert torch.all(r.images[i, :, y1:y2, x1:x2] == j + 1)
        assert float(r.lam[i]) == pytest.approx(1 - (x2 - x1) * (y2 - y1) / 1600)
        for (a, b, c, d), label in zip(rows(r.targets[i]), r.targets[i]["labels"].tolist()):
            if label == j + 1 and j != i:  # the partner's box, clipped to the pasted region
                px1, py1, px2, py2 = rows(targets[j])[0]
                assert (a, b, c, d) == (max(px1, x1), max(py1, y1), min(px2, x2), min(py2, y2))


def test_cutmix_with_masks_recomputes_occluded_boxes_from_the_visible_pixels():
    own = target([[0, 0, 20, 20]], masks=True)
    partner = target([[5, 5, 35, 35]], masks=True, labels=[8])
    batch = read_detection_batch(constant_images(2), [own, partner])
    params = {"boxes": torch.tensor([[10, 0, 40, 40], [0, 0, 0, 0]])}
    _, _, targets, _ = DetectionCutMix().mix(batch, torch.tensor([1, 0]), torch.tensor([True, False]), params)
    # own keeps columns 0..9 of its mask (50 % of it): its box becomes [0, 0, 10, 20]; the partner's
    # mask keeps columns 10..34: box [10, 5, 35, 35]
    assert targets[0]["boxes"].tolist() == [[0, 0, 10, 20], [10, 5, 35, 35]]
    assert torch.equal(mask_boxes(targets[0]["masks"]).float(), targets[0]["boxes"])


def test_resizemix_scales_and_shifts_the_partner_boxes_exactly_under_its_pixels():
    own = target([[0, 0, 40, 40]])
    partner = target([[0, 0, 40, 40], [10, 20, 30, 40]], labels=[5, 6])
    images = torch.zeros(2, 3, 40, 40)
    images[1, :, 20:40, 10:30] = 1.0  # the partner's second instance, painted
    batch = read_detection_batch(images, [own, partner])
    mixer = DetectionResizeMix(interpolation="nearest", max_occlusion=1.0)
    params = {"boxes": torch.tensor([[8, 4, 28, 24], [0, 0, 0, 0]])}  # scale 0.5 on both axes, shift (8, 4)
    out, lam, targets, _ = mixer.mix(batch, torch.tensor([1, 0]), torch.tensor([True, False]), params)
    assert targets[0]["boxes"].tolist() == [[0, 0, 40, 40], [8, 4, 28, 24], [13, 14, 23, 24]]
    painted = (out[0, 0] == 1).nonzero()
    assert painted[:, 1].min() == 13 and painted[:, 1].max() == 22 and painted[:, 0].min() == 14 and painted[:, 0].max() == 23
    assert float(lam[0]) == 1 - 400 / 1600


def test_resizemix_masks_follow_the_resize():
    own = target([[0, 0, 4, 4]], masks=True)
    partner = target([[10, 20, 30, 40]], masks=True, labels=[6])
    batch = read_detection_batch(torch.zeros(2, 3, 40, 40), [own, partner])
    params = {"boxes": torch.tensor([[8, 4, 28, 24], [0, 0, 0, 0]])}
    _, _, targets, _ = DetectionResizeMix().mix(batch, torch.tensor([1, 0]), torch.tensor([True, False]), params)
    assert targets[0]["boxes"].tolist() == [[0, 0, 4, 4], [13, 14, 23, 24]]
    assert mask_boxes(targets[0]["masks"]).tolist() == [[0, 0, 4, 4], [13, 14, 23, 24]]


# ----------------------------------------------------------------------------- Mixup
def test_mixup_is_the_union_of_both_images_boxes_with_lambda_weights():
    images = constant_images(3)
    targets = [target([[0, 0, 10, 10]], labels=[1]), target([[5, 5, 20, 20], [1, 1, 3, 3]], labels=[2, 3]),
               target([[0, 0, 40, 40]], labels=[4], weights=torch.tensor([0.5]))]
    r = DetectionMixup(alpha=2.0, generator=gen(1))(images, targets)
    lam = r.lam
    assert r.index.tolist() == [2, 0, 1]
    for i, j in enumerate(r.index.tolist()):
        assert torch.allclose(r.images[i], lam[i] * images[i] + (1 - lam[i]) * images[j])
        assert rows(r.targets[i]) == rows(targets[i]) + rows(targets[j])
        assert r.targets[i]["labels"].tolist() == targets[i]["labels"].tolist() + targets[j]["labels"].tolist()
    w = [t["weights"].tolist() for t in r.targets]
    assert w[0] == pytest.approx([float(lam[0]), 0.5 * (1 - float(lam[0]))])  # a weight it had is multiplied
    assert w[1] == pytest.approx([float(lam[1])] * 2 + [1 - float(lam[1])])
    assert w[2] == pytest.approx([0.5 * float(lam[2])] + [1 - float(lam[2])] * 2)


def test_mixup_unmixed_images_keep_their_boxes_with_weight_one():
    targets = [target([[0, 0, 10, 10]]), target([[5, 5, 20, 20]])]
    r = DetectionMixup(p=0.0)(constant_images(2), targets)
    assert [rows(t) for t in r.targets] == [rows(t) for t in targets]
    assert [t["weights"].tolist() for t in r.targets] == [[1.0], [1.0]]


# ----------------------------------------------------------------------------- Mosaic
def test_mosaic_by_hand():
    images = [torch.full((3, 40, 40), float(k + 1)) for k in range(4)]
    targets = [target([[0, 0, 40, 40]], labels=[1]), target([[20, 20, 40, 40]], labels=[2]),
               target([[0, 0, 8, 8]], labels=[3]), target([[30, 30, 40, 40], [0, 20, 20, 40]], labels=[4, 5])]
    plain = read_detection_batch(images, targets).targets
    out, t, regions = mosaic(images, plain, center=(15, 25), canvas=(40, 40), fill=0.0)
    # every 40x40 image becomes a 20x20 tile; offsets TL (-5, 5), TR (15, 5), BL (-5, 25), BR (15, 25)
    assert regions.tolist() == [[0, 5, 15, 25], [15, 5, 35, 25], [0, 25, 15, 40], [15, 25, 35, 40]]
    expect = torch.zeros(40, 40)
    for value, (x1, y1, x2, y2) in zip((1, 2, 3, 4), regions.tolist()):
        expect[y1:y2, x1:x2] = value
    assert torch.equal(out[0], expect)
    # [0,0,40,40] -> [-5,5,15,25] clipped to [0,5,15,25] (75 % on the canvas); [20,20,40,40] ->
    # [25,15,35,25]; [0,0,8,8] -> [-5,25,-1,29]: off the canvas; [30,30,40,40] -> [30,40,35,45]: off;
    # [0,20,20,40] -> [15,35,25,45] clipped to [15,35,25,40] (half of it)
    assert t["boxes"].tolist() == [[0, 5, 15, 25], [25, 15, 35, 25], [15, 35, 25, 40]]
    assert t["labels"].tolist() == [1, 2, 5]


def test_mosaic_batch_types_regions_and_filters():
    images = tv_tensors.Image(constant_images(5, (32, 48)))
    targets = [target([[1, 1, 47, 31], [0, 0, 2, 30], [40, 28, 48, 32]], size=(32, 48), masks=True) for _ in range(5)]
    r = Mosaic(generator=gen(2), min_size=2.0)(images, targets)
    assert type(r.images) is tv_tensors.Image and r.images.shape == (5, 3, 32, 48)
    assert r.index.shape == (5, 4) and r.index[:, 0].tolist() == list(range(5)) and (r.index[:, 1:] != r.index[:, :1]).all()
    assert torch.allclose(r.lam.sum(1), 1 - (r.images[:, 0] == 114 / 255).float().mean((1, 2)))
    for t in r.targets:
        b = t["boxes"]
        assert type(b) is tv_tensors.BoundingBoxes and b.canvas_size == (32, 48) and type(t["masks"]) is tv_tensors.Mask
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        assert (w >= 2).all() and (h >= 2).all() and (b[:, :2] >= 0).all() and (b[:, 2] <= 48).all() and (b[:, 3] <= 32).all()
        assert t["masks"].shape == (len(b), 32, 48)


def test_mosaic_dataset_wrapper_with_pil_images_of_several_sizes_and_v2_after():
    sizes = [(30, 50), (64, 40), (20, 20), (48, 48)]
    samples = []
    for k, (h, w) in enumerate(sizes):
        image = PIL.Image.new("RGB", (w, h), (10 * k, 0, 0))
        samples.append((image, target([[0, 0, w // 2, h // 2], [w - 3, h - 3, w, h]], size=(h, w))))
    after = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.SanitizeBoundingBoxes()])
    ds = MosaicDataset(samples, size=64, transforms=after)
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, t = ds[i]
        assert type(image) is tv_tensors.Image and image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert type(t["boxes"]) is tv_tensors.BoundingBoxes and t["boxes"].canvas_size == (64, 64)
        assert len(t["boxes"]) == len(t["labels"]) >= 1
    ds.set_enabled(False)
    image, t = ds[1]
    assert type(image) is tv_tensors.Image and image.shape == (3, 64, 40) and len(t["boxes"]) == 2, \
        "a disabled mosaic passes the sample through (PIL read as tv_tensors.Image)"
    loader = DataLoader(MosaicDataset(samples, size=32), batch_size=4, collate_fn=lambda b: tuple(zip(*b)))
    images, targets = next(iter(loader))
    assert len(images) == 4 and all(im.shape == (3, 32, 32) for im in images)


# ----------------------------------------------------------------------------- Copy-Paste
def test_copy_paste_by_hand():
    own = target([[2, 2, 10, 6], [12, 2, 15, 5]], size=(20, 20), masks=True, labels=[1, 2])
    partner = target([[6, 0, 16, 8]], size=(20, 20), masks=True, labels=[9])
    images = torch.zeros(2, 3, 20, 20)
    images[1] = 5.0
    plain = read_detection_batch(images, [own, partner]).targets
    out, t, alpha = copy_paste(images[0], plain[0], images[1], plain[1], torch.tensor([True]))
    # the partner's mask covers x 6..15, y 0..7: instance 1 keeps x 2..5 (box [2,2,6,6]); instance 2
    # (x 12..14, y 2..4) is fully hidden and dropped; the pasted box is the partner's
    assert t["boxes"].tolist() == [[2, 2, 6, 6], [6, 0, 16, 8]] and t["labels"].tolist() == [1, 9]
    assert torch.equal(mask_boxes(t["masks"]).float(), t["boxes"])
    assert torch.equal(out[0] == 5.0, alpha) and int(alpha.sum()) == 80
    # scale 0.5 at offset (3, 4): the partner's box [6,0,16,8] -> [6, 4, 11, 8], its mask with it
    out, t, alpha = copy_paste(images[0], plain[0], images[1], plain[1], torch.tensor([True]), 0.5, (3, 4))
    assert t["boxes"].tolist() == [[2, 2, 10, 6], [12, 2, 15, 5], [6, 4, 11, 8]]
    assert mask_boxes(t["masks"][-1:]).tolist() == [[6, 4, 11, 8]] and torch.equal(out[0] == 5.0, alpha)


def test_copy_paste_batch_keeps_types_and_own_pixels_mask():
    images = tv_tensors.Image(constant_images(3, (24, 24)))
    targets = [target([[2, 2, 12, 12], [14, 14, 22, 22]], size=(24, 24), masks=True) for _ in range(3)]
    r = CopyPaste(instance_p=1.0, scale=(0.5, 1.5), generator=gen(4))(images, targets)
    assert type(r.images) is tv_tensors.Image and r.mask.shape == (3, 1, 24, 24)
    assert torch.allclose(r.lam, r.mask.mean((1, 2, 3)))
    for i, t in enumerate(r.targets):
        assert torch.equal(r.images[i, 0] == i + 1, r.mask[i, 0] == 1), "own pixels are where the mask says"
        assert t["masks"].flatten(1).any(1).all(), "no instance without visible pixels"


def test_copy_paste_needs_masks():
    with pytest.raises(ValueError, match="has no 'masks' \\(Copy-Paste pastes instances by their masks\\)"):
        CopyPaste()(constant_images(2), [target([[0, 0, 5, 5]]), target([[0, 0, 5, 5]])])


# ----------------------------------------------------------------------------- shared rules
MIXERS = [
    ("cutmix", lambda s: DetectionCutMix(generator=gen(s))),
    ("cutmix-p", lambda s: DetectionCutMix(p=0.5, max_occlusion=0.3, generator=gen(s))),
    ("resizemix", lambda s: DetectionResizeMix(generator=gen(s))),
    ("resizemix-inside", lambda s: DetectionResizeMix(box="inside", pairing="random", generator=gen(s))),
    ("mixup", lambda s: DetectionMixup(generator=gen(s))),
    ("mosaic", lambda s: Mosaic(generator=gen(s))),
    ("copypaste", lambda s: CopyPaste(scale=(0.1, 2.0), generator=gen(s))),
]


def random_targets(b, size, seed):
    g = gen(seed)
    h, w = size
    out = []
    for _ in range(b):
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.6
        wh[torch.rand(n, generator=g) < 0.2] = 0.0  # some boxes of zero area in the input
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1).round()
        m = torch.zeros(n, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            m[k, y1:y2, x1:x2] = 1
        out.append({"boxes": boxes_of(boxes.tolist(), size), "labels": torch.arange(n), "masks": tv_tensors.Mask(m),
                    "image_id": 7})
    return out


@pytest.mark.parametrize("name,build", MIXERS, ids=[n for n, _ in MIXERS])
@pytest.mark.parametrize("seed", range(6))
def test_no_box_of_zero_area_survives_and_everything_stays_on_the_canvas(name, build, seed):
    size = (24, 36)
    images = tv_tensors.Image(torch.rand(5, 3, *size))
    targets = random_targets(5, size, seed)
    r = build(seed)([tv_tensors.Image(x) for x in images], targets)
    assert isinstance(r.images, list) and all(type(x) is tv_tensors.Image for x in r.images)
    for t in r.targets:
        b = t["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all(), "a box of zero area survived"
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= 36).all() and (b[:, 3] <= 24).all()
        assert len(t["labels"]) == len(b) == len(t["masks"]) and t["masks"].dtype == torch.uint8
        assert t["image_id"] == 7
    assert len(targets[0]["boxes"]) == len(random_targets(5, size, seed)[0]["boxes"]), "inputs untouched"


@pytest.mark.parametrize("name,build", MIXERS, ids=[n for n, _ in MIXERS])
def test_outputs_go_through_torchvisions_v2_detection_pipeline(name, build):
    images = tv_tensors.Image((torch.rand(4, 3, 32, 32) * 255).to(torch.uint8))
    targets = random_targets(4, (32, 32), 3)
    r = build(0)(tuple(tv_tensors.Image(x) for x in images), tuple(targets))
    assert isinstance(r.images, tuple)
    after = v2.Compose([v2.RandomPhotometricDistort(p=1.0), v2.RandomHorizontalFlip(p=1.0),
                        v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()])
    for image, t in zip(r.images, r.targets):
        image2, t2 = after(image, t)
        assert type(image2) is tv_tensors.Image and image2.dtype == torch.float32
        assert len(t2["boxes"]) == len(t["boxes"]), "SanitizeBoundingBoxes finds nothing left to remove"


def test_box_formats_and_plain_tensors_come_back_as_they_came():
    xywh = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[2.0, 3.0, 10.0, 12.0]]), format="XYWH",
                                              canvas_size=(40, 40)), "labels": torch.tensor([1])}
    plain = {"boxes": torch.tensor([[2.0, 3.0, 12.0, 15.0]]), "labels": torch.tensor([2])}
    r = DetectionMixup(generator=gen())(constant_images(2), [xywh, plain])
    assert r.targets[0]["boxes"].format == tv_tensors.BoundingBoxFormat.XYWH
    assert r.targets[0]["boxes"].tolist() == [[2, 3, 10, 12], [2, 3, 10, 12]], "XYWH in, XYWH out"
    assert type(r.targets[1]["boxes"]) is torch.Tensor and type(r.images) is torch.Tensor
    assert r.targets[1]["boxes"].tolist() == [[2, 3, 12, 15], [2, 3, 12, 15]]


def test_occlusion_functionals_by_hand():
    t = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    assert hide_instances(t, (5, 0, 10, 10), 0.5, 1.0)["boxes"].tolist() == [[0, 0, 10, 10]]  # half hidden: kept
    assert len(hide_instances(t, (4, 0, 10, 10), 0.5, 1.0)["boxes"]) == 0  # 60 % hidden: dropped
    assert crop_instances(t, (3, 0, 40, 40), 0.8, 1.0)["boxes"].tolist() == [[3, 0, 10, 10]]
    assert len(crop_instances(t, (3, 0, 40, 40), 0.8, 8.0)["boxes"]) == 0  # 7 px wide < min_size


# ----------------------------------------------------------------------------- bad targets
def test_bad_targets_give_clear_errors():
    images = constant_images(2)
    ok = target([[0, 0, 5, 5]])
    mixer = DetectionCutMix()
    cases = [
        ((images, {"boxes": ok["boxes"]}), TypeError, "a list of dicts, one per image"),
        ((images, [ok]), ValueError, "one dict per image: 1 != 2"),
        ((images, [ok, {"boxes": ok["boxes"]}]), ValueError, r"targets\[1\] has no 'labels'"),
        ((images, [ok, {"boxes": torch.zeros(1, 5), "labels": torch.tensor([1])}]), ValueError, r"\(N, 4\) tensor"),
        ((images, [ok, {"boxes": ok["boxes"], "labels": torch.tensor([1, 2])}]), ValueError, r"shape \(1,\), one per box"),
        ((images, [ok, {"boxes": ok["boxes"], "labels": torch.tensor([1.0])}]), TypeError, "integer tensor"),
        ((images, [ok, target([[0, 0, 5, 5]], size=(30, 40))]), ValueError, r"canvas_size \(30, 40\), its image is \(40, 40\)"),
        ((images, [ok, target([[30, 30, 45, 35]])]), ValueError, r"\[30\.0, 30\.0, 45\.0, 35\.0\] \(XYXY\) lies outside the canvas"),
        ((images, [ok, target([[10, 10, 5, 20]])]), ValueError, "x2 < x1"),
        ((images, [ok, {**ok, "masks": torch.zeros(1, 40, 39, dtype=torch.bool)}]), ValueError,
         r"'masks'\] must be \(N, H, W\) = \(1, 40, 40\).*got \(1, 40, 39\)"),
        ((images, [ok, {**ok, "masks": torch.zeros(1, 40, 40)}]), TypeError, "bool or uint8"),
        (([images[0], images[1, :, :30]], [ok, ok]), ValueError, "images of one size"),
        (("images", [ok, ok]), TypeError, r"\(B, C, H, W\) tensor or a non-empty list"),
    ]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            mixer(*args)
    rotated = tv_tensors.BoundingBoxes(torch.tensor([[5.0, 5.0, 4.0, 4.0, 10.0]]), format="CXCYWHR", canvas_size=(40, 40))
    with pytest.raises(ValueError, match="axis-aligned"):
        mixer(images, [ok, {"boxes": rotated, "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="either every target has 'masks' or none"):
        mixer(images, [target([[0, 0, 20, 20]], masks=True), target([[0, 0, 40, 40]])])
    for bad, err in ((dict(max_occlusion=1.5), ValueError), (dict(min_size=-1), ValueError), (dict(pairing="x"), ValueError),
                     (dict(p="1"), TypeError)):
        with pytest.raises(err):
            DetectionCutMix(**bad)
    with pytest.raises(ValueError, match="center_range"):
        Mosaic(center_range=(0.6, 0.4))
    with pytest.raises(ValueError, match="size"):
        MosaicDataset([], size=(0, 4))


# ----------------------------------------------------------------------------- a torchvision detector
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_torchvision_detector_trains_on_mixed_targets():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    from mixlab.data import SyntheticShapes
    from mixlab.data.dense import detection_collate

    torch.manual_seed(0)
    shapes = SyntheticShapes("train", num_per_class=1, image_size=64, objects=4)
    images, targets = detection_collate([shapes.detection()[i] for i in range(4)])
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=11,
                                                  min_size=64, max_size=64).train()
    for mixer in (Mosaic(generator=gen()), CopyPaste(generator=gen()), DetectionMixup(generator=gen())):
        r = mixer(images, targets)
        losses = model([im.float() / 255 for im in r.images], r.targets)
        loss = sum(losses.values())
        loss.backward()
        assert torch.isfinite(loss)
