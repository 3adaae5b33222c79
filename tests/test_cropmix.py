"""CropMix (Han et al. 2022): the per-image v2 transform, the batched version, the method and its
registry entries. Statistical checks use KS tests at p > 1e-3 on a few thousand draws, seeded."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mixlab.methods.cropmix import CropMixMethod, RRCMethod
from mixlab.registry import METHODS, build_method
from mixlab.transforms import (
    CropMix,
    CropMixBatch,
    augment_view,
    cropmix_batch,
    cutmix_views,
    mix_views,
    mixup_views,
    rrc,
    scale_ranges,
)
from mixlab.transforms.cropmix import crop_from_uniforms
from mixlab.transforms.batched import color_jitter, resized_crops, sample_crop_boxes

P_MIN = 1e-3


def _image(h: int = 32, w: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------ the sub-ranges
@pytest.mark.parametrize("scale", [(0.01, 1.0), (0.2, 0.9), (0.08, 1.0)])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_scale_ranges_split_evenly_without_overlap(scale, n):
    ranges = scale_ranges(scale, n)
    s0, s1 = scale
    d = (s1 - s0) / n
    assert len(ranges) == n
    for k, (lo, hi) in enumerate(ranges):
        assert lo == pytest.approx(s0 + k * d, abs=1e-12)
        assert hi == pytest.approx(s0 + (k + 1) * d, abs=1e-12)
    assert ranges[0][0] == s0 and ranges[-1][1] == s1
    assert all(ranges[k][1] == ranges[k + 1][0] for k in range(n - 1))  # contiguous, not overlapping
    assert scale_ranges(scale, n, multi_scale=False) == [(s0, s1)] * n


def test_scale_ranges_paper_example():
    # pytest.approx takes flat sequences only (pytest 9 rejects nested ones): compare flattened
    flat = lambda ranges: [v for r in ranges for v in r]  # noqa: E731
    assert flat(scale_ranges((0.01, 1.0), 3)) == pytest.approx([0.01, 0.34, 0.34, 0.67, 0.67, 1.0])
    # N = 2 starts at s0 (the official CIFAR code's first range is (s0, (1 - s0) / N) instead)
    assert flat(scale_ranges((0.01, 1.0), 2)) == pytest.approx([0.01, 0.505, 0.505, 1.0])
    assert scale_ranges((0.3, 0.6), 1) == [(0.3, 0.6)]


# ------------------------------------------------------------------------------ crops in their sub-ranges
def _check_crop(top, left, h, w, lo, hi, height, width, ratio):
    """Area fraction in [lo, hi] and w/h in ratio, up to RRC's rounding of w and h; or the fallback."""
    area = height * width
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    if (h, w) == (height, width) and (top, left) == (0, 0):
        return "fallback-or-whole"
    slack = 0.5 * (h + w) + 0.25  # |h·w - target| when h and w are rounded to the nearest int
    assert lo * area - slack <= h * w <= hi * area + slack, (h, w, lo, hi)
    assert (w + 0.5) / max(h - 0.5, 1e-9) >= ratio[0] and (w - 0.5) / (h + 0.5) <= ratio[1], (h, w)
    return "ok"


@pytest.mark.parametrize("n", [2, 3, 4])
def test_per_image_crops_fall_in_their_subranges(n):
    torch.manual_seed(n)
    height, width = 48, 64
    t = CropMix(32, num_crops=n, scale=(0.01, 1.0))
    image = _image(height, width)
    ranges = scale_ranges((0.01, 1.0), n)
    for _ in range(300):
        p = t.make_params([image])
        assert p["num_crops"] == n and len(p["crops"]) == n and sorted(p["order"]) == list(range(n))
        for crop, (lo, hi) in zip(p["crops"], ranges):
            _check_crop(crop["top"], crop["left"], crop["height"], crop["width"], lo, hi, height, width, t.ratio)


@pytest.mark.parametrize("num_crops", [2, 3, (2, 3, 4)])
def test_batched_crops_fall_in_their_subranges(num_crops):
    height, width = 48, 64
    bt = CropMixBatch(num_crops=num_crops, generator=torch.Generator().manual_seed(1))
    p = bt.make_params(1000, height, width)
    crops, ns = p["crops"], p["num_crops"]
    for i in range(crops.shape[0]):
        n = int(ns[i])
        for k, (lo, hi) in enumerate(scale_ranges((0.01, 1.0), n)):
            top, left, h, w = crops[i, k].tolist()
            _check_crop(top, left, h, w, lo, hi, height, width, bt.ratio)
        assert sorted(p["order"][i, :n].tolist()) == list(range(n))  # an order of the image's own views
    if isinstance(num_crops, tuple):  # N uniform over the set
        counts = torch.bincount(ns, minlength=5)[2:].tolist()
        assert stats.chisquare(counts).pvalue > P_MIN


def test_aspect_ratio_is_log_uniform():
    """Middle sub-range of N = 3 on 256x256: no rejection, negligible rounding."""
    torch.manual_seed(0)
    t = CropMix(32, num_crops=3)
    image = torch.zeros(3, 256, 256, dtype=torch.uint8)
    crops = [t.make_params([image])["crops"][1] for _ in range(1500)]
    logs = [math.log(c["width"] / c["height"]) for c in crops]
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert stats.kstest(logs, "uniform", args=(lo, hi - lo)).pvalue > P_MIN
    bp = CropMixBatch(num_crops=3, generator=torch.Generator().manual_seed(0)).make_params(1500, 256, 256)
    blogs = (bp["crops"][:, 1, 3].double() / bp["crops"][:, 1, 2].double()).log().numpy()
    assert stats.kstest(blogs, "uniform", args=(lo, hi - lo)).pvalue > P_MIN


def test_single_scale_uses_the_whole_range():
    bt = CropMixBatch(num_crops=3, multi_scale=False, generator=torch.Generator().manual_seed(0))
    bp = bt.make_params(600, 64, 64)
    frac = (bp["crops"][..., 2] * bp["crops"][..., 3]).double() / 64**2
    for k in range(3):  # every crop spans the whole range, with the same law
        assert frac[:, k].min() < 0.2 and frac[:, k].max() > 0.8
    assert stats.ks_2samp(frac[:, 0], frac[:, 2]).pvalue > P_MIN


def test_fallback_matches_torchvision():
    """A range no crop can satisfy (ratio far from the image's) ends in torchvision's fallback."""
    image = torch.zeros(3, 20, 80, dtype=torch.uint8)  # in_ratio 4 > max ratio 4/3
    torch.manual_seed(0)
    expect = v2.RandomResizedCrop(8, scale=(0.99, 1.0)).make_params([image])
    boxes = sample_crop_boxes(torch.tensor([0.99]), torch.tensor([1.0]), 20, 80, (3 / 4, 4 / 3))
    assert boxes[0].tolist() == [expect["top"], expect["left"], expect["height"], expect["width"]]


# ------------------------------------------------------------------------------ types and pass-through
def test_num_crops_one_is_random_resized_crop():
    """N = 1 without augmentation is RRC: torchvision's crop for the drawn box, and the boxes
    follow torchvision's sampler (areas and aspect ratios, KS test); ``rrc`` is torchvision's."""
    image = _image(40, 48)
    t = CropMix(32, num_crops=1, inter_aug=(), scale=(0.08, 1.0))
    for seed in range(3):
        torch.manual_seed(seed)
        p = t.make_params([image])
        expect = TF.resized_crop(image, **p["crops"][0], size=[32, 32], antialias=True)
        assert torch.equal(t.transform(image, p), expect)
    torch.manual_seed(0)
    ours = [t.make_params([image])["crops"][0] for _ in range(2000)]
    tv = v2.RandomResizedCrop(32, scale=(0.08, 1.0))
    theirs = [tv.make_params([image]) for _ in range(2000)]
    for key in (lambda c: c["height"] * c["width"], lambda c: c["width"] / c["height"], lambda c: c["top"]):
        assert stats.ks_2samp([key(c) for c in ours], [key(c) for c in theirs]).pvalue > P_MIN
    assert isinstance(rrc(32), v2.RandomResizedCrop) and rrc(32, scale=(0.01, 1)).scale == (0.01, 1.0)


def test_fallback_of_the_per_image_sampler():
    """No valid attempt (uniforms that give a crop wider than the image): torchvision's centred
    crop of the whole image clipped to the ratio range."""
    u = [1.0, 1.0] * 10 + [0.5, 0.5]  # full area at ratio 4/3 never fits a 20x80 (in_ratio 4) image
    assert crop_from_uniforms(u, 0.99, 1.0, 20, 80, (3 / 4, 4 / 3)) == {"top": 0, "left": 26, "height": 20,
                                                                         "width": 27}
    image = torch.zeros(3, 20, 80, dtype=torch.uint8)
    expect = v2.RandomResizedCrop(8, scale=(0.99, 1.0)).make_params([image])
    assert expect == {"top": 0, "left": 26, "height": 20, "width": 27}


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_types_dtypes_sizes_and_labels(mix):
    torch.manual_seed(0)
    t = CropMix((24, 20), num_crops=(2, 3, 4), mix=mix)
    image = _image(40, 48)
    pipeline = v2.Compose([t, v2.RandomHorizontalFlip()])
    out, label = pipeline(image, 7)
    assert out.shape == (3, 24, 20) and out.dtype == torch.uint8 and label == 7
    sample = {"image": tv_tensors.Image(image), "label": torch.tensor(3), "name": "x"}
    got = pipeline(sample)
    assert type(got["image"]) is tv_tensors.Image and got["image"].shape == (3, 24, 20)
    assert torch.equal(got["label"], torch.tensor(3)) and got["name"] == "x"
    img, lab = t(image, torch.tensor([1, 2]))  # a pure tensor label after the image passes through
    assert torch.equal(lab, torch.tensor([1, 2]))
    pil = PIL.Image.fromarray(image.permute(1, 2, 0).numpy())
    out_pil = t(pil)
    assert isinstance(out_pil, PIL.Image.Image) and out_pil.size == (20, 24) and out_pil.mode == "RGB"
    gray = t(PIL.Image.fromarray(image[0].numpy()))
    assert gray.mode == "L" and gray.size == (20, 24)
    f = t(image.float() / 255)
    assert f.dtype == torch.float32 and f.shape == (3, 24, 20) and 0 <= float(f.min()) and float(f.max()) <= 1
    assert t(image.double() / 255).dtype == torch.float64
    assert t(image.unsqueeze(0).expand(2, 3, 40, 48)).shape == (2, 3, 24, 20)  # leading dims
    assert CropMix(None)(image).shape == (3, 40, 48)  # size=None keeps the input size
    with pytest.raises(TypeError, match="mode"):
        t(pil.convert("P"))
    with pytest.raises(TypeError, match="uint8 or floating"):
        t(image.to(torch.int32))


def test_uint8_is_rounded_mix_of_views():
    """uint8 in: the float mix rounded (not truncated) back to uint8."""
    image = _image(32, 32)
    t = CropMix(32, inter_aug=())
    torch.manual_seed(3)
    params = t.make_params([image])
    out = t.transform(image, params)
    views = [TF.resized_crop(image, **c, size=[32, 32], antialias=True).float() for c in params["crops"]]
    expect = mix_views(views, params, "mixup").round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(out, expect)
    assert not torch.equal(out, mix_views(views, params, "mixup").to(torch.uint8))  # rounded, not truncated


def test_randomness_is_the_global_torch_rng_only():
    image = _image()
    t = CropMix(32, num_crops=(2, 3, 4), inter_aug=("permute", "hflip", "colorjitter"), placement="both")
    random.seed(0)
    np.random.seed(0)
    py, npy = random.getstate(), np.random.get_state()[1].copy()
    torch.manual_seed(5)
    a = [t(image) for _ in range(5)]
    torch.manual_seed(5)
    b = [t(image) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy)


def test_inputs_are_not_modified():
    x = torch.rand(3, 16, 16)
    keep = x.clone()
    for mix in ("mixup", "cutmix"):  # scale (1, 1), ratio 1: the crop is the image itself (aliased)
        t = CropMix(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), mix=mix, num_crops=3,
                    inter_aug=("permute", "hflip", "colorjitter"), placement="both")
        for _ in range(10):
            t(x)
        assert torch.equal(x, keep)
    batch = torch.rand(4, 3, 16, 16)
    keep = batch.clone()
    cropmix_batch(batch, mix="cutmix", inter_aug=("permute", "colorjitter"), placement="both")
    assert torch.equal(batch, keep)


# ------------------------------------------------------------------------------ mixing weights
@pytest.mark.parametrize("n,alpha", [(2, 0.4), (3, 0.4), (2, 1.0)])
def test_mixup_lambda_is_beta_alpha_over_n(n, alpha):
    torch.manual_seed(n)
    t = CropMix(16, num_crops=n, alpha=alpha)
    image = _image(16, 16)
    lams = [s["lam"] for _ in range(1500) for s in t.make_params([image])["steps"]]
    assert len(lams) == 1500 * (n - 1)
    a = alpha / n
    assert stats.kstest(lams, "beta", args=(a, a)).pvalue > P_MIN
    bp = CropMixBatch(num_crops=n, alpha=alpha, generator=torch.Generator().manual_seed(n)).make_params(1500, 16, 16)
    assert stats.kstest(bp["lam"].flatten().numpy(), "beta", args=(a, a)).pvalue > P_MIN


def test_cutmix_lambda_is_uniform_and_gives_the_box():
    torch.manual_seed(0)
    t = CropMix((32, 48), mix="cutmix", num_crops=3)
    assert t.alpha == 1.0 and CropMix(32).alpha == 0.4
    image = _image(40, 40)
    steps = [s for _ in range(1500) for s in t.make_params([image])["steps"]]
    lams = [s["lam"] for s in steps]
    assert stats.kstest(lams, "uniform").pvalue > P_MIN
    coins = [s["patch_from_second"] for s in steps]
    assert stats.binomtest(sum(coins), len(coins)).pvalue > P_MIN
    for s in steps[:300]:  # box side int(side·√(1-λ)) (± 1 for the centring), clipped to the image
        x1, y1, x2, y2 = s["box"]
        assert 0 <= x1 <= x2 <= 48 and 0 <= y1 <= y2 <= 32
        assert x2 - x1 <= int(48 * math.sqrt(1 - s["lam"])) + 1 and y2 - y1 <= int(32 * math.sqrt(1 - s["lam"])) + 1
    bp = CropMixBatch(mix="cutmix", num_crops=3, generator=torch.Generator().manual_seed(0)).make_params(1500, 32, 32)
    assert stats.kstest(bp["lam"].flatten().numpy(), "uniform").pvalue > P_MIN


def test_per_image_and_batched_agree_in_distribution():
    torch.manual_seed(0)
    height, width = 48, 64
    t = CropMix(32, num_crops=(2, 3, 4))
    image = _image(height, width)
    per = [t.make_params([image]) for _ in range(2000)]
    bp = CropMixBatch(num_crops=(2, 3, 4), generator=torch.Generator().manual_seed(0)).make_params(2000, height, width)
    ns = bp["num_crops"]
    for n in (2, 4):
        for k in (0, n - 1):
            a = [p["crops"][k]["height"] * p["crops"][k]["width"] / (height * width)
                 for p in per if p["num_crops"] == n]
            c = bp["crops"][ns == n][:, k]
            b = ((c[:, 2] * c[:, 3]).double() / (height * width)).numpy()
            assert stats.ks_2samp(a, b).pvalue > P_MIN, (n, k)
            ra = [math.log(p["crops"][k]["width"] / p["crops"][k]["height"]) for p in per if p["num_crops"] == n]
            rb = (c[:, 3].double() / c[:, 2].double()).log().numpy()
            assert stats.ks_2samp(ra, rb).pvalue > P_MIN, (n, k)
        la = [s["lam"] for p in per if p["num_crops"] == n for s in p["steps"]]
        lb = bp["lam"][ns == n][:, : n - 1].flatten().numpy()
        assert stats.ks_2samp(la, lb).pvalue > P_MIN
    counts_per = [sum(p["num_crops"] == n for p in per) for n in (2, 3, 4)]
    counts_b = [int((ns == n).sum()) for n in (2, 3, 4)]
    assert stats.chi2_contingency([counts_per, counts_b]).pvalue > P_MIN


# ------------------------------------------------------------------------------ the weaker operand
def test_mixup_augments_the_operand_with_the_smaller_weight():
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    perm = {"perm": [2, 0, 1]}
    torch.testing.assert_close(mixup_views(a, b, 0.8, perm), 0.8 * a + 0.2 * b[[2, 0, 1]])
    torch.testing.assert_close(mixup_views(a, b, 0.3, perm), 0.3 * a[[2, 0, 1]] + 0.7 * b)
    torch.testing.assert_close(mixup_views(a, b, 0.5, perm), 0.5 * a[[2, 0, 1]] + 0.5 * b)
    torch.testing.assert_close(mixup_views(a, b, 0.8, None), 0.8 * a + 0.2 * b)
    flip = {"hflip": True, "vflip": True}
    torch.testing.assert_close(mixup_views(a, b, 0.9, flip), 0.9 * a + 0.1 * b.flip(-1).flip(-2))


def test_cutmix_augments_the_patch_source():
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    perm = {"perm": [1, 2, 0]}
    out = cutmix_views(a, b, (2, 1, 6, 5), True, perm)  # base a, patch from b (permuted)
    expect = a.clone()
    expect[:, 1:5, 2:6] = b[[1, 2, 0]][:, 1:5, 2:6]
    assert torch.equal(out, expect)
    out = cutmix_views(a, b, (0, 0, 3, 8), False, perm)  # base b, patch from a (permuted)
    expect = b.clone()
    expect[:, :, :3] = a[[1, 2, 0]][:, :, :3]
    assert torch.equal(out, expect)


def test_placement_before_after_both():
    image = _image()
    torch.manual_seed(0)
    before = CropMix(32, num_crops=3).make_params([image])
    assert before["after"] is None and all(s["aug"] is not None for s in before["steps"])
    after = CropMix(32, num_crops=3, placement="after").make_params([image])
    assert after["after"] is not None and all(s["aug"] is None for s in after["steps"])
    both = CropMix(32, num_crops=3, placement="both", inter_aug=("hflip",)).make_params([image])
    assert set(both["after"]) == {"hflip"} and all(set(s["aug"]) == {"hflip"} for s in both["steps"])
    none = CropMix(32, num_crops=3, inter_aug=()).make_params([image])
    assert none["after"] is None and all(s["aug"] is None for s in none["steps"])
    # N = 1 with "after": RRC then the augmentation of the whole image
    p = CropMix(32, num_crops=1, placement="after", inter_aug=("permute",)).make_params([image])
    assert p["steps"] == [] and "perm" in p["after"]


def _per_image_params(bp, i, channels=3):
    """Batched draws of sample i in the per-image layout (for the exact-agreement test)."""
    n = int(bp["num_crops"][i])

    def aug(d, idx):
        if d is None:
            return None
        out = {}
        if "perm" in d:
            out["perm"] = d["perm"][idx].tolist()
        for key in ("hflip", "vflip"):
            if key in d:
                out[key] = bool(d[key][idx])
        if "jitter_order" in d:
            f = d["jitter_factors"][idx].tolist()
            out["jitter"] = dict(fn_idx=d["jitter_order"][idx], brightness_factor=f[0], contrast_factor=f[1],
                                 saturation_factor=f[2], hue_factor=f[3])
        return out

    steps = []
    for t in range(n - 1):
        s = {"lam": float(bp["lam"][i, t]), "aug": aug(bp["aug"], (i, t))}
        if "boxes" in bp:
            s["box"] = tuple(bp["boxes"][i, t].tolist())
            s["patch_from_second"] = bool(bp["patch_from_second"][i, t])
        steps.append(s)
    return dict(order=bp["order"][i, :n].tolist(), steps=steps, after=aug(bp["after"], i))


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
@pytest.mark.parametrize("inter_aug,placement", [(("permute",), "before"), (("permute",), "both"), ((), "before"),
                                                 (("permute", "hflip", "vflip"), "both"),
                                                 (("colorjitter",), "before"), (("permute", "colorjitter"), "after")])
def test_batched_mixing_equals_per_image_mixing(mix, inter_aug, placement):
    """Whole-image crops (resampling is then the identity): the batched steps reproduce mix_views draw for draw."""
    g = torch.Generator().manual_seed(7)
    images = torch.rand(12, 3, 16, 16, generator=g)
    bt = CropMixBatch(num_crops=(1, 2, 3, 4), mix=mix, inter_aug=inter_aug, placement=placement, generator=g)
    bp = bt.make_params(12, 16, 16)
    bp["crops"] = torch.tensor([0, 0, 16, 16]).expand(12, 4, 4).clone()  # every view = the image
    out = bt.transform(images, bp)
    for i in range(12):
        views = [images[i]] * 4
        expect = mix_views(views, _per_image_params(bp, i), mix)
        torch.testing.assert_close(out[i], expect, atol=2e-5, rtol=0)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_batched_mixing_order_and_weaker_operand_with_distinct_views(mix):
    """Distinct views (crops at different offsets, no resampling): order, λ, boxes and the weaker
    operand match the per-image kernels."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(10, 3, 20, 20, generator=g)
    bt = CropMixBatch(8, num_crops=(2, 3, 4), mix=mix, generator=g)
    bp = bt.make_params(10, 20, 20)
    offsets = torch.tensor([[0, 0], [12, 0], [0, 12], [12, 12]])
    bp["crops"] = torch.cat([offsets, torch.full((4, 2), 8)], 1).expand(10, 4, 4).clone()
    out = bt.transform(images, bp)
    for i in range(10):
        views = [images[i, :, t:t + 8, l:l + 8] for t, l in offsets.tolist()]
        expect = mix_views(views, _per_image_params(bp, i), mix)
        torch.testing.assert_close(out[i], expect, atol=2e-5, rtol=0)


def test_color_jitter_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    order = torch.rand(6, 4, generator=g).argsort(1)
    factors = torch.stack([0.6 + 0.8 * torch.rand(6, generator=g) for _ in range(3)]
                          + [0.2 * torch.rand(6, generator=g) - 0.1], 1)
    out = color_jitter(x, order, factors)
    for i in range(6):
        f = factors[i].tolist()
        params = dict(fn_idx=order[i], brightness_factor=f[0], contrast_factor=f[1], saturation_factor=f[2],
                      hue_factor=f[3])
        torch.testing.assert_close(out[i], augment_view(x[i], {"jitter": params}), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode,size", [("bilinear", (20, 24)), ("bilinear", (9, 7)), ("nearest", (20, 24)),
                                       ("nearest", (9, 7)), ("bicubic", (20, 24))])
def test_resized_crops_match_torchvision_without_antialiasing(mode, size):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 20, 24, generator=g)
    crops = CropMixBatch(num_crops=3, generator=g).make_params(40, 20, 24)["crops"]
    out = resized_crops(images, crops, size, mode)
    assert out.shape == (40, 3, 3, *size)
    for i in range(40):
        for k in range(3):
            top, left, h, w = crops[i, k].tolist()
            ref = TF.resized_crop(images[i], top, left, h, w, list(size), interpolation=v2.InterpolationMode(mode),
                                  antialias=False)
            if mode == "nearest":
                assert torch.equal(out[i, k], ref)
            else:  # bicubic too, up to the crop's edges (its taps are clamped to the crop, as resizing the crop)
                torch.testing.assert_close(out[i, k], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_uint8_crops_on_the_cpu_are_the_per_image_views_exactly(mode):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, 3, 40, 36), dtype=torch.uint8, generator=g)
    crops = CropMixBatch(num_crops=2, generator=g).make_params(12, 40, 36)["crops"]
    flip = torch.rand(12, 2, generator=g) < 0.5
    aten = resized_crops(images, crops, (24, 20), mode, antialias=True, flip=flip, backend="aten")
    matrix = resized_crops(images, crops, (24, 20), mode, antialias=True, flip=flip, backend="matrix")
    assert aten.dtype == matrix.dtype == torch.float32 and aten.shape == matrix.shape == (12, 2, 3, 24, 20)
    for i in range(12):
        for k in range(2):
            ref = TF.resized_crop(images[i], *crops[i, k].tolist(), [24, 20], interpolation=v2.InterpolationMode(mode),
                                  antialias=True)
            ref = TF.hflip(ref) if flip[i, k] else ref
            assert torch.equal((aten[i, k] * 255).round().to(torch.uint8), ref)
    diff = (aten - matrix.clamp(0, 1)).abs()
    if mode == "bilinear":  # ATen's uint8 kernel is fixed point: within one level of the exact weights
        assert diff.max() <= 1 / 255 + 1e-6
    else:  # it also clamps bicubic's overshoot between its two passes (the float matrices do not)
        assert diff.mean() < 1 / 255
    big = torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8, generator=g)  # "auto": ATen for large outputs
    boxes = torch.tensor([[[0, 0, 80, 80]], [[5, 9, 40, 50]]])
    auto = resized_crops(big, boxes, (64, 64), mode, True)
    assert torch.equal(auto, resized_crops(big, boxes, (64, 64), mode, True, backend="aten"))
    with pytest.raises(ValueError, match="backend"):
        resized_crops(images, crops, (24, 20), backend="pil")


# ------------------------------------------------------------------------------ the batched version
def test_batched_is_reproducible_under_a_generator_and_keeps_dtype():
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(num_crops=(2, 3, 4), inter_aug=("permute", "hflip", "colorjitter"), placement="both")
    a = cropmix_batch(x, generator=torch.Generator().manual_seed(1), **kw)
    b = cropmix_batch(x, generator=torch.Generator().manual_seed(1), **kw)
    c = cropmix_batch(x, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32
    u8 = cropmix_batch((x * 255).to(torch.uint8), (24, 16), mix="cutmix", generator=torch.Generator().manual_seed(1))
    assert u8.dtype == torch.uint8 and u8.shape == (16, 3, 24, 16)
    u8 = (x * 255).round().to(torch.uint8)
    plain = dict(num_crops=(2, 3, 4), inter_aug=("permute", "hflip"), placement="both")
    for mix in ("mixup", "cutmix"):  # uint8 (views rounded on the CPU, as per image) = float, rounded
        a8 = cropmix_batch(u8, mix=mix, generator=torch.Generator().manual_seed(5), **plain)
        af = cropmix_batch(u8.float() / 255, mix=mix, generator=torch.Generator().manual_seed(5), **plain)
        assert (a8.float() - (af * 255).round()).abs().max() <= 1  # half a level per view, half at the end
        a8 = cropmix_batch(u8, mix=mix, generator=torch.Generator().manual_seed(5), **kw)
        af = cropmix_batch(u8.float() / 255, mix=mix, generator=torch.Generator().manual_seed(5), **kw)
        diff = (a8.float() - (af * 255).round()).abs()  # colour jitter scales the views' rounding
        assert diff.mean() < 0.5 and diff.max() <= 8
    assert cropmix_batch(x.double(), 8).dtype == torch.float64
    assert cropmix_batch(x[:1], 8).shape == (1, 3, 8, 8)  # any batch size
    torch.manual_seed(4)  # generator=None: the global torch seed
    d = cropmix_batch(x, **kw)
    torch.manual_seed(4)
    assert torch.equal(d, cropmix_batch(x, **kw))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU"))])
def test_batched_runs_on_the_input_device(device):
    x = torch.rand(8, 3, 32, 32, device=device)
    out = cropmix_batch(x, 24, num_crops=(2, 3, 4), mix="cutmix", inter_aug=("permute", "colorjitter"),
                        placement="both", generator=torch.Generator().manual_seed(0))
    assert out.device == x.device and out.shape == (8, 3, 24, 24)
    ref = cropmix_batch(x.cpu(), 24, num_crops=(2, 3, 4), mix="cutmix", inter_aug=("permute", "colorjitter"),
                        placement="both", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=0)  # same draws on CPU and GPU


def test_batched_crops_read_only_inside_the_image():
    """Zero-padded outside, ones inside: a crop that read outside the image would show it."""
    bt = CropMixBatch(num_crops=(2, 3, 4), inter_aug=(), generator=torch.Generator().manual_seed(0))
    p = bt.make_params(400, 48, 64, 1)
    canvas = torch.zeros(400, 1, 50, 66)
    canvas[:, :, 1:49, 1:65] = 1.0
    crops = p["crops"].clone()
    crops[..., :2] += 1  # the same boxes in the padded canvas
    views = resized_crops(canvas, crops, (16, 16))
    torch.testing.assert_close(views, torch.ones_like(views))


@settings(max_examples=25, deadline=None)
# outputs >= 2 px: torch's uint8 bicubic antialiased resize to 1 px fails an internal assert (torch 2.14;
# v2.RandomResizedCrop(1, interpolation="bicubic") fails the same way)
@given(h=st.integers(4, 40), w=st.integers(4, 40), oh=st.integers(2, 24), ow=st.integers(2, 24),
       c=st.sampled_from([1, 3]), num_crops=st.sampled_from([1, 2, 5, (1, 3), (2, 3, 4)]),
       mix=st.sampled_from(["mixup", "cutmix"]), interpolation=st.sampled_from(["nearest", "bilinear", "bicubic"]),
       placement=st.sampled_from(["before", "after", "both"]), seed=st.integers(0, 2**16))
def test_any_shape_and_setting_gives_the_right_output(h, w, oh, ow, c, num_crops, mix, interpolation, placement, seed):
    kw = dict(num_crops=num_crops, mix=mix, interpolation=interpolation, placement=placement,
              inter_aug=("permute", "hflip", "vflip", "colorjitter"))
    torch.manual_seed(seed)
    image = _image(h, w, c, seed)
    out = CropMix((oh, ow), **kw)(image)
    assert out.shape == (c, oh, ow) and out.dtype == torch.uint8
    batch = torch.rand(3, c, h, w, generator=torch.Generator().manual_seed(seed))
    out = cropmix_batch(batch, (oh, ow), generator=torch.Generator().manual_seed(seed), **kw)
    assert out.shape == (3, c, oh, ow) and bool(torch.isfinite(out).all())
    if interpolation != "bicubic":  # convex mixes of [0, 1] images (bicubic may overshoot, as torchvision's)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-5


# ------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("kwargs,err,match", [
    (dict(scale=(0.0, 1.0)), ValueError, "scale"),
    (dict(scale=(0.5, 1.2)), ValueError, "scale"),
    (dict(scale=(0.8, 0.2)), ValueError, "scale"),
    (dict(scale=0.5), TypeError, "scale"),
    (dict(ratio=(2.0, 1.0)), ValueError, "ratio"),
    (dict(num_crops=0), ValueError, "num_crops"),
    (dict(num_crops=(2, 0)), ValueError, "num_crops"),
    (dict(num_crops=()), ValueError, "num_crops"),
    (dict(num_crops=(2, 2)), ValueError, "num_crops"),
    (dict(num_crops=2.0), TypeError, "num_crops"),
    (dict(mix="fmix"), ValueError, "mixup, cutmix"),
    (dict(interpolation="lanczos"), ValueError, "nearest, bilinear, bicubic"),
    (dict(inter_aug=("permute", "rotate")), ValueError, "permute, hflip, vflip, colorjitter"),
    (dict(inter_aug=5), TypeError, "inter_aug"),
    (dict(placement="during"), ValueError, "before, after, both"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(multi_scale="yes"), TypeError, "multi_scale"),
])
def test_bad_arguments_are_rejected(kwargs, err, match):
    with pytest.raises(err, match=match):
        CropMix(32, **kwargs)
    with pytest.raises(err, match=match):
        CropMixBatch(32, **kwargs)


def test_bad_sizes_and_images_are_rejected():
    for size in (0, (32, -1), "32", 32.0):
        with pytest.raises((TypeError, ValueError), match="size"):
            CropMix(size)
    with pytest.raises(TypeError, match="size"):
        rrc(None)
    with pytest.raises(ValueError, match="scale"):
        rrc(32, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="4 dims"):
        cropmix_batch(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        cropmix_batch(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="generator"):
        CropMixBatch(generator=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        scale_ranges((0.1, 1.0), 0)


def test_interpolation_enum_and_repr():
    t = CropMix(32, interpolation=v2.InterpolationMode.BICUBIC, num_crops=(2, 3, 4))
    assert t.interpolation == v2.InterpolationMode.BICUBIC
    r = repr(t)
    assert "num_crops=(2, 3, 4)" in r and "mix='mixup'" in r and "alpha=0.4" in r and "bicubic" in r
    assert "num_crops=2" in repr(CropMixBatch()) and "interpolation='bilinear'" in repr(CropMixBatch())
    with pytest.raises(TypeError):
        CropMix(32, 0.5)  # keyword-only after size


# ------------------------------------------------------------------------------ method and registry
def test_method_transform_preview_and_step():
    from mixlab.data import cifar_train_transform
    from mixlab.engine import build_optimizer, train_step
    from mixlab.engine.config import OptimConfig
    from mixlab.models import create_model

    method = build_method("cropmix", num_classes=10)
    assert isinstance(method, CropMixMethod) and method.cropmix.num_crops == (2,) and method.cropmix.alpha == 0.4
    assert method.cropmix.scale == (0.01, 1.0) and method.cropmix.inter_aug == ("permute",)
    t = method.train_transform(cifar_train_transform(size=32, padding=4, normalize=False))
    assert isinstance(t, v2.Compose) and isinstance(t.transforms[0], CropMix)
    assert isinstance(t.transforms[1], v2.RandomHorizontalFlip) and t.transforms[0].size == (32, 32)
    out = t(_image(32, 32))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert method.train_transform(None).transforms[0].size is None  # no default: keep the input size
    assert build_method("cropmix", 10, size=24).train_transform(None).transforms[0].size == (24, 24)

    model = create_model("resnet_small", num_classes=10)
    method.setup(model, torch.Generator().manual_seed(0))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    mixed = method.mix_preview(images, labels)
    assert mixed.images.shape == images.shape and not torch.equal(mixed.images, images)
    assert torch.equal(mixed.lam, torch.ones(4)) and torch.equal(mixed.index, torch.arange(4))
    assert torch.equal(mixed.targets.argmax(1), labels) and torch.equal(mixed.targets.sum(1), torch.ones(4))
    opt = build_optimizer(model, method, OptimConfig())
    step = train_step(model, method, opt, (images, labels), 0.0)
    assert torch.isfinite(step.loss) and step.mixed is not None and torch.equal(step.mixed.images, images)

    both = build_method("cropmix+cutmix", num_classes=10, label_smoothing=0.1)
    assert both.mixer is not None and both.name == "cropmix+cutmix"
    both.setup(model, torch.Generator().manual_seed(0))
    step = train_step(model, both, opt, (images, labels), 0.0)
    assert torch.isfinite(step.loss) and step.mixed.targets.shape == (4, 10)
    assert both.mix_preview(images, labels).targets.shape == (4, 10)
    jit = build_method("cropmix", 10, inter_aug=["permute", "colorjitter"], num_crops=[2, 3, 4])
    jit.setup(model, torch.Generator().manual_seed(0))
    assert jit.cropmix.num_crops == (2, 3, 4) and jit.mix_preview(images, labels).images.shape == images.shape


def test_registry_entries():
    for name in ("cropmix", "cropmix-cutmix", "rrc", "cropmix+cutmix", "cropmix+mixup"):
        spec = METHODS[name]
        assert spec.paper and spec.description
    assert build_method("cropmix-cutmix", 10).cropmix.mix == "cutmix"
    rrc_method = build_method("rrc", 10)
    assert isinstance(rrc_method, RRCMethod)
    crop = rrc_method.train_transform(v2.Compose([v2.RandomCrop(32, padding=4)])).transforms[0]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.scale == (0.08, 1.0) and crop.size == (32, 32)
    wide = build_method("rrc", 10, scale=[0.01, 1.0]).train_transform(v2.RandomCrop(32)).transforms[0]
    assert wide.scale == (0.01, 1.0)
    with pytest.raises(ValueError, match="hyper-parameter"):
        build_method("cropmix", 10, beta=1.0)
    with pytest.raises(ValueError, match="scale"):
        build_method("cropmix", 10, scale=(0.0, 1.0))


def test_lazy_export_does_not_import_torchvision():
    code = ("import sys, mixlab; assert 'torchvision' not in sys.modules; import mixlab.registry; "
            "assert 'torchvision' not in sys.modules; c = mixlab.CropMix(8); assert 'torchvision' in sys.modules; "
            "assert mixlab.CropMixBatch is not None")
    subprocess.run([sys.executable, "-c", code], check=True)
