"""FMix (Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020).

A mask is drawn as low-frequency Fourier noise: complex Gaussian coefficients scaled by
1 / max(f, 1/max(H, W))^δ (decay power δ), inverse real FFT, then binarised by keeping the
top round(λ·H·W) pixels as 1 (pixels of image i) and the rest 0 (pixels of the partner). One mask
per sample, all on the images' device with one batched FFT and one batched sort. The reported λ is
the exact fraction of ones.

mixlab follows the paper (Sec. 3: a random complex spectrum over the full 2-D frequency grid,
decayed by 1/f^δ). The official code (github.com/ecs-vlc/FMix, ``fmix.py``, also copied into
openmixup) differs: ``make_low_freq_image`` forms the complex spectrum as
``spectrum[:, 0] + 1j * spectrum[:, 1]`` on an array shaped (1, H, W//2+1, 2), so it pairs the
first two *rows* of the frequency grid (f_y = 0 and f_y = 1/H) instead of the real and imaginary
parts, and ``irfftn`` then reads the trailing axis of length 2 as the x-frequencies. Its masks
therefore hold only the fundamental along x (one cosine period across the width; measured on 300
masks of 32×48: the x-frequencies 0 and ±1/W carry all the power), while along y they carry the
intended decaying spectrum. mixlab's masks have the 1/f^δ spectrum along both axes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_alpha
from mixlab.core.random import randn
from mixlab.mixers.base import Mixer, select_from_partner

__all__ = ["FMix", "fourier_masks", "low_frequency_noise"]


def low_frequency_noise(
    batch_size: int, height: int, width: int, decay_power: float = 3.0, generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """(B, H, W) float32 images with a random spectrum decayed as 1/max(f, 1/max(H, W))^δ over
    the full 2-D frequency grid (FMix, Sec. 3), by one inverse real FFT."""
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    freq = torch.sqrt(fx * fx + fy * fy)
    scale = 1.0 / freq.clamp_min(1.0 / max(height, width)) ** decay_power  # (H, W//2+1)
    coeffs = randn((batch_size, height, fx.shape[1], 2), generator, device=device)
    spectrum = torch.complex(coeffs[..., 0], coeffs[..., 1]) * scale
    return torch.fft.irfft2(spectrum, s=(height, width))


def fourier_masks(
    lam: Tensor, height: int, width: int, decay_power: float = 3.0, generator: torch.Generator | None = None
) -> Tensor:
    """Binary low-frequency masks (B, 1, H, W) float32 with exactly round(λ_i·H·W) ones each: the
    top pixels of :func:`low_frequency_noise`."""
    b, device = lam.shape[0], lam.device
    noise = low_frequency_noise(b, height, width, decay_power, generator, device).reshape(b, -1)  # (B, H*W)
    k = (lam.float() * height * width).round().long().clamp(0, height * width)
    order = noise.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(height * width, device=device).expand(b, -1))
    return (rank < k.view(-1, 1)).float().view(b, 1, height, width)


class FMix(Mixer):
    """FMix: mix with binarised low-frequency Fourier masks.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α) for λ (default 1.0, the paper's).
        decay_power: δ, the spectrum's decay (default 3.0; larger = blobbier masks).
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`.
            Whatever the λ granularity, every sample has its own mask.
    """

    name = "fmix"

    def __init__(self, num_classes: int, alpha: float = 1.0, decay_power: float = 3.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)
        self.decay_power = check_alpha(decay_power, "decay_power")

    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        lam = self.sample_lambda(images.shape[0], self.alpha, index, images.device, coin=coin)
        mask = fourier_masks(lam, images.shape[-2], images.shape[-1], self.decay_power, self.generator)
        if self.granularity == "pair":  # both members of a pair use the same mask (as boxes in CutMix)
            mask = mask[torch.minimum(torch.arange(images.shape[0], device=images.device), index)]
        return {"mask": mask}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        mask = params["mask"]  # 1 -> pixel of image i
        out = select_from_partner(images, index, mask > 0.5, out=self._out(images, params), pairing=self.pairing)
        lam = mask.mean(dim=(1, 2, 3))
        return out, lam, mask.to(images.dtype) if images.is_floating_point() else mask, None

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}, decay_power={self.decay_power}"
