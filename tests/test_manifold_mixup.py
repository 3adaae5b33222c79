"""Manifold Mixup (Verma et al. 2019): the mixed hidden state of Eq. 1, the targets of Eq. 2, the
stage draw, the staged-model interface (a user's own model), and the trainer and CLI."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import mixlab
from mixlab import registry
from mixlab.core import soft_cross_entropy, soft_targets
from mixlab.engine import build_optimizer, load_checkpoint, load_config, train, train_step
from mixlab.engine.config import OptimConfig
from mixlab.methods.manifold_mixup import ManifoldMixup, mix_hidden
from mixlab.models import StagedNet, create_model, forward_until

K = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: these tests train small models


def _setup(seed: int = 0, **kwargs) -> tuple[nn.Module, ManifoldMixup]:
    torch.manual_seed(seed)
    model = create_model("resnet_small", K, width=8)
    mm = ManifoldMixup(K, **kwargs)
    mm.setup(model, torch.Generator().manual_seed(seed))
    return model, mm


def _batch(n: int = 8, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def _capture_mixed_state(model: nn.Module, stage: int) -> tuple[list[torch.Tensor], object]:
    """Record what the part of the network after ``stage`` receives (the mixed hidden state)."""
    seen: list[torch.Tensor] = []
    if stage == 0:
        handle = model.stem.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    elif stage < model.num_stages:
        handle = model.stages[stage].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    else:  # the final map goes straight to the head
        head = model.forward_head

        def forward_head(features, pre_logits=False):
            seen.append(features.detach().clone())
            return head(features, pre_logits)

        model.forward_head = forward_head
        handle = None
    return seen, handle


# ------------------------------------------------------------------------------ Eq. 1-2
@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
def test_mixed_stage_output_is_lambda_h_i_plus_one_minus_lambda_h_j(stage):
    """What the network after stage k receives is λ h_i + (1 − λ) h_j, with h = g_k(x) of the clean
    batch and the step's own λ and partners; the step runs the model once (BatchNorm counts one batch)."""
    model, mm = _setup(stages=(stage,))
    x, y = _batch()
    h = forward_until(copy.deepcopy(model), x, stage).detach()  # the same batch statistics in train mode
    state = mm.generator.get_state()
    seen, handle = _capture_mixed_state(model, stage)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [int(m.num_batches_tracked) for m in norms]
    out = mm.training_step(model, (x, y), 0.0)
    if handle is not None:
        handle.remove()
    mm.generator.set_state(state)
    k, index, lam = mm.draw(8, x.device)
    assert k == stage and len(seen) == 1
    weight = lam.view(-1, 1, 1, 1)
    assert torch.allclose(seen[0], weight * h + (1 - weight) * h[index], atol=1e-5, rtol=0)
    assert not (index == torch.arange(8)).any() and 0 < float(lam[0]) < 1
    assert [int(m.num_batches_tracked) for m in norms] == [c + 1 for c in before]  # one forward pass
    assert out.logs["stage"] == float(stage)


def test_targets_are_mixed_with_the_same_lambda_and_partner():
    """The loss is the soft cross-entropy against λ y_i + (1 − λ) y_j (ε-smoothed first)."""
    model, mm = _setup(stages=(2,))
    mm.label_smoothing = 0.1
    x, y = _batch()
    state = mm.generator.get_state()
    out = mm.training_step(model, (x, y), 0.0)
    mm.generator.set_state(state)
    _, index, lam = mm.draw(8, x.device)
    t = soft_targets(y, K) * 0.9 + 0.01
    expected = lam[:, None] * t + (1 - lam[:, None]) * t[index]
    assert torch.allclose(out.loss, soft_cross_entropy(out.logits, expected), atol=1e-6)
    assert out.logs["lam"].item() == pytest.approx(float(lam[0]))
    assert out.mixed is None  # a hidden stage: no image to draw


def test_stage_zero_is_input_mixup_and_returns_the_mixed_images():
    model, mm = _setup(stages=(0,))
    x, y = _batch()
    x0 = x.clone()
    out = mm.training_step(model, (x, y), 0.0)
    m = out.mixed
    lam = m.lam.view(-1, 1, 1, 1)
    assert torch.allclose(m.images, lam * x + (1 - lam) * x[m.index], atol=1e-6)
    t = soft_targets(y, K)
    assert torch.allclose(m.targets, m.lam[:, None] * t + (1 - m.lam[:, None]) * t[m.index])
    assert torch.equal(x, x0)  # the caller's batch is untouched


def test_gradients_reach_both_partners_and_the_stages_before_the_mix():
    model, mm = _setup(stages=(2,))
    x, y = _batch()
    x.requires_grad_(True)
    out = mm.training_step(model, (x, y), 0.0)
    out.loss.backward()
    assert bool((x.grad.flatten(1).abs().sum(1) > 0).all())  # every image, as itself and as a partner
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stem.parameters())


def test_stages_are_drawn_uniformly_and_lambda_is_beta_alpha_alpha():
    from scipy import stats

    _, mm = _setup(stages=(0, 1, 2))
    draws = [mm.draw(4, torch.device("cpu")) for _ in range(900)]
    counts = torch.bincount(torch.tensor([k for k, _, _ in draws]), minlength=3)
    assert all(abs(c - 300) < 70 for c in counts.tolist()), counts  # 5 sigma
    lams = [float(lam[0]) for _, _, lam in draws]
    assert all(float(lam.min()) == float(lam.max()) for _, _, lam in draws[:20])  # one λ per batch
    assert stats.kstest(lams, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3
    _, elem = _setup(granularity="elem")
    assert len(set(elem.draw(16, torch.device("cpu"))[2].tolist())) == 16


def test_mix_hidden_keeps_dtype_and_channels_last_and_does_not_write_into_its_input():
    h = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    h0 = h.clone()
    out = mix_hidden(h, torch.tensor([1, 2, 3, 0]), torch.full((4,), 0.25))
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(h, h0)
    assert torch.allclose(out, 0.25 * h + 0.75 * h[[1, 2, 3, 0]])
    half = mix_hidden(h.bfloat16(), torch.tensor([1, 2, 3, 0]), torch.full((4,), 0.25))
    assert half.dtype == torch.bfloat16


def test_channels_last_model_trains_through_the_engine():
    model, mm = _setup(stages=(1,))
    model = model.to(memory_format=torch.channels_last)
    mm.setup(model, torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, mm, OptimConfig(name="sgd", lr=0.1))
    x, y = _batch()
    seen, handle = _capture_mixed_state(model, 1)
    w0 = [p.clone() for p in model.parameters()]
    out = train_step(model, mm, optimizer, (x.contiguous(memory_format=torch.channels_last), y), 0.0)
    handle.remove()
    assert math.isfinite(out.loss.item()) and out.logits.shape == (8, K)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert all(not torch.equal(a, b) for a, b in zip(w0, model.parameters()))


def test_same_seed_same_steps():
    losses = []
    for _ in range(2):
        model, mm = _setup(seed=3)
        x, y = _batch()
        losses.append([mm.training_step(model, (x, y), 0.0).loss.item() for _ in range(4)])
    assert losses[0] == losses[1]


# ------------------------------------------------------------------------------ the staged interface
def _own_net_from_the_docs() -> type[nn.Module]:
    """The model of Manifold Mixup's documentation page, run as written: the staged protocol's four
    members."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "manifold-mixup.md").read_text()
    code = page[page.index("```python\nclass MyNet") + len("```python\n"):].split("\n```", 1)[0]

    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2), nn.BatchNorm2d(c_out), nn.ReLU())

    namespace = {"nn": nn, "torch": torch, "block": block}
    exec(code, namespace)
    return namespace["MyNet"]


def test_a_users_own_model_with_the_documented_members_trains():
    torch.manual_seed(0)
    model = _own_net_from_the_docs()(K)
    mm = ManifoldMixup(K, stages=(0, 1, 2, 3))
    mm.setup(model, torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    for _ in range(4):
        out = train_step(model, mm, optimizer, (x, y), 0.0)
        assert math.isfinite(out.loss.item())
    assert isinstance(create_model("resnet_small", K), StagedNet)


def test_models_without_stages_or_too_few_are_refused_in_setup():
    with pytest.raises(TypeError, match="staged-model protocol.*missing: num_stages, stages, forward_stem"):
        ManifoldMixup(K).setup(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, K)))
    with pytest.raises(ValueError, match=r"stages must be in 0..3 for WideResNet"):
        ManifoldMixup(K, stages=(0, 4)).setup(create_model("wrn28_2", K))
    ManifoldMixup(K, stages=(0, 3)).setup(create_model("wrn28_2", K))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
    ({"alpha": "2"}, TypeError, "alpha must be a real number"),
    ({"stages": ()}, TypeError, "stages must be a non-empty tuple"),
    ({"stages": 2}, TypeError, "stages must be a non-empty tuple"),
    ({"stages": (0, -1)}, ValueError, "stages must hold ints >= 0"),
    ({"stages": (0, 1.5)}, ValueError, "stages must hold ints >= 0"),
    ({"stages": (1, 1)}, ValueError, "stages must be distinct"),
    ({"pairing": "shuffle"}, ValueError, "pairing must be one of"),
    ({"granularity": "pixel"}, ValueError, "granularity must be one of"),
    ({"granularity": "pair"}, ValueError, "granularity='pair' needs pairing='flip'"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        ManifoldMixup(K, **kwargs)


def test_registry_lazy_export_preview_and_repr():
    assert mixlab.ManifoldMixup is ManifoldMixup
    mm = registry.build_method("manifold-mixup", K, stages=[1, 2])  # YAML lists become tuples
    assert mm.alpha == 2.0 and mm.stages == (1, 2) and "stages=(1, 2)" in repr(mm)
    assert registry.build_method("manifold-mixup", K).stages == (0, 1, 2)
    x, y = _batch()
    assert mm.mix_preview(x, y) is None  # no input-space mix among its stages
    _, with_input = _setup()
    m = with_input.mix_preview(x, y)
    assert m.images.shape == x.shape and torch.allclose(m.targets.sum(1), torch.ones(8))


# ------------------------------------------------------------------------------ the trainer and the CLI
TINY = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
        "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false",
        "run.threads=1", "method.name=manifold-mixup"]


def test_trainer_runs_two_epochs_and_resumes_exactly(tmp_path):
    straight = train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'a'}"]))
    assert {"train_lam", "train_stage"} <= set(straight) and math.isfinite(straight["train_loss"])
    train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*TINY, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["test_acc1"] == straight["test_acc1"]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (tmp_path / "a" / "samples.png").exists()


def test_cli_train_and_show(tmp_path, capsys):
    from mixlab.cli import main

    args = ["--method", "manifold-mixup", "--epochs", "1", "--batch-size", "8", "--no-eval", "--out",
            str(tmp_path / "run"), "--set", "data.num_per_class=4", "--set", "data.test_per_class=2",
            "--set", "data.image_size=16", "--set", "run.progress=false", "--set", "run.threads=1",
            "--set", "model.kwargs={width: 8}", "--set", "method.params.alpha=1.0"]
    assert main(["train", *args]) == 0
    assert "final test accuracy:" in capsys.readouterr().out
    png = tmp_path / "mm.png"
    assert main(["show", "--method", "manifold-mixup", "--n", "4", "--out", str(png)]) == 0
    assert "mean lambda" in capsys.readouterr().out and png.is_file()
