"""Saliency maps of OpenCV contrib's static detectors, in torch (mixlab.core.saliency).

The fine-grained detector is compared bit for bit with OpenCV where ``opencv-contrib-python-headless``
is installed (the ``test`` extra); the spectral residual within a tolerance justified below. The
other tests need no OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mixlab.core import fine_grained_saliency, saliency_map, spectral_residual_saliency
from mixlab.core.saliency import SALIENCY_DETECTORS

DETECTORS = sorted(SALIENCY_DETECTORS)
CIFAR_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


def _rgb(seed: int, h: int, w: int) -> torch.Tensor:
    """(1, 3, H, W) uint8 noise."""
    return torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _square(h: int = 48, w: int = 64, box=(30, 10, 44, 22), fg: int = 220, bg: int = 40) -> torch.Tensor:
    """(1, 3, H, W) uint8 flat background with one bright rectangle (x1, y1, x2, y2)."""
    img = torch.full((1, 3, h, w), bg, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[..., y1:y2, x1:x2] = fg
    return img


def _hole_with_block() -> torch.Tensor:
    """A 128×128 gray image: white, a black 40×40 hole, a 5×5 block of 200 in its middle. The
    block's centre is brighter than its 24-pixel surround (the hole) and darker than its large
    surrounds (the white): both "on" and "off", and on + off = 264 > 255."""
    img = torch.full((1, 1, 128, 128), 255, dtype=torch.uint8)
    img[..., 44:84, 44:84] = 0
    img[..., 62:67, 62:67] = 200
    return img


def _peak(sal: torch.Tensor) -> tuple[int, int]:
    """(row, col) of the first maximum in row-major order (np.argmax's, as the authors' scripts)."""
    flat = int(sal.flatten().argmax())
    return divmod(flat, sal.shape[-1])


# ------------------------------------------------------------------------------ no OpenCV needed
@pytest.mark.parametrize("fg, bg", [(220, 40), (10, 200)])
@pytest.mark.parametrize("as_float", [False, True])
def test_a_small_square_holds_the_spectral_residual_peak(fg, bg, as_float):
    img = _square(box=(30, 10, 34, 14), fg=fg, bg=bg)
    sal = spectral_residual_saliency(img.float() / 255 if as_float else img)
    assert sal.shape == (1, 48, 64) and sal.dtype == torch.float32 and 0 <= float(sal.min()) <= float(sal.max()) <= 1
    row, col = _peak(sal[0])
    assert 10 <= row < 14 and 30 <= col < 34, (row, col)


@pytest.mark.parametrize("fg, bg", [(220, 40), (10, 200)])
@pytest.mark.parametrize("as_float", [False, True])
def test_fine_grained_puts_a_square_at_the_maximum_and_the_far_background_at_zero(fg, bg, as_float):
    """A bright square is "on" at every scale, a dark one "off": either reaches the top level 1.
    Pixels whose largest window (rows y-111..y+112) misses the square see a flat image: 0. The
    on and off maps are each scaled to 255 by their own maximum, so the faint contrast of the
    background next to the square reaches 1 too: the *first* maximum (np.argmax's) may lie there."""
    img = _square(160, 160, box=(20, 20, 26, 26), fg=fg, bg=bg)
    sal = fine_grained_saliency(img.float() / 255 if as_float else img)[0]
    assert sal.shape == (160, 160) and sal.dtype == torch.float32
    assert float(sal[20:26, 20:26].max()) == float(sal.max()) == 1.0
    assert torch.equal(sal[137:], torch.zeros(23, 160)) and torch.equal(sal[:, 137:], torch.zeros(160, 23))


def test_fine_grained_values_are_8_bit_levels_and_the_flat_image_is_zero():
    sal = fine_grained_saliency(_rgb(0, 32, 32))
    levels = sal * 255
    assert float((levels - levels.round()).abs().max()) < 1e-4 and float(sal.max()) == 1.0
    flat = fine_grained_saliency(torch.full((2, 3, 20, 20), 77, dtype=torch.uint8))
    assert torch.equal(flat, torch.zeros(2, 20, 20))  # OpenCV's 0/0 becomes 0 too, never NaN


def test_the_8_bit_cast_wraps_where_on_plus_off_exceeds_255():
    """OpenCV's ``(uchar)`` of 264 is 8: the block's centre drops to 8 among neighbours at 248
    (OpenCV's own map of this image, checked below against cv2 too)."""
    levels = (fine_grained_saliency(_hole_with_block())[0] * 255).round().int()
    assert levels[64, 64] == 8
    assert levels[63, 64] == levels[65, 64] == levels[64, 63] == levels[64, 65] == 248


def test_grayscale_is_opencvs_15_bit_fixed_point_of_rgb():
    """A red square on black: gray (9798·255 + 2¹⁴) >> 15 = 76; the blue one gives 29. The RGB map
    equals the map of that 1-channel gray image."""
    for channel, level in ((0, 76), (2, 29)):
        rgb = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
        rgb[0, channel, 12:24, 8:30] = 255
        gray = torch.zeros(1, 1, 40, 40, dtype=torch.uint8)
        gray[0, 0, 12:24, 8:30] = level
        assert torch.equal(fine_grained_saliency(rgb), fine_grained_saliency(gray))
        assert torch.equal(spectral_residual_saliency(rgb), spectral_residual_saliency(gray))


@pytest.mark.parametrize("detector", DETECTORS)
def test_float_images_are_quantised_to_8_bits(detector):
    """x / 255 with value_range=(0, 1) is the uint8 image; by default each image's own range is
    stretched to 0..255, so an affine change of the values (normalisation) changes nothing."""
    img = _rgb(1, 24, 36)
    x = img.float() / 255
    assert torch.equal(saliency_map(x, detector, value_range=(0.0, 1.0)), saliency_map(img, detector))
    stretched = torch.cat([torch.zeros(1, 3, 24, 1), torch.ones(1, 3, 24, 1), x[..., 2:]], dim=-1)
    assert torch.allclose(saliency_map(stretched * 3.1 - 1.7, detector), saliency_map(stretched, detector), atol=1e-6)


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_batch_is_each_image_on_its_own(detector):
    imgs = torch.cat([_rgb(2, 30, 26), _square(30, 26, (5, 5, 12, 9)), _rgb(3, 30, 26)])
    batch = saliency_map(imgs, detector)
    for i in range(3):
        assert torch.equal(batch[i], saliency_map(imgs[i:i + 1], detector)[0])


@pytest.mark.parametrize("detector", DETECTORS)
def test_compiles_without_graph_breaks(detector):
    explain = torch._dynamo.explain(SALIENCY_DETECTORS[detector])(_rgb(4, 32, 32).float())
    assert explain.graph_break_count == 0, explain.break_reasons


@pytest.mark.parametrize("call, error, message", [
    (lambda: fine_grained_saliency(np.zeros((1, 3, 8, 8))), TypeError, "images must be a torch.Tensor"),
    (lambda: fine_grained_saliency(torch.zeros(3, 8, 8)), ValueError, r"\(B, C, H, W\) with C = 1 or 3"),
    (lambda: fine_grained_saliency(torch.zeros(1, 4, 8, 8)), ValueError, "C = 1 or 3, got shape"),
    (lambda: fine_grained_saliency(torch.zeros(1, 3, 1, 8)), ValueError, "at least 2x2 pixels"),
    (lambda: fine_grained_saliency(torch.zeros(1, 3, 8, 8, dtype=torch.int64)), TypeError, "uint8 or floating"),
    (lambda: fine_grained_saliency(torch.zeros(1, 3, 8, 8), value_range=(1, 0)), ValueError, "lo < hi"),
    (lambda: spectral_residual_saliency(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), value_range=(0, 1)),
     ValueError, "float images only"),
    (lambda: saliency_map(torch.zeros(1, 3, 8, 8), "itti"), ValueError, "detector"),
])
def test_bad_inputs_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------------ against OpenCV
def _cv2_saliency():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "saliency"):
        pytest.skip("cv2 has no saliency module (install opencv-contrib-python-headless)")
    return cv2


def _opencv_map(cv2, factory: str, img: torch.Tensor) -> torch.Tensor:
    """OpenCV's map of a (1, C, H, W) uint8 RGB tensor, given to it as OpenCV's BGR (or gray)."""
    arr = img[0].permute(1, 2, 0).numpy()
    arr = np.ascontiguousarray(arr[..., ::-1] if arr.shape[2] == 3 else arr[..., 0])
    ok, sal = getattr(cv2.saliency, factory)().computeSaliency(arr)
    assert ok
    return torch.from_numpy(sal)


IMAGES = {
    "noise-32": lambda: _rgb(10, 32, 32),
    "noise-17x45": lambda: _rgb(11, 17, 45),
    "noise-100x130": lambda: _rgb(12, 100, 130),
    "noise-224": lambda: _rgb(13, 224, 224),
    "noise-5x7": lambda: _rgb(14, 5, 7),
    "square": _square,
    "dark-square": lambda: _square(fg=10, bg=200),
    "gray-wrap": _hole_with_block,
    "smooth": lambda: (torch.linspace(0, 255, 60)[None, None, :, None] * torch.linspace(0, 1, 50)
                       ).expand(1, 3, 60, 50).round().to(torch.uint8).contiguous(),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_fine_grained_is_bit_exact_to_opencv(name):
    """Tolerance zero: every step is integer or float arithmetic in OpenCV's order and precision."""
    cv2 = _cv2_saliency()
    img = IMAGES[name]()
    ours = fine_grained_saliency(img)[0]
    assert torch.equal(ours, _opencv_map(cv2, "StaticSaliencyFineGrained_create", img))


def test_fine_grained_is_bit_exact_on_cifar10_images():
    import io
    import zipfile

    from PIL import Image

    cv2 = _cv2_saliency()
    if not CIFAR_ZIP.exists():
        pytest.skip(f"no {CIFAR_ZIP}")
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.startswith("test/") and n.endswith(".jpg"))[::250]
        imgs = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(z.read(n))).convert("RGB")))
                            for n in names]).permute(0, 3, 1, 2).contiguous()
    ours = fine_grained_saliency(imgs)
    for i in range(len(names)):
        assert torch.equal(ours[i], _opencv_map(cv2, "StaticSaliencyFineGrained_create", imgs[i:i + 1])), names[i]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_spectral_residual_matches_opencv(name):
    """Tolerance 3e-3 on maps scaled to max 1. OpenCV's ``cartToPolar`` takes the phase from a
    polynomial atan (error up to 1.6e-4 rad, measured on random inputs) and the magnitude in float
    precision, where torch's angle and abs are exact to double rounding: on noise, the smooth ramp
    and the bright square the maps differ by at most 5e-5. The synthetic dark square has Fourier
    coefficients that are zero but for rounding, whose phase is rounding noise in either code; it
    differs by 1.4e-3 (measured). OpenCV's peak is ours, up to ties within 1e-4 of our maximum (the
    dark square's two upper corners tie to 4e-6)."""
    cv2 = _cv2_saliency()
    img = IMAGES[name]()
    ours = spectral_residual_saliency(img)[0]
    theirs = _opencv_map(cv2, "StaticSaliencySpectralResidual_create", img)
    assert torch.allclose(ours, theirs, atol=3e-3, rtol=0)
    if name != "dark-square":
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=0) and _peak(ours) == _peak(theirs)
    row, col = _peak(theirs)
    assert float(ours.max() - ours[row, col]) < 1e-4


def test_float_input_with_a_value_range_is_opencv_on_the_rounded_uint8():
    cv2 = _cv2_saliency()
    x = torch.rand(1, 3, 40, 30, generator=torch.Generator().manual_seed(5))
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(fine_grained_saliency(x, value_range=(0, 1))[0],
                       _opencv_map(cv2, "StaticSaliencyFineGrained_create", u8))


def test_opencv_on_float_input_reads_the_float_bytes():
    """What the SaliencyMix scripts compute: a normalised float32 RGB image makes OpenCV blur and
    integrate the float gray but read each centre pixel as ``gray.at<uchar>(y, x)``, byte x of row y
    of the float buffer. This oracle (OpenCV's own float gray and blur, numpy for the rest of
    ``staticSaliencyFineGrained.cpp``) reproduces OpenCV's float output exactly."""
    cv2 = _cv2_saliency()
    rng = np.random.default_rng(0)
    mean, std = np.array([125.3, 123.0, 113.9]) / 255, np.array([63.0, 62.1, 66.7]) / 255  # the CIFAR script's
    for h, w in ((32, 32), (64, 48), (48, 64), (64, 48)):
        img = ((rng.integers(0, 256, (h, w, 3)) / 255 - mean) / std).astype(np.float32)  # RGB, as the scripts
        ok, theirs = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img)
        gray = cv2.GaussianBlur(cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (3, 3), 0), (3, 3), 0)
        centre = gray.view(np.uint8).reshape(h, 4 * w)[:, :w].astype(np.float32)  # the bytes read as pixels
        integral = cv2.integral(gray, sdepth=cv2.CV_32F)
        ys, xs = np.arange(h), np.arange(w)
        on_total, off_total = np.zeros((h, w)), np.zeros((h, w))
        for n in (12, 24, 48, 28, 56, 112):
            y1, y2 = np.clip(ys - n + 1, 0, h), np.clip(ys + n + 1, 0, h)
            x1, x2 = np.clip(xs - n + 1, 0, w), np.clip(xs + n + 1, 0, w)
            s = ((integral[y2][:, x2] + integral[y1][:, x1]) - integral[y2][:, x1]) - integral[y1][:, x2]
            count = ((y2 - y1)[:, None] * (x2 - x1)[None, :] - 1).astype(np.float32)
            m = (s - centre) / count
            on_total += np.trunc(np.maximum(centre - m, 0)) % 256  # (uchar) wraps: a byte can exceed
            off_total += np.trunc(np.maximum(m - centre, 0)) % 256  # the mean of tiny floats by > 255
        on, off = (np.trunc(255.0 * (t / np.float32(max(t.max(), 1))).astype(np.float32).astype(np.float64))
                   for t in (on_total.astype(np.float32), off_total.astype(np.float32)))  # 0 / 0 -> 0
        levels = np.trunc(255.0 * (on + off) / max(on.max(), off.max())) % 256
        assert np.array_equal(levels.astype(np.float32) * np.float32(1 / 255), theirs)
        # and it is not the saliency of the image: the 8-bit image's map peaks elsewhere here
        u8 = np.clip(np.round((img * std + mean) * 255), 0, 255).astype(np.uint8)
        ours = fine_grained_saliency(torch.from_numpy(u8).permute(2, 0, 1)[None].contiguous())[0]
        assert _peak(ours) != _peak(torch.from_numpy(theirs))
