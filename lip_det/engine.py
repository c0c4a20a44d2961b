"""
Training and evaluation: what ``tools/train_net.py`` and ``tools/demo.py`` run.

The flow is detectron2's ``tools/train_net.py`` (yacs ``.yaml`` configs) and
``tools/lazyconfig_train_net.py`` (LazyConfig ``.py`` configs, chosen by the file extension),
plus the checks a user needs to get one clear message instead of a deep traceback: config key
typos, missing weights, missing datasets, a CUDA device that is not there, an OUTPUT_DIR that
already holds a run. They run once, in the launching process, before any model is built or any
worker is started:

    args = argument_parser().parse_args()
    run(args)    # check_setup(args) -> launch(main, ...) -> main(args) in every worker

Beyond detectron2: multi-process training on the CPU (gloo, ``lip_det.launch``), mixed precision
on the CPU (bfloat16 autocast) and checkpoints that a killed run cannot leave half-written
(``lip_det.checkpoint``).
"""

import glob
import hashlib
import logging
import os
import shutil
import time
import weakref

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.engine import create_ddp_model as detectron2_create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import inference_on_dataset, print_csv_format, verify_results
from detectron2.utils.logger import setup_logger

from .checkpoint import AtomicCheckpointer
from .config import AMP_PRECISIONS, add_lip_config, validate_lip_config
from .data import DatasetMapper
from .data.datasets import check_datasets_content, check_datasets_exist, register_coco_dataset
from .evaluation import (
    SmallObjectCOCOEvaluator,
    build_evaluator,
    small_object_settings,
    write_report,
)
from .launch import launch
from .weights import check_weights_file, model_tensor_shapes

__all__ = [
    "AutocastTrainer",
    "SetupError",
    "Trainer",
    "argument_parser",
    "check_setup",
    "create_ddp_model",
    "get_lip_cfg",
    "is_lazy_config",
    "load_config",
    "load_lazy_config",
    "main",
    "parameter_digest",
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
    """detectron2's ``default_argument_parser`` plus a repeatable ``--dataset`` option and
    ``--overwrite``. With ``MODEL.DEVICE cpu``, ``--num-gpus N`` starts N CPU processes."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train from scratch in an OUTPUT_DIR that holds a previous training run, deleting "
        "its checkpoints, last_checkpoint, metrics.json, event files, log.txt, inference/ and "
        "report/ first (without it, or --resume, such a directory is refused)",
    )
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


def _amp_settings(cfg):
    """(enabled, precision, precision key) of either kind of config."""
    if not is_lazy_config_object(cfg):
        return cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION, "SOLVER.AMP.PRECISION"
    amp = cfg.train.get("amp", {})
    return amp.get("enabled", False), amp.get("precision", "auto"), "train.amp.precision"


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
    amp_enabled, precision, precision_key = _amp_settings(cfg)
    if amp_enabled:
        amp_dtype(device, precision, precision_key)
    check_output_dir(
        "train.output_dir" if is_lazy_config_object(cfg) else "OUTPUT_DIR",
        output_dir,
        resume=args.resume,
        eval_only=args.eval_only,
        overwrite=getattr(args, "overwrite", False),
    )
    check_weights(key, weights, output_dir, resume=args.resume, eval_only=args.eval_only)
    resuming = args.resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    try:
        check_model(cfg, key, "" if resuming else weights, eval_only=args.eval_only)
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
        if cfg.DATASETS.TEST:  # the evaluator's settings
            small_object_settings(cfg)
    expected = model_tensor_shapes(cfg)
    if expected is not None and weights and "://" not in weights and os.path.isfile(weights):
        check_weights_file(weights, expected, key=key, eval_only=eval_only)


def _load(args):
    loader = load_lazy_config if is_lazy_config(args.config_file) else load_config
    return loader(args.config_file, args.opts)


# ---- per-process setup ---------------------------------------------------------------------------


def setup(args):
    """Config + detectron2's default_setup (logging, output dir, config.yaml, seeding)."""
    register_datasets(args.dataset)
    cfg = _load(args)
    default_setup(cfg, args)  # lip_det.compat keeps its environment report working without _C
    # lip_det's own messages (e.g. the dataset checks' counts) into the same log
    setup_logger(_run_settings(cfg)[3], distributed_rank=comm.get_rank(), name="lip_det")
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


# ---- training steps, DDP, rank check (both kinds of config) ------------------------------------


class AutocastTrainer(SimpleTrainer):
    """SimpleTrainer with the forward pass under ``torch.autocast(device_type, dtype)``: mixed
    precision where detectron2's AMPTrainer (CUDA float16 only) does not go, e.g. bfloat16 on the
    CPU. bfloat16 has float32's exponent range, so no GradScaler is needed."""

    def __init__(self, model, data_loader, optimizer, *, device_type, dtype=torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.device_type = device_type
        self.dtype = dtype

    def run_step(self):
        # SimpleTrainer.run_step with autocast around the forward pass only, as AMPTrainer does
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_train_step(model, data_loader, optimizer, *, device, amp=False, precision="auto"):
    """The trainer that runs one iteration: SimpleTrainer; with ``amp``, detectron2's AMPTrainer
    for float16 on CUDA (GradScaler included), AutocastTrainer for bfloat16 (CPU or CUDA)."""
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    dtype = amp_dtype(device, precision)
    if dtype == torch.float16:
        return AMPTrainer(model, data_loader, optimizer)
    return AutocastTrainer(
        model, data_loader, optimizer, device_type=torch.device(device).type, dtype=dtype
    )


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model``, which gives DistributedDataParallel
    ``device_ids=[local rank]``: right for a model on one GPU, refused by DDP for a CPU model,
    which needs ``device_ids=None``."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return detectron2_create_ddp_model(model, **kwargs)


def parameter_digest(named_tensors):
    """SHA-256 of ``(name, tensor)`` pairs, in name order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_ranks_in_sync(model):
    """After multi-process training, log whether every process ends with the same parameters
    (DDP keeps them equal; a difference means the processes trained different models). Buffers
    are left out: with broadcast_buffers=False, BatchNorm statistics are per process. Returns
    the digests of all ranks."""
    model = getattr(model, "module", model)  # DDP
    digests = comm.all_gather(parameter_digest(model.named_parameters()))
    logger = logging.getLogger("detectron2")
    if len(set(digests)) == 1:
        logger.info(f"Parameters identical in all {len(digests)} processes: sha256 {digests[0]}")
    else:
        logger.warning(
            "Parameters differ between processes: "
            + ", ".join(f"rank {rank} sha256 {d}" for rank, d in enumerate(digests))
        )
    return digests


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with lip_det's evaluator and a class-count check, DDP and
    mixed precision on the CPU, and crash-safe checkpoints."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ (the same in v0.6 and later) with lip_det's DDP wrapper,
        # training step and checkpointer in place of detectron2's.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # setup_logger is not called for d2
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # Assume these objects must be constructed in this order.
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_train_step(
            model,
            data_loader,
            optimizer,
            device=cfg.MODEL.DEVICE,
            amp=cfg.SOLVER.AMP.ENABLED,
            precision=cfg.SOLVER.AMP.PRECISION,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        # loads the json (thing_classes now known); reads images with lip_det's DatasetMapper
        loader = build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True))
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = DatasetMapper(cfg, is_train=False)
        loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        check_num_classes(cfg, [dataset_name])
        return loader

    def train(self):
        # v0.6 returns the final evaluation only when TEST.EXPECTED_RESULTS is set.
        super().train()
        if comm.get_world_size() > 1:
            check_ranks_in_sync(self.model)
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
    amp_enabled, precision, _ = _amp_settings(cfg)
    trainer = build_train_step(
        model,
        train_loader,
        optimizer,
        device=cfg.train.device,
        amp=amp_enabled,
        precision=precision,
    )
    checkpointer = AtomicCheckpointer(
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
    if comm.get_world_size() > 1:
        check_ranks_in_sync(model)
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
    """Check the setup (raises SetupError), delete the previous run with ``--overwrite``, then
    run ``main`` in ``--num-gpus`` processes per machine (on the CPU: CPU processes) through
    ``lip_det.launch``. Returns main's results when it runs in this process."""
    cfg = check_setup(args)
    _, _, device, output_dir, _, _ = _run_settings(cfg)
    if getattr(args, "overwrite", False) and not args.eval_only and args.machine_rank == 0:
        delete_previous_run(output_dir)
    if args.num_gpus * args.num_machines == 1:
        return main(args)  # what launch() does for one process, but keeping the return value
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=device,
    )
    return None
