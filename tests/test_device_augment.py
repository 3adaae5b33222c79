"""Augmentation on the device (issue 26): the batched twins of the per-image pipelines, and the
engine's ``data.device_augment`` path.

* exact pixels: given the batched path's parameters, torchvision's per-image functional ops on
  float images give the same pixels (tolerance 5e-5: float rounding of the resampling weights, the
  HSV round trip and the blur kernel; the resampling itself is tested against ``resized_crop``
  for every mode in ``test_cropmix.py``, CropMix's batched mixing against the per-image one there too);
* distributions: KS tests of the batched samplers against torchvision's own ``make_params``;
* the engine: the loader yields uint8 images, the run resumes bit for bit from a mid-epoch
  checkpoint, ``samples.png`` and ``mixlab show`` on both paths, lazily decoded folders (padded
  batches), bad values named.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mixlab.data import cifar_train_transform
from mixlab.engine import load_checkpoint, load_config, train
from mixlab.engine.config import TrainConfig, validate_config
from mixlab.engine.data import pad_collate, wants_device_augment
from mixlab.engine.show import show_method
from mixlab.engine.writer import RunWriter
from mixlab.ssl.mae import MAE
from mixlab.ssl.mocov2 import MoCoV2
from mixlab.transforms import CropMix, MixedQuery, MultiCrop, TwoViews, byol_view
from mixlab.transforms.device import (
    BatchedPipeline,
    BatchedViews,
    Blur,
    CropMixCrop,
    Flip,
    Grayscale,
    Jitter,
    MixedQueryCrop,
    PaddedCrop,
    ResizedCrop,
    Solarize,
    UnsupportedTransform,
    batched_pipeline,
)

P_MIN = 1e-3
ATOL = 5e-5


def _uint8(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _flag(params: dict, i: int) -> bool:
    return params["flags"] is None or bool(params["flags"][i])


def _per_image_ops(img: torch.Tensor, ops: list, params: list[dict], i: int) -> torch.Tensor:
    """The pixel operations of a pipeline on one float image with sample ``i``'s parameters,
    through torchvision's functional ops."""
    for op, p in zip(ops, params):
        if not _flag(p, i):
            continue
        if isinstance(op, Flip):
            img = F.horizontal_flip(img)
        elif isinstance(op, Jitter):
            f = p["factors"][i].tolist()
            fns = (lambda x: F.adjust_brightness(x, f[0]), lambda x: F.adjust_contrast(x, f[1]),
                   lambda x: F.adjust_saturation(x, f[2]), lambda x: F.adjust_hue(x, f[3]))
            for k in p["order"][i].tolist():
                img = fns[k](img)
        elif isinstance(op, Grayscale):
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        elif isinstance(op, Blur):
            s = float(p["sigma"][i])
            img = F.gaussian_blur(img, [op.kernel_size, op.kernel_size], [s, s])
        elif isinstance(op, Solarize):
            img = F.solarize(img, op.threshold / 255.0)
        else:
            raise AssertionError(op)
    return img


# ------------------------------------------------------------------------------ compiling pipelines
def test_each_training_pipeline_compiles_to_its_batched_twin():
    cifar = batched_pipeline(cifar_train_transform(size=32, padding=4, normalize=False))
    assert isinstance(cifar.geometry, PaddedCrop) and [type(o) for o in cifar.ops] == [Flip]
    rrc = batched_pipeline(v2.Compose([v2.RandomResizedCrop(24, scale=(0.2, 1.0)), v2.RandomHorizontalFlip()]))
    assert isinstance(rrc.geometry, ResizedCrop) and rrc.geometry.scale == (0.2, 1.0)
    cm = batched_pipeline(v2.Compose([CropMix(32, num_crops=(2, 3, 4), mix="cutmix"), v2.RandomHorizontalFlip()]))
    assert isinstance(cm.geometry, CropMixCrop) and cm.geometry.batch.num_crops == (2, 3, 4)
    byol = batched_pipeline(TwoViews(32))
    assert isinstance(byol, BatchedViews) and len(byol.views) == 2
    assert [type(o) for o in byol.views[0].ops] == [Flip, Jitter, Grayscale, Blur]
    assert [type(o) for o in byol.views[1].ops] == [Flip, Jitter, Grayscale, Blur, Solarize]
    assert byol.views[0].ops[1].p == pytest.approx(0.8) and byol.views[1].ops[3].p == pytest.approx(0.1)
    dino = batched_pipeline(MultiCrop(32, 16, num_local=6))
    out = dino(_uint8(4, 40, 40), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in out] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 6
    query = batched_pipeline(MoCoV2(views="cropmix").views(32)).views[0]
    assert isinstance(query.geometry, MixedQueryCrop) and query.geometry.base_scale == pytest.approx((0.2, 0.6))
    mae = batched_pipeline(MAE(input="cropmix").views(32))
    assert isinstance(mae.views[0].geometry, CropMixCrop) and [type(o) for o in mae.views[0].ops] == [Flip]


@pytest.mark.parametrize("transform, name", [
    (v2.RandomRotation(10), "RandomRotation"),
    (v2.Compose([v2.RandomHorizontalFlip(), v2.RandomResizedCrop(8)]), "RandomResizedCrop after the first"),
    (v2.RandomCrop(8, padding=2, padding_mode="reflect"), "zero constant padding"),
])
def test_a_transform_without_a_batched_twin_is_named(transform, name):
    with pytest.raises(UnsupportedTransform, match=name):
        batched_pipeline(transform)


# ------------------------------------------------------------------------------ exact pixels
def test_padded_crop_and_flip_equal_torchvision_exactly():
    x = _uint8(16, 32, 32)
    pipe = batched_pipeline(cifar_train_transform(size=32, padding=4, normalize=False))
    params = pipe.make_params(16, 32, 32, torch.Generator().manual_seed(1))
    out = pipe.apply(x, params)
    for i in range(16):
        top, left = params["geometry"]["corner"][i].tolist()
        ref = F.crop(F.pad(x[i], [4, 4, 4, 4]), top, left, 32, 32)
        ref = F.horizontal_flip(ref) if _flag(params["ops"][0], i) else ref
        assert torch.equal(out[i], ref.float() / 255)


@pytest.mark.parametrize("view", [1, 2])
def test_byol_views_equal_torchvision_on_the_same_parameters(view):
    """RRC (bicubic, antialiased) + flip + jitter + grayscale + blur (+ solarize): every op, each
    image its own parameters, with the p of each op raised so that all branches run."""
    x = _uint8(12, 40, 36, seed=view)
    pipe = batched_pipeline(byol_view(24, view))
    for op in pipe.ops:
        op.p = 0.5 if not isinstance(op, Flip) else op.p
    params = pipe.make_params(12, 40, 36, torch.Generator().manual_seed(view))
    out = pipe.apply(x, params)
    xf = x.float() / 255
    for i in range(12):
        top, left, h, w = params["geometry"]["boxes"][i].tolist()
        img = F.resized_crop(xf[i], top, left, h, w, [24, 24], interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True).clamp(0, 1)  # the uint8 path's clamp of the bicubic overshoot
        ref = _per_image_ops(img, pipe.ops, params["ops"], i)
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)


def test_mixed_query_equals_the_per_image_query_on_the_same_parameters():
    """MoCo v2's CropMix query: two antialiased bilinear crops, each view's own MoCo v2
    augmentation, the patch view's box pasted into the base view."""
    x = _uint8(10, 40, 40, seed=3)
    pipe = batched_pipeline(MoCoV2(views="cropmix").views(32)).views[0]
    geo = pipe.geometry
    params = pipe.make_params(10, 40, 40, torch.Generator().manual_seed(3))
    out = pipe.apply(x, params)
    p = params["geometry"]
    xf = x.float() / 255
    for i in range(10):
        views = []
        for k in range(2):
            top, left, h, w = p["boxes"][i, k].tolist()
            img = F.resized_crop(xf[i], top, left, h, w, [32, 32], antialias=True)
            views.append(_per_image_ops(img, geo.augment.ops, p["augment"], i + k * 10))
        x1, y1, x2, y2 = p["paste"][i].tolist()
        ref = views[0].clone()
        ref[:, y1:y2, x1:x2] = views[1][:, y1:y2, x1:x2]
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)


def test_cropmix_twin_is_the_batched_cropmix_of_the_same_arguments():
    cm = CropMix(24, num_crops=(2, 3), mix="cutmix", inter_aug=("permute", "colorjitter"), placement="both")
    twin = batched_pipeline(cm)
    x = _uint8(6, 32, 32)
    params = twin.make_params(6, 32, 32, torch.Generator().manual_seed(0))
    expect = twin.geometry.batch.transform(x, params["geometry"], keep_float=True)
    assert torch.equal(twin.apply(x, params), expect)


# ------------------------------------------------------------------------------ distributions
def _ks(a, b) -> float:
    return stats.ks_2samp(torch.as_tensor(a).double().numpy(), torch.as_tensor(b).double().numpy()).pvalue


def test_crop_area_ratio_and_position_follow_torchvision():
    n, (height, width) = 3000, (48, 64)
    t = v2.RandomResizedCrop(24, scale=(0.08, 1.0))
    torch.manual_seed(0)
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in
                        (t.make_params([torch.zeros(3, height, width)]) for _ in range(n))], dtype=torch.float64)
    ours = batched_pipeline(t).make_params(n, height, width, torch.Generator().manual_seed(1))["geometry"]["boxes"]
    ours = ours.double()
    for name, f in (("area", lambda b: b[:, 2] * b[:, 3] / (height * width)),
                    ("log aspect", lambda b: torch.log(b[:, 3] / b[:, 2])),
                    ("centre y", lambda b: (b[:, 0] + b[:, 2] / 2) / height),
                    ("centre x", lambda b: (b[:, 1] + b[:, 3] / 2) / width)):
        assert _ks(f(ours), f(ref)) > P_MIN, name


def test_padded_crop_positions_follow_torchvision():
    t = v2.RandomCrop(32, padding=4)
    torch.manual_seed(0)
    ref = [t.make_params([torch.zeros(3, 32, 32)]) for _ in range(2000)]
    ours = PaddedCrop((32, 32), (4, 4, 4, 4)).make_params(2000, 32, 32, torch.Generator().manual_seed(0))["corner"]
    assert ours.min() == 0 and ours.max() == 8
    assert _ks(ours[:, 0], [p["top"] for p in ref]) > P_MIN and _ks(ours[:, 1], [p["left"] for p in ref]) > P_MIN


def test_jitter_factors_blur_sigma_and_probabilities_follow_torchvision():
    n = 3000
    jitter = v2.ColorJitter(0.4, 0.4, 0.2, 0.1)
    torch.manual_seed(0)
    ref = [jitter.make_params([torch.zeros(3, 4, 4)]) for _ in range(n)]
    ours = Jitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue, p=0.8).make_params(
        n, torch.Generator().manual_seed(0))
    for k, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")):
        assert _ks(ours["factors"][:, k], [float(r[key]) for r in ref]) > P_MIN, key
    first = [int(r["fn_idx"][0]) for r in ref]  # the order: each operation first a quarter of the time
    assert stats.chisquare(torch.bincount(ours["order"][:, 0], minlength=4).numpy(),
                           torch.bincount(torch.tensor(first), minlength=4).numpy() * 1.0).pvalue > P_MIN
    blur = v2.GaussianBlur(3, sigma=(0.1, 2.0))
    sig = [blur.make_params([torch.zeros(3, 4, 4)])["sigma"][0] for _ in range(n)]
    assert _ks(Blur(3, (0.1, 2.0), 0.5).make_params(n, torch.Generator().manual_seed(0))["sigma"], sig) > P_MIN
    for p, flags in ((0.8, ours["flags"]), (0.2, Grayscale(0.2).make_params(n, torch.Generator())["flags"])):
        assert stats.binomtest(int(flags.sum()), n, p).pvalue > P_MIN


def test_mixed_query_crops_and_lambda_follow_the_per_image_query():
    n = 2000
    query = MixedQuery(32, (0.2, 0.6), (0.6, 1.0))
    torch.manual_seed(0)
    ref = [query.make_params([torch.zeros(3, 40, 40)]) for _ in range(n)]
    ours = MixedQueryCrop(query, batched_pipeline(query.augment)).make_params(n, 40, 40, torch.Generator())
    for k in range(2):
        area = ours["boxes"][:, k, 2] * ours["boxes"][:, k, 3] / 1600.0
        assert _ks(area, [r["crops"][k]["height"] * r["crops"][k]["width"] / 1600.0 for r in ref]) > P_MIN
    pasted = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) / 1024.0  # noqa: E731
    assert _ks(pasted(ours["paste"]), pasted(torch.tensor([r["box"] for r in ref]))) > P_MIN


# ------------------------------------------------------------------------------ the engine
TINY = ["data.num_per_class=4", "data.test_per_class=2", "data.image_size=16", "data.batch_size=8",
        "model.kwargs={width: 8}", "optim.warmup_epochs=0.5", "run.progress=false", "run.threads=1",
        "data.num_workers=0", "data.device_augment=true"]


def _run(tmp_path: Path, name: str, *extra: str):
    return train(load_config(overrides=[*TINY, f"run.out={tmp_path / name}", *extra]))


def _equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("method, params", [
    ("cropmix+cutmix", "method.params={num_crops: [2, 3, 4]}"),
    ("mocov3", "method.params={mlp_dim: 32, dim: 16}"),
])
def test_device_path_resumes_bit_for_bit_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch, method, params):
    extra = [f"method.name={method}", params, "optim.epochs=2", "run.checkpoint_every=3"]
    straight = _run(tmp_path, "straight", *extra)
    real = RunWriter.write_checkpoint

    def write(self, checkpoint):
        real(self, checkpoint)
        if checkpoint["step"] == 3:  # mid-epoch 1 (5 steps an epoch)
            raise _Killed

    monkeypatch.setattr(RunWriter, "write_checkpoint", write)
    with pytest.raises(_Killed):
        _run(tmp_path, "cut", *extra)
    monkeypatch.setattr(RunWriter, "write_checkpoint", real)
    ckpt = load_checkpoint(tmp_path / "cut")
    assert ckpt["epoch_step"] == 3 and "augment" in ckpt["rng"]["generators"]
    _run(tmp_path, "cut", *extra, f"run.resume={tmp_path / 'cut'}")
    a, b = load_checkpoint(Path(straight["run_dir"])), load_checkpoint(tmp_path / "cut")
    for key in ("epoch", "step", "model", "optimizer", "method", "rng"):
        _equal(a[key], b[key], key)


@pytest.mark.parametrize("method, params", [
    ("dino", "method.params={out_dim: 32, hidden_dim: 16, bottleneck_dim: 8}"),
    ("mocov2", "method.params={views: cropmix, queue_size: 64, dim: 16, hidden_dim: 16}"),
    ("rrc", "method.params={scale: [0.25, 1.0]}"),
    ("mae", "method.params={input: cropmix, decoder_dim: 16, decoder_depth: 1, decoder_heads: 2}"),
])
def test_more_pipelines_train_on_the_device_path(tmp_path, method, params):
    vit = ["model.name=vit_tiny_patch4", "model.kwargs={depth: 1, embed_dim: 32, num_heads: 2, num_stages: 1}"]
    out = _run(tmp_path, method, f"method.name={method}", params, "optim.epochs=1", *(vit if method == "mae" else []))
    assert math.isfinite(out["train_loss"])


def test_the_loader_yields_uint8_and_the_device_draws_from_the_augment_generator(tmp_path, monkeypatch):
    from mixlab.engine import loop

    seen = {}
    real = loop.step

    def spy(state, images, labels):
        seen.setdefault("loader", state.data.train_set.transform)
        seen.setdefault("images", images)
        return real(state, images, labels)

    monkeypatch.setattr(loop, "step", spy)
    out = _run(tmp_path, "run", "method.name=cropmix", "optim.epochs=1")
    assert seen["loader"] is None  # the loader only collates the stored uint8 images
    assert seen["images"].dtype == torch.float32 and seen["images"].shape == (8, 3, 16, 16)
    assert (Path(out["run_dir"]) / "samples.png").is_file()
    other = _run(tmp_path, "seed1", "method.name=cropmix", "optim.epochs=1", "run.seed=1")
    assert other["train_loss"] != out["train_loss"]


@pytest.mark.parametrize("device_augment", ["true", "false"])
def test_mixlab_show_works_on_both_paths(tmp_path, device_augment):
    path, _ = show_method("cropmix", n=4, out=tmp_path / "show.png",
                             overrides=[f"data.device_augment={device_augment}", "data.num_per_class=2",
                                        "data.test_per_class=1"])
    assert path.is_file() and path.stat().st_size > 0


def _mixed_size_folder(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, per in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per):
                h, w = 20 + 4 * i, 28 - 2 * i
                arr = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_lazy_folder_batches_are_padded_and_cropped_on_the_device(tmp_path):
    root = _mixed_size_folder(tmp_path / "folder")
    out = _run(tmp_path, "run", "data.name=imagefolder", f"data.root={root}", "data.batch_size=4",
               "method.name=cutmix", "optim.epochs=1", "run.eval_every=1")
    assert math.isfinite(out["train_loss"])
    images = [torch.full((3, 2, 3), 7, dtype=torch.uint8), torch.full((3, 4, 1), 9, dtype=torch.uint8)]
    padded, sizes, labels = pad_collate([(images[0], 1), (images[1], 0)])
    assert padded.shape == (2, 3, 4, 3) and sizes.tolist() == [[2, 3], [4, 1]] and labels.tolist() == [1, 0]
    assert padded[0, :, 2:].sum() == 0 and padded[1, :, :, 1:].sum() == 0 and padded[1, :, :, :1].eq(9).all()


def test_lazy_folder_without_a_batched_twin_is_refused_by_name(tmp_path):
    root = _mixed_size_folder(tmp_path / "folder")
    with pytest.raises(ValueError, match="data.device_augment is true .* Resize has no batched twin"):
        _run(tmp_path, "run", "data.name=imagefolder", f"data.root={root}", "data.batch_size=4",
             "data.augment=none", "optim.epochs=1")


def test_device_augment_defaults_to_the_device_and_bad_values_are_named():
    cfg = TrainConfig()
    assert cfg.data.device_augment is None
    assert wants_device_augment(cfg, torch.device("cuda")) and not wants_device_augment(cfg, torch.device("cpu"))
    cfg.data.device_augment = False
    assert not wants_device_augment(cfg, torch.device("cuda"))
    with pytest.raises(ValueError, match="data.device_augment must be true or false, got 'maybe'"):
        load_config(overrides=["data.device_augment=maybe"])
    cfg.data.device_augment = 1
    with pytest.raises(ValueError, match=r"data.device_augment must be true, false or null \(auto: true on CUDA\), "
                                         r"got 1"):
        validate_config(cfg)


def test_batched_pipeline_runs_on_a_padded_batch_with_each_image_size():
    x = torch.zeros(3, 3, 40, 50, dtype=torch.uint8)
    x[0, :, :20, :30] = 200  # image 0 is 20 x 30, its padding stays out of every crop
    sizes = torch.tensor([[20, 30], [40, 50], [33, 17]])
    pipe = batched_pipeline(v2.RandomResizedCrop(16))
    params = pipe.make_params(3, sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(0))
    boxes = params["geometry"]["boxes"]
    assert (boxes[:, 0] + boxes[:, 2] <= sizes[:, 0]).all() and (boxes[:, 1] + boxes[:, 3] <= sizes[:, 1]).all()
    out = pipe.apply(x, params)
    torch.testing.assert_close(out[0], torch.full((3, 16, 16), 200 / 255), atol=1e-6, rtol=0)
    assert isinstance(pipe, BatchedPipeline)


def test_jpeg_batches_decode_as_pil_does(tmp_path):
    """``decode_jpeg`` on a batch (the device path's decoder; on the GPU nvJPEG) against PIL: both
    libjpeg decoders (both libjpeg-turbo here: equal; another build may round the IDCT or the chroma
    upsampling a grey level or two apart, the tolerance)."""
    import io

    import numpy as np
    from PIL import Image

    from mixlab.data.tensor_dataset import decode_rgb_batch
    from mixlab.engine.data import pad_images

    g = torch.Generator().manual_seed(0)
    datas, names, refs = [], [], []
    for i, (h, w) in enumerate(((24, 32), (40, 16), (17, 23))):
        arr = torch.randint(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=torch.uint8, generator=g)
        img = Image.fromarray(arr.numpy()).resize((w, h), Image.BILINEAR)  # smooth content
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        names.append(f"{i}.jpg")
        refs.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy())
                    .permute(2, 0, 1))
    decoded = decode_rgb_batch(datas, names, torch.device("cpu"))
    for out, ref in zip(decoded, refs):
        assert out.shape == ref.shape and (out.int() - ref.int()).abs().max() <= 2
    padded, sizes = pad_images(decoded)
    assert padded.shape == (3, 3, 40, 32) and sizes.tolist() == [[24, 32], [40, 16], [17, 23]]
    assert torch.equal(padded[1, :, :40, :16], decoded[1]) and padded[1, :, :, 16:].eq(0).all()
