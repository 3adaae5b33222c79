"""Stateless batch mixers: ``images, targets = mixer(images, labels)``. Torch only.

Each mixer's functional kernel (explicit parameters, no randomness) is exported beside it:
:func:`mixup_images`, :func:`cutmix_images`, :func:`resizemix_images`, :func:`fourier_masks`,
:func:`saliency_peaks`. The submodules keep their own names (``mixlab.mixers.cutmix`` is the
module).

Every mixer also takes segmentation label maps (B, H, W) as labels (:class:`Mixer`). Detection
(torchvision's list of target dicts): :class:`DetectionCutMix`, :class:`DetectionResizeMix`,
:class:`DetectionMixup` (:mod:`.detection`), :class:`Mosaic` / :class:`MosaicDataset`
(:mod:`.mosaic`) and :class:`CopyPaste` (:mod:`.copypaste`).
"""

from mixlab.mixers.base import Mixer
from mixlab.mixers.choice import MixCollate, RandomChoice
from mixlab.mixers.copypaste import CopyPaste, copy_paste
from mixlab.mixers.cutmix import CutMix, cutmix_images
from mixlab.mixers.detection import DetectionCutMix, DetectionMixup, DetectionResizeMix
from mixlab.mixers.fmix import FMix, fourier_masks
from mixlab.mixers.mixup import Mixup, mixup_images
from mixlab.mixers.mosaic import Mosaic, MosaicDataset, mosaic
from mixlab.mixers.resizemix import ResizeMix, resizemix_images
from mixlab.mixers.saliencymix import SaliencyMix, saliency_peaks
from mixlab.mixers.timm_compat import TimmMixup

__all__ = [
    "CopyPaste",
    "CutMix",
    "DetectionCutMix",
    "DetectionMixup",
    "DetectionResizeMix",
    "FMix",
    "MixCollate",
    "Mixer",
    "Mixup",
    "Mosaic",
    "MosaicDataset",
    "RandomChoice",
    "ResizeMix",
    "SaliencyMix",
    "TimmMixup",
    "copy_paste",
    "cutmix_images",
    "fourier_masks",
    "mixup_images",
    "mosaic",
    "resizemix_images",
    "saliency_peaks",
]
