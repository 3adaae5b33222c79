"""SAMix's self-supervised variant (openmixup's MoCoSAMix) on MoCo v2: the mixup InfoNCE and the
two-instance loss by hand, the mask mean adjustment, the key encoder's one pass (keys and maps),
which parameters each term trains, the momentum-only key encoder, the queue, exact resume through
the engine, `mixlab pretrain --framework samix-ssl`, and the argument checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixlab.cli import main
from mixlab.engine import build_optimizer, load_config, train, train_step
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import OptimConfig
from mixlab.methods.samix import SAMixBlock, mask_loss
from mixlab.models import create_model
from mixlab.models.staged import forward_until
from mixlab.ssl import SAMixSSL
from mixlab.ssl.samix import adjust_mask_mean, mixup_infonce, two_instance_loss


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_small", 10, width=8)


def _method(**kwargs) -> tuple[SAMixSSL, torch.nn.Module]:
    model = _model()
    method = SAMixSSL(**{"dim": 16, "hidden_dim": 32, "queue_size": 24, **kwargs})
    method.setup(model, torch.Generator().manual_seed(0))
    return method.train(), model.train()


def _views(n: int = 8, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)]


def _nce(logit_pos: float, logit_negs: list[float]) -> float:
    return -logit_pos + math.log(math.exp(logit_pos) + sum(math.exp(v) for v in logit_negs))


# ---------------------------------------------------------------------------------- the losses by hand
def test_mixup_infonce_is_the_lambda_weighted_infonce_of_each_parts_positive():
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    first = torch.tensor([[0.6, 0.8], [0.0, 1.0]])  # the positives of the λ parts
    second = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # of the 1 − λ parts
    queue = torch.tensor([[-1.0, 0.0], [0.8, 0.6]])
    lam = torch.tensor([0.25, 0.6])
    loss = mixup_infonce(m, first, second, lam, queue, temperature=0.5)
    # logits / τ: row 0: positives 1.2 and 0, negatives -2 and 1.6; row 1: positives 2 and 0, negatives 0 and 1.2
    row0 = 0.25 * _nce(1.2, [-2.0, 1.6]) + 0.75 * _nce(0.0, [-2.0, 1.6])
    row1 = 0.6 * _nce(2.0, [0.0, 1.2]) + 0.4 * _nce(0.0, [0.0, 1.2])
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_mixup_infonce_at_lambda_one_is_mocos_infonce():
    method = SAMixSSL(dim=2, hidden_dim=4, queue_size=2, temperature=0.5)
    method.queue = torch.tensor([[-1.0, 0.0], [0.8, 0.6]])
    m, k = F.normalize(torch.randn(5, 2), dim=1), F.normalize(torch.randn(5, 2), dim=1)
    other = F.normalize(torch.randn(5, 2), dim=1)
    moco, _ = method.contrastive(m, k)
    assert torch.allclose(mixup_infonce(m, k, other, torch.ones(5), method.queue, 0.5), moco, atol=1e-6)


def test_the_two_instance_loss_is_the_cross_entropy_between_the_two_positives_only():
    m = torch.tensor([[1.0, 0.0]])
    first, second = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.0, 1.0]])
    loss = two_instance_loss(m, first, second, torch.tensor([0.3]), temperature=0.5)
    p_first = math.exp(1.2) / (math.exp(1.2) + math.exp(0.0))
    assert loss.item() == pytest.approx(-0.3 * math.log(p_first) - 0.7 * math.log(1 - p_first), abs=1e-6)


def test_the_mask_mean_is_pulled_to_lambda_only_beyond_the_margin():
    lam = torch.tensor([0.3, 0.3, 0.7])
    mask = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.35),
                        torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])])  # means 0.5 (> λ + 0.1), 0.35, 0.5 (< λ − 0.1)
    out = adjust_mask_mean(mask, lam, margin=0.1)
    assert torch.allclose(out[0], torch.full((1, 2, 2), 0.3))  # s λ / mean
    assert torch.equal(out[1], mask[1])  # within the margin: untouched
    assert torch.allclose(out[2], 1 - (1 - mask[2]) * 0.3 / 0.5)  # 1 − (1 − s)(1 − λ)/(1 − mean)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.tensor([0.3, 0.35, 0.7]))


def test_the_mixer_of_two_maps_is_samixs_mixer_with_the_partners_map():
    torch.manual_seed(0)
    block = SAMixBlock(8)
    block.reset_parameters(torch.Generator().manual_seed(3))
    z, lam, index = torch.randn(4, 8, 3, 3), torch.full((4,), 0.3), torch.tensor([2, 0, 3, 1])
    assert torch.allclose(block.mask(z, z[index], lam, (12, 12)), block(z, lam, index, (12, 12)))
    with pytest.raises(ValueError, match="two .* feature maps of one shape"):
        block.mask(z, z[:, :, :2], lam, (12, 12))


# ---------------------------------------------------------------------------------- the step
def test_the_key_encoder_gives_both_views_keys_and_stage_maps_in_one_pass():
    method, _ = _method()
    method.eval()  # running statistics: the shuffled sub-batches give exactly the one-batch outputs
    x_q, x_k = _views()
    k_q, k_k, z_q, z_k, every = method.encode_views(x_q, x_k)
    encoder = method.momentum_encoder
    assert method.feature_stage == 3 and z_q.shape == (8, 32, 4, 4)  # stage S − 1 of the 4-stage ResNet
    assert torch.allclose(z_q, forward_until(encoder, x_q, 3), atol=1e-6)
    assert torch.allclose(z_k, forward_until(encoder, x_k, 3), atol=1e-6)
    assert torch.allclose(k_q, method._encode_key(x_q), atol=1e-6)
    assert torch.allclose(k_k, method._encode_key(x_k), atol=1e-6)
    assert torch.equal(every, k_k)  # only the key views' keys go to the queue


def test_the_step_is_moco_plus_the_backbones_and_the_mixers_mixup_infonce_and_the_weighted_mask_loss():
    method, model = _method(shuffle_bn=False, mask_loss=0.3)
    x_q, x_k = _views()
    generator_state = method.generator.get_state()
    out = method.training_step(model, ([x_q, x_k], None), 0.0)
    logs = out.logs
    expected = logs["loss_moco"] + logs["loss_mix"] + logs["loss_mixer"] + 0.3 * logs["loss_mask"]
    assert torch.allclose(out.loss, expected, atol=1e-6) and out.logits is None

    # the same draws again, each term rebuilt from its definition
    method.generator.set_state(generator_state)
    with torch.no_grad():
        k_q, k_k, z_q, z_k, _ = method.encode_views(x_q, x_k)
        q = method.query(model, x_q)
        moco = F.cross_entropy(torch.cat([(q * k_k).sum(1, keepdim=True), q @ method.queue.T], 1) / 0.2,
                               torch.zeros(8, dtype=torch.long))
        lam_b, index_b = method.draw(8, x_q.device)
        mask_b = adjust_mask_mean(method.mix_block.mask(z_q, z_k[index_b], lam_b, (16, 16)), lam_b, 0.1)
        mixed_b = mask_b * x_q + (1 - mask_b) * x_k[index_b]  # query view of i, key view of its partner
        mix = mixup_infonce(method.query(model, mixed_b), k_k, k_q[index_b], lam_b, method.queue, 0.2)
        lam_m, index_m = method.draw(8, x_q.device)
        mask_m = method.mix_block.mask(z_q, z_k[index_m], lam_m, (16, 16))
        m = method.key_embedding(mask_m * x_q + (1 - mask_m) * x_k[index_m])  # through θk
        mixer = mixup_infonce(m, k_k, k_q[index_m], lam_m, method.queue, 0.2)
    assert torch.allclose(logs["loss_moco"], moco, atol=1e-5)
    assert torch.allclose(logs["loss_mix"], mix, atol=1e-5)
    assert torch.allclose(logs["loss_mixer"], mixer, atol=1e-5)
    assert torch.allclose(logs["loss_mask"], mask_loss(mask_m, lam_m, 0.1), atol=1e-6)
    assert float(lam_b[0]) != float(lam_m[0])  # two draws per step


def test_eta_makes_the_mixers_loss_the_local_term_plus_eta_times_the_global_one():
    method, model = _method(shuffle_bn=False, eta=0.5)
    x_q, x_k = _views()
    state = method.generator.get_state()
    terms, _ = method.losses(model, x_q, x_k)
    method.generator.set_state(state)
    with torch.no_grad():
        k_q, k_k, z_q, z_k, _ = method.encode_views(x_q, x_k)
        method.draw(8, x_q.device)  # the backbone's draw
        lam_m, index_m = method.draw(8, x_q.device)
        mask_m = method.mix_block.mask(z_q, z_k[index_m], lam_m, (16, 16))
        m = method.key_embedding(mask_m * x_q + (1 - mask_m) * x_k[index_m])
        local = two_instance_loss(m, k_k, k_q[index_m], lam_m, 0.2)
        global_ = mixup_infonce(m, k_k, k_q[index_m], lam_m, method.queue, 0.2)
    assert torch.allclose(terms["loss_mixer"], local + 0.5 * global_, atol=1e-5)
    assert not torch.allclose(local, global_, atol=1e-3)


def test_each_term_trains_only_its_own_parameters():
    method, model = _method()
    terms, _ = method.losses(model, *_views())
    backbone = [p for name, p in model.named_parameters() if not name.startswith("fc.")]
    projector, mixer = list(method.projector.parameters()), list(method.mix_block.parameters())

    def reached(term, params):
        grads = torch.autograd.grad(terms[term], params, retain_graph=True, allow_unused=True)
        return [g is not None and bool(g.abs().sum() > 0) for g in grads]

    for term in ("loss_moco", "loss_mix"):  # the backbone's terms: θq and g_q, never φ
        assert all(reached(term, backbone)) and all(reached(term, projector)), term
        assert not any(reached(term, mixer)), term
    for term in ("loss_mixer", "loss_mask"):  # the Mixer's terms: φ only (θk is a stop-gradient)
        assert all(reached(term, mixer)), term
        assert not any(reached(term, backbone)) and not any(reached(term, projector)), term
    assert not any(p.requires_grad for p in method.momentum_encoder.parameters())
    assert not any(p.requires_grad for p in method.momentum_projector.parameters())
    assert [g["params"] for g in method.param_groups(0.1)] == [projector, mixer]
    assert method.param_groups(0.1)[1]["lr_scale"] == 1.0


def test_an_optimizer_step_moves_the_key_encoder_only_by_the_momentum_update_and_enqueues_the_key_views():
    method, model = _method(momentum=0.9, shuffle_bn=False)
    optimizer = build_optimizer(model, method, OptimConfig(name="sgd", lr=0.1))
    x_q, x_k = _views()
    key_before = [p.clone() for p in method.momentum_encoder.parameters()]
    mixer_before = [p.clone() for p in method.mix_block.parameters()]
    with torch.no_grad():
        keys = method.encode_views(x_q, x_k)[1]  # train-mode BatchNorm: the step's own keys
    out = train_step(model, method, optimizer, ([x_q, x_k], torch.zeros(8)), 0.0)
    assert torch.isfinite(out.loss)
    for new, before, q in zip(method.momentum_encoder.parameters(), key_before, model.parameters()):
        assert torch.allclose(new, 0.9 * before + 0.1 * q, atol=1e-6)  # no gradient step on θk
    assert any(not torch.equal(a, b) for a, b in zip(mixer_before, method.mix_block.parameters()))
    assert int(method.queue_ptr) == 8 and torch.allclose(method.queue[:8], keys, atol=1e-5)


def test_mix_preview_draws_the_mixers_masks_and_leaves_the_statistics():
    method, _ = _method()
    stats = [b.clone() for b in method.momentum_encoder.buffers()]
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed = method.mix_preview(images, labels)
    assert mixed.images.shape == images.shape and mixed.mask.shape == (6, 1, 16, 16)
    expected = mixed.mask * images + (1 - mixed.mask) * images[mixed.index]
    assert torch.allclose(mixed.images, expected, atol=1e-6)
    assert torch.allclose(mixed.targets.sum(1), torch.ones(6))
    assert all(torch.equal(a, b) for a, b in zip(stats, method.momentum_encoder.buffers()))


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, name", [({"alpha": 0}, "alpha"), ({"stage": 0}, "stage"), ({"eta": -1}, "eta"),
                                          ({"mask_loss": -0.1}, "mask_loss"), ({"mask_margin": 1.0}, "mask_margin"),
                                          ({"mask_adjust": 1.5}, "mask_adjust"), ({"lam_rescale": -1}, "lam_rescale"),
                                          ({"upsampling": "bicubic"}, "upsampling"), ({"reduction": 0}, "reduction"),
                                          ({"mix_block_lr_scale": 0}, "mix_block_lr_scale"),
                                          ({"temperature": 0}, "temperature"), ({"queue_size": 0}, "queue_size")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        SAMixSSL(**kwargs)


def test_bad_models_and_batches_are_refused_clearly():
    with pytest.raises(ValueError, match=r"stage must be in 1\.\.4"):
        SAMixSSL(stage=5).setup(_model())
    timm_like = torch.nn.Linear(3, 3)
    with pytest.raises(TypeError, match="SAMixSSL"):
        SAMixSSL().setup(timm_like)
    with pytest.raises(RuntimeError, match="setup"):
        SAMixSSL().training_step(_model(), (_views(), None), 0.0)
    method, model = _method()
    with pytest.raises(ValueError, match="two views"):
        method.training_step(model, (_views() * 2, None), 0.0)
    x_q, x_k = _views()
    with pytest.raises(ValueError, match="one shape"):
        method.training_step(model, ([x_q, x_k[:, :, :8]], None), 0.0)


# ---------------------------------------------------------------------------------- engine, CLI
TINY = ["data.num_per_class=6", "data.test_per_class=3", "data.image_size=16", "data.batch_size=12",
        "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false", "run.threads=1",
        "data.num_workers=0", "method.name=samix-ssl", "method.params={dim: 16, hidden_dim: 32, queue_size: 20}"]


def test_trainer_pretrains_with_knn_monitor_and_resumes_exactly(tmp_path: Path):
    straight = train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'a'}"]))
    assert 0 <= straight["knn_acc1"] <= 100 and "test_acc1" not in straight
    assert {"train_loss_mixer", "train_loss_mask", "train_contrast_acc"} <= set(straight)
    ckpt = load_checkpoint(tmp_path / "a")
    assert int(ckpt["method"]["queue_ptr"]) == (2 * 5 * 12) % 20  # 2 epochs x 5 steps x 12 key views
    assert any(k.startswith("mix_block.") for k in ckpt["method"])
    assert (tmp_path / "a" / "samples.png").exists()
    train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*TINY, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["knn_acc1"] == straight["knn_acc1"]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_cli_pretrain_samix_ssl_gets_the_small_heads(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [x for o in TINY[:-2] for x in ("--set", o)]
    assert main(["pretrain", "--framework", "samix-ssl", "--no-probe", "--epochs", "1", *sets,
                 "--set", "method.params={queue_size: 24, eta: 0.5}", "--out", str(out)]) == 0
    assert "final kNN accuracy" in capsys.readouterr().out
    params = load_checkpoint(out)["config"]["method"]["params"]
    assert params["hidden_dim"] == 512 and params["queue_size"] == 24 and params["eta"] == 0.5
    assert main(["pretrain", "--framework", "samix-ssl", "--cropmix", *sets]) == 2
    assert "--cropmix applies to --framework mocov2 or mae, not samix-ssl" in capsys.readouterr().err
