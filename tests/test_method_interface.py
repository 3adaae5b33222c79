"""The worked examples of docs/method_interface.md, one toy Method per kind, each run for one
training step through the engine's ``train_step`` on a tiny model.

The toys live here, not in the package: they show that every kind of method fits the interface
(losses are finite, gradients reach what they should, EMA/momentum copies move, state goes into a
checkpoint and comes back).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixlab.core import SoftTargetCrossEntropy, soft_targets
from mixlab.engine import build_optimizer, load_checkpoint, save_checkpoint, set_lr, train_step
from mixlab.engine.config import OptimConfig
from mixlab.methods.base import ImageRows, Method, MixerMethod, StepOutput
from mixlab.mixers import CutMix
from mixlab.models import create_model, forward_from, forward_until

K, B, S = 10, 4, 16  # classes, batch, image side


# ------------------------------------------------------------------------------- the toys
class RandomCropTransform:
    """A per-image transform (what CropMix is): a random crop resized back, on a uint8 CHW image."""

    def __call__(self, image: Tensor) -> Tensor:
        from torchvision.transforms import v2

        return v2.RandomResizedCrop(image.shape[-1], scale=(0.5, 1.0), antialias=True)(image)


class PerImageMethod(Method):
    """Kind 2: the method is a dataset transform; the step is vanilla cross-entropy."""

    name = "per-image"

    def train_transform(self, default):
        return RandomCropTransform()


class HistoryMix(Method):
    """Kind 3 (RecursiveMix-like): keeps the previous batch in buffers, pastes it into a corner of
    the current one, and trains an extra head on the final feature map's pasted region."""

    name = "historymix"

    def __init__(self, num_classes: int, ratio: float = 0.5) -> None:
        super().__init__(num_classes)
        self.ratio = ratio
        self.register_buffer("hist_images", torch.empty(0))  # (B, C, H, W) previous mixed inputs
        self.register_buffer("hist_targets", torch.empty(0))  # (B, K) their targets
        self.aux_head: nn.Linear | None = None

    def setup(self, model, generator=None):
        super().setup(model, generator)
        dim = model.get_classifier().in_features
        device = next(model.parameters()).device
        self.aux_head = nn.Linear(dim, self.num_classes).to(device)  # on the model's device

    def param_groups(self, base_lr):
        return [{"params": list(self.aux_head.parameters()), "lr_scale": 0.5}]

    def on_epoch_start(self, epoch):
        self.hist_images, self.hist_targets = torch.empty(0), torch.empty(0)  # forget across epochs

    resizable_buffers = ("hist_images", "hist_targets")  # shapes known only once training ran

    def training_step(self, model, batch, progress):
        images, labels = batch
        targets = soft_targets(labels, self.num_classes)
        s = int(images.shape[-1] * self.ratio)
        if self.hist_images.numel() == 0:
            mixed, mixed_targets = images, targets
        else:
            mixed = images.clone()
            small = F.interpolate(self.hist_images, size=(s, s), mode="bilinear", align_corners=False)
            mixed[:, :, :s, :s] = small  # top-left corner holds the shrunken history
            lam = 1 - (s * s) / images.shape[-1] ** 2
            mixed_targets = lam * targets + (1 - lam) * self.hist_targets
        features = model.forward_features(mixed)  # (B, C, h, w)
        logits = model.forward_head(features)  # (B, K)
        loss = SoftTargetCrossEntropy()(logits, mixed_targets)
        if self.hist_images.numel() != 0:
            fs = max(1, features.shape[-1] * s // images.shape[-1])
            region = features[:, :, :fs, :fs].mean((2, 3))  # (B, C) features of the pasted region
            aux = self.aux_head(region)
            loss = loss + 0.5 * F.kl_div(F.log_softmax(aux, -1), F.softmax(self.prev_logits, -1), reduction="batchmean")
        self.hist_images, self.hist_targets = mixed.detach(), mixed_targets.detach()
        self.prev_logits = logits.detach()
        return StepOutput(loss=loss, logits=logits, logs={"history": float(self.hist_images.numel() > 0)})


class MixBlockMethod(Method):
    """Kind 4 (AutoMix-like): a learned Mix Block (own param group, constant lr), a momentum copy of
    the model updated after every step with a schedule on ``progress``, features at stage 2."""

    name = "mixblock"

    def __init__(self, num_classes: int, stage: int = 2) -> None:
        super().__init__(num_classes)
        self.stage = stage

    def setup(self, model, generator=None):
        super().setup(model, generator)
        device = next(model.parameters()).device
        channels = model.stage_channels[self.stage - 1]
        self.mix_block = nn.Conv2d(2 * channels, 1, 1).to(device)
        self.momentum_model = copy.deepcopy(model).requires_grad_(False)

    def param_groups(self, base_lr):
        return [{"params": list(self.mix_block.parameters()), "lr": 0.01, "fixed_lr": True, "weight_decay": 0.0}]

    def momentum(self, progress: float) -> float:  # cosine from 0.99 to 1
        return 1 - 0.01 * (math.cos(math.pi * progress) + 1) / 2

    def training_step(self, model, batch, progress):
        images, labels = batch
        b = images.shape[0]
        index = torch.roll(torch.arange(b, device=images.device), 1)
        with torch.no_grad():
            feats = forward_until(self.momentum_model, images, self.stage)  # (B, C, h, w)
        pair = torch.cat([feats, feats[index]], 1)  # (B, 2C, h, w)
        mask = torch.sigmoid(F.interpolate(self.mix_block(pair), size=images.shape[-2:], mode="bilinear"))
        mixed = mask * images + (1 - mask) * images[index]  # (B, C, H, W)
        lam = mask.mean((1, 2, 3))  # (B,)
        targets = soft_targets(labels, self.num_classes)
        targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[index]
        logits = model(mixed)
        loss = SoftTargetCrossEntropy()(logits, targets)
        return StepOutput(loss=loss, logits=logits, logs={"lam": lam.mean().detach()})

    @torch.no_grad()
    def after_optimizer_step(self, model, progress):
        m = self.momentum(progress)
        for p_m, p in zip(self.momentum_model.parameters(), model.parameters()):
            p_m.lerp_(p, 1 - m)
        for b_m, b in zip(self.momentum_model.buffers(), model.buffers()):
            b_m.copy_(b)


class SaliencyGradMix(Method):
    """Kind 5 (PuzzleMix-like): an extra forward/backward for the input gradient, then mix the
    most salient half of the partner in. Its own ``backward`` leaves gradients on the model: the
    engine zeroes them after ``training_step``."""

    name = "saliencygrad"

    def training_step(self, model, batch, progress):
        images, labels = batch
        x = images.detach().requires_grad_(True)
        F.cross_entropy(model(x), labels).backward()  # fills x.grad AND the parameters' .grad
        saliency = x.grad.abs().sum(1, keepdim=True)  # (B, 1, H, W)
        index = torch.roll(torch.arange(images.shape[0], device=images.device), 1)
        mask = (saliency[index] > saliency[index].flatten(1).median(1).values.view(-1, 1, 1, 1)).float()
        mixed = mask * images[index] + (1 - mask) * images
        lam = 1 - mask.mean((1, 2, 3))
        targets = soft_targets(labels, self.num_classes)
        targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[index]
        self.last = (mixed.detach(), targets)
        logits = model(mixed)
        return StepOutput(loss=SoftTargetCrossEntropy()(logits, targets), logits=logits)


class HiddenMix(Method):
    """Kind 6 (Manifold-Mixup-like): mix hidden states at a random stage."""

    name = "hiddenmix"

    def training_step(self, model, batch, progress):
        images, labels = batch
        g = self.generator
        stage = int(torch.randint(0, model.num_stages, (1,), generator=g))
        lam = float(torch.distributions.Beta(2.0, 2.0).sample()) if g is None else float(torch.rand(1, generator=g))
        index = torch.roll(torch.arange(images.shape[0], device=images.device), 1)
        h = forward_until(model, images, stage)  # (B, C_l, h_l, w_l)
        logits = forward_from(model, lam * h + (1 - lam) * h[index], stage)
        t = soft_targets(labels, self.num_classes)
        loss = SoftTargetCrossEntropy()(logits, lam * t + (1 - lam) * t[index])
        return StepOutput(loss=loss, logits=logits, logs={"stage": stage})


class TinyMoCo(Method):
    """Kind 7 (MoCo-like, self-supervised): ``batch = (views, labels)``; a projector and predictor
    as a param group; a momentum encoder updated after the step; no class logits."""

    name = "tinymoco"

    def __init__(self, dim: int = 16, tau: float = 0.2, momentum: float = 0.9) -> None:
        super().__init__(num_classes=0)
        self.dim, self.tau, self.m = dim, tau, momentum

    def setup(self, model, generator=None):
        super().setup(model, generator)
        device = next(model.parameters()).device
        width = model.get_classifier().in_features
        self.projector = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, self.dim)).to(device)
        self.predictor = nn.Sequential(nn.Linear(self.dim, 32), nn.ReLU(), nn.Linear(32, self.dim)).to(device)
        self.momentum_encoder = copy.deepcopy(model).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def param_groups(self, base_lr):
        return [{"params": list(self.projector.parameters()) + list(self.predictor.parameters())}]

    def embed(self, model, projector, x):
        return projector(model.forward_head(model.forward_features(x), pre_logits=True))  # (B, dim)

    def contrastive(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.T / self.tau  # (B, B): positives on the diagonal
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device)) * 2 * self.tau

    def training_step(self, model, batch, progress):
        (v1, v2), _ = batch
        q1, q2 = (self.predictor(self.embed(model, self.projector, v)) for v in (v1, v2))
        with torch.no_grad():
            k1, k2 = (self.embed(self.momentum_encoder, self.momentum_projector, v) for v in (v1, v2))
        loss = self.contrastive(q1, k2) + self.contrastive(q2, k1)
        return StepOutput(loss=loss, logits=None)

    @torch.no_grad()
    def after_optimizer_step(self, model, progress):
        for online, target in ((model, self.momentum_encoder), (self.projector, self.momentum_projector)):
            for p, p_m in zip(online.parameters(), target.parameters()):
                p_m.lerp_(p, 1 - self.m)


# ------------------------------------------------------------------------------- harness
def _setup(method: Method, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("resnet_small", K, width=8)
    g = torch.Generator().manual_seed(seed)
    method.setup(model, g)
    optimizer = build_optimizer(model, method, OptimConfig(lr=0.05))
    return model, optimizer


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, S, S, generator=g), torch.randint(0, K, (B,), generator=g)


def _roundtrip(tmp_path, model: nn.Module, method: Method, fresh: Method) -> None:
    """Method state into an engine checkpoint and back into a freshly set-up method."""
    state = {"epoch": 1, "step": 1, "config": {}, "num_classes": K, "model": model.state_dict(),
             "optimizer": {}, "scaler": {}, "ema": None, "method": method.state_dict(), "rng": {}, "history": []}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    ckpt = load_checkpoint(tmp_path)
    fresh.setup(copy.deepcopy(model))
    fresh.load_state_dict(ckpt["method"])
    saved, loaded = method.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k


def _grads(module: nn.Module) -> list[Tensor | None]:
    return [p.grad for p in module.parameters()]


# ------------------------------------------------------------------------------- tests
def test_stateless_mixer(tmp_path):
    method = MixerMethod(CutMix(num_classes=K, alpha=1.0))
    model, opt = _setup(method)
    before = copy.deepcopy(model.state_dict())
    out = train_step(model, method, opt, _batch(), 0.0)
    assert torch.isfinite(out.loss) and out.logits.shape == (B, K)
    assert out.mixed is not None and out.mixed.targets.shape == (B, K)
    assert all(g is not None for g in _grads(model))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert method.mixer.generator is method.generator  # the engine's generator reached the mixer
    _roundtrip(tmp_path, model, method, MixerMethod(CutMix(num_classes=K)))


def test_per_image_transform(tmp_path):
    from mixlab.data import SyntheticShapes
    from torch.utils.data import DataLoader

    method = PerImageMethod(K)
    transform = method.train_transform(default=None)
    assert callable(transform)
    data = SyntheticShapes("train", num_per_class=1, image_size=S).with_transform(transform)
    images, labels = next(iter(DataLoader(data, batch_size=B)))
    assert images.dtype == torch.uint8 and images.shape == (B, 3, S, S)
    model, opt = _setup(method)
    out = train_step(model, method, opt, (images.float() / 255, labels), 0.0)
    assert torch.isfinite(out.loss)
    _roundtrip(tmp_path, model, method, PerImageMethod(K))


def test_stateful_history_and_extra_head(tmp_path):
    method = HistoryMix(K)
    model, opt = _setup(method)
    assert any(g.get("lr_scale") == 0.5 for g in opt.param_groups)  # the head's group was appended
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups if g.get("lr_scale") == 0.5] == [0.05 * 0.5 * 0.5]
    out1 = train_step(model, method, opt, _batch(0), 0.0)
    assert method.hist_images.shape == (B, 3, S, S) and out1.logs["history"] == 1.0
    head_before = method.aux_head.weight.detach().clone()
    out2 = train_step(model, method, opt, _batch(1), 0.5)  # now the history is pasted, the head trains
    assert torch.isfinite(out2.loss)
    assert method.aux_head.weight.grad is not None and method.aux_head.weight.grad.abs().sum() > 0
    assert not torch.equal(head_before, method.aux_head.weight)
    assert "hist_images" in method.state_dict() and "aux_head.weight" in method.state_dict()
    _roundtrip(tmp_path, model, method, HistoryMix(K))
    method.on_epoch_start(1)
    assert method.hist_images.numel() == 0


def test_extra_modules_momentum_copy_and_fixed_lr(tmp_path):
    method = MixBlockMethod(K)
    model, opt = _setup(method)
    set_lr(opt, 0.1)  # the schedule moves the model's groups, not the Mix Block's fixed lr
    block_group = next(g for g in opt.param_groups if g.get("fixed_lr"))
    assert block_group["lr"] == 0.01 and opt.param_groups[0]["lr"] == pytest.approx(0.005)
    momentum_before = copy.deepcopy(method.momentum_model.state_dict())
    out = train_step(model, method, opt, _batch(), 0.3)
    assert torch.isfinite(out.loss)
    assert method.mix_block.weight.grad is not None and method.mix_block.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.momentum_model.parameters())  # no gradient into the copy
    moved = [not torch.equal(momentum_before[k], v) for k, v in method.momentum_model.state_dict().items()]
    assert any(moved)
    assert 0.99 <= method.momentum(0.3) < 1.0
    _roundtrip(tmp_path, model, method, MixBlockMethod(K))


def test_input_gradient_extra_backward():
    method = SaliencyGradMix(K)
    model, opt = _setup(method)
    for g in opt.param_groups:  # lr 0 and no momentum effect: only look at the gradients
        g["lr"] = 0.0
    out = train_step(model, method, opt, _batch(), 0.0)
    assert torch.isfinite(out.loss)
    # the gradients left on the model are those of the final loss only (the engine zeroed the
    # extra backward's): recompute them on the same mixed batch
    mixed, targets = method.last
    expected = torch.autograd.grad(SoftTargetCrossEntropy()(model(mixed), targets), list(model.parameters()))
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)


def test_hidden_state_mixing(tmp_path):
    method = HiddenMix(K)
    model, opt = _setup(method)
    out = train_step(model, method, opt, _batch(), 0.0)
    assert torch.isfinite(out.loss) and out.logits.shape == (B, K)
    stem_grad = model.stem[0].weight.grad
    assert model.get_classifier().weight.grad is not None
    assert out.logs["stage"] > 0 or (stem_grad is not None and stem_grad.abs().sum() > 0)
    _roundtrip(tmp_path, model, method, HiddenMix(K))


def test_self_supervised_multi_view(tmp_path):
    from mixlab.engine.data import to_device

    method = TinyMoCo()
    model, opt = _setup(method)
    enc_before = copy.deepcopy(method.momentum_encoder.state_dict())
    g = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=g) for _ in range(2)]
    # the engine moves nested batches and normalises every uint8 image tensor
    batch = to_device((views, torch.zeros(B, dtype=torch.long)), torch.device("cpu"), lambda x: x.float() / 255)
    assert all(v.dtype == torch.float32 for v in batch[0])
    out = train_step(model, method, opt, batch, 0.0)
    assert torch.isfinite(out.loss) and out.logits is None
    assert all(p.grad is not None for p in method.projector.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    moved = [not torch.equal(enc_before[k], v) for k, v in method.momentum_encoder.state_dict().items()
             if v.is_floating_point()]
    assert any(moved)
    _roundtrip(tmp_path, model, method, TinyMoCo())


def test_toy_method_through_the_whole_engine(tmp_path, monkeypatch):
    """A stateful method registered in METHODS trains end to end and resumes from its checkpoint."""
    from mixlab import registry
    from mixlab.engine import load_config, train

    monkeypatch.setitem(registry.METHODS, "mixblock", registry.MethodSpec(
        lambda num_classes, label_smoothing=0.0: MixBlockMethod(num_classes), "toy", {}, "test toy"))
    overrides = ["method.name=mixblock", "data.num_per_class=4", "data.test_per_class=2", "data.image_size=16",
                 "data.batch_size=8", "data.num_workers=0", "optim.epochs=2", "optim.warmup_epochs=0",
                 "model.kwargs={width: 8}", "model.ema_decay=0.9", "run.progress=false", f"run.out={tmp_path / 'r'}"]
    metrics = train(load_config(overrides=overrides + ["run.stop_epoch=1"]))
    assert metrics["epoch"] == 1 and math.isfinite(metrics["train_loss"]) and "train_lam" in metrics
    ckpt = load_checkpoint(tmp_path / "r")
    assert any(k.startswith("momentum_model.") for k in ckpt["method"]) and ckpt["ema"] is not None
    metrics = train(load_config(overrides=overrides + [f"run.resume={tmp_path / 'r'}"]))
    assert metrics["epoch"] == 2


class FigureMethod(Method):
    """Vanilla training that draws after every epoch (``epoch_figures``), consuming its generator to draw."""

    name = "figures"

    def epoch_figures(self, model, images):
        from matplotlib.figure import Figure

        assert not model.training and not self.training and not torch.is_grad_enabled()
        noise = torch.rand(images.shape, generator=self.generator)  # must not change training's stream
        self.calls = getattr(self, "calls", 0) + 1
        fig = Figure()
        fig.add_subplot().plot([0, 1], [1, 0])
        return {"rows.png": ImageRows([("input", images), ("noisy", images + noise)], title="toy"), "plot.png": fig}


def test_epoch_figures_are_written_after_every_epoch_without_changing_training(tmp_path, monkeypatch):
    from mixlab import registry
    from mixlab.engine import load_config, train
    from mixlab.engine.writer import write_epoch_figures

    monkeypatch.setitem(registry.METHODS, "figures", registry.MethodSpec(
        lambda num_classes, label_smoothing=0.0: FigureMethod(num_classes), "toy", {}, "test toy"))
    monkeypatch.setitem(registry.METHODS, "plain", registry.MethodSpec(
        lambda num_classes, label_smoothing=0.0: Method(num_classes), "toy", {}, "test toy"))
    overrides = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
                 "data.num_workers=0", "optim.epochs=1", "optim.warmup_epochs=0", "model.kwargs={width: 8}",
                 "run.progress=false", "run.threads=1"]
    drawn = train(load_config(overrides=[*overrides, "method.name=figures", f"run.out={tmp_path / 'a'}"]))
    plain = train(load_config(overrides=[*overrides, "method.name=plain", f"run.out={tmp_path / 'b'}"]))
    assert (tmp_path / "a" / "rows.png").stat().st_size > 0 and (tmp_path / "a" / "plot.png").stat().st_size > 0
    assert not (tmp_path / "b" / "rows.png").exists()
    assert drawn["train_loss"] == plain["train_loss"]  # drawing used the generator, yet training is the same
    method = FigureMethod(K)
    model, _ = _setup(method)
    state = method.generator.get_state()
    images = _batch()[0]
    paths = write_epoch_figures(method, model, images, tmp_path, (0.5,) * 3, (0.25,) * 3)
    assert [p.name for p in paths] == ["rows.png", "plot.png"] and method.calls == 1
    assert torch.equal(method.generator.get_state(), state) and model.training and method.training
    method.epoch_figures = lambda model, images: {"sub/dir.png": None}
    with pytest.raises(ValueError, match="plain .png file names"):
        write_epoch_figures(method, model, images, tmp_path, (0.5,) * 3, (0.25,) * 3)
