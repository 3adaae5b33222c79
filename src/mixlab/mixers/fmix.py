"""FMix (Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020).

A mask is drawn as low-frequency Fourier noise: complex Gaussian coefficients scaled by
1 / max(f, 1/max(H, W))^δ (decay power δ), inverse real FFT, then binarised by keeping the
top round(λ·H·W) pixels as 1 (pixels of image i) and the rest 0 (pixels of the partner). One mask
per sample, all on the images' device with one batched FFT and one batched sort. The reported λ is
the exact fraction of ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.checks import check_alpha
from mixlab.core.random import randn
from mixlab.mixers.base import Mixer, partner_of

__all__ = ["FMix", "fourier_masks"]


def fourier_masks(
    lam: Tensor, height: int, width: int, decay_power: float = 3.0, generator: torch.Generator | None = None
) -> Tensor:
    """Binary low-frequency masks (B, 1, H, W) float32 with exactly round(λ_i·H·W) ones each."""
    b, device = lam.shape[0], lam.device
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    freq = torch.sqrt(fx * fx + fy * fy)
    scale = 1.0 / freq.clamp_min(1.0 / max(height, width)) ** decay_power  # (H, W//2+1)
    coeffs = randn((b, height, fx.shape[1], 2), generator, device=device)
    spectrum = torch.complex(coeffs[..., 0], coeffs[..., 1]) * scale
    noise = torch.fft.irfft2(spectrum, s=(height, width)).reshape(b, -1)  # (B, H*W)
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

    def make_params(self, images: Tensor, index: Tensor) -> dict:
        lam = self.sample_lambda(images.shape[0], self.alpha, index, device=images.device)
        mask = fourier_masks(lam, images.shape[-2], images.shape[-1], self.decay_power, self.generator)
        if self.granularity == "pair":  # both members of a pair use the same mask (as boxes in CutMix)
            mask = mask[torch.minimum(torch.arange(images.shape[0], device=images.device), index)]
        return {"mask": mask}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        mask = params["mask"].to(images.dtype)
        partner = partner_of(images, index, self.pairing)
        out = torch.lerp(partner, images, mask, out=self._out(images))  # mask 1 -> image i
        lam = mask.float().mean(dim=(1, 2, 3))
        return out, lam, mask, None

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}, decay_power={self.decay_power}"
