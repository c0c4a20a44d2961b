"""detectron2's COCOEvaluator, with COCO's AR metrics and AP/AR per size bucket added."""

import itertools
import json
import os

from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils.file_io import PathManager

from lip_det.choices import check_choice
from lip_det.compat import has_c_extension

from .engines import EVAL_ENGINES, get_engine
from .size_buckets import DEFAULT_BUCKET_EDGES, SizeBuckets
from .size_evaluation import DEFAULT_MAX_DETS, check_max_dets, evaluate_by_size
from .tables import bucket_table, category_table, summary_table

SUPPORTED_TASKS = ("bbox", "segm")


class SmallObjectCOCOEvaluator(COCOEvaluator):
    """Like detectron2's ``COCOEvaluator`` (same inputs, same ``AP``..``APl`` and ``AP-<class>``
    numbers), plus ``AR<maxDets>``, ``ARs/ARm/ARl`` and ``AP[lo,hi)``/``AR[lo,hi)`` for each size
    bucket. After :meth:`evaluate`, ``self.evaluations[task]`` holds the full
    :class:`SizeEvaluation` (per-category and precision-recall data), e.g. for ``write_report``.
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        bucket_edges=DEFAULT_BUCKET_EDGES,
        max_dets=DEFAULT_MAX_DETS,
        engine="official",
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir: as for detectron2's COCOEvaluator;
                tasks may be "bbox" and "segm".
            bucket_edges (list[float]): size-bucket edges in sqrt(area) pixels, see SizeBuckets.
            max_dets (list[int]): COCOeval maxDets; AP and per-bucket numbers use the last one.
                The model must keep at least that many detections per image
                (TEST.DETECTIONS_PER_IMAGE); :func:`build_evaluator` checks this.
            engine (str): "official" (pycocotools) or "fast" (C++).
        """
        if tasks is not None and set(tasks) - set(SUPPORTED_TASKS):
            raise ValueError(
                f"SmallObjectCOCOEvaluator evaluates {SUPPORTED_TASKS}, got tasks={tuple(tasks)}; "
                "use detectron2's COCOEvaluator for keypoints"
            )
        self._buckets = SizeBuckets(bucket_edges)
        self._max_dets = check_max_dets(max_dets)
        # Resolved now so that a missing fast engine fails before inference, not after it.
        self._engine = get_engine(engine)
        self.evaluations = {}
        # The parent's own COCOeval path is never used: _eval_predictions is replaced below.
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=self._max_dets[-1],
            use_fast_impl=False,
        )

    def _eval_predictions(self, predictions, img_ids=None):
        # Replaces the parent's method: it maps categories, saves the results and evaluates in one
        # body, with no hook to evaluate differently.
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._to_dataset_category_ids(coco_results)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        for task in sorted(tasks):
            if task not in SUPPORTED_TASKS:
                raise ValueError(f"{type(self).__name__} cannot evaluate task {task!r}")
            self._logger.info(f"Evaluating {task} predictions with {self._engine.implementation}")
            evaluation = evaluate_by_size(
                self._coco_api,
                coco_results,
                iou_type=task,
                bucket_edges=self._buckets,
                max_dets=self._max_dets,
                engine=self._engine.name,
                img_ids=img_ids,
                source=f"predictions on {self._metadata.name}",
            )
            self._log(evaluation)
            self.evaluations[task] = evaluation
            self._results[task] = evaluation.results()

    def _to_dataset_category_ids(self, coco_results):
        # Models predict contiguous ids 0..K-1; the ground truth uses the dataset's ids.
        if not hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            return
        reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        for result in coco_results:
            if result["category_id"] not in reverse:
                raise ValueError(
                    f"A prediction has class {result['category_id']}, but {self._metadata.name} "
                    f"only has classes 0..{len(reverse) - 1}"
                )
            result["category_id"] = reverse[result["category_id"]]

    def _log(self, evaluation):
        log = self._logger.info
        log(
            f"Evaluation results for {evaluation.iou_type} ({evaluation.engine}, "
            f"maxDets {list(evaluation.max_dets)}, {evaluation.num_images} images, "
            f"{evaluation.num_detections} detections):\n" + summary_table(evaluation)
        )
        log(
            f"Ground truth and {evaluation.iou_type} AP/AR per size bucket "
            f"(sqrt of annotation area, original-image pixels):\n" + bucket_table(evaluation)
        )
        for note in evaluation.notes:
            log(note)
        if evaluation.num_detections == 0:
            self._logger.warning(
                f"No {evaluation.iou_type} detections at all: every metric with ground truth is 0."
            )
        if len(evaluation.category_names) > 1:
            log(f"Per-category {evaluation.iou_type} AP:\n" + category_table(evaluation))


def small_object_settings(cfg):
    """The evaluator/report keyword arguments set by ``cfg.TEST.SMALL_OBJECT``, validated (also
    against TEST.DETECTIONS_PER_IMAGE): ``dict(bucket_edges=..., max_dets=..., engine=...)``."""
    node = cfg.TEST.SMALL_OBJECT
    check_choice(node.ENGINE, EVAL_ENGINES, "TEST.SMALL_OBJECT.ENGINE")
    try:
        buckets = SizeBuckets(node.BUCKET_EDGES)
    except ValueError as e:
        raise ValueError(f"TEST.SMALL_OBJECT.BUCKET_EDGES: {e}") from e
    try:
        max_dets = check_max_dets(node.MAX_DETS)
    except ValueError as e:
        raise ValueError(f"TEST.SMALL_OBJECT.MAX_DETS: {e}") from e
    if cfg.TEST.DETECTIONS_PER_IMAGE < max_dets[-1]:
        # COCOeval would happily report AR300 from a model that keeps 100 boxes per image.
        raise ValueError(
            f"TEST.SMALL_OBJECT.MAX_DETS ends with {max_dets[-1]}, but TEST.DETECTIONS_PER_IMAGE "
            f"= {cfg.TEST.DETECTIONS_PER_IMAGE} keeps fewer detections per image, so AP and "
            f"AR{max_dets[-1]} would not mean what they say. Set TEST.DETECTIONS_PER_IMAGE >= "
            f"{max_dets[-1]}."
        )
    return {"bucket_edges": list(buckets.edges), "max_dets": list(max_dets), "engine": node.ENGINE}


def build_evaluator(cfg, dataset_name, output_dir=None, *, distributed=True):
    """The evaluator ``tools/train_net.py`` uses for a COCO-format dataset.

    Reads TEST.SMALL_OBJECT.{BUCKET_EDGES, MAX_DETS, ENGINE}. Boxes (and masks with
    MODEL.MASK_ON) go to :class:`SmallObjectCOCOEvaluator`; keypoints, if on, to detectron2's
    COCOEvaluator alongside it.
    """
    settings = small_object_settings(cfg)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    evaluator = SmallObjectCOCOEvaluator(dataset_name, tasks, distributed, output_dir, **settings)
    if not cfg.MODEL.KEYPOINT_ON:
        return evaluator
    keypoints = COCOEvaluator(
        dataset_name,
        tasks=("keypoints",),
        distributed=distributed,
        output_dir=None,  # the box evaluator already saves the predictions
        use_fast_impl=has_c_extension(),
        kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
    )
    return DatasetEvaluators([evaluator, keypoints])
