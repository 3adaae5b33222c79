"""Specification: the mixers accept and return what torchvision v2, timm and kornia do.

Inputs that require grad, ``tv_tensors.Image``, a batch of one, multi-label targets, uint8
images, the packed ``(images, labels)`` pair; a result that indexes as the tuple those libraries
return; a per-image Mixup/CutMix switch; importable submodules.
"""

import importlib
import pickle

import pytest
import torch
import torch.nn.functional as F

import mixlab
from mixlab import CutMix, FMix, MixCollate, MixResult, Mixup, RandomChoice, ResizeMix, SaliencyMix

BOX_MIXERS = [CutMix, ResizeMix, FMix, SaliencyMix]
ALL_MIXERS = [Mixup, *BOX_MIXERS]
GRANULARITIES = ["batch", "elem"]


def make(cls, k=8, seed=0, **kw):
    return cls(num_classes=k, generator=torch.Generator().manual_seed(seed), **kw)


def switch(k=8, granularity="batch", seed=0, **kw):
    """DeiT's / timm's Mixup-CutMix switch, per batch or per image."""
    return RandomChoice([Mixup(k, alpha=0.8, granularity=granularity), CutMix(k, granularity=granularity)],
                        generator=torch.Generator().manual_seed(seed), granularity=granularity, **kw)


def every_mixer(k=8, granularity="batch", label_smoothing=0.0):
    """One of each mixer, RandomChoice and TimmMixup included, as (name, mixer) pairs."""
    pairs = [(cls.__name__, make(cls, k, granularity=granularity, label_smoothing=label_smoothing)) for cls in ALL_MIXERS]
    pairs.append(("RandomChoice", RandomChoice(
        [Mixup(k, alpha=0.8, granularity=granularity, label_smoothing=label_smoothing),
         CutMix(k, granularity=granularity, label_smoothing=label_smoothing)],
        generator=torch.Generator().manual_seed(0), granularity=granularity)))
    pairs.append(("TimmMixup", mixlab.TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=k, mode=granularity,
                                                label_smoothing=label_smoothing, generator=torch.Generator().manual_seed(0))))
    return pairs


def constant_batch(b, h=12, w=16, c=3, dtype=torch.float32):
    return torch.arange(1, b + 1, dtype=dtype).view(b, 1, 1, 1).expand(b, c, h, w).contiguous()


# ----------------------------------------------------------------------------- 1. autograd
@pytest.mark.parametrize("cls", ALL_MIXERS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_inputs_that_require_grad_are_mixed_differentiably(cls, granularity):
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    r = make(cls, granularity=granularity)(x, torch.arange(6))
    assert r.images.requires_grad
    r.images.sum().backward()
    # every output pixel is a convex combination of two input pixels: the gradient sums to the pixel count
    assert x.grad.shape == x.shape and torch.isclose(x.grad.sum(), torch.tensor(float(x.numel())), rtol=1e-5)


@pytest.mark.parametrize("cls", [Mixup, CutMix])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gradcheck_in_float64(cls, granularity):
    y = torch.arange(4)

    def fn(x):  # the same draws at every call
        return make(cls, k=4, granularity=granularity, seed=3)(x, y).images

    x = torch.rand(4, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))


def test_inplace_is_honoured_without_grad_and_ignored_with_it():
    x = torch.rand(4, 3, 8, 8)
    assert make(Mixup, inplace=True)(x, torch.arange(4)).images.data_ptr() == x.data_ptr()
    leaf = torch.rand(4, 3, 8, 8, requires_grad=True)
    r = make(Mixup, inplace=True)(leaf, torch.arange(4))  # autograd needs the original: out of place
    assert r.images.data_ptr() != leaf.data_ptr()


# ----------------------------------------------------------------------------- 2. tv_tensors
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_tv_tensor_image_in_image_out(granularity):
    tv_tensors = pytest.importorskip("torchvision.tv_tensors")
    x = tv_tensors.Image(torch.rand(6, 3, 16, 16))
    for name, mixer in every_mixer(granularity=granularity):
        r = mixer(x, torch.arange(6))
        assert type(r.images) is tv_tensors.Image and type(r[0]) is tv_tensors.Image, name
        assert type(r.targets) is torch.Tensor, name


def test_tv_tensor_unmixed_batch_is_returned_as_is():
    tv_tensors = pytest.importorskip("torchvision.tv_tensors")
    x = tv_tensors.Image(torch.rand(4, 3, 8, 8))
    assert make(CutMix, p=0.0)(x, torch.arange(4)).images is x


# ----------------------------------------------------------------------------- 3. a batch of one
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_batch_of_one_passes_through_unmixed(granularity):
    x = torch.rand(1, 3, 8, 8)
    for name, mixer in every_mixer(k=5, granularity=granularity, label_smoothing=0.1):
        r = mixer(x, torch.tensor([2]))
        assert torch.equal(r.images, x), name
        assert torch.equal(r.lam, torch.ones(1)) and torch.equal(r.index, torch.zeros(1, dtype=torch.long)), name
        expected = torch.full((1, 5), 0.02)
        expected[0, 2] = 0.92
        assert torch.allclose(r.targets, expected), name


def test_last_batch_of_one_in_a_dataloader():
    data = [(torch.rand(3, 8, 8), i % 4) for i in range(9)]  # 9 = 4 + 4 + 1
    loader = torch.utils.data.DataLoader(data, batch_size=4, drop_last=False, collate_fn=MixCollate(CutMix(4)))
    sizes = [images.shape[0] for images, _ in loader]
    assert sizes == [4, 4, 1]


# ----------------------------------------------------------------------------- 4. multi-label targets
@pytest.mark.parametrize("cls", ALL_MIXERS)
def test_multi_hot_targets_are_mixed_linearly(cls):
    y = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]])  # rows sum to 2, 3, 0, 2, 1
    r = make(cls, k=4, granularity="elem")(torch.rand(5, 3, 8, 8), y)
    lam = r.lam[:, None]
    assert torch.allclose(r.targets, lam * y + (1 - lam) * y[r.index], atol=1e-6)


# ----------------------------------------------------------------------------- 5. uint8 images
@pytest.mark.parametrize("cls", BOX_MIXERS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_uint8_box_and_mask_mixers_paste_exact_pixels(cls, granularity):
    b = 6
    x = constant_batch(b, dtype=torch.uint8) * 40
    r = make(cls, k=b, granularity=granularity)(x, torch.arange(b))
    assert r.images.dtype == torch.uint8
    own = (r.images[:, 0] == x[:, 0, :1, :1]).float().mean(dim=(1, 2))
    partner = (r.images[:, 0] == x[r.index, 0, :1, :1]).float().mean(dim=(1, 2))
    assert torch.allclose(own + partner, torch.ones(b)), "every pixel is copied from one of the two images"
    assert torch.allclose(r.lam, own, atol=1e-6)


def _timm_fast_collate(mode, lam, images, labels, monkeypatch):
    """timm's FastCollateMixup on a list of uint8 samples, with its λ draw replaced by ``lam``."""
    mixup = pytest.importorskip("timm.data.mixup")
    import numpy as np

    if mode == "batch":
        monkeypatch.setattr(mixup.FastCollateMixup, "_params_per_batch", lambda self: (float(lam[0]), False))
    else:
        monkeypatch.setattr(mixup.FastCollateMixup, "_params_per_elem",
                            lambda self, n: (np.asarray(lam[:n], dtype=np.float32), np.zeros(n, dtype=bool)))
    fn = mixup.FastCollateMixup(mixup_alpha=1.0, mode=mode, label_smoothing=0.0, num_classes=10)
    return fn([(img, int(t)) for img, t in zip(images, labels)])


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_uint8_mixup_rounds_like_timm_fast_collate(mode, monkeypatch):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    lam = torch.rand(8, generator=g) if mode == "elem" else torch.rand(1, generator=g).expand(8)
    timm_images, _ = _timm_fast_collate(mode, lam.tolist(), images, labels, monkeypatch)
    ours = mixlab.mixers.mixup_images(images, mixlab.core.pair_index(8, "flip"), lam if mode == "elem" else lam[:1],
                                      pairing="flip")
    assert ours.dtype == torch.uint8
    assert torch.equal(ours, timm_images)


def test_uint8_mixup_reports_the_weight_it_used():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    r = make(Mixup, granularity="elem")(x, torch.arange(6))
    lam = r.lam.view(-1, 1, 1, 1)
    exact = lam * x.float() + (1 - lam) * x[r.index].float()
    assert r.images.dtype == torch.uint8 and (r.images.float() - exact).abs().max() <= 0.5 + 1e-4


def test_mix_collate_in_a_uint8_pipeline():
    data = [(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), i % 4) for i in range(8)]
    for mixer in (switch(4, "elem"), Mixup(4), CutMix(4)):
        images, targets = MixCollate(mixer)(data)
        assert images.dtype == torch.uint8 and targets.shape == (8, 4)
        assert torch.allclose(targets.sum(1), torch.ones(8))


# ----------------------------------------------------------------------------- 6. packed input
@pytest.mark.parametrize("pack", [tuple, list])
def test_packed_images_and_labels(pack):
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    for name, mixer in every_mixer()[:-1]:  # TimmMixup keeps timm's two-argument call
        a = mixer(pack([x, y]))
        assert a.images.shape == x.shape and a.targets.shape == (4, 8), name


def test_packed_input_in_a_collate_fn():
    data = [(torch.rand(3, 8, 8), i % 4) for i in range(8)]
    mixer = CutMix(4)
    loader = torch.utils.data.DataLoader(data, batch_size=4,
                                         collate_fn=lambda b: mixer(torch.utils.data.default_collate(b)))
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and targets.shape == (4, 4)


def test_packed_input_gives_the_same_mix_as_two_arguments():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    assert torch.equal(make(CutMix, seed=5)((x, y)).images, make(CutMix, seed=5)(x, y).images)


def test_missing_labels_is_a_type_error():
    with pytest.raises(TypeError, match="labels"):
        make(Mixup)(torch.rand(4, 3, 8, 8))


# ----------------------------------------------------------------------------- 7. the result is a pair
def test_result_indexes_like_torchvisions_tuple():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    r = make(CutMix, granularity="elem")(x, y)
    assert isinstance(r, tuple) and len(r) == 2
    images, targets = r
    assert images is r[0] is r.images and targets is r[1] is r.targets
    assert r.lam.shape == (4,) and r.index.shape == (4,) and r.boxes.shape == (4, 4) and r.mask.shape == (4, 1, 8, 8)
    assert r.source_targets.shape == (4, 8) and r.partner_targets is None
    ya, yb, lam = r.pairs()
    assert torch.allclose(lam[:, None] * ya + (1 - lam[:, None]) * yb, targets)


def test_result_replace_and_attribute_writes():
    r = make(CutMix, granularity="elem")(torch.rand(4, 3, 8, 8), torch.arange(4))
    r.index = torch.arange(4)  # bookkeeping attributes stay writable (RecursiveMix's preview does this)
    assert torch.equal(r.index, torch.arange(4))
    s = r.replace(images=r.images * 2)
    assert isinstance(s, MixResult) and torch.equal(s[0], r[0] * 2) and s[1] is r[1] and s.boxes is r.boxes
    with pytest.raises(AttributeError):
        r.images = r.images  # the pair itself is immutable, as a tuple
    with pytest.raises(TypeError, match="fields"):
        r.replace(colour=1)


def test_result_pickles_for_dataloader_workers():
    r = make(FMix, granularity="elem")(torch.rand(4, 3, 8, 8), torch.arange(4))
    s = pickle.loads(pickle.dumps(r))
    assert isinstance(s, MixResult)
    for a, b in [(s[0], r[0]), (s[1], r[1]), (s.lam, r.lam), (s.index, r.index), (s.mask, r.mask)]:
        assert torch.equal(a, b)


def test_result_survives_the_dataloaders_pinning(monkeypatch):
    """DataLoader(pin_memory=True) rebuilds tuples by type; MixResult pins each field instead."""
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: self.clone())  # no accelerator here
    r = make(CutMix, granularity="elem")(torch.rand(4, 3, 8, 8), torch.arange(4))
    pinned = pin_memory(r)
    assert isinstance(pinned, MixResult) and torch.equal(pinned.boxes, r.boxes) and torch.equal(pinned[0], r[0])


# ----------------------------------------------------------------------------- 8. per-image switch
def test_per_image_choice_takes_each_row_from_its_mixer():
    b, x, y = 16, constant_batch(16), torch.arange(16)
    rc = switch(16, "elem", seed=4, p=0.8)
    r = rc(x, y)
    # replay the draws: the choice, then each candidate's own call
    rc.generator.manual_seed(4)
    choice = rc.draw_choice(b)
    alone = [m(x, y) for m in rc.mixers]
    assert set(choice.tolist()) == {-1, 0, 1}, "this seed exercises all three cases"
    for i, k in enumerate(choice.tolist()):
        if k < 0:
            assert torch.equal(r.images[i], x[i]) and r.lam[i] == 1 and r.index[i] == i
            assert torch.equal(r.targets[i], F.one_hot(y[i], 16).float())
            continue
        src = alone[k]
        assert torch.equal(r.images[i], src.images[i]) and torch.equal(r.targets[i], src.targets[i])
        assert r.lam[i] == src.lam[i] and r.index[i] == src.index[i]


def test_per_image_choice_follows_the_probabilities():
    rc = RandomChoice([Mixup(4, granularity="elem"), CutMix(4, granularity="elem")], probabilities=[0.3, 0.7],
                      p=0.9, granularity="elem", generator=torch.Generator().manual_seed(0))
    choice = rc.draw_choice(20000)
    assert abs(float((choice == -1).float().mean()) - 0.1) < 0.01
    assert abs(float((choice == 1).float().mean()) - 0.9 * 0.7) < 0.015


def test_per_image_choice_reports_boxes_only_when_all_candidates_have_them():
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6)
    boxy = RandomChoice([CutMix(6, granularity="elem"), ResizeMix(6, granularity="elem")], granularity="elem")(x, y)
    assert boxy.boxes.shape == (6, 4) and boxy.mask.shape == (6, 1, 8, 8)
    masky = RandomChoice([CutMix(6, granularity="elem"), FMix(6, granularity="elem")], granularity="elem")(x, y)
    assert masky.boxes is None and torch.allclose(masky.mask.mean(dim=(1, 2, 3)), masky.lam, atol=1e-6)
    mixed = switch(6, "elem")(x, y)
    assert mixed.boxes is None and mixed.mask is None


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_host_and_tensor_choice_paths_agree(granularity, monkeypatch):
    """The per-batch choice runs one mixer when the choice is a host value, else selects by
    tensor ops (as under torch.compile): same images, targets, λ and index."""
    x, y = torch.rand(8, 3, 12, 12), torch.randint(0, 8, (8,))
    for seed in range(6):
        host = switch(8, granularity, seed=seed, p=0.7)(x, y)
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)  # draws through the custom op, selection by tensors
            tensor = switch(8, granularity, seed=seed, p=0.7)(x, y)
        for a, b in [(host[0], tensor[0]), (host[1], tensor[1]), (host.lam, tensor.lam), (host.index, tensor.index)]:
            assert torch.equal(a, b)


def test_the_host_choice_is_the_tensor_choice_from_the_same_draws():
    rc = RandomChoice([Mixup(4), CutMix(4), FMix(4)], probabilities=[0.2, 0.5, 0.3], p=0.9)
    for seed in range(500):
        rc.generator = torch.Generator().manual_seed(seed)
        host = rc._host_choice()
        rc.generator.manual_seed(seed)
        assert host == int(rc.draw_choice(1)[0])


def test_per_image_choice_never_writes_into_the_callers_images():
    x, y = torch.rand(8, 3, 12, 12), torch.arange(8)
    copy = x.clone()

    def candidates(inplace):
        return [Mixup(8, granularity="elem", inplace=inplace), CutMix(8, granularity="elem", inplace=inplace)]

    ours = RandomChoice(candidates(True), granularity="elem", generator=torch.Generator().manual_seed(0))(x, y)
    assert torch.equal(x, copy), "every candidate reads the same input"
    plain = RandomChoice(candidates(False), granularity="elem", generator=torch.Generator().manual_seed(0))(x, y)
    assert torch.equal(ours.images, plain.images) and torch.equal(ours.targets, plain.targets)


def test_random_choice_accepts_only_mixlab_mixers():
    with pytest.raises(TypeError, match="Mixer"):
        RandomChoice([lambda x, y: (x, y)])
    with pytest.raises(ValueError, match="granularity"):
        RandomChoice([Mixup(4)], granularity="pair")


# ----------------------------------------------------------------------------- 10. module names
@pytest.mark.parametrize("name", ["cutmix", "mixup", "resizemix", "fmix", "saliencymix", "choice", "timm_compat"])
def test_submodules_are_not_shadowed_by_functions(name):
    module = importlib.import_module(f"mixlab.mixers.{name}")
    assert type(module).__name__ == "module"
    assert getattr(mixlab.mixers, name) is module


def test_functional_kernels_are_exported():
    from mixlab.mixers import cutmix_images, mixup_images, resizemix_images

    x, index = constant_batch(4), torch.tensor([3, 2, 1, 0])
    assert torch.equal(mixup_images(x, index, torch.tensor([0.5])), (x + x.flip(0)) / 2)
    pasted = cutmix_images(x, index, (0, 0, 4, 4))
    assert torch.equal(pasted[:, :, :4, :4], x.flip(0)[:, :, :4, :4]) and torch.equal(pasted[:, :, 4:], x[:, :, 4:])
    assert torch.equal(resizemix_images(x, index, (0, 0, 16, 12)), x.flip(0))
