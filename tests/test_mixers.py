"""Specification of the stateless batch mixers.

Pixel bookkeeping uses distinguishable constant images: image i is filled with the value i + 1 and
has its own class i, so every output pixel says which source it came from, and the target weight
on class i must equal the fraction of output i's pixels that hold the value i + 1.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixlab
from mixlab import CutMix, FMix, MixCollate, Mixup, RandomChoice, ResizeMix, SaliencyMix

BOX_MIXERS = [CutMix, ResizeMix, FMix, SaliencyMix]
ALL_MIXERS = [Mixup, *BOX_MIXERS]


def make(cls, k=8, **kw):
    return cls(num_classes=k, generator=torch.Generator().manual_seed(kw.pop("seed", 0)), **kw)


def constant_batch(b, h=12, w=17, c=3):
    return torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, c, h, w).contiguous()


@pytest.mark.parametrize("cls", ALL_MIXERS)
@pytest.mark.parametrize("granularity,pairing", [("batch", "roll"), ("elem", "random"), ("pair", "flip"), ("elem", "flip")])
def test_targets_are_distributions(cls, granularity, pairing):
    x, y = torch.randn(7, 3, 16, 20), torch.randint(0, 5, (7,))
    r = make(cls, k=5, granularity=granularity, pairing=pairing)(x, y)
    assert r.targets.shape == (7, 5) and r.targets.dtype == torch.float32
    assert torch.allclose(r.targets.sum(1), torch.ones(7))
    assert torch.all(r.targets >= 0)
    assert r.lam.shape == (7,) and r.index.shape == (7,)


@pytest.mark.parametrize("cls", BOX_MIXERS)
@pytest.mark.parametrize("granularity", ["batch", "elem"])
@pytest.mark.parametrize("seed", range(3))
def test_target_weight_equals_exact_pixel_fraction(cls, granularity, seed):
    b = 6
    x = constant_batch(b)
    r = make(cls, k=b, granularity=granularity, seed=seed)(x, torch.arange(b))
    own = (r.images[:, 0] == x[:, 0, 0, 0].view(-1, 1, 1)).float().mean(dim=(1, 2))
    from_partner = (r.images[:, 0] == x[r.index, 0, 0, 0].view(-1, 1, 1)).float().mean(dim=(1, 2))
    assert torch.allclose(own + from_partner, torch.ones(b)), "every pixel comes from one of the two sources"
    assert torch.allclose(r.lam, own, atol=1e-6)
    assert torch.allclose(r.targets[torch.arange(b), torch.arange(b)], own, atol=1e-6)
    assert torch.allclose(r.targets[torch.arange(b), r.index], from_partner, atol=1e-6)
    assert torch.allclose(r.mask.mean(dim=(1, 2, 3)), own, atol=1e-6), "mask marks the own pixels"


def test_mixup_is_a_convex_combination():
    x, y = torch.randn(9, 3, 8, 10), torch.randint(0, 4, (9,))
    for gran, pairing in [("batch", "roll"), ("elem", "random"), ("pair", "flip")]:
        r = make(Mixup, k=4, alpha=0.7, granularity=gran, pairing=pairing)(x, y)
        lam = r.lam.view(-1, 1, 1, 1)
        assert torch.allclose(r.images, lam * x + (1 - lam) * x[r.index], atol=1e-6)
        onehot = torch.nn.functional.one_hot(y, 4).float()
        assert torch.allclose(r.targets, r.lam[:, None] * onehot + (1 - r.lam[:, None]) * onehot[r.index], atol=1e-6)


def test_resizemix_pastes_the_resized_partner():
    x = torch.rand(4, 3, 16, 16)
    r = make(ResizeMix, k=4, granularity="elem")(x, torch.arange(4))
    for i, (x1, y1, x2, y2) in enumerate(r.boxes.tolist()):
        ref = torch.nn.functional.interpolate(x[r.index[i]][None], size=(y2 - y1, x2 - x1), mode="nearest-exact")
        assert torch.allclose(r.images[i, :, y1:y2, x1:x2], ref[0])
        tau2 = (y2 - y1) * (x2 - x1) / 256
        assert math.isclose(float(r.lam[i]), 1 - tau2, abs_tol=1e-6)


def test_resizemix_scale_range():
    r = make(ResizeMix, k=4, granularity="elem", scale=(0.5, 0.5), box="inside")(torch.rand(4, 3, 20, 20), torch.arange(4))
    assert torch.allclose(r.lam, torch.full((4,), 0.75))


def test_fmix_masks_are_exact_and_low_frequency():
    b, h, w = 8, 32, 40
    mixer = make(FMix, k=b, granularity="elem", decay_power=3.0)
    r = mixer(constant_batch(b, h, w), torch.arange(b))
    k = (r.lam * h * w).round()
    assert torch.allclose(r.mask.sum(dim=(1, 2, 3)), k), "exactly round(λ·H·W) ones"
    # low-frequency: neighbouring pixels agree far more often than for white noise (~50 %)
    agree = (r.mask[..., 1:] == r.mask[..., :-1]).float().mean()
    assert agree > 0.85


@pytest.mark.parametrize("detector", ["fine_grained", "spectral_residual"])
def test_saliencymix_box_is_centred_on_the_partner_peak(detector):
    b = 6
    x = 0.2 * torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # faint texture
    for i in range(b):  # a small bright object at another place in each image
        x[i, :, 4 * i + 2:4 * i + 6, 20 - 2 * i:24 - 2 * i] = 1.0
    r = make(SaliencyMix, k=b, granularity="elem", alpha=1.0, detector=detector)(x, torch.arange(b))
    peaks = mixlab.mixers.saliency_peaks(x, detector)[r.index]  # the partner's peak
    # an unclipped box [c - cut//2, c + cut//2) has the peak at its centre (to the pixel)
    for side, (lo, hi) in ((0, (0, 2)), (1, (1, 3))):
        inside = (r.boxes[:, lo] > 0) & (r.boxes[:, hi] < 32)
        centre = (r.boxes[:, lo] + r.boxes[:, hi]).float() / 2
        assert torch.all((centre - peaks[:, side]).abs().le(0.5) | ~inside)


def test_saliency_peaks_find_the_object_on_a_flat_background():
    x = torch.full((2, 3, 32, 32), 0.3)
    x[0, :, 20:24, 4:8] = 1.0  # object at x 4..7, y 20..23
    x[1, :, 6:12, 18:26] = 0.9
    peaks = mixlab.mixers.saliency_peaks(x, "spectral_residual")
    assert 2 <= peaks[0, 0] <= 9 and 18 <= peaks[0, 1] <= 25, peaks[0]
    assert 16 <= peaks[1, 0] <= 27 and 4 <= peaks[1, 1] <= 13, peaks[1]
    # the fine-grained detector's centre-surround scales are coarse at 32 px (its peak can sit a few
    # pixels off the object, as OpenCV's: tests/test_saliency.py): the object is in its salient half
    sal = mixlab.core.saliency_map(x, "fine_grained")
    assert sal[0, 20:24, 4:8].mean() > sal[0].median() and sal[1, 6:12, 18:26].mean() > sal[1].median()


def openmixup_resizemix_areas(n, size, scale, seed):
    """Pasted area fractions of openmixup's ``resizemix`` (``rand_bbox_tao``), drawn directly in
    NumPy: τ ~ U(scale), cut = int(size·τ), a uniform integer centre, ``[c - cut//2, c + cut//2)``
    clipped to the image, on both axes."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    tau = rng.uniform(*scale, size=n)
    cut = (size * tau).astype(int)
    sides = []
    for _ in range(2):
        c = rng.integers(0, size, size=n)
        sides.append(np.clip(c + cut // 2, 0, size) - np.clip(c - cut // 2, 0, size))
    return sides[0] * sides[1] / size**2


def test_resizemix_default_box_is_openmixups_clipped_box():
    stats = pytest.importorskip("scipy.stats")
    x = torch.rand(4000, 1, 32, 32)
    r = make(ResizeMix, k=4, granularity="elem")(x, torch.zeros(4000, dtype=torch.long))
    ours = (1 - r.lam).double().numpy()
    reference = openmixup_resizemix_areas(40000, 32, (0.1, 0.8), seed=0)
    assert stats.ks_2samp(ours, reference).pvalue > 1e-3
    assert abs(ours.mean() - 0.160) < 0.01 and abs(reference.mean() - 0.160) < 0.005
    inside = make(ResizeMix, k=4, granularity="elem", box="inside")(x, torch.zeros(4000, dtype=torch.long))
    assert abs(float((1 - inside.lam).mean()) - 0.24) < 0.01, "the fully-inside option pastes ~τ²"


@pytest.mark.parametrize("box", ["clip", "inside"])
@pytest.mark.parametrize("granularity", ["batch", "elem"])
def test_resizemix_lambda_is_one_minus_the_pasted_area(box, granularity):
    b = 8
    for seed in range(5):
        r = make(ResizeMix, k=b, granularity=granularity, box=box, seed=seed)(constant_batch(b, 20, 28), torch.arange(b))
        pasted = (r.images[:, 0] != torch.arange(1, b + 1).view(-1, 1, 1)).float().mean(dim=(1, 2))
        area = ((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])).double() / (20 * 28)
        assert torch.equal(r.lam, (1 - area).float())
        assert torch.allclose(r.lam, 1 - pasted, atol=1e-6)


@pytest.mark.parametrize("interpolation,torch_mode", [("nearest", "nearest-exact"), ("nearest-legacy", "nearest"),
                                                      ("bilinear", "bilinear")])
def test_resizemix_interpolation_names_the_interpolate_mode(interpolation, torch_mode):
    x = torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    atol = 1e-4 if interpolation == "bilinear" else 0.0  # grid_sample's affine grid: float rounding
    for granularity in ("batch", "elem"):  # one interpolate call, or per-box gathers / grid_sample
        for seed in range(4):
            r = make(ResizeMix, k=6, granularity=granularity, interpolation=interpolation, seed=seed)(x, torch.arange(6))
            for i, (x1, y1, x2, y2) in enumerate(r.boxes.tolist()):
                if x2 > x1 and y2 > y1:
                    ref = torch.nn.functional.interpolate(x[r.index[i]][None], size=(y2 - y1, x2 - x1), mode=torch_mode)
                    torch.testing.assert_close(r.images[i, :, y1:y2, x1:x2], ref[0], rtol=0, atol=atol)


def test_fmix_spectrum_spans_both_axes():
    """The paper's 1/f^δ spectrum on the full 2-D grid: unlike the official code's masks, whose
    x-axis holds only the fundamental, power reaches the higher x-frequencies too."""
    noise = mixlab.mixers.fmix.low_frequency_noise(500, 32, 48, 3.0, torch.Generator().manual_seed(0))
    power = torch.fft.fft2(noise - noise.mean(dim=(1, 2), keepdim=True)).abs().pow(2).mean(0)
    along_x, along_y = power.sum(0) / power.sum(), power.sum(1) / power.sum()
    # the official masks hold exactly 0 there (measured: < 1e-30); the 1/f^6 power makes it ~1 %
    assert along_x[2:24].sum() > 1e-3 and along_y[2:16].sum() > 1e-3


# ----------------------------------------------------------------------------- API guarantees
@pytest.mark.parametrize("cls", ALL_MIXERS)
def test_reproducible_under_a_generator(cls):
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 8, (8,))
    a = make(cls, granularity="elem", pairing="random", seed=7)(x, y)
    b = make(cls, granularity="elem", pairing="random", seed=7)(x, y)
    c = make(cls, granularity="elem", pairing="random", seed=8)(x, y)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)


def test_global_seed_reproduces_without_generator():
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 8, (8,))
    torch.manual_seed(3)
    a = CutMix(8, granularity="elem")(x, y)
    torch.manual_seed(3)
    b = CutMix(8, granularity="elem")(x, y)
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize("cls", ALL_MIXERS)
def test_caller_tensors_untouched_unless_inplace(cls):
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 8, (6,))
    x0, y0 = x.clone(), y.clone()
    r = make(cls)(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert r.images.data_ptr() != x.data_ptr()
    r2 = make(cls, inplace=True)(x, y)
    assert r2.images.data_ptr() == x.data_ptr()
    assert torch.equal(r2.images, make(cls)(x0, y0).images)


@pytest.mark.parametrize("cls", ALL_MIXERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_and_memory_format_kept(cls, dtype):
    x = torch.randn(6, 3, 16, 24).to(dtype).contiguous(memory_format=torch.channels_last)
    r = make(cls, granularity="elem")(x, torch.randint(0, 8, (6,)))
    assert r.images.dtype == dtype
    assert r.images.is_contiguous(memory_format=torch.channels_last)
    assert r.images.shape == x.shape
    assert torch.allclose(r.targets.sum(1), torch.ones(6))


def test_mixup_lambda_is_the_one_applied_in_low_precision():
    x = torch.randn(6, 3, 4, 4).to(torch.bfloat16)
    r = make(Mixup, granularity="elem")(x, torch.arange(6))
    lam = r.lam.to(torch.bfloat16)
    assert torch.equal(r.lam, lam.float())


@pytest.mark.parametrize("cls", ALL_MIXERS)
def test_probability_labels_chain(cls):
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 8, (6,))
    first = make(CutMix)(x, y)
    second = make(cls, seed=1)(first.images, first.targets)
    assert torch.allclose(second.targets.sum(1), torch.ones(6))


def test_label_smoothing_before_mixing():
    r = make(Mixup, k=4, label_smoothing=0.1)(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(r.targets[:, 0], torch.full((4,), 0.925))


def test_pairs_view():
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 8, (6,))
    r = make(CutMix, granularity="elem")(x, y)
    ya, yb, lam = r.pairs()
    assert torch.allclose(lam[:, None] * ya + (1 - lam[:, None]) * yb, r.targets)


def test_apply_probability():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    never = make(Mixup, p=0.0)(x, y)
    assert never.images is x and torch.all(never.lam == 1)
    assert torch.equal(never.targets, torch.nn.functional.one_hot(y, 8).float())
    g = torch.Generator().manual_seed(0)
    half = Mixup(8, p=0.5, generator=g)
    mixed = sum(float(half(x, y).lam[0]) < 1 for _ in range(400))
    assert 160 < mixed < 240


def test_random_choice_follows_probabilities():
    a, b = Mixup(4, alpha=0.8), CutMix(4)
    switch = RandomChoice([a, b], probabilities=[0.25, 0.75], generator=torch.Generator().manual_seed(0))
    assert a.generator is switch.generator and b.generator is switch.generator
    picks = [switch.choose() for _ in range(2000)]
    frac_cutmix = sum(p is b for p in picks) / len(picks)
    assert abs(frac_cutmix - 0.75) < 0.04
    r = switch(torch.randn(4, 3, 8, 8), torch.arange(4))
    assert torch.allclose(r.targets.sum(1), torch.ones(4))


def test_random_choice_apply_probability_zero_passes_through():
    switch = RandomChoice([Mixup(4), CutMix(4)], p=0.0)
    x = torch.randn(4, 3, 8, 8)
    assert switch(x, torch.arange(4)).images is x


@pytest.mark.parametrize("cls", ALL_MIXERS)
@pytest.mark.parametrize("b", [2, 3, 5])
def test_small_and_odd_batches(cls, b):
    x, y = constant_batch(b, 8, 8), torch.arange(b)
    for pairing in ("roll", "random", "flip"):
        r = make(cls, k=b, pairing=pairing, granularity="elem")(x, y)
        assert torch.allclose(r.targets.sum(1), torch.ones(b))
    r = make(cls, k=b, pairing="flip")(x, y)
    if b % 2:
        mid = b // 2
        assert r.targets[mid, mid] == 1.0, "flip on an odd batch mixes the middle image with itself"


def test_mix_collate_in_a_dataloader():
    data = [(torch.randn(3, 8, 8), i % 4) for i in range(16)]
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=MixCollate(CutMix(4)))
    images, targets = next(iter(loader))
    assert images.shape == (8, 3, 8, 8) and targets.shape == (8, 4)
    assert torch.allclose(targets.sum(1), torch.ones(8))


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(2, 9),
    h=st.integers(4, 24),
    w=st.integers(4, 24),
    alpha=st.floats(0.05, 5.0),
    gran=st.sampled_from(["batch", "elem"]),
    pairing=st.sampled_from(["roll", "flip", "random"]),
    which=st.integers(0, len(BOX_MIXERS) - 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_exact_fraction_any_shape(b, h, w, alpha, gran, pairing, which, seed):
    cls = BOX_MIXERS[which]
    kw = {} if cls is ResizeMix else {"alpha": alpha}
    r = make(cls, k=b, granularity=gran, pairing=pairing, seed=seed, **kw)(constant_batch(b, h, w), torch.arange(b))
    own = (r.images[:, 0] == torch.arange(1, b + 1).view(-1, 1, 1)).float().mean(dim=(1, 2))
    assert torch.allclose(r.targets.sum(1), torch.ones(b), atol=1e-6)
    assert torch.allclose(r.targets[torch.arange(b), torch.arange(b)], own, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", ALL_MIXERS)
def test_bad_inputs_raise_before_any_output(cls):
    m = make(cls, k=4, check_finite=True)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    x0 = x.clone()
    cases = [
        (torch.randn(3, 8, 8), y, ValueError, "4 dims"),
        (torch.randn(0, 3, 8, 8), y[:0], ValueError, "at least 1"),
        (x, y[:3], ValueError, "3 != 4"),
        (x, torch.tensor([0, 1, 2, 4]), ValueError, r"\[0, 4\)"),
        (x, torch.tensor([0, 1, -1, 3]), ValueError, r"\[0, 4\)"),
        (x, torch.full((4, 4), -0.1), ValueError, "non-negative"),
        (x, torch.full((4, 4), float("nan")), ValueError, "NaN"),
        (x, torch.full((4, 5), 0.2), ValueError, "width"),
        (x, torch.zeros(4, 4, 1), ValueError, "shape"),
        (x.to(torch.int16), y, TypeError, "uint8"),
        (x, y.float(), TypeError, "integer"),
        ("images", y, TypeError, "torch.Tensor"),
        (x, "labels", TypeError, "torch.Tensor"),
        (torch.full((4, 3, 8, 8), float("nan")), y, ValueError, "NaN"),
    ]
    for images, labels, err, msg in cases:
        with pytest.raises(err, match=msg):
            m(images, labels)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("cls", [Mixup, CutMix, FMix, SaliencyMix])
@pytest.mark.parametrize("alpha", [0, -0.5, float("nan")])
def test_bad_alpha(cls, alpha):
    with pytest.raises(ValueError, match="alpha"):
        cls(4, alpha=alpha)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="p must be in"):
        Mixup(4, p=1.5)
    with pytest.raises(ValueError, match="p must be in"):
        CutMix(4, p=-0.1)
    with pytest.raises(ValueError, match="num_classes"):
        Mixup(0)
    with pytest.raises(TypeError, match="num_classes"):
        Mixup(4.0)
    with pytest.raises(ValueError, match="pairing"):
        Mixup(4, pairing="shuffle")
    with pytest.raises(ValueError, match="granularity"):
        Mixup(4, granularity="sample")
    with pytest.raises(ValueError, match="pairing='flip'"):
        Mixup(4, granularity="pair", pairing="roll")
    with pytest.raises(ValueError, match="scale"):
        ResizeMix(4, scale=(0.0, 0.5))
    with pytest.raises(ValueError, match="interpolation"):
        ResizeMix(4, interpolation="cubic")
    with pytest.raises(ValueError, match="decay_power"):
        FMix(4, decay_power=0)
    with pytest.raises(ValueError, match="non-empty"):
        RandomChoice([])
    with pytest.raises(ValueError, match="sum to 1"):
        RandomChoice([Mixup(4), CutMix(4)], probabilities=[0.5, 0.6])
    with pytest.raises(ValueError, match="one entry per mixer"):
        RandomChoice([Mixup(4), CutMix(4)], probabilities=[1.0])
    with pytest.raises(ValueError, match="same num_classes"):
        RandomChoice([Mixup(4), CutMix(5)])
    with pytest.raises(TypeError, match="generator"):
        Mixup(4, generator=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", ALL_MIXERS)
def test_runs_on_gpu(cls):
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 8, (8,), device="cuda")
    r = make(cls, granularity="elem")(x, y)
    assert r.images.device == x.device and r.targets.device == x.device
    cpu = make(cls, granularity="elem")(x.cpu(), y.cpu())
    assert torch.allclose(r.lam.cpu(), cpu.lam, atol=1e-6) or cls is FMix
