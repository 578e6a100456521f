"""Evaluation: COCO bbox metrics (fast NumPy engine or pycocotools) and PASCAL VOC AP.

``evaluator.reset(); evaluator.process(samples, outputs); metrics = evaluator.evaluate()``
"""

from ..utils.voc_files import VOC_CLASSES
from .build import build_evaluator
from .coco import COCOEvaluator, evaluate_coco_results
from .fast_coco import STAT_NAMES
from .voc import VOCEvaluator, class_average_precision
from .voc_devkit import evaluate_voc_files

__all__ = [
    "build_evaluator",
    "COCOEvaluator",
    "evaluate_coco_results",
    "STAT_NAMES",
    "VOCEvaluator",
    "VOC_CLASSES",
    "class_average_precision",
    "evaluate_voc_files",
]
