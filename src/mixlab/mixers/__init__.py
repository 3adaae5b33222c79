"""Stateless batch mixers: ``images, targets = mixer(images, labels)``. Torch only.

Each mixer's functional kernel (explicit parameters, no randomness) is exported beside it:
:func:`mixup_images`, :func:`cutmix_images`, :func:`resizemix_images`, :func:`fourier_masks`,
:func:`saliency_peaks`. The submodules keep their own names (``mixlab.mixers.cutmix`` is the
module).
"""

from mixlab.mixers.base import Mixer
from mixlab.mixers.choice import MixCollate, RandomChoice
from mixlab.mixers.cutmix import CutMix, cutmix_images
from mixlab.mixers.fmix import FMix, fourier_masks
from mixlab.mixers.mixup import Mixup, mixup_images
from mixlab.mixers.resizemix import ResizeMix, resizemix_images
from mixlab.mixers.saliencymix import SaliencyMix, saliency_peaks
from mixlab.mixers.timm_compat import TimmMixup

__all__ = [
    "CutMix",
    "FMix",
    "MixCollate",
    "Mixer",
    "Mixup",
    "RandomChoice",
    "ResizeMix",
    "SaliencyMix",
    "TimmMixup",
    "cutmix_images",
    "fourier_masks",
    "mixup_images",
    "resizemix_images",
    "saliency_peaks",
]
