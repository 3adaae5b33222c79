"""Data-parallel training: the helpers in a 2-process gloo group, the sharded sampler and
evaluation, per-rank randomness, and ``torchrun -m mixlab.cli train`` end to end (files written
once, sharded test metrics == a single-process evaluation, exact resume, and the same weights as a
single process on a model without BatchNorm)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mixlab import registry
from mixlab.engine import evaluate, load_checkpoint, load_config, train
from mixlab.engine.data import EpochSampler, mix_seed, rank_generators
from mixlab.methods.base import Method, StepOutput

# config overrides (--set): 80 train / 30 test images of 16x16; 5 steps per epoch of 2 x 8 images
TINY = ["data.name=synthetic", "data.num_workers=0", "data.num_per_class=8", "data.test_per_class=3",
        "data.image_size=16", "data.eval_batch_size=8", "run.progress=false", "run.threads=1",
        "optim.warmup_epochs=0.5"]
# a model without BatchNorm (LayerNorm is per sample): gradients of 2 half batches == the full batch's
VIT = ["model.name=vit_tiny_patch4",
       "model.kwargs={img_size: 16, embed_dim: 16, depth: 1, num_heads: 2, num_stages: 1}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _no_eval() -> list[str]:
    """``--no-eval`` where ``mixlab train`` evaluates robustness after training (skip it here)."""
    from mixlab.cli import build_parser

    _, unknown = build_parser().parse_known_args(["train", "--no-eval"])
    return [] if unknown else ["--no-eval"]


def _mixlab(overrides: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m mixlab.cli train --set TINY... --set OVERRIDES... ARGS``."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sets = [x for o in TINY + overrides for x in ("--set", o)]
    out = subprocess.run([*launch, "-m", "mixlab.cli", "train", *sets, *_no_eval(), *args], cwd=cwd, env=_env(),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


# ------------------------------------------------------------------------ pure functions
def test_epoch_sampler_shards_one_permutation():
    one = [i for _, i in EpochSampler(10, seed=5)]
    g = torch.Generator().manual_seed(mix_seed(5, 0))
    assert one == torch.randperm(10, generator=g).tolist()  # a single process: unchanged
    shards = [EpochSampler(10, seed=5, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(0)
    items = [list(s) for s in shards]
    assert [len(s) for s in shards] == [len(x) for x in items] == [4, 4, 4]
    padded = one + one[:2]  # padded to 12 with the permutation's start
    assert [[i for _, i in x] for x in items] == [padded[r::3] for r in range(3)]
    assert sorted(i for x in items for _, i in x) == sorted([*range(10), *one[:2]])  # disjoint but for the padding
    assert all(e == 0 for x in items for e, _ in x)
    tiny = EpochSampler(2, seed=0, rank=4, world_size=5)  # fewer images than ranks: still one each
    assert len(list(tiny)) == len(tiny) == 1
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        EpochSampler(10, seed=0, rank=2, world_size=2)


def test_ranks_mix_differently():
    """The trainer's per-rank generators: ranks draw different λ and boxes on the same step; the
    same rank draws the same ones again."""
    from mixlab.registry import build_method

    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    draws = []
    for rank in (0, 1, 0):
        method = build_method("cutmix", 4)
        method.setup(nn.Identity(), rank_generators(seed=3, rank=rank)["method"])
        mixed = method.mixer(images, labels)
        draws.append((mixed.lam, mixed.boxes, mixed.index))
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[0][1], draws[1][1])
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[2]))


def test_sharded_evaluate_adds_sums():
    """Uneven shards (and an empty one) summed through ``all_reduce`` == the whole set."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7))
    images, labels = torch.randn(9, 3, 2, 2), torch.randint(0, 7, (9,))
    batches = lambda lo, hi: list(zip(images[lo:hi].split(2), labels[lo:hi].split(2)))  # noqa: E731
    whole = evaluate(model, batches(0, 9), "cpu")
    other = []  # the other process's sums
    evaluate(model, batches(4, 9), "cpu", all_reduce=lambda t: other.append(t.clone()) or t)
    shard = evaluate(model, batches(0, 4), "cpu", all_reduce=lambda t: t + other[0])
    assert shard["n"] == 9 and shard["acc1"] == whole["acc1"] and shard["acc5"] == whole["acc5"]
    assert shard["nll"] == pytest.approx(whole["nll"], rel=1e-12)
    empty = evaluate(model, [], "cpu", all_reduce=lambda t: t + other[0])  # a process without test images
    assert empty["n"] == 5
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, [], "cpu", all_reduce=lambda t: t)


@pytest.mark.parametrize("transform", [None, lambda x: x])
def test_test_set_shards_cover_it_once(transform):
    """The trainer's test shards (decoded slices, or a loader when there is a transform) are
    contiguous, unpadded and together the whole test set."""
    from mixlab import registry
    from mixlab.engine.distributed import DistInfo
    from mixlab.engine.data import test_loader

    test_set = registry.build_dataset("synthetic", "test", num_per_class=3, image_size=8, seed=0)
    test_set = test_set.with_transform(transform)
    cfg = load_config(overrides=["data.eval_batch_size=4", "data.num_workers=0"])
    shards = [test_loader(test_set, cfg, DistInfo(r, 4, r, torch.device("cpu")), False) for r in range(4)]
    labels = [torch.cat([y for _, y in shard]) for shard in shards]
    assert [len(y) for y in labels] == [7, 8, 7, 8]  # 30 images over 4 processes
    assert torch.equal(torch.cat(labels), test_set.labels)


# ---------------------------------------------------------------- a 2-process gloo group
def _worker(rank: int, port: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from mixlab.engine import distributed as D

    info = D.init_distributed(device="cpu")
    try:
        assert (info.rank, info.world_size, info.local_rank, info.device.type) == (rank, 2, rank, "cpu")
        assert D.is_main_process() == (rank == 0) and D.get_world_size() == 2
        assert D.all_reduce_sum(torch.tensor([rank + 1.0])).item() == 3.0
        assert D.broadcast_object({"from": rank}) == {"from": 0}
        assert D.all_gather_object(rank * 10) == [0, 10]

        torch.manual_seed(rank)  # different initial weights, channels_last: made equal to rank 0's
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(memory_format=torch.channels_last)
        D.broadcast_tensors(net.state_dict().values())
        torch.manual_seed(0)
        ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))

        # the step module is DDP; gradients: a on both ranks, b on rank 1 only, c on none (find_unused_parameters)
        method = _UsesSome()
        norm = nn.BatchNorm1d(3)  # the model: its float buffers are averaged after the step, the integer one is not
        step = D.build_step_module(norm, method, info)
        assert isinstance(step, DistributedDataParallel) and step.find_unused_parameters
        assert step.module.model is norm and step.module.method is method
        out = step(None, 0.0)
        assert out.loss.requires_grad
        out.loss.backward()
        assert torch.equal(method.a.grad, torch.full((2, 3), 1.5))
        assert torch.equal(method.b.grad, torch.full((2, 3), 0.5))
        assert method.c.grad is None  # unused everywhere: no gradient, as in a single process
        norm.running_mean.fill_(float(rank))
        norm.num_batches_tracked.fill_(rank)
        D.average_buffers(step)
        assert torch.equal(norm.running_mean, torch.full((3,), 0.5)) and norm.num_batches_tracked.item() == rank
        assert not D.build_step_module(norm, Method(), info).find_unused_parameters  # only where a method needs it

        # sharded evaluation over uneven shards (3 + 4 images) == the whole set in one process
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        images, labels = torch.randn(7, 3, 2, 2), torch.randint(0, 5, (7,))
        lo, hi = (0, 3) if rank == 0 else (3, 7)
        shard = evaluate(model, [(images[lo:hi], labels[lo:hi])], "cpu", all_reduce=D.all_reduce_sum)
        whole = evaluate(model, [(images, labels)], "cpu")
        assert shard["n"] == 7 and shard["acc1"] == whole["acc1"]
        assert abs(shard["nll"] - whole["nll"]) < 1e-6
        D.barrier()
    finally:
        D.cleanup()


class _UsesSome(Method):
    """A method whose step uses ``a`` on every rank (times rank + 1), ``b`` on rank 1 only, ``c`` never."""

    ddp_find_unused_parameters = True

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.zeros(2, 3)) for _ in range(3))

    def training_step(self, model, batch, progress):
        rank = torch.distributed.get_rank()
        return StepOutput(loss=(rank + 1) * self.a.sum() + (self.b.sum() if rank == 1 else 0))


@pytest.mark.slow
def test_helpers_in_a_two_process_group():
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(),), nprocs=2, join=True)


# each method's step through DDP: the ones that run extra passes (PuzzleMix's input gradient, AutoMix's
# momentum encoder and Mix Block), stage by stage (Manifold Mixup), with parameters left unused on some
# steps (RecursiveMix's H', the SSL frameworks' classifier), with gathers and shuffle-BN (MoCo v2, v3)
SMALL = "model.kwargs={width: 8}"
DDP_METHODS = {
    "puzzlemix": [SMALL], "automix": [SMALL], "manifold-mixup": [SMALL], "recursivemix": [SMALL],
    "mocov3": [SMALL, "method.params={dim: 16, mlp_dim: 32}"],
    "mocov2": [SMALL, "method.params={dim: 16, hidden_dim: 32, queue_size: 48}"],
    "samix-ssl": [SMALL, "method.params={dim: 16, hidden_dim: 32, queue_size: 48}"],
    "dino": [SMALL, "method.params={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16}"],
    "mae": [*VIT, "method.params={decoder_dim: 16, decoder_depth: 1, decoder_heads: 2}"],
}


def _trainable(module: nn.Module) -> list[float]:
    """Exact sums of the parameters being trained, to compare ranks."""
    return [p.detach().double().sum().item() for p in module.parameters() if p.requires_grad]


def _methods_worker(rank: int, port: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    import copy

    from mixlab.engine import distributed as D
    from mixlab.engine.data import to_device
    from mixlab.engine.loop import setup, step

    info = D.init_distributed(device="cpu")
    try:
        # vanilla without BatchNorm: the DDP gradients are those of the 2 x 8 images in one process
        cfg = load_config(overrides=[*TINY, *VIT, "method.name=vanilla", "data.augment=none", "optim.name=sgd",
                                     "data.batch_size=8"])
        state = setup(cfg, info)
        assert isinstance(state.step_module, DistributedDataParallel)
        assert not state.step_module.find_unused_parameters
        images, labels = to_device(next(iter(state.data.train_loader)), info.device, state.data.preprocess)
        before = copy.deepcopy(state.model)
        out = step(state, images, labels)
        both = D.all_gather_object((images, labels, out.loss.detach()))
        whole = nn.functional.cross_entropy(before(torch.cat([b[0] for b in both])), torch.cat([b[1] for b in both]))
        whole.backward()
        assert abs(whole.item() - (both[0][2] + both[1][2]).item() / 2) < 1e-6
        for (name, p), q in zip(state.model.named_parameters(), before.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)

        for name, overrides in DDP_METHODS.items():
            state = setup(load_config(overrides=[*TINY, "data.batch_size=8", f"method.name={name}", *overrides]), info)
            assert isinstance(state.step_module, DistributedDataParallel), name
            assert state.step_module.find_unused_parameters == type(state.method).ddp_find_unused_parameters, name
            state.model.train()
            state.method.train()
            state.method.on_epoch_start(0)
            batches = iter(state.data.train_loader)
            for _ in range(2):
                images, labels = to_device(next(batches), info.device, state.data.preprocess)
                step(state, images, labels)
                state.step += 1
            mine = (D.weights_fingerprint(state.model), _trainable(state.method))
            assert D.all_gather_object(mine) == [mine, mine], name  # the same weights on both ranks

        with pytest.raises(ValueError, match="run.sync_bn=true needs CUDA devices"):  # SyncBatchNorm: GPUs only
            setup(load_config(overrides=[*TINY, "data.batch_size=8", SMALL, "run.sync_bn=true"]), info)
        D.barrier()
    finally:
        D.cleanup()


@pytest.mark.slow
def test_every_kind_of_method_trains_through_ddp():
    """In a 2-process gloo group the loop's step module is ``DistributedDataParallel``: vanilla's
    gradients equal one process's on both batches; PuzzleMix, AutoMix, Manifold Mixup, RecursiveMix,
    MoCo v3, MoCo v2, SAMix SSL, DINO and MAE take 2 steps (``find_unused_parameters`` as the method declares)
    and keep the same weights on both ranks; ``run.sync_bn`` on the CPU is refused."""
    import torch.multiprocessing as mp

    mp.spawn(_methods_worker, args=(_free_port(),), nprocs=2, join=True)


@pytest.mark.parametrize("name", sorted(registry.METHODS))
def test_methods_declare_the_parameters_a_step_leaves_unused(name):
    """DDP without ``find_unused_parameters`` needs a gradient for every trainable parameter of the
    step module at every step; a method that leaves some out (on its first two steps here) must say
    so with ``ddp_find_unused_parameters``, and only such a method says so."""
    from mixlab.engine.data import to_device
    from mixlab.engine.distributed import DistInfo
    from mixlab.engine.loop import setup, step
    from mixlab.engine.presets import PRESETS, load_run_config

    params = PRESETS["small_heads"].get(name, {})
    overrides = ["data.num_per_class=2", "data.test_per_class=1", "data.batch_size=8", "data.num_workers=0",
                 "run.threads=1", "run.progress=false", f"method.name={name}",
                 f"method.params={params}".replace("True", "true")]
    if not registry.METHODS[name].config:  # MAE brings its ViT
        overrides.append(SMALL)
    state = setup(load_run_config(None, overrides), DistInfo(0, 1, 0, torch.device("cpu")))
    trainable = {n: p for n, p in state.step_module.named_parameters() if p.requires_grad}
    unused = set()
    batches = iter(state.data.train_loader)
    for _ in range(2):
        images, labels = to_device(next(batches), state.info.device, state.data.preprocess)
        step(state, images, labels)
        state.step += 1
        unused |= {n for n, p in trainable.items() if p.grad is None}
    assert bool(unused) == state.method.ddp_find_unused_parameters, sorted(unused)


def test_sync_batchnorm_converts_in_place_of_batchnorm_under_data_parallel():
    """``run.sync_bn``: every BatchNorm of the model becomes a SyncBatchNorm with the same parameter
    and buffer tensors, state-dict keys and (outside a process group) outputs, the stage helpers
    included; in a single process the model is left as it is."""
    from mixlab.engine.distributed import DistInfo, sync_batchnorm
    from mixlab.models import forward_until

    torch.manual_seed(0)
    model = registry.build_model("resnet_small", 10, width=8).eval()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {id(t) for t in [*model.parameters(), *model.buffers()]}
    x = torch.randn(2, 3, 16, 16)
    logits, hidden = model(x), forward_until(model, x, 2)
    assert sync_batchnorm(model, DistInfo(0, 1, 0, torch.device("cpu"))) is model  # one process: nothing to do
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    synced = sync_batchnorm(model, DistInfo(0, 2, 0, torch.device("cuda", 0)))
    kinds = {type(m) for m in synced.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    assert {id(t) for t in [*synced.parameters(), *synced.buffers()]} == tensors  # the optimizer's tensors
    assert synced.state_dict().keys() == plain.keys()
    assert all(torch.equal(v, plain[k]) for k, v in synced.state_dict().items())
    assert torch.equal(synced(x), logits) and torch.equal(forward_until(synced, x, 2), hidden)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm synchronises GPU batches: needs 2 GPUs")
def test_sync_bn_gives_the_single_process_batchnorm_maths(tmp_path):
    """With BatchNorm, 2 GPUs x 8 images follow 1 GPU x 16 only with ``run.sync_bn``: each process
    then normalises with the statistics of all 16 images."""
    common = ["method.name=vanilla", "optim.epochs=1", "data.augment=none", "optim.name=sgd", "optim.lr=0.05",
              SMALL, "run.amp=none", "run.device=cuda"]
    for sync in ("true", "false"):
        _mixlab([*common, "data.batch_size=8", f"run.sync_bn={sync}"], tmp_path, "--out", str(tmp_path / sync))
    train(load_config(overrides=[*TINY, *common, "data.batch_size=16", f"run.out={tmp_path / 'one'}"]))
    one = load_checkpoint(tmp_path / "one")["model"]

    def diff(run: str) -> float:
        weights = load_checkpoint(tmp_path / run)["model"]
        return max((one[k].float() - weights[k].float()).abs().max().item() for k in one if one[k].is_floating_point())

    assert diff("true") < 1e-4 < 1e-2 < diff("false")


def test_helpers_are_no_ops_in_one_process(monkeypatch):
    from mixlab.engine import distributed as D

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    t = torch.ones(2)
    assert D.all_reduce_sum(t) is t and torch.equal(t, torch.ones(2))
    assert D.broadcast_object("x") == "x" and D.all_gather_object(1) == [1] and D.is_main_process()
    model, method = nn.BatchNorm1d(2), Method()
    step = D.build_step_module(model, method, info)
    assert type(step) is D.StepModule and step.averaged == []  # no DDP in one process
    stat = model.running_mean.clone()
    D.average_buffers(step)
    D.average_tensors([model.running_var])
    D.barrier()
    D.cleanup()
    assert torch.equal(model.running_mean, stat) and torch.equal(model.running_var, torch.ones(2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        D.init_distributed(device="cpu")
    with pytest.raises(ValueError, match="backend must be"):
        D.init_distributed(backend="mpi")


# --------------------------------------------------------------------- torchrun end to end
def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()},
            **{f"ema.{k}": v for k, v in (ckpt["ema"] or {}).items()},
            **{f"opt.{i}.{k}": v for i, s in ckpt["optimizer"]["state"].items() for k, v in s.items()}}


def _single_process_eval(ckpt: dict, weights: dict) -> dict[str, float]:
    """The checkpoint's model evaluated on the whole test set in this process."""
    from mixlab import registry
    from mixlab.engine.config import config_from_dict
    from mixlab.engine.data import datasets, normalizer

    cfg = config_from_dict(ckpt["config"])
    _, test_set = datasets(cfg)
    model = registry.build_model(cfg.model.name, ckpt["num_classes"], **cfg.model.kwargs)
    model.load_state_dict(weights)
    loader = list(zip(test_set.images.split(7), test_set.labels.split(7)))  # other batches than the run's
    return evaluate(model, loader, "cpu", normalizer(test_set.mean, test_set.std, channels_last=True))


@pytest.mark.slow
def test_torchrun_train_writes_once_and_resumes_exactly(tmp_path):
    """2 processes (gloo): one run directory, rank 0's output only; the sharded test metrics equal
    a single-process evaluation of the checkpoint; each rank's RNG state is saved and restored, so
    1 epoch + resume == 2 epochs straight, bit for bit."""
    common = ["method.name=mixup-cutmix", "data.batch_size=8", "optim.epochs=2", "model.kwargs={width: 8}",
              "model.ema_decay=0.9"]
    out = _mixlab(common, tmp_path)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run directory (rank 0 names it; the name holds a timestamp)
    straight = runs[0]
    assert out.stdout.count("mixlab: mixup-cutmix |") == 1 and "2 processes x batch 8 (16 in all)" in out.stdout
    assert out.stdout.count("epoch 2/2 ") == 1
    files = {p.name for p in straight.iterdir()}
    assert {"checkpoint.pt", "metrics.csv", "metrics.jsonl", "curves.png", "samples.png", "config.yaml"} <= files
    assert not [f for f in files if f.startswith(".")], files  # no temporary file left behind
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 10  # 80 images / (2 x 8) per epoch

    ckpt = load_checkpoint(straight)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    method_states = [r["generators"]["method"] for r in ckpt["rng_per_rank"]]
    assert not torch.equal(*method_states)  # ranks mix with their own generators

    # (a) sharded test metrics == one process evaluating the checkpoint on the whole test set
    single = _single_process_eval(ckpt, ckpt["model"])
    ema = _single_process_eval(ckpt, {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")})
    assert single["n"] == 30
    for prefix, ref in (("test_", single), ("ema_test_", ema)):
        assert rows[-1][prefix + "acc1"] == pytest.approx(ref["acc1"], abs=1e-9)
        assert rows[-1][prefix + "acc5"] == pytest.approx(ref["acc5"], abs=1e-9)
        assert rows[-1][prefix + "nll"] == pytest.approx(ref["nll"], abs=1e-5)

    # exact resume: 1 epoch, stop, resume (each rank restores its own RNG states)
    split = tmp_path / "split"
    _mixlab([*common, "run.stop_epoch=1"], tmp_path, "--out", str(split))
    _mixlab([], tmp_path, "--resume", str(split))
    a, b = _state(straight), _state(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    resumed = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_acc", "test_acc1", "test_nll", "ema_test_acc1"):
        assert resumed[-1][key] == rows[-1][key], key


@pytest.mark.slow
def test_two_processes_match_one_process_without_batchnorm(tmp_path):
    """vanilla, no augmentation, no dropout, no BatchNorm, SGD: 2 processes x 8 images follow the
    trajectory of 1 process x 16 images up to float summation order (docs/distributed.md)."""
    common = ["method.name=vanilla", "optim.epochs=1", "data.augment=none", "optim.name=sgd", "optim.lr=0.05", *VIT]
    _mixlab([*common, "data.batch_size=8"], tmp_path, "--out", str(tmp_path / "ddp"))
    single = train(load_config(overrides=[*TINY, *common, "data.batch_size=16", f"run.out={tmp_path / 'one'}"]))
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "ddp")
    assert a["step"] == b["step"] == 5
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert diff < 1e-5, diff  # measured 1.5e-8 (float32 rounding of the sums in another order)
    ddp = b["history"][-1]
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], abs=1e-5)
    assert ddp["train_acc"] == single["train_acc"] and ddp["test_acc1"] == single["test_acc1"]
    assert ddp["test_nll"] == pytest.approx(single["test_nll"], abs=1e-5)


@pytest.mark.slow
def test_torchrun_recursivemix_keeps_a_history_per_rank(tmp_path):
    """RecursiveMix under 2 processes: each rank mixes with its own history; the checkpoint holds
    both, and each rank gets its own back on resume, so 1 epoch + resume == 2 epochs straight."""
    common = ["method.name=recursivemix", "method.params={reset_each_epoch: false}", "data.batch_size=8",
              "optim.epochs=2", "model.kwargs={width: 8}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    _mixlab(common, tmp_path, "--out", str(straight))
    ckpt = load_checkpoint(straight)
    histories = [state["hist_images"] for state in ckpt["method_per_rank"]]
    assert len(histories) == 2 and histories[0].shape == (8, 3, 16, 16)
    assert not torch.equal(*histories)  # each rank's own batches
    assert torch.equal(ckpt["method"]["hist_images"], histories[0])
    _mixlab([*common, "run.stop_epoch=1"], tmp_path, "--out", str(split))
    _mixlab([], tmp_path, "--resume", str(split))
    a, b = _state(straight), _state(split)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    resumed = load_checkpoint(split)["method_per_rank"]
    for r in range(2):
        assert torch.equal(resumed[r]["hist_images"], histories[r])


@pytest.mark.slow
def test_torchrun_mocov3_sdmp_gathers_keys_and_resumes_exactly(tmp_path):
    """MoCo v3 + SDMP under 2 processes: the keys of both ranks are the negatives (the gradients
    and so the weights stay in sync: the trainer checks them every epoch), the kNN monitor runs on
    rank 0 and is written once, and 1 epoch + resume == 2 epochs straight."""
    common = ["method.name=mocov3", "method.params={dim: 16, mlp_dim: 32, sdmp: true}", "data.batch_size=8",
              "optim.epochs=2", "model.kwargs={width: 8}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    out = _mixlab(common, tmp_path, "--out", str(straight))
    assert out.stdout.count("kNN top-1") == 2  # one line per epoch, from rank 0
    _mixlab([*common, "run.stop_epoch=1"], tmp_path, "--out", str(split))
    _mixlab([], tmp_path, "--resume", str(split))
    a, b = _state(straight), _state(split)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_checkpoint(straight)["history"][-1]["knn_acc1"] == load_checkpoint(split)["history"][-1]["knn_acc1"]


@pytest.mark.slow
def test_torchrun_mocov2_cropmix_shares_the_queue_and_resumes_exactly(tmp_path):
    """MoCo v2 + CropMix under 2 processes: the queue takes both ranks' keys (16 per step), the
    keys are shuffled across the ranks, and 1 epoch + resume == 2 epochs straight."""
    common = ["method.name=mocov2", "method.params={dim: 16, hidden_dim: 32, queue_size: 48, views: cropmix}",
              "data.batch_size=8", "optim.epochs=2", "model.kwargs={width: 8}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    out = _mixlab(common, tmp_path, "--out", str(straight))
    assert out.stdout.count("kNN top-1") == 2
    ckpt = load_checkpoint(straight)
    assert int(ckpt["method"]["queue_ptr"]) == (2 * 5 * 16) % 48  # 2 epochs x 5 steps x (2 x 8) keys
    _mixlab([*common, "run.stop_epoch=1"], tmp_path, "--out", str(split))
    _mixlab([], tmp_path, "--resume", str(split))
    a, b = _state(straight), _state(split)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    resumed = load_checkpoint(split)
    assert all(torch.equal(ckpt["method"][k], resumed["method"][k]) for k in ("queue", "queue_ptr"))
    assert ckpt["history"][-1]["knn_acc1"] == resumed["history"][-1]["knn_acc1"]
