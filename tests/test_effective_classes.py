"""Effective class number (mixlab.evaluation.effective_classes; RecursiveMix Fig. 7): hand values,
Mixup is exactly 2, CutMix at most 2, RecursiveMix grows as its history compounds."""

from __future__ import annotations

import pytest
import torch

import mixlab
from mixlab.evaluation.effective_classes import effective_class_number, measure_effective_classes
from mixlab.methods.base import MixerMethod, Vanilla
from mixlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(batches: int, batch: int = 4, num_classes: int = 100, size: int = 16, uint8: bool = False):
    """Batches whose labels are all different (step t holds classes batch*t .. batch*t + batch - 1)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for t in range(batches):
        labels = (torch.arange(batch) + batch * t) % num_classes
        images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
        out.append((images if uint8 else images.float() / 255, labels))
    return out


def test_hand_values_strict_threshold():
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0],
                            [1.0, 0.0, 0.0, 0.0],
                            [0.2, 0.3, 0.4999, 1e-4],   # exactly 1e-4 does not count
                            [0.25, 0.25, 0.25, 0.25]])
    assert effective_class_number(targets, reduction="none").tolist() == [2, 1, 3, 4]
    assert effective_class_number(targets).item() == 2.5
    # in the targets' dtype 0.3 is not above 0.3: counts 2 | 1 | 1 (0.4999) | 0
    assert effective_class_number(targets, threshold=0.3).item() == 1.0
    smoothed = mixlab.Mixup(10, alpha=1.0, label_smoothing=0.1)(torch.rand(4, 3, 8, 8), torch.arange(4))
    assert effective_class_number(smoothed.targets).item() == 10  # eps / K = 0.01 > 1e-4 everywhere


def test_mixup_of_distinct_classes_is_exactly_two():
    mixer = mixlab.Mixup(100, alpha=1.0, granularity="elem", generator=torch.Generator().manual_seed(0))
    for images, labels in _loader(5, batch=8):
        out = mixer(images, labels)
        assert ((out.lam > 1e-4) & (out.lam < 1 - 1e-4)).all()  # λ in (0, 1), away from the threshold
        assert effective_class_number(out.targets, reduction="none").tolist() == [2] * 8


def test_measured_mixup_two_cutmix_at_most_two_vanilla_one():
    torch.manual_seed(0)
    model = create_model("resnet_small", 100, width=4)
    g = torch.Generator().manual_seed(0)
    mixup = measure_effective_classes(MixerMethod(mixlab.Mixup(100, alpha=1.0)), model, _loader(6), steps=6,
                                      generator=g)
    assert mixup.per_step.tolist() == [2.0] * 6 and mixup.mean == 2.0 and mixup.images == 24
    cutmix = measure_effective_classes(MixerMethod(mixlab.CutMix(100, alpha=1.0)), model, _loader(6), steps=6,
                                       generator=g)
    assert 1.0 <= cutmix.mean <= 2.0 and cutmix.per_step.max() == 2.0  # 1 when the box is empty or whole
    vanilla = measure_effective_classes(Vanilla(100), model, _loader(3, uint8=True), steps=3,
                                        mean=(0.5,) * 3, std=(0.25,) * 3)
    assert vanilla.per_step.tolist() == [1.0] * 3
    assert all(p.grad is None for p in model.parameters())


def test_manifold_mixup_hidden_stages_count_their_mixed_targets():
    """Mixing hidden states gives no image batch (``StepOutput.mixed`` is None): the step's targets come
    from ``StepOutput.targets``, so it counts 2 like input Mixup, not 1 like its labels."""
    torch.manual_seed(0)
    model = create_model("resnet_small", 100, width=4)
    method = mixlab.ManifoldMixup(100, stages=(1, 2, 3), granularity="elem")
    out = measure_effective_classes(method, model, _loader(4), steps=4, generator=torch.Generator().manual_seed(0))
    assert out.per_step.tolist() == [2.0] * 4


def test_recursivemix_grows_as_the_history_compounds():
    torch.manual_seed(0)
    model = create_model("resnet_small", 100, width=4)
    method = mixlab.RecursiveMix(100)
    out = measure_effective_classes(method, model, _loader(20), steps=20, generator=torch.Generator().manual_seed(0))
    steps = out.per_step.tolist()
    print("\nRecursiveMix effective classes per step:", [round(v, 2) for v in steps], "mean", round(out.mean, 2))
    assert steps[:4] == [1.0, 2.0, 3.0, 4.0]  # no history, then one more generation each step
    assert all(b >= a for a, b in zip(steps[:5], steps[1:5]))
    # the oldest generations fall under 1e-4 (products of λ ~ U[0, 0.5]): it levels off above CutMix's 2
    assert 3.0 <= sum(steps[5:]) / len(steps[5:]) <= 8.0


def test_epoch_restart_resets_the_history():
    torch.manual_seed(0)
    model = create_model("resnet_small", 100, width=4)
    out = measure_effective_classes(mixlab.RecursiveMix(100), model, _loader(3), steps=7,
                                    generator=torch.Generator().manual_seed(0))
    # RecursiveMix drops its history at each epoch start (on_epoch_start): steps 0, 3 and 6 start over
    assert [out.per_step[i].item() for i in (0, 3, 6)] == [1.0, 1.0, 1.0]
    assert out.per_step[1].item() == 2.0 and out.per_step[4].item() == 2.0


def test_with_an_optimizer_the_model_trains():
    torch.manual_seed(0)
    model = create_model("resnet_small", 100, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = measure_effective_classes(MixerMethod(mixlab.Mixup(100, alpha=1.0)), model, _loader(2), steps=2,
                                    optimizer=opt, generator=torch.Generator().manual_seed(0))
    assert out.per_step.tolist() == [2.0, 2.0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_errors_name_the_argument():
    model = create_model("resnet_small", 10, width=4)
    with pytest.raises(ValueError, match="targets must be a"):
        effective_class_number(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="threshold"):
        effective_class_number(torch.rand(2, 3), threshold=-1)
    with pytest.raises(ValueError, match="reduction"):
        effective_class_number(torch.rand(2, 3), reduction="sum")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        measure_effective_classes(Vanilla(10), model, _loader(1, num_classes=10), steps=0)
    with pytest.raises(ValueError, match="loader yielded no batch"):
        measure_effective_classes(Vanilla(10), model, [], steps=1)
    with pytest.raises(ValueError, match="uint8 batches need mean and std"):
        measure_effective_classes(Vanilla(10), model, _loader(1, num_classes=10, uint8=True), steps=1)
