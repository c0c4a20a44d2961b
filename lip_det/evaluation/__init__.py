"""COCO evaluation with a fine size breakdown for small objects.

- :class:`SmallObjectCOCOEvaluator` / :func:`build_evaluator`: detectron2 evaluator (train_net).
- :func:`evaluate_by_size`: COCO metrics plus AP/AR per size bucket, for any COCO-format data.
- :func:`write_report`: metrics.json, intervals.json, errors.json, report.md and plots for one
  or more runs (several result files per run, e.g. seeds, are averaged).
- :func:`paired_bootstrap`: confidence intervals of every metric and of differences between runs,
  by resampling images (every run on the same resamples); :mod:`.matching` keeps the per-image
  matching that it accumulates from.
- :func:`error_analysis`: what each TIDE error type costs in AP, per size bucket.
"""

from .bootstrap import paired_bootstrap
from .coco_inputs import EvaluationInputError, check_ground_truth, load_ground_truth, load_results
from .engines import get_engine
from .errors import ERROR_TYPES, error_analysis
from .evaluator import SmallObjectCOCOEvaluator, build_evaluator, small_object_settings
from .report import write_report
from .size_buckets import DEFAULT_BUCKET_EDGES, SizeBuckets
from .size_evaluation import DEFAULT_MAX_DETS, SizeEvaluation, evaluate_by_size, metric_names

__all__ = [
    "DEFAULT_BUCKET_EDGES",
    "DEFAULT_MAX_DETS",
    "ERROR_TYPES",
    "EvaluationInputError",
    "SizeBuckets",
    "SizeEvaluation",
    "SmallObjectCOCOEvaluator",
    "build_evaluator",
    "check_ground_truth",
    "error_analysis",
    "evaluate_by_size",
    "get_engine",
    "load_ground_truth",
    "load_results",
    "metric_names",
    "paired_bootstrap",
    "small_object_settings",
    "write_report",
]
