"""``run.compile``: the training step compiled with ``torch.compile`` (issue 23 §3), on the CPU.

What is compiled is the engine's step module, ``method.training_step(model, batch, progress)``
with the model inside, so the methods that call ``forward_features`` / ``forward_head`` (RecursiveMix)
or run a momentum encoder and heads (MoCo v3) are compiled along their own path, not only through
``model.forward``. Compiled and eager runs follow the same losses up to float rounding, and their
checkpoints are interchangeable. Compiling takes tens of seconds per method on a cold cache.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mixlab.engine import load_checkpoint, load_config, train
from mixlab.engine.data import to_device
from mixlab.engine.distributed import DistInfo, StepModule
from mixlab.engine.loop import setup, step

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# 40 images of 16 px, batches of 8, a width-8 resnet_small, SGD at a small lr: float rounding grows
# through BatchNorm over 8 images (at lr 0.05 MoCo v3's third loss moves by 2.6e-5 when only the
# memory layout of the eager run changes) and AdamW's normalisation amplifies it further
TINY = ["data.name=synthetic", "data.num_per_class=4", "data.test_per_class=1", "data.image_size=16",
        "data.batch_size=8", "data.num_workers=0", "model.kwargs={width: 8}", "optim.name=sgd", "optim.lr=0.01",
        "run.threads=1", "run.progress=false", "run.tensorboard=false"]
METHODS = {"vanilla": [], "cutmix": [], "recursivemix": [], "mocov3": ["method.params={dim: 16, mlp_dim: 32}"]}
STEPS = 3
TOLERANCE = 1e-4  # |compiled - eager| of each step's loss; measured <= 4.3e-6


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no frames of an earlier test's modules)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _steps(name: str, compile: bool) -> list:
    """The StepOutputs of the first ``STEPS`` steps of a tiny run of ``name``."""
    cfg = load_config(overrides=[*TINY, f"method.name={name}", *METHODS[name], f"run.compile={str(compile).lower()}"])
    state = setup(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert isinstance(state.step_module, StepModule) and state.step_module.model is state.model
    state.model.train()
    state.method.train()
    state.method.on_epoch_start(0)
    outs, batches = [], iter(state.data.train_loader)
    for _ in range(STEPS):
        images, labels = to_device(next(batches), state.info.device, state.data.preprocess)
        outs.append(step(state, images, labels))
        state.step += 1
    return outs


def _compiled(t: torch.Tensor) -> bool:
    """Whether ``t`` came out of a graph that ``torch.compile`` made (its backward is the graph's)."""
    return type(t.grad_fn).__name__ == "CompiledFunctionBackward"


@pytest.mark.parametrize("name", METHODS)
def test_compiled_step_follows_the_eager_loss(name):
    """Vanilla, CutMix, RecursiveMix (``forward_features`` / ``forward_head``, the history) and MoCo
    v3 (momentum encoder, projector, predictor): the compiled run's losses are the eager run's
    within ``TOLERANCE`` for ``STEPS`` steps, and the loss (and logits) come from a compiled graph."""
    eager, compiled = _steps(name, False), _steps(name, True)
    assert not any(_compiled(out.loss) for out in eager)
    for out in compiled:
        assert _compiled(out.loss)
        assert out.logits is None or _compiled(out.logits)  # RecursiveMix: never through model.forward
    diffs = [abs(a.loss.item() - b.loss.item()) for a, b in zip(eager, compiled)]
    assert max(diffs) < TOLERANCE, diffs


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()},
            **{f"method.{k}": v for k, v in ckpt["method"].items()},
            **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def test_checkpoints_of_compiled_and_eager_runs_load_in_each_other(tmp_path):
    """A compiled run's checkpoint has the eager run's keys (no ``_orig_mod.``) and resumes eagerly;
    an eager run's resumes compiled; both end where 2 eager epochs end, up to float rounding."""
    common = [*TINY, "method.name=recursivemix", "method.params={reset_each_epoch: false}", "model.ema_decay=0.9",
              "optim.epochs=2"]

    def run(name: str, *extra: str) -> dict:
        return train(load_config(overrides=[*common, f"run.out={tmp_path / name}", *extra]))

    run("eager")
    run("compiled_first", "run.compile=true", "run.stop_epoch=1")
    run("eager_first", "run.compile=false", "run.stop_epoch=1")
    one = _weights(tmp_path / "compiled_first")
    assert one.keys() == _weights(tmp_path / "eager_first").keys()
    assert not [k for k in one if "_orig_mod" in k]
    run("compiled_first", "run.compile=false", f"run.resume={tmp_path / 'compiled_first'}")
    run("eager_first", "run.compile=true", f"run.resume={tmp_path / 'eager_first'}")
    straight = _weights(tmp_path / "eager")
    for name in ("compiled_first", "eager_first"):
        assert load_checkpoint(tmp_path / name)["epoch"] == 2
        resumed = _weights(tmp_path / name)
        assert resumed.keys() == straight.keys()
        diff = max((resumed[k].double() - straight[k].double()).abs().max().item() for k in straight
                   if straight[k].is_floating_point() and straight[k].numel())
        assert diff < 1e-5, (name, diff)  # measured 5.4e-7 (10 steps)


# ------------------------------------------------------------------ compiled under DDP, 2 processes
def _ddp_worker(rank: int, port: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    from mixlab.engine import distributed as D

    info = D.init_distributed(device="cpu")
    try:
        # no BatchNorm (a 1-block ViT), no augmentation: the gradients of 2 x 8 images are those of 16 in one process
        vit = ["model.name=vit_tiny_patch4",
               "model.kwargs={img_size: 16, embed_dim: 16, depth: 1, num_heads: 2, num_stages: 1}"]
        cfg = load_config(overrides=[*TINY, *vit, "method.name=vanilla", "data.augment=none", "run.compile=true"])
        state = setup(cfg, info)
        assert isinstance(state.step_module, DistributedDataParallel)  # DDP around the compiled step module
        assert isinstance(state.step_module.module, StepModule)
        batches = iter(state.data.train_loader)
        for _ in range(2):
            images, labels = to_device(next(batches), info.device, state.data.preprocess)
            before = copy.deepcopy(state.model)
            out = step(state, images, labels)
            state.step += 1
            assert _compiled(out.loss) and _compiled(out.logits)
            both = D.all_gather_object((images, labels))
            images, labels = torch.cat([b[0] for b in both]), torch.cat([b[1] for b in both])
            nn.functional.cross_entropy(before(images), labels).backward()
            for (name, p), q in zip(state.model.named_parameters(), before.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        D.barrier()
    finally:
        D.cleanup()


def test_compiled_step_under_ddp_gives_the_gradients_of_one_process():
    """``run.compile`` under DDP (2 processes, gloo): the compiled step module inside
    ``DistributedDataParallel``; its averaged gradients are those of the whole batch in one process."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port,), nprocs=2, join=True)
