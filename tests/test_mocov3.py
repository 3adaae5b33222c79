"""MoCo v3 and SDMP on it (Eq. 3-5): the loss, the mixing step, the momentum encoder, training and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixlab.core.momentum import cosine_momentum
from mixlab.engine import load_config, train
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.models import create_model
from mixlab.ssl import MoCoV3, SDMPMixing
from mixlab.ssl.sdmp import sdmp_weights


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_small", 10, width=8)


def _method(**kwargs) -> tuple[MoCoV3, torch.nn.Module]:
    model = _model()
    method = MoCoV3(dim=16, mlp_dim=32, **kwargs)
    method.setup(model, torch.Generator().manual_seed(0))
    return method.train(), model.train()


def _views(n: int = 8, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)]


def _no_mixing(method: MoCoV3) -> None:
    """Make SDMP's mixing the identity: x^m = x, λ = 1."""
    method.mixing.apply = lambda images, draw: (images, torch.ones(images.shape[0]))


def test_contrastive_term_is_moco_v3s_scaled_cross_entropy():
    method, _ = _method(temperature=0.2)
    q, k = torch.randn(6, 16), torch.randn(6, 16)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
    expected = 2 * 0.2 * F.cross_entropy(logits, torch.arange(6))
    assert torch.allclose(method.contrastive(q, k), expected, atol=1e-6)


def test_plain_loss_is_symmetric_infonce_between_query_and_momentum_key():
    method, model = _method()
    x1, x2 = _views()
    loss = method.training_step(model, ([x1, x2], torch.zeros(8)), 0.0).loss
    with torch.no_grad():
        q1, q2 = method.query(model, x1), method.query(model, x2)
        expected = method.contrastive(q1, method.key(x2)) + method.contrastive(q2, method.key(x1))
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("form", ["soft", "code"])
def test_sdmp_without_mixing_reduces_to_plain_moco(form):
    """λ = 1: both teachers are the identity, L^s = L^m = ctr(q2, k1), so ½(L^s + L^m) is MoCo's
    second term, whichever view is mixed (the plain loss is symmetric)."""
    plain, model = _method()
    sdmp, _ = _method(sdmp=True, loss_form=form)
    _no_mixing(sdmp)
    sdmp.load_state_dict(plain.state_dict())
    views = _views()
    for _ in range(3):  # several draws of the view swap
        a = plain.training_step(model, (views, None), 0.0).loss
        b = sdmp.training_step(model, (views, None), 0.0).loss
        assert torch.allclose(a, b, atol=1e-5)


def test_sdmp_extra_version_adds_the_mixed_query_to_both_clean_ones():
    plain, model = _method()
    extra, _ = _method(sdmp=True, sdmp_version="extra")
    _no_mixing(extra)
    extra.load_state_dict(plain.state_dict())
    views = _views()
    base = plain.training_step(model, (views, None), 0.0).loss
    with torch.no_grad():
        one_way = [plain.contrastive(plain.query(model, views[i]), plain.key(views[1 - i])) for i in (0, 1)]
    got = extra.training_step(model, (views, None), 0.0).loss
    assert any(torch.allclose(got, base + t, atol=1e-5) for t in one_way)


def test_sdmp_loss_uses_the_source_and_intra_batch_teachers():
    method, model = _method(sdmp=True)
    lam = torch.tensor([0.3, 0.9, 0.5, 0.6, 0.2, 0.7, 1.0, 0.4])
    method.mixing.apply = lambda images, draw: (images.flip(0) * 0.5 + images * 0.5, lam)
    out = method.training_step(model, (_views(), None), 0.0)
    assert torch.isclose(out.logs["lam"], lam.mean())
    # with mixed queries, the soft teachers differ from one-hot targets: the loss differs from MoCo's
    plain, _ = _method()
    plain.load_state_dict({k: v for k, v in method.state_dict().items()})
    assert not torch.allclose(out.loss, plain.training_step(model, (_views(), None), 0.0).loss)


def test_static_switches_fix_the_loss_weights():
    lam = torch.tensor([0.2, 0.7, 0.9, 0.4])
    source, intra = sdmp_weights(lam, static_source=True, static_intra=True)
    assert torch.allclose(source.diagonal(), torch.full((4,), 0.5))
    assert torch.equal(intra, torch.eye(4))
    source, intra = sdmp_weights(lam)
    assert torch.allclose(source.diagonal(), lam) and not torch.equal(intra, torch.eye(4))


def test_gradients_reach_encoder_projector_predictor_never_the_momentum_copy():
    method, model = _method(sdmp=True)
    method.training_step(model, (_views(), None), 0.0).loss.backward()
    assert all(p.grad is not None for p in method.projector.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    backbone = [p for name, p in model.named_parameters() if not name.startswith(("fc.", "head."))]
    assert all(p.grad is not None for p in backbone)
    assert all(p.grad is None and not p.requires_grad for p in method.momentum_encoder.parameters())
    assert all(p.grad is None for p in method.momentum_projector.parameters())


def test_momentum_update_follows_the_cosine_schedule():
    method, model = _method(momentum=0.9)
    old = [p.clone() for p in method.momentum_encoder.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    method.after_optimizer_step(model, 0.25)
    m = cosine_momentum(0.9, 0.25)
    assert 0.9 < m < 1.0
    for new, before, q in zip(method.momentum_encoder.parameters(), old, model.parameters()):
        assert torch.allclose(new, m * before + (1 - m) * q, atol=1e-6)


def test_sdmp_mixing_applies_one_draw_to_both_views_and_rescales_boxes():
    mixing = SDMPMixing(ops=("cutmix",), generator=torch.Generator().manual_seed(3))
    small, big = torch.zeros(6, 1, 16, 16), torch.zeros(6, 1, 32, 32)
    small[:3], big[:3] = 1.0, 1.0  # images 0-2 white, 3-5 black: partner n-1-i has the other colour
    draw = mixing.draw(small)
    mixed_small, lam_small = mixing.apply(small, draw)
    mixed_big, lam_big = mixing.apply(big, draw)
    assert torch.equal(lam_small, lam_big)  # boxes scaled by 2 exactly
    own = torch.where(torch.arange(6) < 3, 1.0, 0.0)
    frac_small = (mixed_small.mean(dim=(1, 2, 3)) - (1 - own)).abs()  # share of the own colour
    assert torch.allclose(frac_small, lam_small, atol=1e-6)
    assert len(set(lam_small.tolist())) > 1  # per-sample λ


def test_sdmp_mixing_shared_lambda_and_operation_choice():
    mixing = SDMPMixing(ops=("mixup",), per_sample=False, generator=torch.Generator().manual_seed(0))
    images = torch.rand(8, 3, 8, 8)
    _, lam = mixing.apply(images, mixing.draw(images))
    assert torch.all(lam == lam[0])
    ops = {SDMPMixing(generator=torch.Generator().manual_seed(s)).draw(images).op for s in range(30)}
    assert ops == {"mixup", "cutmix", "resizemix"}


@pytest.mark.parametrize("kwargs, name", [({"temperature": 0}, "temperature"), ({"momentum": 1.5}, "momentum"),
                                          ({"sdmp_version": "both"}, "sdmp_version"), ({"dim": 0}, "dim"),
                                          ({"loss_form": "hard"}, "loss_form"), ({"ops": ["fmix"]}, "ops"),
                                          ({"ops": []}, "ops"), ({"sdmp": "yes"}, "sdmp")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        MoCoV3(**kwargs)


def test_a_batch_without_two_views_is_rejected():
    method, model = _method()
    with pytest.raises(TypeError, match="views"):
        method.training_step(model, (torch.randn(4, 3, 16, 16), torch.zeros(4)), 0.0)


TINY = ["data.num_per_class=6", "data.test_per_class=3", "data.image_size=16", "data.batch_size=12",
        "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false", "run.threads=1",
        "data.num_workers=0", "method.name=mocov3", "method.params={dim: 16, mlp_dim: 32, sdmp: true}"]


def test_trainer_pretrains_with_knn_monitor_and_resumes_exactly(tmp_path: Path):
    straight = train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'a'}"]))
    assert 0 <= straight["knn_acc1"] <= 100 and "test_acc1" not in straight
    assert {"train_loss_source", "train_loss_intra", "train_lam"} <= set(straight)
    ckpt = load_checkpoint(tmp_path / "a")
    assert any(k.startswith("momentum_encoder.") for k in ckpt["method"])
    assert any(k.startswith("projector.") for k in ckpt["method"])
    assert (tmp_path / "a" / "curves.png").exists() and (tmp_path / "a" / "samples.png").exists()
    train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*TINY, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["knn_acc1"] == straight["knn_acc1"]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
