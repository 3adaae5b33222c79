"""SaliencyMix (Uddin et al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for
Better Regularization", ICLR 2021).

As CutMix, but the box is centred on the most salient pixel of the *partner* (the image the patch
is cut from), so the pasted patch carries the partner's object. Saliency is the spectral residual
(Hou & Zhang, CVPR 2007), the detector the paper uses through OpenCV's
``StaticSaliencySpectralResidual``; computed here in torch, batched, on the images' device, with
OpenCV's recipe: grayscale resized to 64×64, log-amplitude minus its 3×3 mean, inverse FFT with
the original phase, squared magnitude, 5×5 Gaussian blur (σ = 8). The paper's code uses one box
for the whole batch (from the first partner's saliency); here each sample gets the box centred on
its own partner's peak, which is what the method describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mixlab.core.boxes import kept_fraction, rand_boxes
from mixlab.core.checks import check_alpha
from mixlab.mixers.base import Mixer
from mixlab.mixers.cutmix import cutmix_images

__all__ = ["SaliencyMix", "spectral_residual_saliency", "saliency_peaks"]

_SALIENCY_SIZE = 64


def _gaussian_kernel(size: int, sigma: float, device) -> Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def spectral_residual_saliency(images: Tensor, size: int = _SALIENCY_SIZE) -> Tensor:
    """Spectral-residual saliency maps (B, size, size) in [0, 1] of float images (B, C, H, W)."""
    x = images.float()
    gray = x.mean(dim=1, keepdim=True) if x.shape[1] != 3 else (
        0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    )
    gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    spectrum = torch.fft.fft2(gray)
    log_amp = torch.log(spectrum.abs().clamp_min(1e-8))
    phase = torch.angle(spectrum)
    mean_amp = F.avg_pool2d(F.pad(log_amp.unsqueeze(1), (1, 1, 1, 1), mode="reflect"), 3, stride=1)[:, 0]
    residual = log_amp - mean_amp
    sal = torch.fft.ifft2(torch.exp(torch.complex(residual, phase))).abs() ** 2  # (B, s, s)
    k = _gaussian_kernel(5, 8.0, images.device)
    sal = F.pad(sal.unsqueeze(1), (2, 2, 2, 2), mode="reflect")
    sal = F.conv2d(F.conv2d(sal, k.view(1, 1, 1, 5)), k.view(1, 1, 5, 1))[:, 0]
    lo = sal.amin(dim=(1, 2), keepdim=True)
    hi = sal.amax(dim=(1, 2), keepdim=True)
    return (sal - lo) / (hi - lo).clamp_min(1e-12)


def saliency_peaks(images: Tensor) -> Tensor:
    """(B, 2) float ``(x, y)`` pixel coordinates of each image's saliency peak.

    The one place SaliencyMix calls its saliency detector (float or uint8 images, any device,
    no host read: it compiles).
    """
    h, w = images.shape[-2:]
    sal = spectral_residual_saliency(images)
    s = sal.shape[-1]
    flat = sal.flatten(1).argmax(dim=1)
    py, px = flat // s, flat % s
    x = ((px.float() + 0.5) * w / s).floor().clamp(max=w - 1)
    y = ((py.float() + 0.5) * h / s).floor().clamp(max=h - 1)
    return torch.stack([x, y], dim=1)


class SaliencyMix(Mixer):
    """SaliencyMix: CutMix whose box is centred on the partner's saliency peak.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α) for λ (default 1.0, the paper's).
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`. The box
            size follows the λ granularity; its centre always follows each partner's saliency.
    """

    name = "saliencymix"

    def __init__(self, num_classes: int, alpha: float = 1.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)

    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        return {"lam": self.sample_lambda(images.shape[0], self.alpha, index, images.device, coin=coin)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        h, w = images.shape[-2:]
        peaks = saliency_peaks(images.detach())[index]  # centre = peak of the partner (the patch's source)
        boxes = rand_boxes(1.0 - params["lam"], h, w, centers=peaks)
        out = cutmix_images(images, index, boxes, out=self._out(images, params), pairing=self.pairing)
        return out, kept_fraction(boxes, h, w), None, boxes

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}"
