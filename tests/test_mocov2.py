"""MoCo v2 with CropMix / ScaleMix query views (CropMix paper §5, Appendix B.2): the views' crops and
patch, the InfoNCE against the queue, the queue's FIFO arithmetic, the momentum update, shuffle-BN,
the engine's step, exact resume, and `mixlab pretrain --framework mocov2`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mixlab.cli import main
from mixlab.engine import build_optimizer, load_config, train, train_step
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import OptimConfig
from mixlab.models import create_model
from mixlab.ssl import MoCoV2
from mixlab.transforms.views import MixedQuery

SIDE = 64  # source images for the crop checks: area fractions are exact to ~2 %


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_small", 10, width=8)


def _method(**kwargs) -> tuple[MoCoV2, torch.nn.Module]:
    model = _model()
    method = MoCoV2(**{"dim": 16, "hidden_dim": 32, "queue_size": 24, **kwargs})
    method.setup(model, torch.Generator().manual_seed(0))
    return method.train(), model.train()


def _views(n: int = 8, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)]


def _record(transform, log: list) -> None:
    """Log every parameter dict ``transform.make_params`` returns (the draws the forward then uses)."""
    make = transform.make_params

    def recorded(flat_inputs):
        params = make(flat_inputs)
        log.append(params)
        return params

    transform.make_params = recorded


def _area(crop: dict) -> float:
    return crop["height"] * crop["width"] / SIDE ** 2


@pytest.fixture(autouse=True)
def _one_thread():
    """Per-image transforms run single-threaded, as in the loader's workers (tiny ops: threads only
    add contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _drawn_crops(views: str, n: int = 200) -> tuple[list, list, list]:
    """Run the method's two-view transform on ``n`` seeds; the recorded query and key parameters."""
    transform = MoCoV2(views=views).views(32)
    query_params, key_params = [], []
    if isinstance(transform.first, MixedQuery):
        _record(transform.first, query_params)
    else:  # standard: the query is a MoCo v2 view too
        _record(transform.first.transforms[0], query_params)
    _record(transform.second.transforms[0], key_params)  # the key's RandomResizedCrop
    image = torch.randint(0, 256, (3, SIDE, SIDE), dtype=torch.uint8)
    outputs = []
    for seed in range(n):
        torch.manual_seed(seed)
        outputs.append(transform(image))
    return outputs, query_params, key_params


def _within(areas: list[float], lo: float, hi: float, tol: float = 0.03) -> bool:
    """Every area in [lo, hi] up to the pixel rounding of the crop sides, and the range covered."""
    return (all(lo - tol <= a <= hi + tol for a in areas) and min(areas) < lo + 0.1 * (hi - lo)
            and max(areas) > hi - 0.1 * (hi - lo))


# ---------------------------------------------------------------------------------- views
def test_cropmix_query_has_a_small_and_a_large_crop_and_the_key_one_crop_of_the_whole_range():
    outputs, query, key = _drawn_crops("cropmix")
    assert all(len(v) == 2 and v[0].shape == v[1].shape == (3, 32, 32) for v in outputs)
    assert len(query) == len(key) == len(outputs)  # one draw of each branch per image
    assert all(len(p["crops"]) == 2 for p in query)  # the query: two crops; the key: one RandomResizedCrop
    assert _within([_area(p["crops"][0]) for p in query], 0.2, 0.6)  # the base: small scale
    assert _within([_area(p["crops"][1]) for p in query], 0.6, 1.0)  # the patch: large scale
    assert _within([_area(p) for p in key], 0.2, 1.0)
    lams = [p["lam"] for p in query]
    assert 0 <= min(lams) < 0.05 and 0.95 < max(lams) < 1  # λ ~ U(0, 1)


def test_scalemix_draws_both_query_crops_from_the_one_range():
    _, query, key = _drawn_crops("scalemix")
    assert all(len(p["crops"]) == 2 for p in query)
    for i in (0, 1):
        assert _within([_area(p["crops"][i]) for p in query], 0.2, 1.0)
    assert _within([_area(p) for p in key], 0.2, 1.0)


def test_standard_views_are_two_moco_v2_views_of_the_whole_range():
    outputs, query, key = _drawn_crops("standard", n=100)
    assert len(query) == len(key) == 100
    assert _within([_area(p) for p in query], 0.2, 1.0) and _within([_area(p) for p in key], 0.2, 1.0)
    ops = [type(t.transforms[0]).__name__ if isinstance(t, v2.RandomApply) else type(t).__name__
           for t in MoCoV2().views(32).second.transforms]
    assert ops == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "GaussianBlur", "RandomHorizontalFlip"]
    jitter, gray, blur, flip = MoCoV2().views(32).second.transforms[1:]
    assert jitter.p == 0.8 and gray.p == 0.2 and blur.p == 0.5 and flip.p == 0.5
    assert tuple(blur.transforms[0].kernel_size) == (3, 3) and list(blur.transforms[0].sigma) == [0.1, 2.0]


def test_the_patch_comes_from_the_large_scale_view():
    """A 32x32 image, top-left quadrant 10, the rest 200. Base crop: that quadrant (all 10 once
    upscaled); patch crop: the whole image. The box (8, 8, 24, 24) must show the whole image's
    pixels (200 below and right of row/column 16), the rest the quadrant's 10."""
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    image[:, :16, :16] = 10
    query = MixedQuery(32, augment=v2.Identity())
    params = {"crops": [dict(top=0, left=0, height=16, width=16), dict(top=0, left=0, height=32, width=32)],
              "lam": 0.75, "box": (8, 8, 24, 24)}
    expected = torch.full((3, 32, 32), 10, dtype=torch.uint8)
    expected[:, 8:24, 16:24] = 200
    expected[:, 16:24, 8:16] = 200
    assert torch.equal(query.transform(image, params), expected)


def test_random_queries_are_the_small_crop_with_the_large_crops_box():
    """Through the transform's own draws: outside the box, the resized small-scale crop; inside it,
    the resized large-scale crop, pixel for pixel (an image whose pixels encode their position)."""
    rows = torch.arange(SIDE).view(SIDE, 1).expand(SIDE, SIDE)
    image = torch.stack([rows * 4, rows.T * 4, (rows + rows.T) * 2]).to(torch.uint8)
    query, log = MixedQuery(32, augment=v2.Identity()), []
    _record(query, log)
    for seed in range(20):
        torch.manual_seed(seed)
        out = query(image)
        params = log[-1]
        small, large = (TF.resized_crop(image, **c, size=[32, 32], antialias=True) for c in params["crops"])
        x1, y1, x2, y2 = params["box"]
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.equal(out[:, inside], large[:, inside]) and torch.equal(out[:, ~inside], small[:, ~inside])
        kept = 1 - inside.float().mean().item()
        assert kept >= params["lam"] - 1e-9  # the box holds at most 1 − λ of the pixels (clipping, rounding)


def test_views_follow_the_torch_seed_and_keep_pil_images():
    from PIL import Image

    transform = MoCoV2(views="cropmix").views(32)
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(3)
    a = transform(image)
    torch.manual_seed(3)
    b = transform(image)
    assert all(torch.equal(x, y) and x.dtype == torch.uint8 for x, y in zip(a, b))
    pil = transform(Image.new("RGB", (40, 40)))
    assert [p.size for p in pil] == [(32, 32), (32, 32)]


# ---------------------------------------------------------------------------------- the loss
def test_infonce_against_the_queue_equals_the_hand_computed_value():
    method = MoCoV2(dim=2, hidden_dim=4, queue_size=3, temperature=0.5)
    method.queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    loss, logits = method.contrastive(q, k)
    # logits / τ: [q·k, q·queue...] / 0.5 = [1.2, 0, -2, 1.6] and [2, 2, 0, 1.2]
    assert torch.allclose(logits, torch.tensor([[1.2, 0.0, -2.0, 1.6], [2.0, 2.0, 0.0, 1.2]]))
    one = -1.2 + math.log(math.exp(1.2) + math.exp(0) + math.exp(-2) + math.exp(1.6))
    two = -2.0 + math.log(2 * math.exp(2) + math.exp(0) + math.exp(1.2))
    assert loss.item() == pytest.approx((one + two) / 2, abs=1e-6)


def test_the_loss_is_one_directional_query_of_view_one_against_key_of_view_two():
    method, model = _method(shuffle_bn=False)
    x1, x2 = _views()
    loss = method.training_step(model, ([x1, x2], None), 0.0).loss
    with torch.no_grad():
        q = F.normalize(method.projector(model.forward_head(model.forward_features(x1), pre_logits=True)), dim=1)
        encoder = method.momentum_encoder
        k = F.normalize(method.momentum_projector(encoder.forward_head(encoder.forward_features(x2), pre_logits=True)),
                        dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ method.queue.T], 1) / 0.2
        expected = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert torch.allclose(loss, expected, atol=1e-6)
    swapped = method.training_step(model, ([x2, x1], None), 0.0).loss
    assert not torch.allclose(loss, swapped)


def test_gradients_reach_backbone_and_projector_never_the_key_encoder_or_queue():
    method, model = _method()
    method.training_step(model, (_views(), None), 0.0).loss.backward()
    assert all(p.grad is not None for p in method.projector.parameters())
    backbone = [p for name, p in model.named_parameters() if not name.startswith(("fc.", "head."))]
    assert all(p.grad is not None for p in backbone)
    assert all(p.grad is None and not p.requires_grad for p in method.momentum_encoder.parameters())
    assert all(p.grad is None for p in method.momentum_projector.parameters())
    assert not method.queue.requires_grad
    assert [g["params"] for g in method.param_groups(0.1)] == [list(method.projector.parameters())]


# ---------------------------------------------------------------------------------- the queue
def test_enqueue_wraps_around_and_holds_the_last_k_keys_oldest_at_the_pointer():
    method = MoCoV2(dim=2, hidden_dim=4, queue_size=5)
    keys = torch.tensor([[float(i), -float(i)] for i in range(1, 15)])
    for t in range(7):  # batches of 2: pointer 2, 4, 1, 3, 0, 2, 4
        method.enqueue(keys[2 * t:2 * t + 2])
        assert int(method.queue_ptr) == (2 * (t + 1)) % 5
        seen = keys[:2 * (t + 1)]
        if len(seen) >= 5:  # read from the pointer on: the last 5 keys, oldest first
            assert torch.equal(method.queue.roll(-int(method.queue_ptr), dims=0), seen[-5:])
    method.enqueue(keys[:7])  # more keys than the queue holds: the last 5, pointer moved by 7
    assert int(method.queue_ptr) == (14 + 7) % 5
    assert torch.equal(method.queue.roll(-int(method.queue_ptr), dims=0), keys[2:7])


def test_the_steps_keys_enter_the_queue_after_the_optimizer_step_only_in_training():
    method, model = _method(shuffle_bn=False)
    start = method.queue.clone()
    assert torch.allclose(start.norm(dim=1), torch.ones(24))  # random unit vectors to begin with
    x1, x2 = _views()
    method.training_step(model, ([x1, x2], None), 0.0)
    assert torch.equal(method.queue, start)  # nothing moves before the step
    keys = method.keys(x2)[0]
    method.after_optimizer_step(model, 0.0)
    assert int(method.queue_ptr) == 8 and torch.allclose(method.queue[:8], keys, atol=1e-6)
    assert torch.equal(method.queue[8:], start[8:])
    method.eval()
    method.training_step(model, ([x1, x2], None), 0.0)
    method.after_optimizer_step(model, 0.0)
    assert int(method.queue_ptr) == 8  # evaluation does not enqueue


# ---------------------------------------------------------------------------------- momentum, shuffle-BN
@pytest.mark.parametrize("progress", [0.0, 0.7])
def test_momentum_update_is_the_constant_moco_formula(progress):
    method, model = _method(momentum=0.9)
    old = [p.clone() for p in method.momentum_encoder.parameters()]
    old_proj = [p.clone() for p in method.momentum_projector.parameters()]
    with torch.no_grad():
        for p in [*model.parameters(), *method.projector.parameters()]:
            p.add_(1.0)
    method.after_optimizer_step(model, progress)  # m = 0.9 whatever the progress (no schedule)
    for new, before, q in zip(method.momentum_encoder.parameters(), old, model.parameters()):
        assert torch.allclose(new, 0.9 * before + 0.1 * q, atol=1e-6)
    for new, before, q in zip(method.momentum_projector.parameters(), old_proj, method.projector.parameters()):
        assert torch.allclose(new, 0.9 * before + 0.1 * q, atol=1e-6)


def test_shuffle_bn_encodes_the_keys_in_random_sub_batches_and_restores_their_order():
    method, _ = _method(bn_splits=4)
    x = _views(n=12)[1]
    g = method.generator
    state = g.get_state()
    keys, every = method.keys(x)
    assert keys is every
    g.set_state(state)
    perm = torch.randperm(12, generator=g)
    parts = [method._encode_key(part) for part in x[perm].tensor_split(4)]  # 4 sub-batches of 3
    assert torch.allclose(keys, torch.cat(parts)[perm.argsort()], atol=1e-6)
    assert not torch.allclose(keys, method._encode_key(x), atol=1e-4)  # other BatchNorm statistics
    method.eval()  # running statistics: the shuffle is undone exactly
    assert torch.allclose(method.keys(x)[0], method._encode_key(x), atol=1e-6)


# ---------------------------------------------------------------------------------- engine, preview, CLI
def test_one_engine_train_step_updates_weights_key_encoder_and_queue():
    method, model = _method(views="cropmix")
    optimizer = build_optimizer(model, method, OptimConfig(name="sgd", lr=0.1))
    key_before = [p.clone() for p in method.momentum_encoder.parameters()]
    weights_before = [p.clone() for p in model.parameters()]
    out = train_step(model, method, optimizer, (_views(), torch.zeros(8)), 0.0)
    assert torch.isfinite(out.loss) and out.logits is None and 0 <= float(out.logs["contrast_acc"]) <= 100
    assert int(method.queue_ptr) == 8
    assert any(not torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(key_before, method.momentum_encoder.parameters()))


def test_mix_preview_draws_the_mixed_queries():
    assert _method()[0].mix_preview(torch.randn(4, 3, 16, 16), torch.arange(4)) is None  # standard views
    method, _ = _method(views="cropmix")
    images = torch.randn(6, 3, 16, 16)
    mixed = method.mix_preview(images, torch.tensor([0, 1, 2, 3, 4, 5]))
    assert mixed.images.shape == images.shape and torch.equal(mixed.index, torch.arange(6))
    assert torch.equal(mixed.targets, torch.eye(6))  # labels unchanged
    assert torch.allclose(mixed.lam, mixed.mask.mean(dim=(1, 2, 3)))  # λ: the base view's pixel share
    assert 0 < float(mixed.lam.min()) and float(mixed.lam.max()) <= 1


@pytest.mark.parametrize("kwargs, name", [({"temperature": 0}, "temperature"), ({"momentum": 1.5}, "momentum"),
                                          ({"views": "mixup"}, "views"), ({"queue_size": 0}, "queue_size"),
                                          ({"scale": (0.0, 1.0)}, "scale"), ({"bn_splits": 0}, "bn_splits"),
                                          ({"shuffle_bn": 1}, "shuffle_bn"), ({"hidden_dim": -1}, "hidden_dim")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        MoCoV2(**kwargs)


def test_a_batch_without_two_views_is_rejected():
    method, model = _method()
    with pytest.raises(ValueError, match="two views"):
        method.training_step(model, (_views() * 2, None), 0.0)


TINY = ["data.num_per_class=6", "data.test_per_class=3", "data.image_size=16", "data.batch_size=12",
        "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false", "run.threads=1",
        "data.num_workers=0", "method.name=mocov2",
        "method.params={dim: 16, hidden_dim: 32, queue_size: 20, views: cropmix}"]


def test_trainer_pretrains_with_knn_monitor_and_resumes_exactly(tmp_path: Path):
    straight = train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'a'}"]))
    assert 0 <= straight["knn_acc1"] <= 100 and "test_acc1" not in straight and "train_contrast_acc" in straight
    ckpt = load_checkpoint(tmp_path / "a")
    assert int(ckpt["method"]["queue_ptr"]) == (2 * 5 * 12) % 20  # 2 epochs x 5 steps x 12 keys
    assert any(k.startswith("momentum_encoder.") for k in ckpt["method"])
    assert (tmp_path / "a" / "samples.png").exists()
    train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*TINY, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["knn_acc1"] == straight["knn_acc1"]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_cli_pretrain_mocov2_cropmix_and_flags_that_do_not_apply(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [x for o in TINY[:-2] for x in ("--set", o)]
    assert main(["pretrain", "--framework", "mocov2", "--cropmix", "--no-probe", "--epochs", "1", *sets,
                 "--set", "method.params={queue_size: 24}", "--out", str(out)]) == 0
    assert "final kNN accuracy" in capsys.readouterr().out
    params = load_checkpoint(out)["config"]["method"]["params"]
    assert params["views"] == "cropmix" and params["queue_size"] == 24 and params["hidden_dim"] == 512
    assert main(["pretrain", "--framework", "mocov2", "--sdmp", *sets]) == 2
    assert "--sdmp applies to --framework mocov3 or dino, not mocov2" in capsys.readouterr().err
    assert main(["pretrain", "--framework", "mocov3", "--scalemix", *sets]) == 2
    assert "--scalemix applies to --framework mocov2, not mocov3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--framework", "mocov2", "--cropmix", "--scalemix"])


def test_show_draws_the_cropmix_queries(tmp_path, capsys):
    path = tmp_path / "show.png"
    assert main(["show", "--method", "mocov2", "--n", "4", "--out", str(path),
                 "--set", "method.params.views=cropmix"]) == 0
    assert "mean lambda" in capsys.readouterr().out and path.is_file()


# ---------------------------------------------------------------------------------- two processes
def _ddp_worker(rank: int, port: int) -> None:
    import os

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from mixlab.engine import distributed as D

    D.init_distributed(device="cpu")
    try:
        method, model = _method()  # the same weights, queue and generator on both ranks
        everyone = _views(n=16)[1]  # rank r holds images 8r .. 8r + 7
        mine = everyone[8 * rank:8 * rank + 8]
        state = method.generator.get_state()
        own, every_key = method.keys(mine)
        # shuffle-BN across the processes: one permutation, each rank encodes its half, order restored
        method.generator.set_state(state)
        perm = torch.randperm(16, generator=method.generator)  # rank 0's (broadcast): the same draw here
        halves = [method._encode_key(everyone[perm[8 * r:8 * r + 8]]) for r in (0, 1)]
        assert torch.allclose(every_key, torch.cat(halves)[perm.argsort()], atol=1e-6)
        assert torch.equal(own, every_key[8 * rank:8 * rank + 8])
        # the step's keys of both processes enter the queue, in rank order, identically on both ranks
        method.training_step(model, ([mine, mine], None), 0.0)
        method.after_optimizer_step(model, 0.0)
        assert int(method.queue_ptr) == 16
        queues = D.all_gather_object(method.queue.clone())
        assert torch.equal(queues[0], queues[1])
        D.barrier()
    finally:
        D.cleanup()


@pytest.mark.slow
def test_two_processes_shuffle_the_keys_across_them_and_share_one_queue():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port,), nprocs=2, join=True)
