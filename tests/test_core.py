"""Specification of the shared mixing core: λ sampling, pairing, boxes, targets, losses."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mixlab.core import (
    BinaryCrossEntropy,
    SoftTargetCrossEntropy,
    box_area_fraction,
    boxes_to_mask,
    clipped_boxes,
    kept_fraction,
    mix_targets,
    mixed_cross_entropy,
    pair_index,
    rand_boxes,
    rand_boxes_inside,
    resize_into_boxes,
    sample_lambda,
    soft_targets,
)
from mixlab.core.boxes import clipped_box, rand_box
from mixlab.core.random import beta_sample, log_gamma_sample

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the KS tests (pip install -e .[test])")


# ----------------------------------------------------------------------------- λ sampling
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_small_alpha_beta_from_log_gammas(alpha):
    # Tiny α puts most mass within 1e-16 of 0 and 1, which no float can hold near 1; so check the
    # folded draw min(λ, 1-λ) = sigmoid(-|log G1 - log G2|), exact near 0, against 2·F_Beta(x).
    g = torch.Generator().manual_seed(3)
    folded = torch.sigmoid(-(log_gamma_sample(alpha, 20000, g) - log_gamma_sample(alpha, 20000, g)).abs()).numpy()
    p = scipy_stats.kstest(folded, lambda x: 2 * scipy_stats.beta.cdf(x, alpha, alpha)).pvalue
    assert p > 1e-3


@pytest.mark.parametrize("shape_param", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("n", [1, 2, 9, 200])
def test_gamma_rejection_keeps_the_first_accepted_candidates(shape_param, n):
    """The fixed-size rejection step equals Marsaglia-Tsang's loop over the same candidates."""
    a = shape_param + 1.0 if shape_param < 1 else shape_param
    d, m = a - 1 / 3, n + n // 8 + 8
    c = 1 / math.sqrt(9 * d)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(m, generator=g, dtype=torch.float64).tolist()
    u = torch.rand(m, generator=g, dtype=torch.float64).tolist()
    accepted = []
    for xi, ui in zip(x, u):
        if 1 + c * xi > 0:
            v = (1 + c * xi) ** 3
            if math.log(ui) < 0.5 * xi * xi + d - d * v + d * math.log(v):
                accepted.append(math.log(d * v))
    expected = torch.tensor(accepted[:n], dtype=torch.float64)
    if shape_param < 1:
        expected = expected + torch.log(torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-300)) / shape_param
    got = log_gamma_sample(shape_param, n, torch.Generator().manual_seed(n))
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_asymmetric_beta():
    lam = beta_sample(2.0, 0.5, 20000, torch.Generator().manual_seed(4), dtype=torch.float64).numpy()
    assert scipy_stats.kstest(lam, "beta", args=(2.0, 0.5)).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0, 8.0])
def test_lambda_follows_beta(alpha):
    g = torch.Generator().manual_seed(int(alpha * 100))
    lam = sample_lambda(20000, alpha, granularity="elem", generator=g).double().numpy()
    assert lam.min() >= 0 and lam.max() <= 1
    p = scipy_stats.kstest(lam, "beta", args=(alpha, alpha)).pvalue
    assert p > 1e-3, f"Beta({alpha},{alpha}) KS p-value {p}"


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_lambda_uniform(alpha):
    lam = sample_lambda(20000, alpha, "elem", "uniform", generator=torch.Generator().manual_seed(1)).numpy()
    assert scipy_stats.kstest(lam, "uniform", args=(0, alpha)).pvalue > 1e-3


def test_lambda_granularities():
    g = torch.Generator().manual_seed(0)
    batch = sample_lambda(7, 1.0, "batch", generator=g)
    assert batch.shape == (7,) and torch.all(batch == batch[0])
    elem = sample_lambda(7, 1.0, "elem", generator=g)
    assert len(set(elem.tolist())) == 7
    idx = pair_index(7, "flip")
    pair = sample_lambda(7, 1.0, "pair", index=idx, generator=g)
    assert torch.equal(pair, pair[idx])
    assert len(set(pair.tolist())) == 4  # 3 pairs + the middle image


def test_lambda_is_reproducible():
    a = sample_lambda(50, 0.3, "elem", generator=torch.Generator().manual_seed(5))
    b = sample_lambda(50, 0.3, "elem", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_lambda_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(4, alpha)


def test_lambda_rejects_bad_options():
    with pytest.raises(ValueError, match="granularity"):
        sample_lambda(4, 1.0, "sample")
    with pytest.raises(ValueError, match="pairing='flip'"):
        sample_lambda(4, 1.0, "pair", index=pair_index(4, "roll"))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sample_lambda(4, 2.0, distribution="uniform")


# ----------------------------------------------------------------------------- pairing
@pytest.mark.parametrize("b", [2, 3, 8, 9])
def test_pairings(b):
    ar = torch.arange(b)
    flip = pair_index(b, "flip")
    assert torch.equal(flip[flip], ar)
    assert torch.equal(flip, ar.flip(0))
    roll = pair_index(b, "roll")
    assert torch.equal(roll, ar.roll(1)) and not torch.any(roll == ar)
    for seed in range(20):
        rnd = pair_index(b, "random", torch.Generator().manual_seed(seed))
        assert torch.equal(rnd.sort().values, ar), "a permutation"
        assert not torch.any(rnd == ar), "no self-pairs"


def test_flip_on_odd_batch_pairs_middle_with_itself():
    assert pair_index(5, "flip")[2] == 2


def test_pairing_errors():
    with pytest.raises(ValueError, match="pairing"):
        pair_index(4, "shuffle")
    with pytest.raises(ValueError, match="batch_size"):
        pair_index(1, "roll")


# ----------------------------------------------------------------------------- boxes
def test_cutmix_boxes_have_the_asked_area_before_clipping():
    g = torch.Generator().manual_seed(0)
    area = torch.full((2000,), 0.25)
    boxes = rand_boxes(area, 64, 48, generator=g)
    assert boxes.dtype == torch.int64
    assert torch.all((boxes[:, 0] >= 0) & (boxes[:, 2] <= 48) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 64))
    frac = box_area_fraction(boxes, 64, 48)
    assert frac.max() <= 0.25 + 1e-6 and frac.max() >= 0.24  # unclipped boxes reach the full area
    mask = boxes_to_mask(boxes, 64, 48, dtype=torch.float32)
    assert torch.allclose(mask.mean(dim=(1, 2, 3)), frac)


def test_boxes_inside_never_clip():
    g = torch.Generator().manual_seed(0)
    side = torch.rand(1000, generator=g) * 0.9 + 0.1
    boxes = rand_boxes_inside(side, 20, 30, generator=g)
    assert torch.all(boxes[:, :2] >= 0) and torch.all((boxes[:, 2] <= 30) & (boxes[:, 3] <= 20))
    assert torch.equal(boxes[:, 3] - boxes[:, 1], (side * 20).round().long())
    assert torch.equal(boxes[:, 2] - boxes[:, 0], (side * 30).round().long())


@pytest.mark.parametrize("mode,torch_mode", [("nearest", "nearest-exact"), ("nearest-legacy", "nearest"),
                                             ("bilinear", "bilinear")])
def test_resize_into_boxes_matches_interpolate(mode, torch_mode):
    """'nearest' samples at pixel centres (interpolate's 'nearest-exact'); 'nearest-legacy' is
    interpolate's 'nearest' (openmixup's), half a source pixel off."""
    src = torch.rand(3, 2, 12, 16)
    boxes = torch.tensor([[2, 1, 10, 7], [0, 0, 16, 12], [5, 3, 9, 11]])
    canvas = resize_into_boxes(src, boxes, 12, 16, mode=mode)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ref = F.interpolate(src[i : i + 1], size=(y2 - y1, x2 - x1), mode=torch_mode)
        assert torch.allclose(canvas[i : i + 1, :, y1:y2, x1:x2], ref, atol=1e-5)


def test_legacy_nearest_gathers_are_interpolates_indices_at_every_size():
    for n_src in range(1, 40):
        src = torch.arange(n_src, dtype=torch.float32).view(1, 1, n_src, 1).expand(1, 1, n_src, 2)
        for n_dst in range(1, 60):
            ref = F.interpolate(src, size=(n_dst, 2), mode="nearest")
            out = resize_into_boxes(src, torch.tensor([[0, 0, 2, n_dst]]), 64, 2, mode="nearest-legacy")[:, :, :n_dst]
            assert torch.equal(out, ref), (n_src, n_dst)


def test_one_box_in_python_is_the_tensor_box_from_the_same_draws():
    for seed in range(300):
        area = float(torch.rand(1, generator=torch.Generator().manual_seed(10_000 + seed)))
        py = rand_box(area, 37, 29, torch.Generator().manual_seed(seed))
        tensor = rand_boxes(torch.tensor([area], dtype=torch.float64), 37, 29, generator=torch.Generator().manual_seed(seed))
        assert list(py) == tensor[0].tolist()
        side = area ** 0.5
        for exact in (False, True):
            py = clipped_box(side, 37, 29, torch.Generator().manual_seed(seed), exact_side=exact)
            tensor = clipped_boxes(torch.tensor([side]), 37, 29, generator=torch.Generator().manual_seed(seed), exact_side=exact)
            assert list(py) == tensor[0].tolist()


def test_kept_fraction_is_rounded_once():
    boxes = torch.tensor([[0, 0, 7, 3], [1, 2, 1, 9], [0, 0, 13, 11]])
    expected = torch.tensor([1 - 21 / 143, 1.0, 0.0], dtype=torch.float64).float()
    assert torch.equal(kept_fraction(boxes, 11, 13), expected)


# ----------------------------------------------------------------------------- targets and losses
def test_soft_targets_from_indices_and_probabilities():
    t = soft_targets(torch.tensor([0, 2]), 3)
    assert torch.equal(t, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    s = soft_targets(torch.tensor([0, 2]), 4, smoothing=0.2)
    assert torch.allclose(s[0], torch.tensor([0.85, 0.05, 0.05, 0.05]))
    assert torch.allclose(s.sum(1), torch.ones(2))
    p = torch.tensor([[0.5, 0.5, 0.0]])
    assert torch.equal(soft_targets(p, 3), p) and soft_targets(p, 3) is not p


def test_mix_targets():
    t = soft_targets(torch.tensor([0, 1]), 2)
    m = mix_targets(t, torch.tensor([1, 0]), torch.tensor([0.7, 0.2]))
    assert torch.allclose(m, torch.tensor([[0.7, 0.3], [0.8, 0.2]]))


def test_soft_target_cross_entropy_equals_cross_entropy_on_one_hot():
    logits, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    assert torch.allclose(SoftTargetCrossEntropy()(logits, F.one_hot(y, 7).float()), F.cross_entropy(logits, y))


def test_mixed_cross_entropy_equals_soft_ce_of_mixed_targets():
    logits = torch.randn(6, 5)
    ya, yb, lam = torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,)), torch.rand(6)
    mixed = lam[:, None] * F.one_hot(ya, 5) + (1 - lam[:, None]) * F.one_hot(yb, 5)
    assert torch.allclose(mixed_cross_entropy(logits, ya, yb, lam), SoftTargetCrossEntropy()(logits, mixed), atol=1e-6)


def test_binary_cross_entropy_threshold():
    logits = torch.randn(4, 3)
    targets = torch.tensor([[0.6, 0.4, 0.0]] * 4)
    plain = BinaryCrossEntropy()(logits, targets)
    assert torch.allclose(plain, F.binary_cross_entropy_with_logits(logits, targets))
    thr = BinaryCrossEntropy(target_threshold=0.2)(logits, targets)
    assert torch.allclose(thr, F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 1.0, 0.0]] * 4)))
    with pytest.raises(ValueError, match="target_threshold"):
        BinaryCrossEntropy(target_threshold=1.5)


def test_mixing_core_imports_with_torch_alone():
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import mixlab\n"
        "for m in (mixlab.CutMix(10), mixlab.Mixup(10, alpha=0.4), mixlab.TimmMixup(num_classes=10)):\n"
        "    r = m(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))\n"
        "new = [m for m in set(sys.modules) - before if not m.startswith('mixlab')]\n"
        "heavy = [m for m in new if m.split('.')[0] in ('torchvision', 'timm', 'matplotlib', 'PIL', 'yaml', 'numpy', 'sympy')]\n"
        "heavy += [m for m in new if m.startswith('torch._dynamo')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
