"""Measurements on trained runs and on methods, used by ``mixlab eval`` / ``mixlab cam`` / the bench.

* :mod:`~mixlab.evaluation.cam`: class activation maps (CAM, Grad-CAM) and the run-comparison figure;
* :mod:`~mixlab.evaluation.wsol`: weakly supervised object localization, MaxBoxAccV2;
* :mod:`~mixlab.evaluation.effective_classes`: the effective class number of a method's targets.

Pure measurement code: it may use :mod:`mixlab.models`, :mod:`mixlab.data` and the core, never the
engine; matplotlib is imported only by the plotting function.
"""

from .cam import CAM_METHODS, CAMOutput, class_activation_maps, plot_cams
from .effective_classes import EffectiveClasses, effective_class_number, measure_effective_classes
from .wsol import IOU_THRESHOLDS, MaxBoxAccV2, box_iou_inclusive, component_boxes, scoremap_boxes

__all__ = [
    "CAMOutput", "CAM_METHODS", "class_activation_maps", "plot_cams",
    "MaxBoxAccV2", "IOU_THRESHOLDS", "box_iou_inclusive", "component_boxes", "scoremap_boxes",
    "EffectiveClasses", "effective_class_number", "measure_effective_classes",
]
