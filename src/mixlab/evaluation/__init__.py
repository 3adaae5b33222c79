"""Measures of a trained model on batches of images: no training, no run directories.

    from mixlab.evaluation import evaluate_all, format_table
    print(format_table(evaluate_all(model, test_loader, mean, std)))

* :mod:`~mixlab.evaluation.metrics`: top-k accuracy and the test pass (``evaluate``), and the data,
  mode and device helpers every measure shares;
* :mod:`~mixlab.evaluation.calibration`: ECE, RMS calibration error, reliability diagrams;
* :mod:`~mixlab.evaluation.corruptions`: CIFAR-10-C style corruptions in torch;
* :mod:`~mixlab.evaluation.robustness`: clean metrics, FGSM, corruption accuracy, ``evaluate_all``;
* :mod:`~mixlab.evaluation.features`: a backbone's pooled features;
* :mod:`~mixlab.evaluation.knn`: weighted kNN classification of features (the SSL monitor).

The programs that read a run's checkpoint and write its results (``mixlab eval``, ``probe``,
``finetune``) live in :mod:`mixlab.engine`.
"""

from mixlab.evaluation.calibration import expected_calibration_error, reliability_diagram, rms_calibration_error
from mixlab.evaluation.corruptions import CORRUPTIONS, corrupt
from mixlab.evaluation.features import extract_features
from mixlab.evaluation.knn import knn_accuracy, knn_monitor, knn_predict
from mixlab.evaluation.metrics import accuracy, evaluate
from mixlab.evaluation.robustness import (clean_metrics, corruption_accuracy, evaluate_all, fgsm_accuracy,
                                          format_table, predict)

__all__ = [
    "CORRUPTIONS",
    "accuracy",
    "clean_metrics",
    "corrupt",
    "corruption_accuracy",
    "evaluate",
    "evaluate_all",
    "expected_calibration_error",
    "extract_features",
    "fgsm_accuracy",
    "format_table",
    "knn_accuracy",
    "knn_monitor",
    "knn_predict",
    "predict",
    "reliability_diagram",
    "rms_calibration_error",
]
