"""Specification: a mixer call never waits for the device, and compiles as one graph.

"Never waits": the call runs on images and labels on the ``meta`` device, which hold no values:
any ``.item()``, ``.tolist()``, ``bool(t)`` or label check on them would raise, as each would
make the host wait for a GPU. "One graph": ``torch.compile(fullgraph=True)`` succeeds (dynamo
raises at the first graph break) with the generator's draws inside the graph, and the compiled
call returns what the eager call returns for the same generator state.
"""

import pytest
import torch

import mixlab
from mixlab import CutMix, FMix, Mixup, RandomChoice, ResizeMix, SaliencyMix, TimmMixup
from mixlab.core.checks import check_labels


def build(name, granularity, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name == "RandomChoice":
        return RandomChoice([Mixup(5, alpha=0.8, granularity=granularity), CutMix(5, granularity=granularity)],
                            p=0.8, granularity=granularity, generator=g)
    if name == "TimmMixup":
        return TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, mode=granularity, num_classes=5, inplace=False,
                         generator=g)
    cls = {"Mixup": Mixup, "CutMix": CutMix, "ResizeMix": ResizeMix, "FMix": FMix, "SaliencyMix": SaliencyMix}[name]
    kw = {"alpha": 0.4} if cls in (Mixup, CutMix, FMix, SaliencyMix) else {}  # α ≠ 1: the Gamma rejection sampler
    if granularity == "pair":
        kw["pairing"] = "flip"
    return cls(5, granularity=granularity, p=0.7, generator=g, **kw)


NAMES = ["Mixup", "CutMix", "ResizeMix", "FMix", "SaliencyMix", "RandomChoice", "TimmMixup"]


@pytest.mark.parametrize("name,granularity", [(n, g) for n in NAMES for g in ("batch", "pair", "elem")
                                              if (n, g) != ("RandomChoice", "pair")])
def test_no_value_is_read_from_the_device(name, granularity):
    x = torch.rand(6, 3, 16, 16, device="meta")
    y = torch.randint(0, 5, (6,), device="meta")
    r = build(name, granularity)(x, y)
    assert r[0].device.type == "meta" and r.lam.device.type == "meta" and r.index.device.type == "meta"


def test_label_values_are_checked_only_where_reading_them_is_free():
    bad = torch.tensor([0, 9])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        check_labels(bad, 2, 4)  # CPU labels: checked
    check_labels(bad.to("meta"), 2, 4)  # device labels: not read
    check_labels(bad, 2, 4, check_values=False)
    with pytest.raises(ValueError, match="non-negative"):
        check_labels(torch.tensor([[0.5, -0.1]]), 1, 2)
    check_labels(torch.tensor([[0.5, -0.1]], device="meta"), 1, 2)
    with pytest.raises((RuntimeError, NotImplementedError)):  # forced: reads the (meta) values
        check_labels(bad.to("meta"), 2, 4, check_values=True)


def _assert_same(eager, compiled, exact=True):
    for a, b in [(eager[0], compiled[0]), (eager[1], compiled[1]), (eager.lam, compiled.lam), (eager.index, compiled.index)]:
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("granularity", ["batch", "elem"])
@pytest.mark.parametrize("name", NAMES)
def test_compiles_to_one_graph_that_matches_eager(name, granularity):
    torch._dynamo.reset()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 5, (6,))
    mixer = build(name, granularity)

    def step(images, labels):
        return mixer(images, labels)

    assert torch._dynamo.explain(step)(x, y).graph_break_count == 0
    compiled = torch.compile(step, backend="eager", fullgraph=True)  # raises at a graph break
    for seed in (1, 2):
        mixer.generator.manual_seed(seed)
        eager = [step(x, y) for _ in range(3)]
        mixer.generator.manual_seed(seed)
        ours = [compiled(x, y) for _ in range(3)]
        for e, c in zip(eager, ours):
            assert type(c) is mixlab.MixResult
            _assert_same(e, c)


def test_the_mixer_object_itself_compiles():
    torch._dynamo.reset()
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    mixer = CutMix(4, granularity="elem", generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(mixer, backend="eager", fullgraph=True)
    mixer.generator.manual_seed(1)
    eager = mixer(x, y)
    mixer.generator.manual_seed(1)
    _assert_same(eager, compiled(x, y))


def test_compiled_draws_follow_the_generator_given_at_call_time():
    """The generator is named in the graph by a guarded handle: another generator recompiles."""
    torch._dynamo.reset()
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    mixer = Mixup(4, granularity="elem", generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(lambda a, b: mixer(a, b), backend="eager", fullgraph=True)
    compiled(x, y)
    mixer.generator = torch.Generator().manual_seed(7)
    got = compiled(x, y)
    assert torch.equal(got.lam, Mixup(4, granularity="elem", generator=torch.Generator().manual_seed(7))(x, y).lam)


def test_assume_constant_marker_is_what_torch_sets():
    """core.random marks its generator handle as torch.compiler.assume_constant_result does,
    without importing dynamo at import time."""
    from mixlab.core import random as mixrandom

    def probe():
        return 0

    torch.compiler.assume_constant_result(probe)
    marked = [k for k in vars(probe) if k.startswith("_dynamo")]
    assert marked and all(getattr(mixrandom._handle_of, k) == getattr(probe, k) for k in marked)


@pytest.mark.slow
@pytest.mark.parametrize("name,granularity", [("Mixup", "elem"), ("CutMix", "batch")])
def test_inductor_matches_eager(name, granularity):
    """Inductor generates its own kernels: box pastes match exactly, blends to float rounding."""
    torch._dynamo.reset()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 5, (6,))
    mixer = build(name, granularity)
    compiled = torch.compile(lambda a, b: mixer(a, b), fullgraph=True)
    mixer.generator.manual_seed(3)
    eager = [mixer(x, y) for _ in range(3)]
    mixer.generator.manual_seed(3)
    for e in eager:
        _assert_same(e, compiled(x, y), exact=name == "CutMix")
