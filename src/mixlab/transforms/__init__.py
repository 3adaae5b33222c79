"""Per-image and batched training transforms (``torchvision.transforms.v2`` style).

* :class:`CropMix` (Han et al. 2022): N random-resized crops of one image at distinct scales,
  mixed into one image; a v2 ``Transform`` for the DataLoader. :func:`rrc` is its RandomResizedCrop
  baseline with the same argument names; :func:`scale_ranges` the §3.2 sub-range split.
* :class:`CropMixBatch` / :func:`cropmix_batch`: the same operation on a batch on its device.
* ``batched.py``: batched augmentation kernels with per-sample parameters (crops and resampling,
  colour jitter, grayscale, blur, solarisation); ``device.py``: :func:`~mixlab.transforms.device.batched_pipeline`
  compiles a per-image pipeline (and the multi-view wrappers) into its batched twin (``data.device_augment``).
* :class:`TwoViews` / :class:`MultiCrop` (``views.py``): BYOL's two asymmetric views and DINO's
  multi-crop for self-supervised learning; :func:`mocov2_view` (MoCo v2's augmentation) and
  :class:`MixedQuery` (CropMix's / ScaleMix's CutMix'ed contrastive query); :class:`OneView`
  (MAE's single view).

This package imports torchvision; ``import mixlab`` does not (``mixlab.CropMix`` is a lazy export).
"""

from mixlab.transforms.cropmix import CropMix, augment_view, cutmix_views, mix_views, mixup_views, rrc, scale_ranges
from mixlab.transforms.cropmix_batch import CropMixBatch, cropmix_batch
from mixlab.transforms.views import MixedQuery, MultiCrop, OneView, TwoViews, byol_view, mocov2_view

__all__ = [
    "CropMix",
    "CropMixBatch",
    "MixedQuery",
    "MultiCrop",
    "OneView",
    "TwoViews",
    "augment_view",
    "byol_view",
    "cropmix_batch",
    "cutmix_views",
    "mix_views",
    "mixup_views",
    "mocov2_view",
    "rrc",
    "scale_ranges",
]
