"""
Training and evaluation: what ``tools/train_net.py`` and ``tools/demo.py`` run.

The flow is detectron2's ``tools/train_net.py`` (yacs ``.yaml`` configs) and
``tools/lazyconfig_train_net.py`` (LazyConfig ``.py`` configs, chosen by the file extension),
plus the checks a user needs to get one clear message instead of a deep traceback: config key
typos, missing weights, missing datasets, a CUDA device that is not there. They run once, in the
launching process, before any model is built or any worker is started:

    args = argument_parser().parse_args()
    run(args)    # check_setup(args) -> launch(main, ...) -> main(args) in every worker
"""

import logging
import os

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format, verify_results

from .config import add_lip_config
from .data.datasets import check_datasets_exist, register_coco_dataset
from .evaluation import (
    SmallObjectCOCOEvaluator,
    build_evaluator,
    small_object_settings,
    write_report,
)

__all__ = [
    "SetupError",
    "Trainer",
    "argument_parser",
    "check_setup",
    "get_lip_cfg",
    "is_lazy_config",
    "load_config",
    "load_lazy_config",
    "main",
    "register_datasets",
    "run",
    "setup",
]

MISSING_WEIGHTS = (
    "{key} = {weights!r} does not exist (looked for {path}). Convert the ImageNet weights as "
    'described in README.md, section "Pretrained weights", or set {key} to "" to train from '
    "scratch."
)


class SetupError(Exception):
    """A problem with the command line, config, weights or data that the user has to fix. Tools
    print its message without a traceback: the traceback would only show where it was found."""


def argument_parser(epilog=None):
    """detectron2's ``default_argument_parser`` plus a repeatable ``--dataset`` option."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable), to be used in "
        "DATASETS.TRAIN / DATASETS.TEST. Put it before the KEY VALUE overrides.",
    )
    return parser


# ---- configs -------------------------------------------------------------------------------------


def get_lip_cfg():
    """detectron2's default yacs config with lip_det's keys added."""
    cfg = get_cfg()
    add_lip_config(cfg)
    return cfg


def is_lazy_config(config_file):
    return config_file.endswith(".py")


def is_lazy_config_object(cfg):
    return not hasattr(cfg, "MODEL")


def _check_config_file(config_file):
    if not config_file:
        raise SetupError("no config given: pass --config-file configs/....yaml")
    if not os.path.isfile(config_file):
        raise SetupError(f"config file not found: {config_file}")


def load_config(config_file, opts=()):
    """
    Frozen yacs config from a yaml file and ``KEY VALUE`` overrides. A key that does not exist
    (a typo), a value of the wrong type, or an odd number of overrides raise SetupError with
    yacs's own message, e.g. "Non-existent config key: MODEL.RESNETS.DEPHT".
    """
    _check_config_file(config_file)
    cfg = get_lip_cfg()
    for source, merge, arg in (
        (config_file, cfg.merge_from_file, config_file),
        ("command-line overrides", cfg.merge_from_list, list(opts)),
    ):
        try:
            merge(arg)
        except (KeyError, ValueError, AssertionError) as e:
            # KeyError("Non-existent config key: ...") etc.: str() of a KeyError adds quotes.
            message = e.args[0] if e.args else repr(e)
            raise SetupError(f"{source}: {message}") from e
    cfg.freeze()
    return cfg


def load_lazy_config(config_file, opts=()):
    """
    LazyConfig from a ``.py`` file and ``dotted.key=value`` overrides. detectron2 creates any
    key an override names; here a key that does not exist is an error (SetupError), except
    inside a ``LazyCall`` node, where a new key is a new keyword argument of the call (a typo
    there fails at instantiate time, with the callable's own TypeError).
    """
    from omegaconf import OmegaConf

    _check_config_file(config_file)
    cfg = LazyConfig.load(config_file)
    for override in opts:
        key = override.split("=", 1)[0].lstrip("+~")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or not OmegaConf.is_dict(node):
            raise SetupError(f"command-line overrides: Non-existent key: {parent or key}")
        if leaf not in node and "_target_" not in node:
            raise SetupError(f"command-line overrides: Non-existent key: {key}")
    try:
        return LazyConfig.apply_overrides(cfg, list(opts))
    except Exception as e:  # hydra's override grammar errors, KeyError for non-config prefixes
        raise SetupError(f"command-line overrides: {e}") from e


def _run_settings(cfg):
    """(weights key, weights, device, output dir, train datasets, test datasets) of either kind
    of config: what check_setup needs to know."""
    if not is_lazy_config_object(cfg):
        return (
            "MODEL.WEIGHTS",
            cfg.MODEL.WEIGHTS,
            cfg.MODEL.DEVICE,
            cfg.OUTPUT_DIR,
            list(cfg.DATASETS.TRAIN),
            list(cfg.DATASETS.TEST),
        )

    def names(loader):
        dataset = cfg.dataloader.get(loader, {}).get("dataset", {})
        found = dataset.get("names", []) if hasattr(dataset, "get") else []
        return [found] if isinstance(found, str) else list(found)

    return (
        "train.init_checkpoint",
        cfg.train.init_checkpoint,
        cfg.train.device,
        cfg.train.output_dir,
        names("train"),
        names("test"),
    )


# ---- checks before launch ------------------------------------------------------------------------


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
    elif num_gpus * num_machines > 1:
        # detectron2 wraps the model in DistributedDataParallel with device_ids=[local_rank] and
        # (in v0.6) launches with NCCL: neither works for CPU modules.
        raise SetupError(
            f"multi-process training needs CUDA devices (the device is {str(device)!r}); "
            "use --num-gpus 1 on the CPU"
        )


def check_setup(args):
    """
    Everything that can be checked before a model is built, in the launching process, with one
    clear SetupError on the first problem. Returns the config. Registers ``--dataset`` datasets
    in this process (main() does it again, idempotently, in each worker).
    """
    register_datasets(args.dataset)
    cfg = _load(args)
    key, weights, device, output_dir, train_names, test_names = _run_settings(cfg)
    check_device(device, args.num_gpus, args.num_machines)
    check_weights(key, weights, output_dir, resume=args.resume, eval_only=args.eval_only)
    try:
        check_datasets_exist(test_names if args.eval_only else train_names + test_names)
    except KeyError as e:
        raise SetupError(e.args[0]) from e
    except FileNotFoundError as e:
        raise SetupError(str(e)) from e
    return cfg


def _load(args):
    loader = load_lazy_config if is_lazy_config(args.config_file) else load_config
    return loader(args.config_file, args.opts)


# ---- per-process setup ---------------------------------------------------------------------------


def setup(args):
    """Config + detectron2's default_setup (logging, output dir, config.yaml, seeding)."""
    register_datasets(args.dataset)
    cfg = _load(args)
    default_setup(cfg, args)  # lip_det.compat keeps its environment report working without _C
    return cfg


# ---- yacs configs: detectron2's DefaultTrainer ---------------------------------------------------


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


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with lip_det's evaluator and a class-count check."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        loader = super().build_train_loader(cfg)  # loads the json: thing_classes now known
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = super().build_test_loader(cfg, dataset_name)
        check_num_classes(cfg, [dataset_name])
        return loader

    def train(self):
        # v0.6 returns the final evaluation only when TEST.EXPECTED_RESULTS is set.
        super().train()
        return getattr(self, "_last_eval_results", None)


def write_small_object_reports(cfg, evaluators, run_name):
    """The small-object report (metrics.json, report.md, plots; see lip_det.evaluation) of each
    evaluated test dataset and task, in OUTPUT_DIR/report/<dataset>[_<task>]/. Reuses the
    evaluations the evaluators just computed; no second COCOeval pass."""
    from detectron2.data import MetadataCatalog

    written = []
    for name, evaluator in zip(cfg.DATASETS.TEST, evaluators):
        evaluations = getattr(evaluator, "evaluations", {})
        for task, evaluation in evaluations.items():
            folder = name if len(evaluations) == 1 else f"{name}_{task}"
            out_dir = os.path.join(cfg.OUTPUT_DIR, "report", folder)
            write_report(
                MetadataCatalog.get(name).json_file,  # (COCOEvaluator writes one if missing)
                {run_name: evaluation},
                out_dir,
                iou_type=task,
                **small_object_settings(cfg),
            )
            written.append(out_dir)
    return written


def _main_yacs(args, cfg):
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        evaluators = [Trainer.build_evaluator(cfg, name) for name in cfg.DATASETS.TEST]
        results = Trainer.test(cfg, model, evaluators)
        if comm.is_main_process():
            verify_results(cfg, results)
            reportable = [
                e if isinstance(e, SmallObjectCOCOEvaluator) else None for e in evaluators
            ]
            run_name = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS))[0] or "model"
            for out_dir in write_small_object_reports(cfg, reportable, run_name):
                logging.getLogger("detectron2").info(f"Small-object report written to {out_dir}")
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


# ---- LazyConfig configs: detectron2's tools/lazyconfig_train_net.py ------------------------------


def _test_lazy(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def _main_lazy(args, cfg):
    model = instantiate(cfg.model)
    logging.getLogger("detectron2").info(f"Model:\n{model}")
    model.to(cfg.train.device)
    if args.eval_only:
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return _test_lazy(cfg, model)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(
        model, cfg.train.output_dir, optimizer=optimizer, trainer=trainer
    )
    results = {}

    def test_and_keep():
        results["last"] = _test_lazy(cfg, model)
        return results["last"]

    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if main_process
            else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main_process
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished: resume at the next one.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results.get("last")


# ---- entry points --------------------------------------------------------------------------------


def main(args):
    """Per-process entry point (what ``launch`` runs): train, or evaluate with --eval-only.
    Returns the evaluation results (dataset name -> task -> metric -> value) in the main process;
    for a single test dataset, detectron2 drops the dataset level."""
    cfg = setup(args)
    if is_lazy_config_object(cfg):
        return _main_lazy(args, cfg)
    return _main_yacs(args, cfg)


def run(args):
    """Check the setup (raises SetupError), then run ``main`` in one process per GPU through
    detectron2's ``launch``. Returns main's results when it runs in this process."""
    check_setup(args)
    if args.num_gpus * args.num_machines == 1:
        return main(args)  # what launch() does for one process, but keeping the return value
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return None
