"""mixlab: mixing data augmentation for vision training.

The mixing core imports torch alone::

    import mixlab
    mixer = mixlab.CutMix(num_classes=10, alpha=1.0)
    images, targets = mixer(images, labels)

``mixlab.TimmMixup`` takes timm's ``Mixup`` arguments and returns what it returns (a one-import
swap in timm's ``train.py``). Every mixer also takes segmentation label maps (B, H, W) as its
labels; ``mixlab.DetectionCutMix``, ``DetectionResizeMix``, ``DetectionMixup``, ``Mosaic``,
``MosaicDataset`` and ``CopyPaste`` mix detection batches (torchvision's target dicts).

Subpackages with heavier dependencies (``mixlab.models``, ``mixlab.data``, ``mixlab.engine``,
...) are imported only when used. ``mixlab.CropMix`` and ``mixlab.CropMixBatch`` (per-image and
batched CropMix, :mod:`mixlab.transforms`) are lazy exports: the first access imports torchvision;
so is ``mixlab.RecursiveMix`` (:mod:`mixlab.methods.recursivemix`, torch until its first RoIAlign),
``mixlab.AutoMix`` (:mod:`mixlab.methods.automix`, which imports ``mixlab.models``),
``mixlab.ManifoldMixup`` (:mod:`mixlab.methods.manifold_mixup`, likewise) and ``mixlab.PuzzleMix``
(:mod:`mixlab.methods.puzzlemix`, torch until its `setup` imports gco-wrapper); so are the ViT methods
``mixlab.TransMix``, ``mixlab.MixPro`` and ``mixlab.SMMix`` (:mod:`mixlab.methods.transmix`, ...,
which import ``mixlab.models``), AutoMix's successors ``mixlab.SAMix`` and ``mixlab.AdAutoMix``
(:mod:`mixlab.methods.samix`, :mod:`mixlab.methods.adautomix`) and ``mixlab.RegMixup``
(:mod:`mixlab.methods.regmixup`).
"""

from mixlab.core import BinaryCrossEntropy, MixResult, SoftTargetCrossEntropy
from mixlab.mixers import (
    CopyPaste,
    CutMix,
    DetectionCutMix,
    DetectionMixup,
    DetectionResizeMix,
    FMix,
    MixCollate,
    Mixer,
    Mixup,
    Mosaic,
    MosaicDataset,
    RandomChoice,
    ResizeMix,
    SaliencyMix,
    TimmMixup,
)

__version__ = "0.1.0"

# name -> module, imported on first access (PEP 562), so `import mixlab` does not import torchvision
_LAZY = {"CropMix": "mixlab.transforms", "CropMixBatch": "mixlab.transforms",
         "RecursiveMix": "mixlab.methods.recursivemix", "AutoMix": "mixlab.methods.automix",
         "ManifoldMixup": "mixlab.methods.manifold_mixup", "PuzzleMix": "mixlab.methods.puzzlemix",
         "TransMix": "mixlab.methods.transmix", "MixPro": "mixlab.methods.mixpro", "SMMix": "mixlab.methods.smmix",
         "SAMix": "mixlab.methods.samix", "AdAutoMix": "mixlab.methods.adautomix", "RegMixup": "mixlab.methods.regmixup"}

__all__ = [
    "AdAutoMix",
    "AutoMix",
    "BinaryCrossEntropy",
    "CopyPaste",
    "CropMix",
    "CropMixBatch",
    "CutMix",
    "DetectionCutMix",
    "DetectionMixup",
    "DetectionResizeMix",
    "FMix",
    "MixCollate",
    "MixResult",
    "MixPro",
    "ManifoldMixup",
    "Mixer",
    "Mixup",
    "Mosaic",
    "MosaicDataset",
    "PuzzleMix",
    "RandomChoice",
    "RecursiveMix",
    "RegMixup",
    "ResizeMix",
    "SAMix",
    "SMMix",
    "SaliencyMix",
    "SoftTargetCrossEntropy",
    "TimmMixup",
    "TransMix",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'mixlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
