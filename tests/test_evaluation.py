"""Tests for mixlab.evaluation.{calibration, corruptions, robustness}: calibration errors on hand-computed
cases and against a NumPy reference, corruption kernels against SciPy / PIL / colorsys versions of
the reference operations, FGSM on a tiny trained model, and the evaluate_all outputs."""

from __future__ import annotations

import colorsys
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mixlab.evaluation.calibration import (calibration_bins, expected_calibration_error, reliability_diagram,
                                       rms_calibration_error)
from mixlab.evaluation.corruptions import (CORRUPTIONS, SEVERITY_PARAMS, _jpeg_pil, _jpeg_torchvision, corrupt, disk_kernel,
                                      hsv_to_rgb, rgb_to_hsv)
from mixlab.evaluation.robustness import (clean_metrics, corruption_accuracy, evaluate_all, fgsm_accuracy, format_table,
                                      predict)

MEAN = (0.5, 0.45, 0.4)
STD = (0.25, 0.2, 0.3)


def _normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def natural_images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) images in [0, 1]: smooth colour gradients, sinusoidal texture at several
    frequencies / orientations, flat discs with sharp edges, light pixel noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.25
    tilt = (torch.rand(n, 3, 2, 1, 1, generator=g) - 0.5) * 0.6
    img = img + tilt[:, :, 0] * xx + tilt[:, :, 1] * yy
    for _ in range(3):
        freq = torch.rand(n, 1, 1, 1, generator=g) * 10 + 4
        theta = torch.rand(n, 1, 1, 1, generator=g) * math.pi
        phase = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
        amp = torch.rand(n, 3, 1, 1, generator=g) * 0.08
        img = img + amp * torch.sin(2 * math.pi * freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
    for _ in range(2):
        centre = torch.rand(n, 2, 1, 1, generator=g) * 0.6 + 0.2
        radius = torch.rand(n, 1, 1, generator=g) * 0.2 + 0.1
        inside = ((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2 < radius**2).unsqueeze(1)
        img = torch.where(inside, torch.rand(n, 3, 1, 1, generator=g), img)
    return (img + 0.02 * torch.randn(img.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return natural_images()


# ------------------------------------------------------------------------------------------------
# Calibration


def _numpy_calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[float, float]:
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = ms = 0.0
    for m in range(n_bins):
        in_bin = (conf > edges[m]) & (conf <= edges[m + 1])
        if m == 0:
            in_bin |= conf == 0
        if in_bin.any():
            w = in_bin.mean()
            gap = correct[in_bin].mean() - conf[in_bin].mean()
            ece += w * abs(gap)
            ms += w * gap**2
    return ece, math.sqrt(ms)


def test_calibrated_predictions_have_zero_error():
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2)  # accuracy 0.8 at confidence 0.8
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert rms_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_predictions():
    probs = torch.tensor([[1.0, 0.0, 0.0]] * 6)
    labels = torch.tensor([0, 1, 0, 2, 0, 1])  # confidence 1, accuracy 0.5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5)
    assert rms_calibration_error(probs, labels) == pytest.approx(0.5)


def test_two_bin_hand_computed_case():
    # bin (0, 0.5]: 6 samples at confidence 0.3, 3 correct -> gap 0.2
    # bin (0.5, 1]: 4 samples at confidence 0.9, 3 correct -> gap 0.15
    low = [0.3, 0.25, 0.25, 0.2]
    probs = torch.tensor([low] * 6 + [[0.9, 0.05, 0.03, 0.02]] * 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 2, 3] + [0, 0, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.6 * 0.2 + 0.4 * 0.15)
    assert rms_calibration_error(probs, labels, n_bins=2) == pytest.approx(math.sqrt(0.6 * 0.2**2 + 0.4 * 0.15**2))
    counts, acc, conf = calibration_bins(probs, labels, n_bins=2)
    assert counts.tolist() == [6, 4]
    assert acc.tolist() == pytest.approx([0.5, 0.75])
    assert conf.tolist() == pytest.approx([0.3, 0.9])
    # the same case given as confidences + correctness
    confidences = torch.tensor([0.3] * 6 + [0.9] * 4)
    correct = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    assert expected_calibration_error(confidences, correct, n_bins=2) == pytest.approx(0.18)


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_calibration_matches_numpy_reference(n_bins):
    g = torch.Generator().manual_seed(n_bins)
    probs = torch.softmax(3 * torch.randn(500, 7, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 7, (500,), generator=g)
    ece, rms = _numpy_calibration(probs.numpy(), labels.numpy(), n_bins)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(ece, abs=1e-12)
    assert rms_calibration_error(probs, labels, n_bins) == pytest.approx(rms, abs=1e-12)
    assert rms >= ece - 1e-12


def test_calibration_errors_name_the_argument():
    probs = torch.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(probs, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        rms_calibration_error(probs, torch.zeros(4, dtype=torch.long), n_bins=0)
    for bad in (1.5, -0.1, math.nan):
        wrong = probs.clone()
        wrong[0, 0] = bad
        with pytest.raises(ValueError, match="probs"):
            expected_calibration_error(wrong, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(torch.full((4, 2, 2), 0.5), torch.zeros(4, dtype=torch.long))


def test_reliability_diagram_writes_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(300, 10, generator=g), dim=1)
    labels = torch.randint(0, 10, (300,), generator=g)
    path = reliability_diagram(probs, labels, tmp_path / "sub" / "rd.png", title="test")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram(probs, labels, tmp_path / "x.png", n_bins=0)


# ------------------------------------------------------------------------------------------------
# Corruptions: generic properties


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_output_range_shape_dtype_and_no_mutation(name, images):
    before = images.clone()
    for severity in range(1, 6):
        out = corrupt(images, name, severity, generator=torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.dtype == images.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, images)
    assert torch.equal(images, before)
    single = corrupt(images[0].double(), name, 3, generator=torch.Generator().manual_seed(0))  # (C, H, W) float64
    assert single.shape == images[0].shape and single.dtype == torch.float64
    half = corrupt(images.half(), name, 2, generator=torch.Generator().manual_seed(0))
    assert half.dtype == torch.float16


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - {"saturate"}))
def test_corruption_strength_grows_with_severity(name, images):
    change = [float((corrupt(images, name, s, torch.Generator().manual_seed(1)) - images).abs().mean())
              for s in range(1, 6)]
    assert all(b >= a for a, b in zip(change, change[1:])), change
    assert change[-1] > change[0]


def test_saturate_desaturates_then_oversaturates(images):
    # The reference's (scale, shift) = (0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2): not monotone
    # in size, but monotone within the desaturating (1-2) and oversaturating (3-5) severities.
    sat = rgb_to_hsv(images)[:, 1].mean()
    outs = [corrupt(images, "saturate", s) for s in range(1, 6)]
    sats = [float(rgb_to_hsv(o)[:, 1].mean()) for o in outs]
    change = [float((o - images).abs().mean()) for o in outs]
    assert sats[1] < sats[0] < sat < sats[2] < sats[3] < sats[4]
    assert change[0] < change[1] and change[2] < change[3] < change[4]


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_noise_is_deterministic_under_a_generator(name, images):
    a = corrupt(images, name, 3, generator=torch.Generator().manual_seed(7))
    b = corrupt(images, name, 3, generator=torch.Generator().manual_seed(7))
    c = corrupt(images, name, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_corrupt_rejects_bad_arguments(images):
    with pytest.raises(ValueError, match="gaussian_noise"):  # lists the valid names
        corrupt(images, "fog_of_war", 1)
    for severity in (0, 6):
        with pytest.raises(ValueError, match="severity"):
            corrupt(images, "contrast", severity)
    with pytest.raises(TypeError, match="severity"):
        corrupt(images, "contrast", 2.0)
    with pytest.raises(TypeError, match="images"):
        corrupt((images * 255).to(torch.uint8), "contrast", 1)
    with pytest.raises(ValueError, match="C = 3"):
        corrupt(images[:, :1], "brightness", 1)


# ------------------------------------------------------------------------------------------------
# Corruptions: agreement with the reference operations (make_cifar_c.py)


def test_severity_constants_are_the_cifar_reference_values():
    assert SEVERITY_PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert SEVERITY_PARAMS["shot_noise"] == (500, 250, 100, 75, 50)
    assert SEVERITY_PARAMS["impulse_noise"] == (0.01, 0.02, 0.03, 0.05, 0.07)
    assert SEVERITY_PARAMS["defocus_blur"] == ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
    assert SEVERITY_PARAMS["gaussian_blur"] == (0.4, 0.6, 0.7, 0.8, 1)
    assert SEVERITY_PARAMS["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert SEVERITY_PARAMS["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert SEVERITY_PARAMS["saturate"] == ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))
    assert SEVERITY_PARAMS["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)
    assert SEVERITY_PARAMS["jpeg_compression"] == (80, 65, 58, 50, 40)
    for factors, end in zip(SEVERITY_PARAMS["zoom_blur"], (1.06, 1.11, 1.16, 1.21, 1.26)):
        assert np.array_equal(np.array(factors), np.arange(1, end, 0.01))  # bit for bit


def test_gaussian_blur_matches_scipy(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images[0].double()
    for s in range(1, 6):
        sigma = SEVERITY_PARAMS["gaussian_blur"][s - 1]
        ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(corrupt(x, "gaussian_blur", s).numpy(), np.clip(ref, 0, 1), atol=1e-12)


def _cv2_disk(radius: float, alias_blur: float, ndimage) -> np.ndarray:
    """make_cifar_c.disk() with cv2.GaussianBlur((3, 3), sigma) written with NumPy / SciPy."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur**2))
    g /= g.sum()
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")  # mirror = OpenCV's reflect-101
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def test_defocus_blur_matches_cv2_disk_filter(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images[0].double()
    for s in range(1, 6):
        radius, alias = SEVERITY_PARAMS["defocus_blur"][s - 1]
        kernel = _cv2_disk(radius, alias, ndimage)
        k = disk_kernel(radius, alias, dtype=torch.float64).numpy()
        pad = (17 - k.shape[0]) // 2
        np.testing.assert_allclose(np.pad(k, pad), kernel, atol=1e-15)
        ref = np.stack([ndimage.correlate(c, kernel, mode="mirror") for c in x.numpy()])
        np.testing.assert_allclose(corrupt(x, "defocus_blur", s).numpy(), np.clip(ref, 0, 1), atol=1e-12)


def test_zoom_blur_matches_scipy_clipped_zoom(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    hwc = images[0].permute(1, 2, 0).numpy().astype(np.float32)
    h = hwc.shape[0]
    for s, end in zip(range(1, 6), (1.06, 1.11, 1.16, 1.21, 1.26)):
        total = np.zeros_like(hwc)
        factors = np.arange(1, end, 0.01)
        for z in factors:
            ch = int(np.ceil(h / z))
            top = (h - ch) // 2
            zoomed = ndimage.zoom(hwc[top:top + ch, top:top + ch], (z, z, 1), order=1)
            trim = (zoomed.shape[0] - h) // 2
            total += zoomed[trim:trim + h, trim:trim + h]
        ref = np.clip((hwc + total) / (len(factors) + 1), 0, 1).transpose(2, 0, 1)
        np.testing.assert_allclose(corrupt(images[0], "zoom_blur", s).numpy(), ref, atol=1e-5)


def test_zoom_blur_dense_operator_matches_interpolation(images, monkeypatch):
    import mixlab.evaluation.corruptions as corruptions

    x = torch.cat([images[:, :, :20, :28], images[:, :, 4:24, 2:30]])  # non-square, two sizes of crop
    dense = [corrupt(x, "zoom_blur", s) for s in (1, 5)]
    monkeypatch.setattr(corruptions, "_DENSE_ZOOM_MAX_PIXELS", 0)
    for s, expected in zip((1, 5), dense):
        torch.testing.assert_close(corrupt(x, "zoom_blur", s), expected, atol=1e-5, rtol=0)


def test_hsv_corruptions_match_colorsys(images):
    x = images[0, :, :12, :12].double()
    pixels = x.permute(1, 2, 0).reshape(-1, 3).tolist()

    def reference(edit):
        out = [colorsys.hsv_to_rgb(*edit(*colorsys.rgb_to_hsv(*p))) for p in pixels]
        return torch.tensor(out, dtype=torch.float64).reshape(12, 12, 3).permute(2, 0, 1)

    for s in range(1, 6):
        c = SEVERITY_PARAMS["brightness"][s - 1]
        a, b = SEVERITY_PARAMS["saturate"][s - 1]
        ref_b = reference(lambda h, sat, v: (h, sat, min(max(v + c, 0.0), 1.0)))
        ref_s = reference(lambda h, sat, v: (h, min(max(sat * a + b, 0.0), 1.0), v))
        torch.testing.assert_close(corrupt(x, "brightness", s), ref_b, atol=1e-12, rtol=0)
        torch.testing.assert_close(corrupt(x, "saturate", s), ref_s, atol=1e-12, rtol=0)
    grey = torch.full((3, 2, 2), 0.4, dtype=torch.float64)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(grey)), grey)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def test_pixelate_matches_pil_box(images):
    x = ((images[0] * 255).round() / 255).double()  # uint8-representable, as the reference's input
    for s in range(1, 6):
        c = SEVERITY_PARAMS["pixelate"][s - 1]
        small = _pil(x).resize((int(32 * c), int(32 * c)), Image.BOX)
        ref = torch.from_numpy(np.array(small.resize((32, 32), Image.BOX))).permute(2, 0, 1) / 255.0
        # PIL rounds the small image and the result to uint8
        assert float((corrupt(x, "pixelate", s) - ref).abs().max()) <= 1.0 / 255 + 1e-6


def test_jpeg_matches_pil(images):
    x = images[0]
    for s in range(1, 6):
        buffer = io.BytesIO()
        _pil(x).save(buffer, "JPEG", quality=SEVERITY_PARAMS["jpeg_compression"][s - 1])
        ref = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1) / 255.0
        diff = (corrupt(x, "jpeg_compression", s) - ref).abs()
        assert float(diff.max()) <= 2.0 / 255 + 1e-6 and float(diff.mean()) <= 0.25 / 255  # libjpeg builds may differ
    pixels = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(_jpeg_torchvision(pixels, 50).float(), _jpeg_pil(pixels, 50).float(), atol=2, rtol=0)
    grey = _jpeg_pil(pixels[:, :1], 50)  # the fallback keeps one channel
    assert grey.shape == pixels[:, :1].shape


def test_noise_statistics():
    x = torch.full((8, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    for s in (1, 5):
        c = SEVERITY_PARAMS["gaussian_noise"][s - 1]
        assert float((corrupt(x, "gaussian_noise", s, g) - x).std()) == pytest.approx(c, rel=0.05)
        photons = SEVERITY_PARAMS["shot_noise"][s - 1]
        assert float((corrupt(x, "shot_noise", s, g) - x).var()) == pytest.approx(0.5 / photons, rel=0.1)
        amount = SEVERITY_PARAMS["impulse_noise"][s - 1]
        out = corrupt(x, "impulse_noise", s, g)
        salt, pepper = float((out == 1).float().mean()), float((out == 0).float().mean())
        assert salt + pepper == pytest.approx(amount, rel=0.15) and salt == pytest.approx(pepper, rel=0.3)


# ------------------------------------------------------------------------------------------------
# Evaluation on a tiny trained model


def _halves_data(n: int, seed: int, size: int = 8, delta: float = 0.025):
    """Class 1 if the left half is brighter than the right, class 0 otherwise (by 2·delta on average)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 + 0.4 * torch.rand(n, 3, size, size, generator=g)
    sign = (2 * labels - 1).float().view(n, 1, 1, 1)
    x[..., : size // 2] += delta * sign
    x[..., size // 2:] -= delta * sign
    return _normalise(x), labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train_x, train_y = _halves_data(1024, seed=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(train_x), train_y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    test_x, test_y = _halves_data(512, seed=2)
    return model, test_x, test_y


def test_predict_and_clean_metrics(trained):
    model, x, y = trained
    logits, labels = predict(model, DataLoader(TensorDataset(x, y), batch_size=100))
    assert logits.shape == (512, 2) and logits.dtype == torch.float32 and torch.equal(labels, y)
    metrics = clean_metrics(logits, labels)
    assert metrics["top1"] > 90.0 and metrics["top5"] == 100.0 and metrics["n"] == 512
    assert metrics["nll"] == pytest.approx(float(F.cross_entropy(logits.double(), y)))
    assert metrics["ece"] == pytest.approx(100 * expected_calibration_error(logits.softmax(1), y))
    # uint8 pixel batches (the trainer's loaders) give the same predictions
    pixels = ((x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255).round()
    logits8, _ = predict(model, (pixels.to(torch.uint8), y), mean=MEAN, std=STD)
    assert (logits8.argmax(1) == logits.argmax(1)).float().mean() > 0.95


def test_fgsm_lowers_accuracy_of_a_trained_model(trained):
    model, x, y = trained
    model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    clean = clean_metrics(*predict(model, loader))["top1"]
    assert model.training  # mode restored
    assert clean > 90.0
    assert fgsm_accuracy(model, loader, MEAN, STD, epsilon=0.0) == pytest.approx(clean)
    attacked = fgsm_accuracy(model, (x, y), MEAN, STD, epsilon=8 / 255)
    assert attacked < clean - 20.0
    assert fgsm_accuracy(model, loader, MEAN, STD, epsilon=2 / 255) >= attacked
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="epsilon"):
        fgsm_accuracy(model, loader, MEAN, STD, epsilon=-0.1)
    model.eval()


def test_corruption_accuracy_structure_and_determinism(trained):
    model, x, y = trained
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    kwargs = dict(corruptions=["gaussian_noise", "contrast"], severities=(1, 5), max_images=100, progress=False)
    a = corruption_accuracy(model, loader, MEAN, STD, seed=3, **kwargs)
    b = corruption_accuracy(model, loader, MEAN, STD, seed=3, **kwargs)
    assert a == b
    assert a["n"] == 100 and a["severities"] == [1, 5] and list(a["accuracy"]) == ["gaussian_noise", "contrast"]
    assert a["mean"]["contrast"] == pytest.approx(sum(a["accuracy"]["contrast"]) / 2)
    assert a["mCA"] == pytest.approx((a["mean"]["gaussian_noise"] + a["mean"]["contrast"]) / 2)
    assert a["clean_top1"] > 90.0
    assert all(0.0 <= acc <= 100.0 for accs in a["accuracy"].values() for acc in accs)
    assert corruption_accuracy(model, loader, MEAN, STD, seed=4, **kwargs)["clean_top1"] == a["clean_top1"]
    with pytest.raises(ValueError, match="Valid corruptions"):
        corruption_accuracy(model, loader, MEAN, STD, corruptions=["nope"], progress=False)
    with pytest.raises(ValueError, match="severities"):
        corruption_accuracy(model, loader, MEAN, STD, severities=(0, 1), progress=False)


def test_evaluate_all_writes_outputs_and_table(trained, tmp_path):
    model, x, y = trained
    loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    results = evaluate_all(model, loader, MEAN, STD, out_dir=tmp_path, max_corruption_images=48, progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {"clean", "fgsm", "corruptions", "ood"} and saved["ood"] is None  # ood: none asked for
    assert set(saved["corruptions"]["accuracy"]) == set(CORRUPTIONS)
    assert all(len(v) == 5 for v in saved["corruptions"]["accuracy"].values())
    with Image.open(tmp_path / "calibration.png") as im:
        im.verify()
        assert im.format == "PNG"
    table = format_table(results)
    for word in ("top-1", "top-5", "NLL", "ECE", "RMS", "FGSM", "8/255", "mCA", *CORRUPTIONS):
        assert word in table
    light = evaluate_all(model, (x[:32], y[:32]), MEAN, STD, fgsm=False, corruptions=False)
    assert light["fgsm"] is None and light["corruptions"] is None and "mCA" not in format_table(light)


def test_corruption_subset_is_strided_over_a_class_sorted_set():
    """max_images takes images evenly over the set, so a class-sorted split keeps every class."""
    from mixlab.evaluation.robustness import _cache_pixels, _Pixels

    labels = torch.arange(10).repeat_interleave(50)  # sorted by class, as an ImageFolder test split
    images = torch.zeros(500, 3, 4, 4, dtype=torch.uint8)
    loader = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, 500, 64)]
    _, kept = _cache_pixels(loader, _Pixels(None, None, torch.device("cpu")), 100, None)
    assert kept.numel() == 100
    assert torch.equal(torch.bincount(kept, minlength=10), torch.full((10,), 10))
