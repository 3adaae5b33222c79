"""Specification of mixing with segmentation targets (per-pixel label maps).

Pixel bookkeeping uses one-colour-per-class images: every pixel of an input image is painted the
colour of its class in the label map (and a colour of its own where the map says ``ignore_index``),
so after any mixer each output pixel must be the colour of the label(s) the mixed map gives it:
``images == λ·colour(y_a) + (1 - λ)·colour(y_b)`` with ``(y_a, y_b, λ) = result.pairs()``, and for
box and mask mixers ``y_a = y_b`` = the exact map, so ``images == colour(targets)`` exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

import mixlab
from mixlab import CutMix, FMix, Mixup, RandomChoice, ResizeMix, SaliencyMix, TimmMixup
from mixlab.core.boxes import resize_paste, resize_paste_labels
from mixlab.core.losses import mixed_segmentation_loss
from mixlab.core.targets import dense_soft_targets
from mixlab.methods.recursivemix import RecursiveMix
from mixlab.transforms import CropMix

K = 6
IGNORE = 255
# the value of each label in channel 0 (class c -> (c + 1) / 8; ignore -> -1), exact in float32
PALETTE = torch.full((256,), -1.0)
PALETTE[:K] = (torch.arange(K) + 1) / 8


def colour(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) label maps -> (B, 3, H, W) images: three distinct channels per label."""
    v = PALETTE[maps.long()]
    return torch.stack([v, 0.5 * v, 1.0 - v], dim=1)


def scene(b: int = 6, h: int = 20, w: int = 24, seed: int = 0, dtype=torch.int64):
    """Images painted by random label maps (about 10 % ignore pixels), and the maps."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randint(0, K, (b, h, w), generator=g)
    maps[torch.rand(b, h, w, generator=g) < 0.1] = IGNORE
    return colour(maps), maps.to(dtype)


def assert_pixels_carry_their_labels(r, exact_map: bool) -> None:
    ya, yb, lam = r.pairs()
    expect = torch.lerp(colour(yb), colour(ya), lam.view(-1, 1, 1, 1))
    assert torch.allclose(r.images, expect, atol=1e-6), "a pixel does not show the colour of its labels"
    if exact_map:
        assert r.partner_targets is r.targets, "box and mask mixers give one exact map"
        assert torch.equal(r.images, colour(r.targets)), "every mask pixel is the class of the image pixel on it"


def make(cls, seed=0, **kw):
    return cls(K, generator=torch.Generator().manual_seed(seed), **kw)


BOX_MIXERS = [
    ("cutmix", lambda **kw: make(CutMix, **kw)),
    ("resizemix-nearest-clip", lambda **kw: make(ResizeMix, interpolation="nearest", box="clip", **kw)),
    ("resizemix-legacy-inside", lambda **kw: make(ResizeMix, interpolation="nearest-legacy", box="inside", **kw)),
    ("fmix", lambda **kw: make(FMix, **kw)),
    ("saliencymix", lambda **kw: make(SaliencyMix, **kw)),
]
MODES = [("batch", "roll"), ("elem", "random"), ("pair", "flip"), ("elem", "flip")]


# ----------------------------------------------------------------------------- every mixer, pixel by pixel
@pytest.mark.parametrize("name,build", BOX_MIXERS, ids=[n for n, _ in BOX_MIXERS])
@pytest.mark.parametrize("granularity,pairing", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_box_and_mask_mixers_move_the_label_map_with_the_pixels(name, build, granularity, pairing, seed):
    images, maps = scene(seed=seed)
    r = build(seed=seed, granularity=granularity, pairing=pairing)(images, maps)
    assert r.targets.shape == maps.shape and r.targets.dtype == maps.dtype
    assert_pixels_carry_their_labels(r, exact_map=True)
    assert torch.equal(r.source_targets, maps) and torch.equal(maps, scene(seed=seed)[1]), "inputs untouched"
    # the ignore index survives where its pixels went, and nowhere else
    assert torch.equal(r.targets == IGNORE, r.images[:, 0] == -1.0)


@pytest.mark.parametrize("granularity,pairing", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_mixup_returns_both_maps_and_lambda(granularity, pairing, seed):
    images, maps = scene(seed=seed)
    r = make(Mixup, seed=seed, alpha=0.7, granularity=granularity, pairing=pairing)(images, maps)
    assert torch.equal(r.targets, maps), "Mixup's targets: each image's own map"
    assert torch.equal(r.partner_targets, maps[r.index]), "partner_targets: the partner's map"
    assert r.mask is None and r.boxes is None
    assert_pixels_carry_their_labels(r, exact_map=False)
    assert ((r.lam > 0) & (r.lam < 1)).all()


def test_the_p_coin_leaves_maps_and_partner_equal():
    images, maps = scene()
    for seed in range(12):
        for build in (lambda s: make(Mixup, seed=s, p=0.5), lambda s: make(CutMix, seed=s, p=0.5)):
            r = build(seed)(images, maps)
            assert_pixels_carry_their_labels(r, exact_map=False)
            if bool((r.lam == 1).all()):  # not mixed: each image its own partner
                assert torch.equal(r.partner_targets, maps) and torch.equal(r.targets, maps)


@pytest.mark.parametrize("mode", ["nearest", "nearest-legacy"])
@pytest.mark.parametrize("granularity", ["batch", "elem"])
def test_resizemix_label_maps_are_resized_by_nearest_under_the_same_box(mode, granularity):
    """With bilinear images the map is still resized by nearest neighbour (pixel centres): the map
    of a bilinear run is the map of the "nearest" run with the same draws, and holds no class
    that is not a source class at that place."""
    images, maps = scene(h=24, w=24)
    r = make(ResizeMix, interpolation=mode, granularity=granularity)(images, maps)
    assert_pixels_carry_their_labels(r, exact_map=True)
    bilinear = make(ResizeMix, interpolation="bilinear", granularity=granularity)(images, maps)
    nearest = make(ResizeMix, interpolation="nearest", granularity=granularity)(images, maps)
    assert torch.equal(bilinear.boxes, nearest.boxes) and torch.equal(bilinear.targets, nearest.targets)


@pytest.mark.parametrize("granularity", ["batch", "elem"])
@pytest.mark.parametrize("seed", range(4))
def test_random_choice_rows_carry_their_mixers_labels(granularity, seed):
    images, maps = scene(b=8, seed=seed)
    gran = "elem" if granularity == "elem" else "batch"
    switch = RandomChoice([Mixup(K, granularity=gran), CutMix(K, granularity=gran), ResizeMix(K, granularity=gran)],
                          p=0.8, granularity=granularity, generator=torch.Generator().manual_seed(seed))
    r = switch(images, maps)
    assert_pixels_carry_their_labels(r, exact_map=False)
    ya, yb, lam = r.pairs()
    rows_of_one_map = (ya == yb).flatten(1).all(1)
    assert torch.equal(r.images[rows_of_one_map], colour(ya)[rows_of_one_map])


def test_types_and_dtypes_are_kept():
    images, maps = scene(dtype=torch.uint8)
    for build in (lambda: make(Mixup), lambda: make(CutMix), lambda: make(ResizeMix)):
        r = build()(tv_tensors.Image(images), tv_tensors.Mask(maps))
        assert type(r.images) is tv_tensors.Image and type(r[0]) is tv_tensors.Image
        assert type(r.targets) is tv_tensors.Mask and type(r.partner_targets) is tv_tensors.Mask
        assert type(r.source_targets) is tv_tensors.Mask and r.targets.dtype == torch.uint8
        plain = build()(images, maps)
        assert type(plain.images) is torch.Tensor and type(plain.targets) is torch.Tensor
        assert torch.equal(plain.targets, r.targets.as_subclass(torch.Tensor))
    uint8_images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    r = make(CutMix)(uint8_images, maps)  # uint8 pixels are copied, so the map still matches them
    assert r.images.dtype == torch.uint8
    assert torch.equal(r.images, (colour(r.targets).clamp(0, 1) * 255).round().to(torch.uint8))
    one = make(CutMix)(images[:1], maps[:1])  # a batch of one passes through
    assert torch.equal(one.targets, maps[:1]) and one.partner_targets is one.targets
    packed = make(CutMix)((images, tv_tensors.Mask(maps)))  # the collated pair
    assert type(packed.targets) is tv_tensors.Mask


def test_ignore_index_is_settable():
    images, maps = scene()
    maps = torch.where(maps == IGNORE, -1, maps)
    r = make(CutMix, ignore_index=-1)(images, maps)
    assert torch.equal(r.targets == -1, r.images[:, 0] == -1.0)
    with pytest.raises(ValueError, match=r"ignore_index=255, got the values \[-1\]"):
        make(CutMix)(images, maps)


# ----------------------------------------------------------------------------- bad targets
def test_bad_label_maps_give_clear_errors():
    images, maps = scene()
    cutmix = make(CutMix)
    with pytest.raises(ValueError, match=r"images' batch size and size \(B, H, W\) = \(6, 20, 24\), got shape \(6, 20, 23\)"):
        cutmix(images, maps[..., :-1])
    with pytest.raises(ValueError, match=r"\(6, 20, 24\), got shape \(5, 20, 24\)"):
        cutmix(images, maps[:5])
    with pytest.raises(ValueError, match="squeeze the channel dim"):
        cutmix(images, tv_tensors.Mask(maps.unsqueeze(1)))
    with pytest.raises(TypeError, match="integer class indices.*float32"):
        cutmix(images, maps.float())
    with pytest.raises(ValueError, match=r"class indices in \[0, 6\) or ignore_index=255, got the values \[7\]"):
        cutmix(images, torch.where(maps == 3, 7, maps))
    with pytest.raises(ValueError, match=r"ignore_index must lie outside the classes \[0, 6\)"):
        make(CutMix, ignore_index=3)(images, maps)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        make(CutMix, ignore_index=255.0)
    with pytest.raises(ValueError, match="label_smoothing=0.1 applies to class targets"):
        make(Mixup, label_smoothing=0.1)(images, maps)
    with pytest.raises(TypeError, match="TimmMixup mixes class labels"):
        TimmMixup(num_classes=K, mixup_alpha=1.0)(images.clone(), maps)
    with pytest.raises(ValueError, match=r"\(B, H, W\) label maps"):  # a 4-D integer tensor is not a label
        cutmix(images, maps.unsqueeze(1))
    assert torch.equal(maps, scene()[1]), "nothing written before the errors"


# ----------------------------------------------------------------------------- the loss and soft targets
def test_box_mixer_loss_is_the_plain_cross_entropy_with_ignore():
    images, maps = scene()
    r = make(CutMix)(images, maps)
    logits = torch.randn(6, K, 20, 24, generator=torch.Generator().manual_seed(1))
    expect = F.cross_entropy(logits, r.targets, ignore_index=IGNORE)
    assert torch.allclose(mixed_segmentation_loss(logits, r), expect, atol=1e-6)
    smooth = F.cross_entropy(logits, r.targets, ignore_index=IGNORE, label_smoothing=0.1)
    assert torch.allclose(mixed_segmentation_loss(logits, r, label_smoothing=0.1), smooth, atol=1e-6)


def test_mixup_loss_mixes_two_cross_entropies_per_pixel_with_ignore_excluded():
    images, maps = scene(b=4, h=5, w=7)
    r = make(Mixup, granularity="elem")(images, maps)
    logits = torch.randn(4, K, 5, 7, generator=torch.Generator().manual_seed(2), requires_grad=True)
    num = den = 0.0
    logp = logits.detach().log_softmax(1)
    for i in range(4):  # by hand, pixel by pixel
        lam = float(r.lam[i])
        for y in range(5):
            for x in range(7):
                for label, w in ((int(r.targets[i, y, x]), lam), (int(r.partner_targets[i, y, x]), 1 - lam)):
                    if label != IGNORE:
                        num += -w * float(logp[i, label, y, x])
                        den += w
    loss = mixed_segmentation_loss(logits, r)
    assert abs(float(loss.detach()) - num / den) < 1e-5
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # the soft targets give the same loss (their total weight is the normaliser)
    t = dense_soft_targets(*r.pairs(), num_classes=K)
    assert t.shape == (4, K, 5, 7)
    assert torch.allclose(-(t * logp).sum() / t.sum(), loss.detach(), atol=1e-5)
    both = (r.targets != IGNORE) & (r.partner_targets != IGNORE)
    assert torch.allclose(t.sum(1)[both], torch.ones(int(both.sum())))
    assert float(mixed_segmentation_loss(logits.detach(), r, reduction="sum")) == pytest.approx(num, rel=1e-5)
    assert mixed_segmentation_loss(logits, r, reduction="none").shape == (4, 5, 7)


def test_dense_soft_targets_of_an_exact_map_are_one_hot_and_smoothed():
    maps = torch.tensor([[[0, 2], [IGNORE, 1]]])
    t = dense_soft_targets(maps, maps, torch.tensor([0.3]), num_classes=3)
    assert t[0, :, 0, 0].tolist() == [1, 0, 0] and t[0, :, 0, 1].tolist() == [0, 0, 1]
    assert t[0, :, 1, 0].tolist() == [0, 0, 0], "ignored pixels get no target"
    s = dense_soft_targets(maps, maps, torch.tensor([1.0]), num_classes=3, label_smoothing=0.3)
    assert torch.allclose(s[0, :, 1, 1], torch.tensor([0.1, 0.8, 0.1]))


def test_loss_of_an_all_ignored_batch_is_zero_and_bad_logits_are_refused():
    images, maps = scene(b=2)
    r = make(Mixup)(images, torch.full_like(maps, IGNORE))
    assert float(mixed_segmentation_loss(torch.randn(2, K, 20, 24), r)) == 0.0
    with pytest.raises(ValueError, match=r"\(B, K, H, W\) over the label maps' \(B, H, W\) = \(2, 20, 24\)"):
        mixed_segmentation_loss(torch.randn(2, K, 10, 12), r)
    with pytest.raises(ValueError, match="reduction"):
        mixed_segmentation_loss(torch.randn(2, K, 20, 24), r, reduction="avg")


# ----------------------------------------------------------------------------- the paste functional
def test_resize_paste_labels_samples_as_the_image_paste():
    images, maps = scene(b=3, h=16, w=18)
    boxes = torch.tensor([[2, 3, 11, 9], [0, 0, 18, 16], [5, 5, 5, 5]])
    partner = maps.roll(1, 0)
    for mode in ("nearest", "nearest-legacy"):
        pasted = resize_paste_labels(maps, partner, boxes, mode)
        assert torch.equal(resize_paste(images, colour(partner), boxes, mode), colour(pasted))
        one = resize_paste_labels(maps, partner, (2, 3, 11, 9), mode)
        assert torch.equal(resize_paste(images, colour(partner), (2, 3, 11, 9), mode), colour(one))
    with pytest.raises(ValueError, match="nearest neighbour"):
        resize_paste_labels(maps, partner, boxes, "bilinear")


# ----------------------------------------------------------------------------- CropMix's CutMix mode
@pytest.mark.parametrize("seed", range(6))
def test_cropmix_cutmix_moves_the_mask_with_crops_pastes_and_flips(seed):
    torch.manual_seed(seed)
    _, maps = scene(b=1, h=40, w=48, seed=seed)
    v = PALETTE[maps[0]]
    image = v.expand(3, 40, 48).clone()  # same value in every channel: the channel permutation is invisible
    t = CropMix((24, 20), mix="cutmix", num_crops=(2, 3, 4), interpolation="nearest",
                inter_aug=("permute", "hflip", "vflip"), placement="both")
    pipeline = v2.Compose([t, v2.RandomHorizontalFlip()])
    out, mask, label = pipeline(tv_tensors.Image(image), tv_tensors.Mask(maps[0]), 3)
    assert type(out) is tv_tensors.Image and type(mask) is tv_tensors.Mask and label == 3
    assert mask.shape == (24, 20) and mask.dtype == maps.dtype
    assert torch.equal(out[0], PALETTE[mask.long()]), "each mask pixel is the class of the image pixel on it"
    sample = t({"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(maps)})  # (1, H, W) masks too
    assert sample["mask"].shape == (1, 24, 20)
    bilinear = CropMix(24, mix="cutmix")(tv_tensors.Image(image), tv_tensors.Mask(maps[0]))[1]
    assert set(bilinear.unique().tolist()) <= set(maps.unique().tolist()), "no blended class"


def test_cropmix_refuses_what_cannot_follow_it():
    image, mask = tv_tensors.Image(torch.rand(3, 32, 32)), tv_tensors.Mask(torch.zeros(32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="mix='mixup'.*blends whole crops.*mix='cutmix'"):
        CropMix(24)(image, mask)
    assert CropMix(24, num_crops=1, inter_aug=())(image, mask)[1].shape == (24, 24)  # N = 1: plain RRC
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 2.0, 10.0, 12.0]]), format="XYXY", canvas_size=(32, 32))
    with pytest.raises(TypeError, match="does not move tv_tensors.BoundingBoxes"):
        CropMix(24, mix="cutmix")(image, boxes)


# ----------------------------------------------------------------------------- RecursiveMix's paste
@pytest.mark.parametrize("per_sample_boxes,history", [(False, True), (True, True), (False, False)])
def test_recursivemix_pastes_the_history_map_by_nearest(per_sample_boxes, history):
    rm = RecursiveMix(K, omega=0.0, alpha=1.0, per_sample_boxes=per_sample_boxes, history=history)
    rm.generator = torch.Generator().manual_seed(0)
    first, second = scene(seed=1), scene(seed=2)
    r1 = rm.mix(tv_tensors.Image(first[0]), tv_tensors.Mask(first[1]))
    rm.update(None, torch.randn(6, K, 20, 24))
    r2 = rm.mix(second[0], second[1])
    assert_pixels_carry_their_labels(r2, exact_map=True)
    assert (r2.lam < 1).any(), "something was pasted"
    if history:
        assert_pixels_carry_their_labels(r1, exact_map=True)
        pasted = r2.boxes[0]
        x1, y1, x2, y2 = pasted.tolist()
        assert set(r2.targets[0, y1:y2, x1:x2].unique().tolist()) <= set(first[1][0].unique().tolist())
    rm.update(None, torch.randn(6, K, 20, 24))


def test_recursivemix_label_maps_need_omega_zero_and_one_kind_of_label():
    images, maps = scene()
    with pytest.raises(ValueError, match="label maps need omega=0"):
        RecursiveMix(K).mix(images, maps)
    with pytest.raises(ValueError, match="label_smoothing"):
        RecursiveMix(K, omega=0.0, label_smoothing=0.1).mix(images, maps)
    rm = RecursiveMix(K, omega=0.0)
    rm.mix(images, maps)
    rm.update(None, torch.randn(6, K, 20, 24))
    with pytest.raises(ValueError, match="the history holds label maps, this batch has class targets"):
        rm.mix(images, torch.zeros(6, dtype=torch.long))


def test_recursivemix_training_step_on_a_segmenter():
    model = torch.nn.Conv2d(3, K, 3, padding=1)  # a segmenter: no forward_features, so no setup()
    rm = RecursiveMix(K, omega=0.0)
    rm.generator = torch.Generator().manual_seed(0)
    for seed in range(3):
        images, maps = scene(seed=seed)
        out = rm.training_step(model, (images, maps), progress=0.0)
        out.loss.backward()
        assert torch.isfinite(out.loss) and model.weight.grad is not None
    assert rm.hist_targets.shape == (6, 20, 24) and rm.hist_targets.dtype == torch.int64


def test_package_exports():
    assert mixlab.core.losses.mixed_segmentation_loss is mixed_segmentation_loss


def test_a_torchvision_segmenter_trains_on_mixed_label_maps():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from mixlab.data import SyntheticShapes

    torch.manual_seed(0)
    shapes = SyntheticShapes("train", num_per_class=1, image_size=32)
    seg = shapes.segmentation()
    images = torch.stack([seg[i][0] for i in range(4)]).float() / 255
    masks = torch.stack([seg[i][1] for i in range(4)])
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11).train()
    for mixer in (Mixup(11), CutMix(11), ResizeMix(11)):
        r = mixer(images, masks)
        loss = mixed_segmentation_loss(model(r.images)["out"], r)
        loss.backward()
        assert torch.isfinite(loss)
