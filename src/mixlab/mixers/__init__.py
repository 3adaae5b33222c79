"""Stateless batch mixers: ``images, targets = mixer(images, labels)``. Torch only."""

from mixlab.mixers.base import Mixer
from mixlab.mixers.choice import MixCollate, RandomChoice
from mixlab.mixers.cutmix import CutMix, cutmix
from mixlab.mixers.fmix import FMix, fourier_masks
from mixlab.mixers.mixup import Mixup, mixup
from mixlab.mixers.resizemix import ResizeMix, resizemix
from mixlab.mixers.saliencymix import SaliencyMix, saliency_peaks, spectral_residual_saliency

__all__ = [
    "CutMix",
    "FMix",
    "MixCollate",
    "Mixer",
    "Mixup",
    "RandomChoice",
    "ResizeMix",
    "SaliencyMix",
    "cutmix",
    "fourier_masks",
    "mixup",
    "resizemix",
    "saliency_peaks",
    "spectral_residual_saliency",
]
