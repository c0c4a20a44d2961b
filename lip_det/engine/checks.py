"""Everything that can be checked before a model is built, in the launching process: config
values, device, weights, datasets and the output directory, each failing with one SetupError."""

import glob
import os
import shutil

import torch

from ..checkpoint import check_weights_file, model_tensor_shapes
from ..config import AMP_PRECISIONS, validate_lip_config
from ..data.datasets import check_datasets_content, check_datasets_exist, register_coco_dataset
from ..evaluation import small_object_settings
from .compile import check_compile_config
from .config_files import is_lazy_config_object, load_config_file, run_settings
from .errors import SetupError
from .signals import parse_signals

__all__ = [
    "RUN_MARKERS",
    "amp_dtype",
    "check_device",
    "check_model",
    "check_num_classes",
    "check_output_dir",
    "check_setup",
    "check_weights",
    "delete_previous_run",
    "register_datasets",
]

MISSING_WEIGHTS = (
    "{key} = {weights!r} does not exist (looked for {path}). Convert the ImageNet weights as "
    'described in README.md, section "Pretrained weights", or set {key} to "" to train from '
    "scratch."
)


def register_datasets(dataset_specs):
    """Register every ``(NAME, JSON_FILE, IMAGE_ROOT)`` given with ``--dataset``."""
    for name, json_file, image_root in dataset_specs or ():
        try:
            register_coco_dataset(name, json_file, image_root)
        except ValueError as e:
            raise SetupError(str(e)) from e


def check_weights(key, weights, output_dir, *, resume=False, eval_only=False):
    """Fail early when the weights are a local file that is not there ("" = from scratch).
    Remote paths (``detectron2://``, ``https://``, ...) are left to detectron2's checkpointer."""
    if resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        return  # resume loads OUTPUT_DIR/last_checkpoint and ignores the weights
    if not weights:
        if eval_only:
            raise SetupError(f"--eval-only needs trained weights: set {key} to a model file")
        return
    if "://" in weights:
        return
    if not os.path.isfile(weights):
        raise SetupError(
            MISSING_WEIGHTS.format(key=key, weights=weights, path=os.path.abspath(weights))
        )


def check_device(device, num_gpus, num_machines):
    device = torch.device(device)
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if available == 0:
            raise SetupError(
                f"the config asks for device {str(device)!r} but no CUDA device is available; "
                "add `MODEL.DEVICE cpu` (LazyConfig: `train.device=cpu`) to run on the CPU"
            )
        if num_gpus > available:
            raise SetupError(f"--num-gpus {num_gpus} but only {available} CUDA device(s) visible")
    # On the CPU, --num-gpus N is N processes (lip_det.launch, gloo), as in detectron2's launch.


# What detectron2 and lip_det write into OUTPUT_DIR when training (globs). Any of the first three
# means the directory holds a run; --overwrite deletes all of them.
RUN_MARKERS = ("last_checkpoint", "model_final.pth", "metrics.json")
RUN_OUTPUTS = (
    *RUN_MARKERS,
    "model_*.pth",
    "*.pth.tmp",  # left by a run killed while saving (lip_det.checkpoint)
    "events.out.tfevents.*",
    "log.txt*",
    "inference",
    "report",
)


def check_output_dir(key, output_dir, *, resume=False, eval_only=False, overwrite=False):
    """Refuse to train into a directory that holds a run unless told what to do with it: its
    checkpoints would be overwritten and its metrics.json mixed with the new run's.
    Evaluation only writes inference/ and report/, so it may go anywhere."""
    if resume and overwrite:
        raise SetupError(
            "--resume continues the run in OUTPUT_DIR, --overwrite deletes it: pass one or neither"
        )
    if resume or overwrite or eval_only:
        return
    found = [name for name in RUN_MARKERS if os.path.isfile(os.path.join(output_dir, name))]
    if found:
        raise SetupError(
            f"{key} = {output_dir!r} already holds a training run ({', '.join(found)}); pass "
            f"--resume to continue it, --overwrite to delete it and start over, or set {key} to "
            "a new directory"
        )


def delete_previous_run(output_dir):
    """Delete what a training run wrote into output_dir (RUN_OUTPUTS), nothing else."""
    for pattern in RUN_OUTPUTS:
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def amp_dtype(device, precision, key="SOLVER.AMP.PRECISION"):
    """The autocast dtype of mixed-precision training on ``device`` (see SOLVER.AMP.PRECISION)."""
    if precision not in AMP_PRECISIONS:
        raise SetupError(
            f"{key} = {precision!r} is not valid; choose one of {list(AMP_PRECISIONS)}"
        )
    device_type = torch.device(device).type
    if precision == "auto":
        precision = "float16" if device_type == "cuda" else "bfloat16"
    if precision == "float16" and device_type != "cuda":
        raise SetupError(
            f"{key} = 'float16' needs a CUDA device (the device is {str(device)!r}); use "
            "'bfloat16' (or 'auto') on the CPU"
        )
    return getattr(torch, precision)


def check_setup(args, *, check_devices=True):
    """
    Everything that can be checked before a model is built, in the launching process, with one
    clear SetupError on the first problem. Returns the config. Registers ``--dataset`` datasets
    in this process (main() does it again, idempotently, in each worker). ``check_devices``:
    False where the run's devices are elsewhere (``--slurm``: the nodes').
    """
    try:
        parse_signals(getattr(args, "stop_signals", None) or ())
    except ValueError as e:
        raise SetupError(str(e)) from e
    register_datasets(args.dataset)
    cfg = load_config_file(args)
    run = run_settings(cfg)
    if check_devices:
        check_device(run.device, args.num_gpus, args.num_machines)
    if run.amp_enabled:
        amp_dtype(run.device, run.amp_precision, run.amp_precision_key)
    check_output_dir(
        run.output_dir_key,
        run.output_dir,
        resume=args.resume,
        eval_only=args.eval_only,
        overwrite=getattr(args, "overwrite", False),
    )
    check_weights(
        run.weights_key, run.weights, run.output_dir, resume=args.resume, eval_only=args.eval_only
    )
    resuming = args.resume and os.path.isfile(os.path.join(run.output_dir, "last_checkpoint"))
    train_names, test_names = list(run.train_datasets), list(run.test_datasets)
    try:
        check_model(cfg, run.weights_key, "" if resuming else run.weights, eval_only=args.eval_only)
        check_datasets_exist(test_names if args.eval_only else train_names + test_names)
        check_datasets_content([] if args.eval_only else train_names, test_names)
    except KeyError as e:
        raise SetupError(e.args[0]) from e
    except (FileNotFoundError, ValueError) as e:  # ValueError: lip_det's config/weights/data checks
        raise SetupError(str(e)) from e
    return cfg


def check_model(cfg, key, weights, *, eval_only=False):
    """The values of lip_det's config keys, that the model can be built (on the meta device),
    and that a local weights file fits it (lip_det.weights). Raises ValueError."""
    if not is_lazy_config_object(cfg):
        validate_lip_config(cfg)
        check_compile_config(cfg)
        if cfg.DATASETS.TEST:  # the evaluator's settings
            small_object_settings(cfg)
    expected = model_tensor_shapes(cfg)
    if expected is not None and weights and "://" not in weights and os.path.isfile(weights):
        check_weights_file(weights, expected, key=key, eval_only=eval_only)


def _num_classes_key(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return None, None


def check_num_classes(cfg, dataset_names):
    """A head with fewer classes than the data fails deep in the loss (or in a CUDA assert); one
    with more silently wastes outputs and breaks COCOEvaluator's id mapping. Needs the datasets
    loaded (that is when detectron2 learns their ``thing_classes``)."""
    from detectron2.data import MetadataCatalog

    key, num_classes = _num_classes_key(cfg)
    if key is None:
        return
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            raise SetupError(
                f"dataset {name!r} has {len(classes)} classes but {key} is {num_classes}; "
                f"add `{key} {len(classes)}` to the command line or the config"
            )
