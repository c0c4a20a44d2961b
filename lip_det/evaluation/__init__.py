"""COCO evaluation with a fine size breakdown for small objects.

- :class:`SmallObjectCOCOEvaluator` / :func:`build_evaluator`: detectron2 evaluator (train_net).
- :func:`evaluate_by_size`: COCO metrics plus AP/AR per size bucket, for any COCO-format data.
- :func:`write_report`: metrics.json, report.md and plots for one or more runs.
"""

from .coco_inputs import EvaluationInputError, load_ground_truth, load_results
from .engines import get_engine
from .evaluator import SmallObjectCOCOEvaluator, build_evaluator, small_object_settings
from .report import write_report
from .size_buckets import DEFAULT_BUCKET_EDGES, SizeBuckets
from .size_evaluation import DEFAULT_MAX_DETS, SizeEvaluation, evaluate_by_size, metric_names

__all__ = [
    "DEFAULT_BUCKET_EDGES",
    "DEFAULT_MAX_DETS",
    "EvaluationInputError",
    "SizeBuckets",
    "SizeEvaluation",
    "SmallObjectCOCOEvaluator",
    "build_evaluator",
    "evaluate_by_size",
    "get_engine",
    "load_ground_truth",
    "load_results",
    "metric_names",
    "small_object_settings",
    "write_report",
]
