"""Paired bootstrap confidence intervals for COCO metrics and their differences between runs.

A resample draws as many images as the evaluation has, with replacement; *every* run is scored
on the same resampled image sets, so the interval of a difference between two runs reflects how
much it depends on which images happened to be in the evaluation set, and the runs' shared
easy and hard images cancel out. An image drawn twice counts twice: its detections and
ground truth enter the accumulation with weight 2 (what COCOeval gives on a dataset holding the
image twice, up to the order of exactly tied scores).

The images are matched once (:mod:`.matching`); a resample is one weighted accumulation in numpy
(101-point interpolated precision, as COCOeval's ``accumulate``), not a new COCOeval.

A run of several result files (training seeds) is scored as the mean over its files; each
resample also redraws the files of each run with replacement, so that the interval holds the
spread between seeds as well as between image sets.

Intervals are percentile intervals of the replicates, moved so that the replicates' median sits
on the point estimate (``interval_method`` below). COCO's AP runs higher on a resampled set
than on the set itself: an image drawn twice brings perfectly tied copies of its detections,
and the interpolated precision envelope (a running maximum) gains from them (about +0.6 to
+1.2 AP on the demo's 240 validation images; recall, a plain sum, does not move). That shift is
an artifact of drawing with replacement, not an error of the estimate, so it is taken out.
For differences between runs it nearly cancels (-0.2 AP on the demo).
"""

import math
from dataclasses import dataclass

import numpy as np

from .matching import accumulation_table, match_runs, summary_metrics, weighted_sums

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
INTERVAL_METHOD = (
    "percentile interval of the paired-bootstrap replicates, shifted so that their median is "
    "the point estimate"
)


@dataclass
class BootstrapResult:
    level: float
    resamples: int
    seed: int
    values: dict  # run -> {metric: (B,) array of the run's metric on each resample}
    point: dict  # run -> {metric: value (mean over the run's files)}

    def intervals(self):
        """The content of intervals.json (NaN-free: null where a bound is not computable)."""
        runs = {
            run: {
                metric: self._interval(v, self.point[run][metric]) for metric, v in values.items()
            }
            for run, values in self.values.items()
        }
        deltas = {}
        names = list(self.values)
        reference = names[0] if names else None
        for run in names[1:]:
            deltas[run] = {}
            for metric, values in self.values[run].items():
                if metric not in self.values[reference]:
                    continue
                delta = self.point[run][metric] - self.point[reference][metric]
                low, high = self._interval(values - self.values[reference][metric], delta)
                significant = low is not None and (low > 0 or high < 0)
                deltas[run][metric] = {
                    "delta": None if math.isnan(delta) else float(delta),
                    "ci": [low, high],
                    "significant": bool(significant),
                }
        return {
            "level": self.level,
            "resamples": self.resamples,
            "method": INTERVAL_METHOD,
            "runs": runs,
            "deltas": deltas,
        }

    def _interval(self, values, point):
        """[low, high]: the percentile interval of ``values`` (NaN left out), moved by
        point - median(values); None bounds where nothing is computable."""
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if not values.size or point is None or math.isnan(point):
            return [None, None]
        tail = (1 - self.level) / 2 * 100
        low, median, high = np.percentile(values, [tail, 50, 100 - tail])
        shift = point - median
        return [float(low + shift), float(high + shift)]


def resample_counts(num_images, resamples, seed):
    """(resamples, num_images) int32: how often each image is drawn in each resample.
    Resample b draws ``rng.integers(0, num_images, num_images)`` with
    ``rng = np.random.default_rng(seed)``, resamples in order."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    flat = draws + (np.arange(resamples, dtype=np.int64) * num_images)[:, None]
    counts = np.bincount(flat.ravel(), minlength=resamples * num_images)
    return counts.reshape(resamples, num_images).astype(np.int32)


def file_choices(num_files, resamples, seed, run_index):
    """(resamples, num_files): which of a run's files each resample uses (with replacement);
    a run of one file always uses it."""
    if num_files == 1:
        return np.zeros((resamples, 1), dtype=np.int64)
    rng = np.random.default_rng([seed, 1, run_index])
    return rng.integers(0, num_files, size=(resamples, num_files))


def replicate_metrics(evaluation, weights, *, matches=None):
    """``{metric: (B,) array}``: every metric of :meth:`SizeEvaluation.results` on each row of
    ``weights`` ((B, I) image counts, images in sorted id order)."""
    if matches is None:
        matches = evaluation_matches(evaluation)
    table = accumulation_table(matches)
    sums = weighted_sums(table, weights)
    labels = evaluation.buckets.labels
    iou = matches.iou_thresholds
    return summary_metrics(
        sums,
        table,
        area_keys={"small": "s", "medium": "m", "large": "l"},
        bucket_labels=labels,
        category_names=evaluation.category_names,
        iou_50=int(np.flatnonzero(np.isclose(iou, 0.5))[0]),
        iou_75=int(np.flatnonzero(np.isclose(iou, 0.75))[0]),
    )


def evaluation_matches(evaluation):
    """The :class:`~.matching.MatchResult` of a :class:`SizeEvaluation` (computed once, kept)."""
    if evaluation.matches is None:
        inputs = evaluation.inputs
        if inputs is None:
            raise ValueError(
                "this SizeEvaluation holds no inputs to match (made by an older lip_det?); "
                "evaluate it again with evaluate_by_size"
            )
        evaluation.matches = match_runs(
            inputs["gt"],
            inputs["results"],
            iou_type=evaluation.iou_type,
            area_ranges=inputs["area_ranges"],
            max_dets=evaluation.max_dets,
            img_ids=inputs["img_ids"],
        )
    return evaluation.matches


def paired_bootstrap(runs, *, resamples=DEFAULT_RESAMPLES, seed=0, level=DEFAULT_LEVEL,
                     progress=False):  # fmt: skip
    """Bootstrap every run on the same resampled image sets.

    Args:
        runs (dict): run name -> list of :class:`SizeEvaluation` (one per result file) of the
            same ground truth and images. The first run is the reference of the deltas.
    Returns:
        BootstrapResult
    """
    if not 0 < level < 1:
        raise ValueError(f"the interval level must be in (0, 1), got {level!r}")
    if resamples < 1:
        raise ValueError(f"need at least 1 resample, got {resamples!r}")
    first = next(iter(runs.values()))[0]
    image_ids = evaluation_matches(first).image_ids
    weights = resample_counts(len(image_ids), resamples, seed)
    values, point = {}, {}
    items = list(runs.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="bootstrap", unit="run")
    for run_index, (name, evaluations) in enumerate(items):
        per_file = []
        for evaluation in evaluations:
            matches = evaluation_matches(evaluation)
            if matches.image_ids != image_ids:
                raise ValueError(
                    f"run {name!r} was evaluated on other images than {next(iter(runs))!r}; "
                    "a paired bootstrap needs the same images"
                )
            per_file.append(replicate_metrics(evaluation, weights, matches=matches))
        choice = file_choices(len(per_file), resamples, seed, run_index)
        values[name] = {}
        for metric in per_file[0]:
            stacked = np.stack([f[metric] for f in per_file], axis=1)  # (B, files)
            values[name][metric] = np.take_along_axis(stacked, choice, axis=1).mean(axis=1)
        point[name] = {
            metric: float(np.mean([e.results()[metric] for e in evaluations]))
            for metric in per_file[0]
        }
    return BootstrapResult(level, resamples, seed, values, point)
