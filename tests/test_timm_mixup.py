"""Specification of ``mixlab.TimmMixup``: timm's ``Mixup``, argument for argument and output for
output, on mixlab's kernels.

timm draws with NumPy's global RNG and mixlab with a torch.Generator, so the comparisons run
timm with a seeded NumPy, record every draw it makes (λ, the Mixup/CutMix switch, each box and
its corrected λ) and feed exactly those draws to ``TimmMixup.apply``. The sampler itself is
checked separately: the box formula against timm's ``rand_bbox`` for the same centres, and the
switch / probability / box-size statistics.
"""

import math

import pytest
import torch

from mixlab import TimmMixup
from mixlab.core.boxes import clipped_boxes

np = pytest.importorskip("numpy")
timm_mixup = pytest.importorskip("timm.data.mixup")

CONFIGS = [
    dict(mixup_alpha=0.8, cutmix_alpha=1.0),  # timm train.py's ImageNet recipe
    dict(mixup_alpha=0.0, cutmix_alpha=1.0),  # CutMix only
    dict(mixup_alpha=1.0, cutmix_alpha=0.0),  # Mixup only
    dict(mixup_alpha=0.8, cutmix_minmax=(0.2, 0.8)),  # minmax boxes (switch with Mixup)
    dict(mixup_alpha=0.8, cutmix_alpha=1.0, correct_lam=False, prob=0.7, switch_prob=0.3, label_smoothing=0.0),
]


def run_timm_recording(kwargs, x, y, seed, monkeypatch):
    """timm's Mixup on a copy of ``x`` with NumPy seeded; its output and its draws as TimmMixup params."""
    record = {"boxes": []}
    bbox, per_elem, per_batch = timm_mixup.cutmix_bbox_and_lam, timm_mixup.Mixup._params_per_elem, timm_mixup.Mixup._params_per_batch

    def spy_bbox(*args, **kw):
        out = bbox(*args, **kw)
        record["boxes"].append(out)
        return out

    def spy_elem(self, n):
        record["draws"] = per_elem(self, n)
        return record["draws"]

    def spy_batch(self):
        lam, cut = per_batch(self)
        record["draws"] = (np.array([lam]), np.array([cut]))
        return lam, cut

    with monkeypatch.context() as m:
        m.setattr(timm_mixup, "cutmix_bbox_and_lam", spy_bbox)
        m.setattr(timm_mixup.Mixup, "_params_per_elem", spy_elem)
        m.setattr(timm_mixup.Mixup, "_params_per_batch", spy_batch)
        np.random.seed(seed)
        x_timm, y_timm = timm_mixup.Mixup(**kwargs)(x.clone(), y)
    lam, use_cutmix = record["draws"]
    final, cut, boxes = np.array(lam, dtype=np.float64), np.zeros(len(lam), dtype=bool), np.zeros((len(lam), 4), np.int64)
    drawn = iter(record["boxes"])
    for i in range(len(lam)):
        if lam[i] != 1.0 and use_cutmix[i]:  # timm draws a box exactly for these, in this order
            (yl, yh, xl, xh), final[i] = next(drawn)
            boxes[i], cut[i] = (xl, yl, xh, yh), True
    params = {"lam": torch.tensor(final).float(), "cutmix": torch.from_numpy(cut), "boxes": torch.from_numpy(boxes)}
    return x_timm, y_timm, params


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("config", CONFIGS, ids=["switch", "cutmix", "mixup", "minmax", "no-correct"])
def test_same_draws_give_timms_output(mode, config, monkeypatch):
    kwargs = dict(mode=mode, num_classes=10, **config)
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.rand(8, 3, 20, 24, generator=g), torch.randint(0, 10, (8,), generator=g)
        x_timm, y_timm, params = run_timm_recording(kwargs, x, y, seed, monkeypatch)
        ours = TimmMixup(**kwargs).apply(x.clone(), y, params)
        cut_rows = TimmMixup(**kwargs).rows(params, 8)[1].expand(8)
        # CutMix rows: the same pixels bit for bit; Mixup rows: one lerp vs timm's two products
        assert torch.equal(ours[0][cut_rows], x_timm[cut_rows])
        torch.testing.assert_close(ours[0], x_timm, rtol=0, atol=3e-7)
        torch.testing.assert_close(ours[1], y_timm, rtol=0, atol=3e-7)
        assert ours[1].dtype == y_timm.dtype == torch.float32


def test_mixes_in_place_and_returns_x_as_timm():
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    mixup_fn = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=8, generator=torch.Generator().manual_seed(0))
    for _ in range(4):  # Mixup and CutMix batches
        before = x.clone()
        out, target = mixup_fn(x, y)
        assert out is x and target.shape == (8, 8)
    assert not torch.equal(x, before)
    kept = torch.rand(8, 3, 16, 16)
    copy = kept.clone()
    TimmMixup(num_classes=8, inplace=False)(kept, y)
    assert torch.equal(kept, copy)


def test_label_smoothing_values_are_timms():
    target = TimmMixup(mixup_alpha=1.0, prob=0.0, label_smoothing=0.1, num_classes=1000)(torch.rand(2, 3, 4, 4),
                                                                                         torch.tensor([3, 7]))[1]
    off = 0.1 / 1000
    assert target[0, 3] == torch.tensor(1 - 0.1 + off) and target[0, 0] == torch.tensor(off)
    assert torch.equal(target, timm_mixup.mixup_target(torch.tensor([3, 7]), 1000, 1.0, 0.1))


def test_multi_label_smooths_towards_one_half():
    dense = torch.tensor([[1.0, 0, 1], [0, 1, 1]])
    target = TimmMixup(mixup_alpha=1.0, prob=0.0, label_smoothing=0.2, num_classes=3, multi_label=True)(
        torch.rand(2, 3, 4, 4), dense)[1]
    assert torch.allclose(target, timm_mixup.mixup_target(dense, 3, 1.0, 0.2, multi_label=True))


def test_mixup_enabled_false_stops_mixing_as_timms_off_epoch():
    mixup_fn = TimmMixup(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=4, label_smoothing=0.0)
    mixup_fn.mixup_enabled = False
    x = torch.rand(4, 3, 8, 8)
    copy = x.clone()
    out, target = mixup_fn(x, torch.arange(4))
    assert torch.equal(out, copy) and torch.equal(target, torch.eye(4))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_odd_batches_work_with_the_middle_image_unmixed(mode):
    x, y = torch.rand(5, 3, 8, 8), torch.arange(5)
    r = TimmMixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode, num_classes=5, label_smoothing=0.0, inplace=False,
                  generator=torch.Generator().manual_seed(1))(x, y)
    assert torch.equal(r[0][2], x[2]) and torch.equal(r[1][2], torch.eye(5)[2])
    assert torch.allclose(r[1].sum(1), torch.ones(5))
    one = TimmMixup(num_classes=5)(torch.rand(1, 3, 8, 8), torch.tensor([4]))
    assert torch.equal(one.lam, torch.ones(1))


# ----------------------------------------------------------------------------- the sampler
def test_box_formula_is_timms_rand_bbox(monkeypatch):
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = int(rng.integers(4, 40)), int(rng.integers(4, 40))
        lam, cy, cx = float(rng.random()), int(rng.integers(0, h)), int(rng.integers(0, w))
        centres = iter([cy, cx])  # timm draws cy, then cx
        monkeypatch.setattr(np.random, "randint", lambda lo, hi, size=None: next(centres))
        yl, yh, xl, xh = timm_mixup.rand_bbox((3, h, w), lam)
        ours = clipped_boxes(torch.tensor([math.sqrt(1 - lam)], dtype=torch.float64), h, w,
                             centers=torch.tensor([[cx, cy]], dtype=torch.float64), exact_side=True)
        assert ours[0].tolist() == [xl, yl, xh, yh]


@pytest.mark.parametrize("config", CONFIGS, ids=["switch", "cutmix", "mixup", "minmax", "no-correct"])
def test_the_batch_box_in_python_is_the_tensor_box(config, monkeypatch):
    """Batch mode computes its one box in Python when the draws are host values; the tensor path
    (under torch.compile) makes the same parameters from the same draws."""
    for seed in range(20):
        host = TimmMixup(**config, generator=torch.Generator().manual_seed(seed)).make_params(8, 20, 24)
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            tensor = TimmMixup(**config, generator=torch.Generator().manual_seed(seed)).make_params(8, 20, 24)
        for key in ("lam", "cutmix", "boxes"):
            assert torch.equal(host[key], tensor[key]), key


def test_sampler_statistics():
    fn = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.25, mode="elem", num_classes=10,
                   generator=torch.Generator().manual_seed(0))
    p = fn.make_params(20000, 32, 32)
    mixed = p["lam"] < 1
    assert abs(float(mixed.float().mean()) - 0.6) < 0.015
    assert abs(float(p["cutmix"].float().mean()) - 0.6 * 0.25) < 0.015
    box_area = ((p["boxes"][:, 2] - p["boxes"][:, 0]) * (p["boxes"][:, 3] - p["boxes"][:, 1])).double() / 1024
    # corrected λ: timm's float32 of 1 - area / (H·W) computed in double
    assert torch.equal(p["lam"][p["cutmix"]], (1 - box_area[p["cutmix"]]).float())
    assert torch.all(box_area[~p["cutmix"]] == 0)


def test_minmax_boxes_have_uniform_sides_inside_the_image():
    fn = TimmMixup(mixup_alpha=0.0, cutmix_minmax=(0.25, 0.75), num_classes=10, generator=torch.Generator().manual_seed(0),
                   mode="elem")
    assert fn.cutmix_alpha == 1.0  # as timm: minmax forces CutMix on
    b = fn.make_params(20000, 32, 40)["boxes"]
    hs, ws = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    assert set(hs.tolist()) == set(range(8, 24)) and set(ws.tolist()) == set(range(10, 30))  # [int(a·S), int(b·S))
    assert torch.all(b[:, :2] >= 0) and torch.all(b[:, 2] <= 40) and torch.all(b[:, 3] <= 32)


def test_bad_arguments_raise_at_construction():
    with pytest.raises(ValueError, match="mixup_alpha > 0"):
        TimmMixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="mode"):
        TimmMixup(mode="sample")
    with pytest.raises(ValueError, match="cutmix_minmax"):
        TimmMixup(cutmix_minmax=(0.8, 0.2))
    with pytest.raises(ValueError, match="mixup_alpha"):
        TimmMixup(mixup_alpha=-1.0)
    with pytest.raises(ValueError, match="prob"):
        TimmMixup(prob=2.0)
