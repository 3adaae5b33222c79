"""Measures of trained models and of methods: no training, no run directories.

    from mixlab.evaluation import evaluate_all, format_table
    print(format_table(evaluate_all(model, test_loader, mean, std)))

* :mod:`~mixlab.evaluation.metrics`: top-k accuracy and the test pass (``evaluate``), and the data,
  mode and device helpers every measure shares;
* :mod:`~mixlab.evaluation.calibration`: ECE, RMS calibration error, reliability diagrams;
* :mod:`~mixlab.evaluation.corruptions`: CIFAR-10-C style corruptions in torch;
* :mod:`~mixlab.evaluation.robustness`: clean metrics, FGSM, corruption accuracy, ``evaluate_all``;
* :mod:`~mixlab.evaluation.ood`: out-of-distribution detection by the maximum softmax probability
  (AUROC, FPR at 95 % TPR) against synthetic noise images or a held-out dataset;
* :mod:`~mixlab.evaluation.features`: a backbone's pooled features;
* :mod:`~mixlab.evaluation.knn`: weighted kNN classification of features (the SSL monitor);
* :mod:`~mixlab.evaluation.cam`: class activation maps (CAM, Grad-CAM) and the run-comparison figure;
* :mod:`~mixlab.evaluation.wsol`: weakly supervised object localization, MaxBoxAccV2 (and of a model
  over a dataset with boxes, ``localization_accuracy``);
* :mod:`~mixlab.evaluation.effective_classes`: the effective class number of a method's targets.

It may use :mod:`mixlab.models`, :mod:`mixlab.data`, the methods and the core, never the engine;
matplotlib is imported only by the plotting functions. The programs that read a run's checkpoint
and write its results (``mixlab eval``, ``probe``, ``finetune``, ``cam``) live in :mod:`mixlab.engine`.
"""

from mixlab.evaluation.calibration import expected_calibration_error, reliability_diagram, rms_calibration_error
from mixlab.evaluation.cam import CAM_METHODS, CAMOutput, class_activation_maps, plot_cams
from mixlab.evaluation.corruptions import CORRUPTIONS, corrupt
from mixlab.evaluation.effective_classes import EffectiveClasses, effective_class_number, measure_effective_classes
from mixlab.evaluation.features import extract_features
from mixlab.evaluation.knn import knn_accuracy, knn_monitor, knn_predict
from mixlab.evaluation.metrics import accuracy, evaluate
from mixlab.evaluation.ood import OOD_SETS, auroc, fpr_at_tpr, msp_scores, ood_detection, synthetic_ood
from mixlab.evaluation.robustness import (clean_metrics, corruption_accuracy, evaluate_all, fgsm_accuracy,
                                          format_table, predict)
from mixlab.evaluation.wsol import (IOU_THRESHOLDS, MaxBoxAccV2, box_iou_inclusive, component_boxes,
                                    localization_accuracy, scoremap_boxes)

__all__ = [
    "CAMOutput",
    "CAM_METHODS",
    "CORRUPTIONS",
    "EffectiveClasses",
    "IOU_THRESHOLDS",
    "OOD_SETS",
    "MaxBoxAccV2",
    "accuracy",
    "auroc",
    "box_iou_inclusive",
    "class_activation_maps",
    "clean_metrics",
    "component_boxes",
    "corrupt",
    "corruption_accuracy",
    "effective_class_number",
    "evaluate",
    "evaluate_all",
    "expected_calibration_error",
    "extract_features",
    "fgsm_accuracy",
    "fpr_at_tpr",
    "format_table",
    "knn_accuracy",
    "knn_monitor",
    "knn_predict",
    "localization_accuracy",
    "measure_effective_classes",
    "msp_scores",
    "ood_detection",
    "plot_cams",
    "predict",
    "reliability_diagram",
    "rms_calibration_error",
    "scoremap_boxes",
    "synthetic_ood",
]
