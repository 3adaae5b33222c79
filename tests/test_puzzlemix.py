"""PuzzleMix (Kim et al. 2020): the saliency pass, the graph-cut energy of Eq. 3-4 and its
minimum, the transport of Algorithm 2 as a permutation of blocks, the exact labels, and the
trainer and CLI."""

from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixlab
from mixlab import registry
from mixlab.core import soft_cross_entropy
from mixlab.engine import build_optimizer, load_config, train, train_step
from mixlab.engine.config import OptimConfig
from mixlab.methods.puzzlemix import (
    Grid,
    GridEnergy,
    PuzzleMix,
    block_grid,
    input_saliency,
    label_prior,
    permute_blocks,
    position_cost,
    puzzle_energy,
    solve_graph_cut,
    transport_plan,
)
from mixlab.models import create_model

K = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: these tests train small models


def _setup(seed: int = 0, **kwargs) -> tuple[nn.Module, PuzzleMix]:
    torch.manual_seed(seed)
    model = create_model("resnet_small", K, width=8)
    pm = PuzzleMix(K, **kwargs)
    pm.setup(model, torch.Generator().manual_seed(seed))
    return model, pm


def _batch(n: int = 8, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def _peaked_saliency(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Saliency with a few strong, spatially varied peaks (so that the masks are not constant)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 1, 4, 4, generator=g) ** 4
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0] + 1e-3


def _colours(b: int, h: int, w: int) -> torch.Tensor:
    """Image i is the constant colour e_i in b channels: a pixel's channels say where it came from."""
    return torch.eye(b)[:, :, None, None].expand(b, b, h, w).contiguous()


# ------------------------------------------------------------------------------ exact labels and the grid
@pytest.mark.parametrize("block_num, n_labels", list(itertools.product([2, 4, 8, 16], [2, 3, 4])))
def test_label_is_the_exact_pixel_fraction_of_each_source(block_num, n_labels):
    """With one colour per image, the mixed image's mean colour is the fraction of pixels from each
    source: the own image's is λ̃ = mean(mask), the partner's 1 − λ̃, nothing else, and the soft
    label says exactly that (the transport moves blocks, never mass between sources)."""
    b, h, w = 6, 16, 16
    pm = PuzzleMix(b, block_nums=(block_num,), n_labels=n_labels, pixel_std=1.0, alpha=0.5)
    pm.generator = torch.Generator().manual_seed(block_num * 10 + n_labels)
    x = _colours(b, h, w)
    parts = pm.mix(x, torch.arange(b), _peaked_saliency(b, h, w, seed=n_labels))
    m = parts.mixed
    fractions = m.images.mean(dim=(2, 3))  # (B, B): the share of each source in each output
    rows = torch.arange(b)
    assert torch.allclose(fractions[rows, rows], m.lam, atol=1e-6)
    assert torch.allclose(fractions[rows, m.index], 1 - m.lam, atol=1e-6)
    assert torch.allclose(fractions.sum(1), torch.ones(b), atol=1e-6)  # no block lost
    assert torch.allclose(m.targets, fractions, atol=1e-6)
    assert torch.allclose(m.lam, m.mask.mean(dim=(1, 2, 3)), atol=1e-7)
    steps = m.lam * (n_labels - 1) * block_num**2  # λ̃ counts blocks of 1 / (m - 1) own weight
    assert torch.allclose(steps, steps.round(), atol=1e-3)


@pytest.mark.parametrize("block_num", [2, 4, 8, 16])
def test_mask_is_constant_on_each_block_of_the_grid(block_num):
    b, h, w = 8, 32, 32
    pm = PuzzleMix(K, block_nums=(block_num,), alpha=1.0)
    pm.generator = torch.Generator().manual_seed(block_num)
    x, y = _batch(b, 32)
    parts = pm.mix(x, y, _peaked_saliency(b, h, w, seed=block_num))
    mask = parts.mixed.mask  # (B, 1, H, W)
    blocks = mask.view(b, block_num, h // block_num, block_num, w // block_num)
    assert torch.equal(blocks.amax(dim=(2, 4)), blocks.amin(dim=(2, 4)))  # constant within each block
    values = set(mask.unique().tolist())
    assert values <= {0.0, 0.5, 1.0}  # m = 3 labels
    assert torch.equal(blocks.amax(dim=(2, 4)), 1 - parts.labels.float() / 2)  # the graph cut's labels
    if block_num > 2:  # the saliency makes the masks vary over the image, so the check above bites
        assert len(values) > 1 and bool((blocks.amax(dim=(2, 4)).flatten(1).std(1) > 0).any())


def test_mixed_image_is_the_mask_over_the_two_transported_images():
    b, size = 8, 32
    pm = PuzzleMix(K, block_nums=(4,))
    pm.generator = torch.Generator().manual_seed(0)
    x, y = _batch(b, size)
    moved = 0
    for seed in range(4):
        parts = pm.mix(x, y, _peaked_saliency(b, size, size, seed=seed) ** 2)
        m, grid = parts.mixed, parts.grid
        assert grid == Grid(8, 8, 4, 4)  # t_size = 4 px blocks, finer than the 8 px mask blocks
        own = permute_blocks(x, parts.source, grid)
        partner = permute_blocks(x[m.index], parts.partner_source, grid)
        assert torch.allclose(m.images, m.mask * own + (1 - m.mask) * partner, atol=1e-6)
        identity = torch.arange(64).expand(b, 64)
        moved += int((parts.source != identity).any(1).sum() + (parts.partner_source != identity).any(1).sum())
    assert moved > 0  # the check above covers real moves


# ------------------------------------------------------------------------------ transport (Algorithm 2)
def test_transport_never_loses_or_duplicates_a_block():
    """Every plan is a permutation, whatever the saliency (ties, spikes, zeros) and the mask."""
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        rows, cols = int(torch.randint(2, 17, (1,), generator=g)), int(torch.randint(2, 17, (1,), generator=g))
        n = rows * cols
        kind = trial % 4
        sal = torch.rand(5, n, generator=g)
        if kind == 1:
            sal = torch.zeros(5, n)
        elif kind == 2:
            sal = torch.zeros(5, n).index_fill_(1, torch.tensor([n - 1]), 1.0)  # every block wants one place
        vis = torch.rand(5, n, generator=g) < float(torch.rand(1, generator=g))
        vis[0] = True
        vis[1] = False
        eps = (0.0, 0.8, 10.0)[trial % 3]
        source = transport_plan(sal / sal.sum(1, keepdim=True).clamp_min(1e-12), vis,
                                position_cost(Grid(rows, cols, 1, 1)), eps, n_iter=max(rows, cols))
        assert torch.equal(source.sort(dim=1).values, torch.arange(n).expand(5, n)), (rows, cols, kind)


def test_transport_moves_a_salient_block_to_the_nearest_visible_place():
    """4×4 blocks, the mask shows the left two columns, all saliency in block (0, 3): it moves to
    (0, 1), the nearest visible place; the block it displaces takes the freed place; the rest stay."""
    sal = torch.zeros(1, 16)
    sal[0, 3] = 1.0
    visible = (torch.arange(16) % 4 < 2).unsqueeze(0)
    source = transport_plan(sal, visible, position_cost(Grid(4, 4, 1, 1)), t_eps=0.1, n_iter=4)
    expected = torch.arange(16)
    expected[1], expected[3] = 3, 1
    assert torch.equal(source[0], expected)
    assert position_cost(Grid(4, 4, 1, 1))[3, 1] == pytest.approx(4 / 9)  # squared distance / (side - 1)^2


def test_permute_blocks_moves_whole_blocks():
    b, c, grid = 2, 3, Grid(2, 3, 2, 4)  # a non-square grid of non-square blocks: 4 x 12 images
    ids = torch.arange(6).float().view(1, 1, 2, 1, 3, 1).expand(b, c, 2, 2, 3, 4).reshape(b, c, 4, 12)
    source = torch.stack([torch.tensor([5, 4, 3, 2, 1, 0]), torch.tensor([0, 2, 1, 3, 5, 4])])
    moved = permute_blocks(ids, source, grid)
    per_block = moved.view(b, c, 2, 2, 3, 4).amax(dim=(3, 5)).flatten(2)  # (B, C, 6) block ids
    assert torch.equal(per_block, source[:, None, :].float().expand(b, c, 6))
    assert torch.equal(moved.view(b, c, 2, 2, 3, 4).amin(dim=(3, 5)).flatten(2), per_block)


# ------------------------------------------------------------------------------ the energy and the graph cut
def test_label_prior_is_the_binomial_of_the_reference():
    lam = torch.tensor([0.3])
    for m, probs in ((2, [0.3, 0.7]), (3, [0.09, 0.42, 0.49]), (4, [0.027, 0.189, 0.441, 0.343])):
        expected = -torch.log(torch.tensor(probs, dtype=torch.float64) + 1e-8)
        assert torch.allclose(label_prior(lam, m)[0], expected, atol=1e-9)


def test_energy_terms_by_hand():
    """2×2 blocks of 2×2 px, one channel: image 0 is black with all its saliency in block (0, 0),
    image 1 is white with a flat saliency; they are each other's partner. Every block has one
    vertical and one horizontal edge, each boundary between the two images differs by 1."""
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    sal = torch.stack([torch.zeros(4, 4).index_fill_(0, torch.tensor([0, 1]), 0.0), torch.ones(4, 4)])
    sal[0, :2, :2] = 5.0
    beta, gamma, eta, lam = 1.2, 0.5, 0.2, torch.tensor([0.3, 0.3])
    e = puzzle_energy(x, sal, torch.tensor([1, 0]), lam, 2, n_labels=3, beta=beta, gamma=gamma, eta=eta,
                      neigh_size=1, pixel_std=1.0)
    beta_n = beta / 2 / 16
    c = beta_n * gamma * 1.0  # the data term of an edge whose sides show different images
    own0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    flat = torch.full((2, 2), 0.25)
    prior = eta * label_prior(lam[:1], 3)[0].float() / 4
    for i, (own, partner) in enumerate(((own0, flat), (flat, own0))):
        for l, z in enumerate((1.0, 0.5, 0.0)):  # label l: own weight z
            expected = z * (partner + c) + (1 - z) * (own + c) + prior[l]
            assert torch.allclose(e.unary[i, :, :, l], expected, atol=1e-6), (i, l)
    assert torch.allclose(e.vertical, torch.full((2, 1, 2), beta_n + c)) and e.horizontal.shape == (2, 2, 1)
    assert torch.allclose(e.horizontal, torch.full((2, 2, 1), beta_n + c))
    labels = torch.tensor([[[0, 2], [1, 1]]])
    single = GridEnergy(e.unary[:1], e.vertical[:1], e.horizontal[:1])
    manual = (e.unary[0, 0, 0, 0] + e.unary[0, 0, 1, 2] + e.unary[0, 1, 0, 1] + e.unary[0, 1, 1, 1]
              + (beta_n + c) * (0.25 + 0.25 + 1.0 + 0.0))  # |Δl|²/4 over the 4 edges
    assert single.energy(labels).item() == pytest.approx(manual.item(), abs=1e-6)


def test_graph_cut_finds_the_global_minimum_with_two_labels():
    """With two labels the α-β swap is one exact min cut: brute force over all 2⁹ labellings of 3×3."""
    g = torch.Generator().manual_seed(0)
    b, n = 6, 3
    e = GridEnergy(torch.rand(b, n, n, 2, generator=g), 0.4 * torch.rand(b, n - 1, n, generator=g),
                   0.4 * torch.rand(b, n, n - 1, generator=g))
    found = e.energy(solve_graph_cut(e))
    every = torch.tensor(list(itertools.product([0, 1], repeat=n * n))).view(-1, n, n)  # (512, 3, 3)
    best = torch.stack([GridEnergy(e.unary[i:i + 1].expand(512, -1, -1, -1), e.vertical[i:i + 1].expand(512, -1, -1),
                                   e.horizontal[i:i + 1].expand(512, -1, -1)).energy(every).min() for i in range(b)])
    assert torch.allclose(found, best, atol=5e-5), (found, best)


def test_graph_cut_beats_the_unary_only_labelling_with_three_labels():
    g = torch.Generator().manual_seed(1)
    e = GridEnergy(torch.rand(8, 8, 8, 3, generator=g), 0.3 * torch.rand(8, 7, 8, generator=g),
                   0.3 * torch.rand(8, 8, 7, generator=g))
    found, greedy = e.energy(solve_graph_cut(e)), e.energy(e.unary.argmin(-1))
    assert bool((found <= greedy + 1e-5).all()) and bool((found < greedy - 1e-3).any())


# ------------------------------------------------------------------------------ saliency (the extra pass)
def test_saliency_is_the_l2_norm_of_the_input_gradient_in_eval_mode():
    model, _ = _setup()
    x, y = _batch()
    buffers = copy.deepcopy(list(model.buffers()))
    sal, loss = input_saliency(model, x, y, K)
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # eval mode: statistics untouched
    assert all(p.grad is None for p in model.parameters())  # only the input gradient
    ref = copy.deepcopy(model).eval()
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(ref(xr), y, reduction="sum").backward()
    assert torch.allclose(sal, xr.grad.norm(dim=1), rtol=1e-4, atol=1e-7)
    assert torch.allclose(loss, F.cross_entropy(ref(x), y, reduction="none"), atol=1e-5)


def test_clean_weight_adds_the_clean_loss_from_a_train_mode_saliency_pass():
    model, pm = _setup(clean_weight=0.5)
    x, y = _batch()
    out = pm.training_step(model, (x, y), 0.0)
    assert out.loss.item() == pytest.approx((out.logs["loss_mix"] + 0.5 * out.logs["loss_clean"]).item(), abs=1e-6)
    assert out.loss.requires_grad and out.logs["loss_clean"] > 0


# ------------------------------------------------------------------------------ the method
def test_one_training_step_through_the_engine():
    model, pm = _setup()
    optimizer = build_optimizer(model, pm, OptimConfig(name="sgd", lr=0.1))
    assert pm.param_groups(0.1) == [] and list(pm.state_dict()) == []  # no state, no submodule (not even the model)
    before = copy.deepcopy(model)
    x, y = _batch()
    out = train_step(model, pm, optimizer, (x, y), 0.0)
    assert math.isfinite(out.loss.item()) and out.logits.shape == (8, K) and out.mixed.mask is not None
    assert {"loss_mix", "loss_clean", "lam", "block_num"} <= set(out.logs)
    expected = soft_cross_entropy(before(out.mixed.images), out.mixed.targets)  # the loss on the mixed batch
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(before.parameters(), model.parameters()))


def test_draws_come_from_the_generator_in_order_and_reproduce():
    x, y = _batch()
    runs = []
    for _ in range(2):
        model, pm = _setup(seed=4)
        runs.append([pm.training_step(model, (x, y), 0.0).mixed.images for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    _, pm = _setup(seed=4)
    lam, n, index = pm.draw(8, torch.device("cpu"))
    assert n in (2, 4, 8, 16) and float(lam.min()) == float(lam.max()) and not (index == torch.arange(8)).any()
    ns = {pm.draw(8, torch.device("cpu"))[1] for _ in range(60)}
    assert ns == {2, 4, 8, 16}


def test_non_square_images_and_channels_last_and_no_transport():
    model, pm = _setup(block_nums=(2, 4), transport=False)
    x, y = _batch(6, 16)
    x = torch.cat([x, x], dim=3).contiguous(memory_format=torch.channels_last)  # 16 x 32
    out = pm.training_step(model, (x, y[:6]), 0.0)
    m = out.mixed
    assert m.images.shape == (6, 3, 16, 32) and m.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(m.images, m.mask * x + (1 - m.mask) * x[m.index], atol=1e-6)  # no transport


def test_images_the_blocks_do_not_divide_are_refused():
    model, pm = _setup()
    x, y = _batch(4, 24)  # checked against every block number, whichever is drawn
    with pytest.raises(ValueError, match="t_size=4 must divide the 6x6 blocks of 4x4 on 24x24 images"):
        pm.training_step(model, (x, y), 0.0)
    coarse = PuzzleMix(K, block_nums=(2, 4), t_size=-1, neigh_size=1)
    with pytest.raises(ValueError, match="divisible by every number of blocks in block_nums: 30x30 is not divisible by 4"):
        coarse.mix(torch.randn(2, 3, 30, 30), y[:2], torch.rand(2, 30, 30))
    with pytest.raises(ValueError, match="neigh_size=3 must divide"):
        block_grid((32, 32), 4, -1, 3)
    with pytest.raises(ValueError, match="saliency must be"):
        pm.mix(x, y, torch.rand(4, 8, 8))


def test_preview_uses_the_setup_model_and_changes_nothing():
    model, pm = _setup()
    x, y = _batch()
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # as `mixlab show` calls it
        m = pm.mix_preview(x, y)
    assert m.images.shape == x.shape and m.mask.shape == (8, 1, 16, 16)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="setup"):
        PuzzleMix(K).mix_preview(x, y)


def test_missing_graph_cut_solver_is_reported_at_setup(monkeypatch):
    monkeypatch.setitem(sys.modules, "gco", None)  # import gco -> ImportError
    with pytest.raises(ImportError, match="pip install gco-wrapper"):
        PuzzleMix(K).setup(create_model("resnet_small", K, width=8))


def test_import_mixlab_does_not_import_the_solver():
    code = ("import sys, torch, mixlab, mixlab.registry as r; pm = r.build_method('puzzlemix', 10); "
            "assert 'gco' not in sys.modules; pm.setup(torch.nn.Linear(2, 10)); assert 'gco' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
    ({"block_nums": ()}, TypeError, "block_nums must be a non-empty tuple"),
    ({"block_nums": (1, 2)}, ValueError, "every entry of block_nums must be an int >= 2"),
    ({"block_nums": (4, 4)}, ValueError, "block_nums must be distinct"),
    ({"n_labels": 1}, ValueError, "n_labels must be an int >= 2"),
    ({"beta": -1.0}, ValueError, "beta must be a finite number >= 0"),
    ({"gamma": float("nan")}, ValueError, "gamma must be a finite number >= 0"),
    ({"eta": "0.2"}, TypeError, "eta must be a real number"),
    ({"neigh_size": 0}, ValueError, "neigh_size must be an int >= 1"),
    ({"transport": 1}, TypeError, "transport must be a bool"),
    ({"t_size": 0}, ValueError, "t_size must be an int >= 1 .* or -1"),
    ({"t_eps": -0.1}, ValueError, "t_eps must be a finite number >= 0"),
    ({"clean_weight": -1}, ValueError, "clean_weight must be a finite number >= 0"),
    ({"pixel_std": (0.2, 0.0, 0.2)}, ValueError, "pixel_std must be a finite number > 0"),
    ({"pixel_std": "0.25"}, TypeError, "pixel_std must be a number or a tuple"),
    ({"pairing": "shuffle"}, ValueError, "pairing must be one of"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        PuzzleMix(K, **kwargs)


def test_registry_defaults_are_the_reference_cifar_command_and_lazy_export():
    assert mixlab.PuzzleMix is PuzzleMix
    pm = registry.build_method("puzzlemix", K, block_nums=[2, 4], pixel_std=[0.25, 0.25, 0.25])
    assert pm.block_nums == (2, 4) and pm.pixel_std == (0.25, 0.25, 0.25)
    d = registry.build_method("puzzlemix", K)
    assert (d.alpha, d.block_nums, d.n_labels, d.beta, d.gamma, d.eta, d.neigh_size, d.t_size, d.t_eps) == (
        1.0, (2, 4, 8, 16), 3, 1.2, 0.5, 0.2, 4, 4, 0.8)
    assert d.transport and d.clean_weight == 0.0 and "t_eps=0.8" in repr(d)


# ------------------------------------------------------------------------------ the trainer and the CLI
def test_trainer_and_cli_train_and_show(tmp_path, capsys):
    from mixlab.cli import main

    tiny = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
            "model.kwargs={width: 8}", "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false",
            "run.threads=1", "method.name=puzzlemix"]
    metrics = train(load_config(overrides=[*tiny, f"run.out={tmp_path / 'run'}"]))
    assert {"train_loss_mix", "train_lam", "train_block_num"} <= set(metrics) and math.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "samples.png").exists()
    assert main(["train", "--method", "puzzlemix", "--epochs", "1", "--batch-size", "8", "--no-eval", "--out",
                 str(tmp_path / "cli"), *[a for kv in tiny[:2] for a in ("--set", kv)], "--set", "data.image_size=16",
                 "--set", "run.progress=false", "--set", "run.threads=1", "--set", "model.kwargs={width: 8}"]) == 0
    assert "final test accuracy:" in capsys.readouterr().out
    png = tmp_path / "pm.png"
    assert main(["show", "--method", "puzzlemix", "--n", "4", "--out", str(png)]) == 0
    assert "mean lambda" in capsys.readouterr().out and png.is_file()
