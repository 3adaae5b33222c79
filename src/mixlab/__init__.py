"""mixlab: mixing data augmentation for vision training.

The mixing core imports torch alone::

    import mixlab
    mixer = mixlab.CutMix(num_classes=10, alpha=1.0)
    images, targets = mixer(images, labels)

Subpackages with heavier dependencies (``mixlab.models``, ``mixlab.data``, ``mixlab.engine``,
...) are imported only when used.
"""

from mixlab.core import BinaryCrossEntropy, MixResult, SoftTargetCrossEntropy
from mixlab.mixers import CutMix, FMix, MixCollate, Mixer, Mixup, RandomChoice, ResizeMix, SaliencyMix

__version__ = "0.1.0"

__all__ = [
    "BinaryCrossEntropy",
    "CutMix",
    "FMix",
    "MixCollate",
    "MixResult",
    "Mixer",
    "Mixup",
    "RandomChoice",
    "ResizeMix",
    "SaliencyMix",
    "SoftTargetCrossEntropy",
    "__version__",
]
