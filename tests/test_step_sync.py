"""A training step waits for nothing on the device (issue 23 §1).

The loop's own per-step code (``to_device``, ``step``, ``EpochMeter.update``) runs every registered
method: here for two steps on the CPU; on a GPU under ``torch.cuda.set_sync_debug_mode("error")``
after a warm-up step, where any host-device synchronisation raises. Without a GPU the same code
runs on the ``meta`` device, whose tensors hold no values: a step that read one (``.item()``,
``float(t)``, ``bool(t)``, a boolean mask) raises there too.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import pytest
import torch

from mixlab import registry
from mixlab.engine.data import to_device
from mixlab.engine.distributed import DistInfo
from mixlab.engine.loop import EpochMeter, State, setup, step
from mixlab.engine.presets import PRESETS, load_run_config

# 20 images of 32 px, 2 steps of 8
TINY = ["data.num_per_class=2", "data.test_per_class=1", "data.batch_size=8", "data.num_workers=0", "run.threads=1",
        "run.progress=false", "run.tensorboard=false"]
# the graph cut of PuzzleMix runs in gco-wrapper's C++ on the CPU: its energies are copied to the host
GRAPH_CUT = "PuzzleMix's graph cut is CPU C++ (gco-wrapper) by nature: every step copies its energies to the host"


@pytest.fixture(autouse=True)
def _threads():
    """``setup`` sets torch's threads to ``run.threads``; ``train`` would restore them afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _state(method: str, device: str, **params) -> State:
    """``setup`` of a tiny run of ``method`` (small SSL heads, as ``mixlab pretrain``) on ``device``."""
    params = {**PRESETS["small_heads"].get(method, {}), **params}
    overrides = [*TINY, f"method.name={method}", f"method.params={params}".replace("True", "true")]
    if not registry.METHODS[method].config:  # MAE brings its ViT
        overrides.append("model.kwargs={width: 8}")
    return setup(load_run_config(None, overrides), DistInfo(0, 1, 0, torch.device(device)))


@contextmanager
def _no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _train_steps(state: State, steps: int, checked_from: int | None = None) -> EpochMeter:
    """``steps`` steps of the loop's own per-step code; from step ``checked_from`` on under
    ``set_sync_debug_mode("error")`` (the batch is loaded before, on the CPU)."""
    meter = EpochMeter(state.info.device)
    batches = iter(state.data.train_loader)
    for i in range(steps):
        images, labels = next(batches)
        with _no_sync() if checked_from is not None and i >= checked_from else nullcontext():
            images, labels = to_device((images, labels), state.info.device, state.data.preprocess)
            meter.update(step(state, images, labels), labels)
        state.step += 1
    return meter


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_the_loop_steps_every_method(method):
    state = _state(method, "cpu")
    meter = _train_steps(state, 2)
    means, _, images = meter.reduce()
    assert state.step == 2 and images == 16 and math.isfinite(means["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", list(registry.METHODS))
def test_a_training_step_does_not_synchronise_with_the_gpu(method):
    if method == "puzzlemix":
        pytest.skip(GRAPH_CUT)
    state = _state(method, "cuda")
    _train_steps(state, 2, checked_from=1)  # the first step warms up (cuDNN's choice of kernels, lazy init)
    torch.cuda.synchronize()


@pytest.mark.parametrize("method, params", [
    ("vanilla", {}), ("mocov3", {"sdmp": True}), ("dino", {}), ("dino", {"sdmp": True}),
    ("mocov2", {"views": "cropmix"}), ("mae", {"input": "cropmix"}), ("recursivemix", {"interpolation": "bilinear"}),
    ("manifold-mixup", {}),
])
def test_a_training_step_reads_no_value_of_the_device(method, params):
    """On the meta device: the engine's step, its sums, the loss watch, and these methods' steps
    (SDMP's teacher weights, DINO's pairs of views, MAE's pictures of its CropMix inputs)."""
    state = _state(method, "meta", **params)
    meter = _train_steps(state, 2)
    assert state.step == 2 and meter.sums["loss"].device.type == "meta"


def test_normalisation_copies_nothing_from_the_host_per_batch(monkeypatch):
    """normalize_on_device (every batch of every step) makes its per-channel tensors once."""
    from mixlab.data import normalize_on_device

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    first = normalize_on_device(images, mean, std)
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    again = normalize_on_device(images, mean, std)
    assert made == [] and torch.equal(first, again)
    expected = (images.float() / 255 - real(mean).view(3, 1, 1)) / real(std).view(3, 1, 1)
    torch.testing.assert_close(again, expected)


def test_epoch_sums_add_logs_as_before():
    """Tensor logs are added on the device, Python floats on the host (as float32 values, which is
    how ``torch.as_tensor`` read them): the means are those of the per-image sums, exactly."""
    from mixlab.methods.base import StepOutput

    meter = EpochMeter(torch.device("cpu"))
    labels = torch.zeros(8, dtype=torch.long)
    for loss, ratio, lam in ((2.0, 0.1, 0.25), (1.0, 0.3, 0.75)):
        meter.update(StepOutput(torch.tensor(loss), logs={"ratio": ratio, "lam": torch.tensor(lam)}), labels)
    means, acc, images = meter.reduce()
    as_float32 = [float(torch.tensor(r)) for r in (0.1, 0.3)]
    assert images == 16 and acc is None and list(means) == ["loss", "ratio", "lam"]
    assert means == {"loss": 1.5, "ratio": (as_float32[0] * 8 + as_float32[1] * 8) / 16, "lam": 0.5}
