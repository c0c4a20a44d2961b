"""COCOeval engines: the official pycocotools code, or a C++ implementation of the same algorithm.

``official`` is what papers report. ``fast`` runs per-image matching and accumulation in C++:
detectron2's own ``COCOeval_opt`` when detectron2 was built with its extension, otherwise
faster-coco-eval. Both accept any area ranges and maxDets, which the size buckets rely on.
"""

import contextlib
import importlib.metadata
import io
from dataclasses import dataclass

from lip_det.choices import check_choice
from lip_det.compat import has_c_extension

NO_FAST_ENGINE = (
    "The 'fast' evaluation engine needs detectron2's C++ extension (detectron2 built from source) "
    "or faster-coco-eval (`pip install faster-coco-eval`); neither is available in this Python. "
    "Install faster-coco-eval or use the 'official' engine (TEST.SMALL_OBJECT.ENGINE official)."
)


# "official" (pycocotools, paper-comparable) or "fast" (faster-coco-eval / detectron2 _C)
EVAL_ENGINES = ("official", "fast")


@dataclass(frozen=True)
class EvalEngine:
    name: str  # "official" or "fast"
    implementation: str  # what actually runs, for logs and reports
    coco_class: type  # COCO API class that holds ground truth and results for cocoeval_class
    cocoeval_class: type

    def load_coco(self, dataset):
        """A COCO API object for a COCO-format dict (not copied; the API indexes it in place)."""
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = self.coco_class()
            coco.dataset = dataset
            coco.createIndex()
        return coco


def get_engine(name="official"):
    """The :class:`EvalEngine` called ``name`` ("official" or "fast")."""
    check_choice(name, EVAL_ENGINES, "evaluation engine")
    if name == "official":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return EvalEngine(name, f"pycocotools {_version('pycocotools')}", COCO, COCOeval)
    if has_c_extension():
        from detectron2.evaluation.fast_eval_api import COCOeval_opt
        from pycocotools.coco import COCO

        return EvalEngine(name, "detectron2 COCOeval_opt (C++)", COCO, COCOeval_opt)
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError(NO_FAST_ENGINE) from e
    return EvalEngine(
        name, f"faster-coco-eval {_version('faster-coco-eval')} (C++)", COCO, COCOeval_faster
    )


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"
