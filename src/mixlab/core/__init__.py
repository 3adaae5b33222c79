"""The shared mixing core: pure tensor functions, torch only, no module state, no I/O.

λ sampling (:mod:`.lam`), pairing (:mod:`.pairing`), boxes and masks (:mod:`.boxes`), soft
targets (:mod:`.targets`), losses (:mod:`.losses`), the result type (:mod:`.result`), input
checks (:mod:`.checks`) and saliency maps (:mod:`.saliency`). Everything random takes an optional
``torch.Generator``.
"""

from mixlab.core.boxes import (
    box_area_fraction,
    boxes_to_mask,
    clipped_boxes,
    kept_fraction,
    mask_boxes,
    paste_boxes,
    rand_boxes,
    rand_boxes_inside,
    resize_into_boxes,
    resize_paste_labels,
)
from mixlab.core.lam import sample_lambda
from mixlab.core.checks import is_label_map
from mixlab.core.losses import (
    BinaryCrossEntropy,
    SoftTargetCrossEntropy,
    decouple_term,
    decoupled_regularizer,
    mixed_cross_entropy,
    mixed_segmentation_loss,
    soft_cross_entropy,
)
from mixlab.core.pairing import pair_index
from mixlab.core.result import MixResult
from mixlab.core.saliency import fine_grained_saliency, saliency_map, spectral_residual_saliency
from mixlab.core.targets import dense_soft_targets, mix_targets, soft_targets

__all__ = [
    "BinaryCrossEntropy",
    "MixResult",
    "SoftTargetCrossEntropy",
    "box_area_fraction",
    "boxes_to_mask",
    "clipped_boxes",
    "decouple_term",
    "decoupled_regularizer",
    "dense_soft_targets",
    "fine_grained_saliency",
    "is_label_map",
    "kept_fraction",
    "mask_boxes",
    "mix_targets",
    "mixed_cross_entropy",
    "mixed_segmentation_loss",
    "pair_index",
    "paste_boxes",
    "rand_boxes",
    "rand_boxes_inside",
    "resize_into_boxes",
    "resize_paste_labels",
    "saliency_map",
    "sample_lambda",
    "soft_cross_entropy",
    "soft_targets",
    "spectral_residual_saliency",
]
