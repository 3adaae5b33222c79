"""DINO (Caron et al. 2021) with SDMP (Ren et al. 2022, Eq. 6-9), checked against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixlab.core.momentum import cosine_momentum
from mixlab.models import create_model
from mixlab.ssl import DINO, DINOHead
from mixlab.ssl.base import embed
from mixlab.ssl.sdmp import MixDraw

B = 6  # images per batch
SMALL = dict(out_dim=7, hidden_dim=12, bottleneck_dim=5)  # a tiny head


class TinyNet(nn.Module):
    """A backbone without BatchNorm: each image's features depend on that image alone, so the
    hand computations below may run the views one at a time."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward_features(self, x):
        return torch.tanh(self.conv(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def make(model: nn.Module | None = None, seed: int = 0, **kwargs) -> tuple[nn.Module, DINO]:
    torch.manual_seed(seed)
    model = model if model is not None else TinyNet()
    method = DINO(**{**SMALL, **kwargs})
    method.setup(model, torch.Generator().manual_seed(seed))
    return model, method


def multi_crop(num_local: int, global_size: int = 12, local_size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(B, 3, global_size, global_size, generator=g) for _ in range(2)]
            + [torch.randn(B, 3, local_size, local_size, generator=g) for _ in range(num_local)])


def H(p_t: torch.Tensor, s: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Eq. 6 averaged over the batch: mean_b −Σ_k P_t log softmax(s / T_s)."""
    return -(p_t * torch.log_softmax(s / student_temp, dim=-1)).sum(-1).mean()


@torch.no_grad()
def outputs(model, method, views):
    """Hand-run student (on every view) and teacher (on the first two) raw outputs, view by view."""
    student = [method.head(embed(model, v)) for v in views]
    teacher = [method.teacher_head(embed(method.teacher_backbone, v)) for v in views[:2]]
    return student, teacher


def dino_by_hand(p_t, student, student_temp, skip_same=True):
    """DINO's loss: the mean over the (teacher view i, student view v) pairs, v != i, of H."""
    total, pairs = 0.0, 0
    for i, p in enumerate(p_t):
        for v, s in enumerate(student):
            if skip_same and v == i:
                continue
            total, pairs = total + H(p, s, student_temp), pairs + 1
    return total / pairs


# 1 ----------------------------------------------------------------------------------------------
def test_center_update_is_c_center_plus_1_minus_c_batch_mean():
    method = DINO(out_dim=3, center_momentum=0.9)
    method.center.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    teacher = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]],   # global view 1, two images
                            [[4.0, 5.0, 6.0], [6.0, 7.0, 0.0]]])  # global view 2
    method.update_center(teacher)  # batch mean over the 4 rows: (3, 4, 3)
    expect = 0.9 * torch.tensor([[1.0, -2.0, 0.5]]) + 0.1 * torch.tensor([[3.0, 4.0, 3.0]])
    assert torch.allclose(method.center, expect)


def test_training_step_moves_the_center_with_the_teacher_on_the_clean_global_views():
    model, method = make(num_local=2, sdmp=True, num_mixed_local=1)
    views = multi_crop(2)
    before = torch.randn(1, SMALL["out_dim"])
    method.center.copy_(before)
    _, teacher = outputs(model, method, views)
    method.training_step(model, (views, None), progress=0.5)
    mean = torch.cat(teacher).mean(0, keepdim=True)
    assert torch.allclose(method.center, 0.9 * before + 0.1 * mean, atol=1e-6)


# 2 ----------------------------------------------------------------------------------------------
def test_dino_loss_equals_the_hand_computation_over_view_pairs():
    model, method = make(num_local=2)
    views = multi_crop(2)
    center = torch.randn(1, SMALL["out_dim"])
    method.center.copy_(center)
    student, teacher = outputs(model, method, views)
    t_t = 0.04 + 0.5 * (0.07 - 0.04)  # halfway through the warm-up (progress 0.05 of 0.1)
    p_t = [torch.softmax((t - center) / t_t, dim=-1) for t in teacher]  # centred with the old centre
    expect = dino_by_hand(p_t, student, 0.1)  # 2 teachers × 4 student views − 2 same-view pairs = 6 pairs
    out = method.training_step(model, (views, torch.zeros(B)), progress=0.05)
    assert out.logits is None and out.loss.ndim == 0
    assert out.logs["teacher_temp"] == pytest.approx(t_t)
    assert torch.allclose(out.loss, expect, atol=1e-5)


# 3 ----------------------------------------------------------------------------------------------
def test_teacher_temperature_warms_up_linearly_then_stays():
    method = DINO(warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_temp_warmup=0.1)
    assert method.teacher_temperature(0.0) == pytest.approx(0.04)
    assert method.teacher_temperature(0.05) == pytest.approx(0.055)
    assert method.teacher_temperature(0.1) == pytest.approx(0.07)
    assert method.teacher_temperature(0.7) == pytest.approx(0.07)
    assert DINO(teacher_temp=0.05, teacher_temp_warmup=0.0).teacher_temperature(0.0) == 0.05
    defaults = DINO()  # DINO's recommended 0.04 -> 0.07 over the first 10 % (30 of 300 epochs)
    assert (defaults.warmup_teacher_temp, defaults.teacher_temp, defaults.teacher_temp_warmup) == (0.04, 0.07, 0.1)


# 4 ----------------------------------------------------------------------------------------------
def test_teacher_is_the_cosine_momentum_average_of_the_student():
    model, method = make(create_model("resnet_small", 10, width=8), num_local=1, momentum=0.9)
    optimizer = torch.optim.SGD(list(model.parameters()) + [p for g in method.param_groups(0.1) for p in g["params"]],
                                lr=0.5)
    out = method.training_step(model, (multi_crop(1, 16, 8), None), progress=0.3)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    teacher_params = [p.clone() for p in [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]]
    teacher_buffers = [b.clone() for b in method.teacher_backbone.buffers()]
    student = [*model.parameters(), *method.head.parameters()]
    method.after_optimizer_step(model, progress=0.3)
    m = cosine_momentum(0.9, 0.3)
    assert 0.9 < m < 1
    new = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    assert len(new) == len(student)
    for t_new, t_old, s in zip(new, teacher_params, student):
        assert torch.allclose(t_new, m * t_old + (1 - m) * s.detach(), atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(new, teacher_params))
    for b_new, b_old in zip(method.teacher_backbone.buffers(), teacher_buffers):
        assert torch.equal(b_new, b_old)  # BatchNorm statistics: the teacher's own
    assert all(p.grad is None and not p.requires_grad for p in new)


# 5 ----------------------------------------------------------------------------------------------
def force_mixup(method: DINO, lam: torch.Tensor) -> None:
    """Make every SDMP draw a Mixup with the given λ (per image)."""
    method.mixing.draw = lambda images: MixDraw("mixup", {"lam": lam.clone()}, tuple(images.shape[-2:]))


def test_sdmp_with_lambda_one_reduces_to_dino_terms():
    """With λ = 1 the mixes are the crops and W_s = W_m = I, so P_t(x'^m) = P_t(x') and

        L = L_DINO(the clean views: 2 globals + the first num_local − k locals; pairs v != i)
          + 2 · mean over (global g, mixed local m) of H(P_t(g), P_s(local m))

    (L^s and L^m are both that mean); and L_DINO's pair average with the k mixed locals folded
    back in is the plain DINO loss on all the views."""
    model, method = make(num_local=4, sdmp=True, num_mixed_local=2)
    force_mixup(method, torch.ones(B))
    views = multi_crop(4)
    student, teacher = outputs(model, method, views)
    p_t = [torch.softmax((t - method.center) / 0.07, dim=-1) for t in teacher]
    clean = dino_by_hand(p_t, student[:4], 0.1)  # 6 pairs
    locals_vs_globals = dino_by_hand(p_t, student[4:], 0.1, skip_same=False)  # 4 pairs
    out = method.training_step(model, (views, None), progress=0.5)
    assert torch.allclose(out.loss, clean + 2 * locals_vs_globals, atol=1e-5)
    assert torch.allclose(out.logs["loss_dino"], clean, atol=1e-5)
    assert torch.allclose(out.logs["loss_source"], locals_vs_globals, atol=1e-5)
    assert torch.allclose(out.logs["loss_intra"], locals_vs_globals, atol=1e-5)
    assert float(out.logs["lam"]) == 1.0
    plain = dino_by_hand(p_t, student, 0.1)  # 10 pairs
    assert torch.allclose((6 * clean + 4 * locals_vs_globals) / 10, plain, atol=1e-5)


def test_sdmp_losses_follow_eq_7_and_8_by_hand():
    """λ = (0.3, 0.6, 0.8, 0.1, 0.5, 1.0) Mixup: x^m_i = λ_i x_i + (1 − λ_i) x_{n−1−i} on the mixed
    local crop and on both global views; Eq. 7 mixes the teacher's clean distributions with
    (λ_i, 1 − λ_i), Eq. 8 the teacher's mixed ones with (1, λᶜ_i) / (1 + λᶜ_i)."""
    lam = torch.tensor([0.3, 0.6, 0.8, 0.1, 0.5, 1.0])
    model, method = make(num_local=2, sdmp=True, num_mixed_local=1)
    force_mixup(method, lam)
    views = multi_crop(2)
    mix = lambda x: lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x.flip(0)
    student, teacher = outputs(model, method, views[:3] + [mix(views[3])])
    _, teacher_m = outputs(model, method, [mix(v) for v in views[:2]])
    p = [torch.softmax((t - method.center) / 0.07, dim=-1) for t in teacher]
    p_m = [torch.softmax((t - method.center) / 0.07, dim=-1) for t in teacher_m]
    other = lam.flip(0)
    shared = torch.minimum(lam, 1 - other) + torch.minimum(1 - lam, other)  # λᶜ
    source = [lam[:, None] * q + (1 - lam[:, None]) * q.flip(0) for q in p]
    intra = [(q + shared[:, None] * q.flip(0)) / (1 + shared[:, None]) for q in p_m]
    loss_s = sum(H(q, student[3], 0.1) for q in source) / 2
    loss_m = sum(H(q, student[3], 0.1) for q in intra) / 2
    clean = dino_by_hand(p, student[:3], 0.1)
    out = method.training_step(model, (views, None), progress=0.5)
    assert torch.allclose(out.logs["loss_source"], loss_s, atol=1e-5)
    assert torch.allclose(out.logs["loss_intra"], loss_m, atol=1e-5)
    assert torch.allclose(out.loss, clean + loss_s + loss_m, atol=1e-5)
    assert torch.allclose(out.logs["lam"], lam.mean())


def test_sdmp_mixes_globals_and_locals_with_one_draw():
    model, method = make(num_local=2, sdmp=True, num_mixed_local=1)
    draws = []
    real = method.mixing.draw
    method.mixing.draw = lambda images: draws.append(tuple(images.shape)) or real(images)
    out = method.training_step(model, (multi_crop(2), None), progress=0.5)
    assert draws == [(B, 3, 8, 8)]  # one draw per step, on the local crops
    assert torch.isfinite(out.loss) and 0 <= float(out.logs["lam"]) <= 1


# 6 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_gradients_reach_the_student_only_and_the_last_layer_waits(norm_last_layer):
    model, method = make(num_local=2, sdmp=True, num_mixed_local=1, norm_last_layer=norm_last_layer,
                         freeze_last_layer=0.1)
    last = method.head.last_layer.parametrizations.weight
    assert last.original0.requires_grad is not norm_last_layer
    assert torch.equal(last.original0, torch.ones_like(last.original0))  # the magnitude starts at 1
    for progress, frozen in ((0.0, True), (0.09, True), (0.1, False)):
        model.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        method.training_step(model, (multi_crop(2), None), progress).loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.conv.parameters())
        assert all(p.grad.abs().sum() > 0 for p in method.head.mlp.parameters())
        trainable = [p for p in method.head.last_layer.parameters() if p.requires_grad]
        assert len(trainable) == (1 if norm_last_layer else 2)
        assert all(bool((p.grad == 0).all()) is frozen for p in trainable)
        assert all(p.grad is None for p in [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()])
    groups = method.param_groups(0.1)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in method.head.parameters() if p.requires_grad}


# 7 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sdmp", [False, True])
def test_short_training_run_and_state_dict_round_trip(sdmp):
    kwargs = dict(num_local=2, sdmp=sdmp, num_mixed_local=1 if sdmp else None)
    model, method = make(create_model("resnet_small", 10, width=8), **kwargs)
    views = method.train_transform(None, 16)(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2  # multi-crop
    params = list(model.parameters()) + [p for g in method.param_groups(0.05) for p in g["params"]]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    for step in range(3):
        out = method.training_step(model, (multi_crop(2, 16, 8, seed=step), torch.zeros(B)), step / 3)
        assert torch.isfinite(out.loss)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, step / 3)
    assert method.center.abs().sum() > 0
    _, fresh = make(create_model("resnet_small", 10, width=8), seed=1, **kwargs)
    fresh.load_state_dict(method.state_dict())
    for (name, a), b in zip(method.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh.center, method.center)
    assert any(k.startswith("teacher_backbone.") for k in fresh.state_dict())


# 8 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(out_dim=0), "out_dim"), (dict(hidden_dim=-1), "hidden_dim"), (dict(bottleneck_dim=1.5), "bottleneck_dim"),
    (dict(head_layers=0), "head_layers"), (dict(student_temp=0.0), "student_temp"),
    (dict(teacher_temp=-0.1), "teacher_temp"), (dict(warmup_teacher_temp=float("nan")), "warmup_teacher_temp"),
    (dict(teacher_temp_warmup=1.5), "teacher_temp_warmup"), (dict(center_momentum=1.1), "center_momentum"),
    (dict(momentum=-0.1), "momentum"), (dict(freeze_last_layer=2.0), "freeze_last_layer"),
    (dict(num_local=-1), "num_local"), (dict(local_size=4), "local_size"),
    (dict(global_scale=(0.0, 1.0)), "global_scale"), (dict(local_scale=(0.5, 0.2)), "local_scale"),
    (dict(num_local=4, num_mixed_local=5), "num_mixed_local"),
    (dict(sdmp=True, num_local=1), "num_mixed_local"),  # num_local // 2 = 0: nothing to mix
    (dict(sdmp=True, num_local=4, num_mixed_local=0), "num_mixed_local"),
    (dict(mix_alpha=0.0), "mix_alpha"), (dict(ops=("mixup", "fmix")), "ops"), (dict(image_size=4), "image_size"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name} must"):
        DINO(**kwargs)


def test_misuse_is_named():
    with pytest.raises(TypeError, match="sdmp"):
        DINO(sdmp="yes")
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(8, 4, num_layers=0)
    with pytest.raises(RuntimeError, match="setup"):
        DINO(**SMALL).training_step(TinyNet(), (multi_crop(6), None), 0.0)
    model, method = make(num_local=2)
    with pytest.raises(ValueError, match="2 global \\+ 2 local views"):
        method.training_step(model, (multi_crop(3), None), 0.0)


# 9 ----------------------------------------------------------------------------------------------
def test_trainer_pretrains_dino_with_sdmp_and_resumes_exactly(tmp_path):
    from mixlab.engine import load_checkpoint, load_config, train

    tiny = ["data.num_per_class=6", "data.test_per_class=3", "data.image_size=16", "data.batch_size=12",
            "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false",
            "run.threads=1", "data.num_workers=0", "method.name=dino",
            "method.params={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, num_local: 2, sdmp: true}"]
    straight = train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'a'}"]))
    assert {"train_loss_dino", "train_loss_source", "train_loss_intra", "train_lam"} <= set(straight)
    train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*tiny, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["knn_acc1"] == straight["knn_acc1"]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for part in ("model", "method"):  # student, head, teacher copies and the centre, bit for bit
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert any(k.startswith("teacher_head.") for k in a["method"]) and "center" in a["method"]
