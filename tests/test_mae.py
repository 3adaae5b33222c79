"""MAE (He et al. 2022) and its CropMix input (Han et al. 2022, §6): masking, the loss on removed
patches only, normalised-pixel targets, the decoder, learning, the input transforms, the engine
(reconstructions.png, resume) and the command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from mixlab.cli import main
from mixlab.core.checks import IncompatibleModelError
from mixlab.engine import load_config, train
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.models import create_model
from mixlab.models.timm_models import TimmModel
from mixlab.models.vit import ViT
from mixlab.registry import METHODS, build_method
from mixlab.ssl.mae import (MAE, masked_mse, patch_targets, patchify, random_masking, sincos_2d, unpatchify,
                            vit_encoder)
from mixlab.transforms import CropMix, OneView, scale_ranges


def _vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return ViT(num_classes=10, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_stages=2)


def _method(model=None, **kwargs) -> tuple[MAE, torch.nn.Module]:
    model = model if model is not None else _vit()
    method = MAE(decoder_dim=32, decoder_depth=1, decoder_heads=2, **kwargs)
    method.setup(model, torch.Generator().manual_seed(0))
    return method.train(), model.train()


def _images(n: int = 6, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("length,ratio,removed", [(64, 0.75, 48), (16, 0.75, 12), (196, 0.75, 147), (64, 0.5, 32)])
def test_masking_removes_exactly_the_ratio_of_every_image(length, ratio, removed):
    ids_keep, ids_restore, mask = random_masking(32, length, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (32, length) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask.sum(dim=1), torch.full((32,), float(removed)))
    # the kept indices are exactly the visible patches, and ids_restore inverts the random order
    assert torch.equal(torch.zeros(32, length).scatter(1, ids_keep, 1.0), 1 - mask)
    order = ids_restore.argsort(dim=1)
    assert torch.equal(order[:, :length - removed], ids_keep)
    assert torch.equal(order.gather(1, ids_restore), torch.arange(length).expand(32, -1))


def test_masks_differ_per_image_and_reproduce_from_the_seed():
    _, _, mask = random_masking(16, 64, 0.75, torch.Generator().manual_seed(3))
    assert len({tuple(row.tolist()) for row in mask}) == 16  # a different mask for every image
    _, _, again = random_masking(16, 64, 0.75, torch.Generator().manual_seed(3))
    _, _, other = random_masking(16, 64, 0.75, torch.Generator().manual_seed(4))
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    # all patches are equally likely to be removed: over many images, each position near 75 %
    _, _, many = random_masking(4000, 16, 0.75, torch.Generator().manual_seed(5))
    assert (many.mean(dim=0) - 0.75).abs().max() < 0.03


def test_masking_must_keep_and_remove_something():
    with pytest.raises(ValueError, match="keeps 0 of 4 patches"):
        random_masking(2, 4, 0.9)


def test_the_method_masks_75_percent_of_the_patches_of_each_image():
    method, model = _method()
    _, mask = method.forward_mae(model, _images(), torch.Generator().manual_seed(0))
    assert mask.shape == (6, 16) and torch.equal(mask.sum(dim=1), torch.full((6,), 12.0))


def test_the_encoder_sees_only_the_visible_patches():
    """Changing the pixels of removed patches does not change any prediction."""
    method, model = _method()
    model.eval()
    images = _images()
    pred, mask = method.forward_mae(model, images, torch.Generator().manual_seed(7))
    removed = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48), 4, (4, 4)).bool()  # (B, 3, H, W)
    changed = torch.where(removed, images + 5 * torch.randn_like(images), images)
    pred2, mask2 = method.forward_mae(model, changed, torch.Generator().manual_seed(7))
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(pred, pred2, rtol=1e-5, atol=1e-5)
    visible = torch.where(removed, images, images + 1.0)  # changing a visible patch does change them
    pred3, _ = method.forward_mae(model, visible, torch.Generator().manual_seed(7))
    assert not torch.allclose(pred, pred3)


# ------------------------------------------------------------------------------ targets and loss
def test_patchify_orders_patches_row_major_and_pixels_row_column_channel():
    images = _images(2, 8)
    patches = patchify(images, 4)  # (2, 4, 48) on a 2x2 grid
    for j, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        expected = images[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].permute(0, 2, 3, 1).reshape(2, 48)
        assert torch.equal(patches[:, j], expected)
    assert torch.equal(unpatchify(patches, 4, (2, 2)), images)
    wide = _images(2, 8)[..., :4].repeat(1, 1, 1, 3)  # 8 x 12: a 2x3 grid
    assert torch.equal(unpatchify(patchify(wide, 4), 4, (2, 3)), wide)
    with pytest.raises(ValueError, match="divisible by the patch size 4"):
        patchify(_images(1, 10), 4)


def test_norm_pix_targets_are_standardised_per_patch():
    images = _images(3, 8) * 3 + 2
    target = patch_targets(images, 4, norm_pix=True)
    raw = patchify(images, 4)
    assert torch.allclose(target.mean(dim=-1), torch.zeros(3, 4), atol=1e-5)
    var = raw.var(dim=-1, keepdim=True)  # unbiased, as the authors' code
    assert torch.allclose(target.var(dim=-1), (var / (var + 1e-6)).squeeze(-1), atol=1e-5)
    torch.testing.assert_close(target, (raw - raw.mean(-1, keepdim=True)) / (var + 1e-6).sqrt())
    assert torch.equal(patch_targets(images, 4, norm_pix=False), raw)
    flat = torch.full((1, 3, 4, 4), 0.7)  # a constant patch: target ~0 (rounding of the mean), not NaN
    assert torch.allclose(patch_targets(flat, 4), torch.zeros(1, 1, 48), atol=1e-3)


def test_loss_is_the_mse_of_removed_patches_only():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    hand = sum(((pred[b, j] - target[b, j]) ** 2).mean() for b in range(2) for j in range(4) if mask[b, j]) / 4
    torch.testing.assert_close(masked_mse(pred, target, mask), hand)
    visible_changed = torch.where(mask.bool().unsqueeze(-1), pred, pred + 10.0)
    assert masked_mse(visible_changed, target, mask) == masked_mse(pred, target, mask)
    removed_changed = pred.clone()
    removed_changed[0, 0] += 1.0
    assert masked_mse(removed_changed, target, mask) != masked_mse(pred, target, mask)


def test_training_loss_is_the_masked_mse_of_the_normalised_pixels():
    method, model = _method()
    images = _images()
    state = method.generator.get_state()
    loss = method.training_step(model, ([images], torch.zeros(6)), 0.0).loss
    method.generator.set_state(state)  # the same masks again
    with torch.no_grad():
        pred, mask = method.forward_mae(model, images, method.generator)
    torch.testing.assert_close(loss, masked_mse(pred, patch_targets(images, 4), mask))
    raw, _ = _method(norm_pix_loss=False)
    assert raw.norm_pix_loss is False


def test_sincos_embedding_encodes_column_then_row():
    pos = sincos_2d((3, 5), 16)  # (1, 15, 16)
    assert pos.shape == (1, 15, 16)
    grid = pos.view(3, 5, 16)
    assert torch.allclose(grid[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert torch.allclose(grid[:, 2, :8], grid[0, 2, :8].expand(3, -1))  # first half: the column only
    assert torch.allclose(grid[1, :, 8:], grid[1, 0, 8:].expand(5, -1))  # second half: the row only
    omega = 1.0 / 10000 ** (torch.arange(4) / 4)
    assert torch.allclose(grid[2, 3], torch.cat([(3 * omega).sin(), (3 * omega).cos(), (2 * omega).sin(),
                                                 (2 * omega).cos()]))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d((2, 2), 18)


# ------------------------------------------------------------------------------ modules and learning
def test_gradients_reach_the_encoder_and_the_decoder_not_the_classifier():
    method, model = _method()
    method.training_step(model, ([_images()], torch.zeros(6)), 0.0).loss.backward()
    assert all(p.grad is not None for p in method.decoder.parameters())
    encoder = {n: p for n, p in model.named_parameters() if not n.startswith("fc.")}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.values())
    assert model.fc.weight.grad is None  # the classifier is left for fine-tuning
    groups = method.param_groups(1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(method.decoder.parameters()))
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim < 2 for p in groups[1]["params"])


def test_reconstruction_of_a_fixed_image_improves_within_forty_steps():
    method, model = _method()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    image = torch.stack([xx, yy, xx * yy]).unsqueeze(0).expand(16, -1, -1, -1).contiguous()
    optimizer = torch.optim.AdamW([*model.parameters(), *method.parameters()], lr=3e-3, weight_decay=0.0)

    def reconstruction_error() -> float:
        _, rec = method.reconstruct(model, image, torch.Generator().manual_seed(0))
        return float((rec - image).pow(2).mean())

    before, losses = reconstruction_error(), []
    for _ in range(40):
        loss = method.training_step(model, ([image], None), 0.0).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 / 10  # measured: a factor of ~35
    assert reconstruction_error() < before / 10


def test_reconstruction_pastes_visible_patches_and_maps_predictions_back_to_pixels():
    method, model = _method()
    images = _images()
    masked, rec = method.reconstruct(model, images, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    pred, mask = method.forward_mae(model, images, g)
    removed = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48), 4, (4, 4)).bool()
    assert torch.equal(rec[~removed], images[~removed]) and torch.equal(masked[~removed], images[~removed])
    assert torch.all(masked[removed] == 0)
    raw = patchify(images, 4)
    mean, std = raw.mean(-1, keepdim=True), (raw.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(patchify(rec, 4)[mask.bool()], (pred * std + mean)[mask.bool()])
    rows = method.epoch_figures(model, images)["reconstructions.png"].rows
    assert [name for name, _ in rows] == ["original", "masked (75 %)", "reconstruction"]
    assert all(x.shape == images.shape for _, x in rows)


def test_a_timm_vit_with_a_class_token_works_and_keeps_it_visible():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10)
    assert vit.num_prefix_tokens == 1
    for model in (vit, TimmModel(vit, "tiny")):
        encoder = vit_encoder(model)
        assert (encoder.prefix, encoder.patch, encoder.width, len(encoder.layers)) == (1, 4, 32, 2)
        method, _ = _method(model)
        pred, mask = method.forward_mae(model, _images(), torch.Generator().manual_seed(0))
        assert pred.shape == (6, 16, 48) and torch.equal(mask.sum(1), torch.full((6,), 12.0))
        assert torch.isfinite(method.training_step(model, ([_images()], None), 0.0).loss)
    assert vit.cls_token.grad is None
    method.training_step(vit, ([_images()], None), 0.0).loss.backward()
    assert vit.cls_token.grad is not None and vit.pos_embed.grad is not None


def test_a_model_that_is_not_a_vit_is_a_clear_type_error():
    with pytest.raises(TypeError, match="MAE needs a Vision Transformer.*got CifarResNet"):
        MAE().setup(create_model("resnet_small", 10, width=8))
    with pytest.raises(IncompatibleModelError):  # also a ValueError: the commands report it as bad input
        MAE().setup(create_model("resnet_small", 10, width=8))
    assert issubclass(IncompatibleModelError, ValueError)


def test_a_batch_must_hold_one_view_and_image_sides_must_fit_the_patches():
    method, model = _method()
    with pytest.raises(ValueError, match="one view per image"):
        method.training_step(model, ([_images(), _images()], None), 0.0)
    with pytest.raises(ValueError, match="divisible by the patch size 4"):
        method.training_step(model, ([_images(2, 18)], None), 0.0)
    with pytest.raises(RuntimeError, match="setup"):
        MAE().param_groups(1e-3)


@pytest.mark.parametrize("kwargs, name", [({"mask_ratio": 1.0}, "mask_ratio"), ({"mask_ratio": 0}, "mask_ratio"),
                                          ({"decoder_dim": 130}, "decoder_dim"), ({"decoder_depth": 0}, "decoder_depth"),
                                          ({"decoder_heads": 3}, "decoder_dim"), ({"input": "rcc"}, "input"),
                                          ({"cropmix_mix": "fmix"}, "cropmix_mix"), ({"scale": (0.0, 1.0)}, "scale"),
                                          ({"norm_pix_loss": "yes"}, "norm_pix_loss"),
                                          ({"cropmix_crops": 0}, "num_crops"),
                                          ({"interpolation": "lanczos"}, "interpolation"),
                                          ({"decoder_mlp_ratio": 0}, "decoder_mlp_ratio")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        MAE(**kwargs)


# ------------------------------------------------------------------------------ the input transforms
def _image(h: int = 40, w: int = 40) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _crop_stage(method: MAE, size: int = 32):
    views = method.views(size)
    assert isinstance(views, OneView) and isinstance(views.transform, v2.Compose)
    crop, flip = views.transform.transforms
    assert isinstance(flip, v2.RandomHorizontalFlip)  # the flip comes after the crop or the mix
    return views, crop


def test_rrc_input_is_maes_random_resized_crop_and_flip():
    views, crop = _crop_stage(MAE())
    assert isinstance(crop, v2.RandomResizedCrop)
    assert tuple(crop.scale) == (0.2, 1.0) and crop.interpolation == v2.InterpolationMode.BICUBIC
    out = views(_image())
    assert len(out) == 1 and out[0].shape == (3, 32, 32) and out[0].dtype == torch.uint8


@pytest.mark.parametrize("mix, crops, alpha", [("mixup", (2, 3, 4), 0.4), ("cutmix", (2,), 1.0)])
def test_cropmix_input_follows_section_6(mix, crops, alpha):
    views, crop = _crop_stage(MAE(input="cropmix", cropmix_mix=mix))
    assert isinstance(crop, CropMix)
    assert (crop.scale, crop.num_crops, crop.mix, crop.alpha) == ((0.2, 1.0), crops, mix, alpha)
    assert crop.inter_aug == () and crop.interpolation == v2.InterpolationMode.BICUBIC  # no intermediate augs
    torch.manual_seed(0)
    image, seen = _image(48, 48), set()
    for _ in range(200):
        p = crop.make_params([image])
        n = p["num_crops"]
        seen.add(n)
        assert all(step["aug"] is None for step in p["steps"]) and p["after"] is None and len(p["steps"]) == n - 1
        for c, (lo, hi) in zip(p["crops"], scale_ranges((0.2, 1.0), n)):  # each crop in its share of (0.2, 1)
            area = c["height"] * c["width"] / 48 ** 2
            assert lo - 0.05 <= area <= hi + 0.05
    assert seen == set(crops)
    out = views(image)
    assert len(out) == 1 and out[0].shape == (3, 32, 32) and out[0].dtype == torch.uint8


def test_mix_preview_shows_cropmix_only_with_the_cropmix_input():
    images, labels = _images(4, 16), torch.tensor([0, 1, 2, 3])
    method, _ = _method()
    assert method.mix_preview(images, labels) is None
    method, _ = _method(input="cropmix", cropmix_mix="cutmix")
    shown = method.mix_preview(images, labels)
    assert shown.images.shape == images.shape and not torch.equal(shown.images, images)
    assert torch.equal(shown.lam, torch.ones(4)) and torch.equal(shown.targets.argmax(1), labels)


# ------------------------------------------------------------------------------ engine and command line
TINY = ["data.num_per_class=6", "data.test_per_class=3", "data.image_size=16", "data.batch_size=12",
        "model.name=vit_tiny_patch4", "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2, num_stages: 2}",
        "optim.epochs=2", "optim.warmup_epochs=0", "run.progress=false", "run.threads=1", "data.num_workers=0",
        "method.name=mae", "method.params={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, input: cropmix}"]


def test_trainer_pretrains_writes_reconstructions_and_resumes_exactly(tmp_path: Path):
    straight = train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'a'}"]))
    assert 0 <= straight["knn_acc1"] <= 100 and math.isfinite(straight["train_loss"])
    for name in ("reconstructions.png", "samples.png", "curves.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    ckpt = load_checkpoint(tmp_path / "a")
    assert any(k.startswith("decoder.") for k in ckpt["method"]) and "decoder.mask_token" in ckpt["method"]
    train(load_config(overrides=[*TINY, f"run.out={tmp_path / 'b'}", "run.stop_epoch=1"]))
    resumed = train(load_config(overrides=[*TINY, f"run.resume={tmp_path / 'b'}"]))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["knn_acc1"] == straight["knn_acc1"]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for part in ("model", "method"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_pretrain_command_uses_the_vit_and_maes_optimiser_and_writes_reconstructions(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["--set", "data.num_per_class=4", "--set", "data.test_per_class=2", "--set", "data.image_size=16",
            "--batch-size", "8", "--set", "run.progress=false", "--set", "data.num_workers=0",
            "--set", "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2, num_stages: 1}",
            "--set", "method.params={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}"]
    assert main(["pretrain", "--framework", "mae", "--cropmix", "cutmix", "--epochs", "1", "--no-probe",
                 "--out", str(out), *tiny]) == 0
    assert "final kNN accuracy" in capsys.readouterr().out
    assert (out / "reconstructions.png").stat().st_size > 0
    cfg = load_checkpoint(out)["config"]
    assert cfg["model"]["name"] == "vit_tiny_patch4"  # MAE's model, though pretrain's default is resnet_small
    assert (cfg["optim"]["name"], cfg["optim"]["betas"], cfg["optim"]["weight_decay"]) == ("adamw", [0.9, 0.95], 0.05)
    assert cfg["method"]["params"]["input"] == "cropmix" and cfg["method"]["params"]["cropmix_mix"] == "cutmix"


def test_pretrain_flags_name_the_frameworks_they_apply_to(tmp_path, capsys):
    assert main(["pretrain", "--framework", "mocov3", "--cropmix", "--out", str(tmp_path / "x")]) == 2
    assert "--cropmix applies to --framework mocov2 or mae, not mocov3" in capsys.readouterr().err
    assert main(["pretrain", "--framework", "mae", "--sdmp", "--out", str(tmp_path / "x")]) == 2
    assert "--sdmp applies to --framework mocov3 or dino, not mae" in capsys.readouterr().err
    assert main(["pretrain", "--framework", "mae", "--scalemix", "--out", str(tmp_path / "x")]) == 2
    assert "--scalemix applies to --framework mocov2, not mae" in capsys.readouterr().err
    assert main(["pretrain", "--framework", "mae", "--cropmix", "fmix", "--out", str(tmp_path / "x")]) == 2
    assert "--cropmix MIX takes mixup or cutmix, for --framework mae only; got 'fmix'" in capsys.readouterr().err
    assert main(["pretrain", "--framework", "mocov2", "--cropmix", "cutmix", "--out", str(tmp_path / "x")]) == 2
    assert "for --framework mae only; got 'cutmix' for mocov2" in capsys.readouterr().err
    assert main(["pretrain", "--framework", "mae", "--model", "resnet_small", "--epochs", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "MAE needs a Vision Transformer" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_show_draws_the_cropmix_input(tmp_path, capsys):
    path = tmp_path / "mae.png"
    assert main(["show", "--method", "mae", "--n", "4", "--seed", "1", "--out", str(path),
                 "--set", "method.params.input=cropmix"]) == 0
    assert "mean lambda 1.00" in capsys.readouterr().out and path.stat().st_size > 0


def test_registry_entry():
    spec = METHODS["mae"]
    assert spec.defaults == {"mask_ratio": 0.75, "norm_pix_loss": True, "input": "rrc", "scale": (0.2, 1.0)}
    assert "He et al. 2022" in spec.paper and "CropMix" in spec.paper
    assert spec.config["model"]["name"] == "vit_tiny_patch4"
    method = build_method("mae", 10, scale=[0.3, 1.0], cropmix_crops=[2, 3], input="cropmix")
    assert method.scale == (0.3, 1.0) and method.cropmix_crops == (2, 3) and method.self_supervised
