"""Reading yacs (``.yaml``) and LazyConfig (``.py``) config files, with one-line errors, and
:class:`RunSettings`: what the launcher needs to know of either kind of config."""

import functools
import os
from dataclasses import dataclass

from detectron2.config import LazyConfig, get_cfg

from ..config import add_lip_config, ints_as_floats, ints_as_floats_in
from .errors import SetupError
from .moved_paths import update_moved_targets

__all__ = [
    "RunSettings",
    "get_lip_cfg",
    "is_lazy_config",
    "is_lazy_config_object",
    "load_config",
    "load_config_file",
    "load_lazy_config",
    "run_settings",
]


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
        (config_file, functools.partial(_merge_file, cfg), config_file),
        ("command-line overrides", cfg.merge_from_list, ints_as_floats(list(opts))),
    ):
        try:
            merge(arg)
        except (KeyError, ValueError, AssertionError) as e:
            # KeyError("Non-existent config key: ...") etc.: str() of a KeyError adds quotes.
            message = e.args[0] if e.args else repr(e)
            raise SetupError(f"{source}: {message}") from e
    cfg.freeze()
    return cfg


# Keys that detectron2 reads with a default when a LazyConfig leaves them out (default_setup:
# train.seed, -1 = random), so that an override may add them.
OPTIONAL_LAZY_KEYS = ("train.seed",)


def _merge_file(cfg, config_file):
    """cfg.merge_from_file, except that an integer given for one of lip_det's float keys
    (``GATE_COEFF: 6``) is taken as a float instead of yacs' "Type mismatch"."""
    loaded = cfg.load_yaml_with_base(config_file, allow_unsafe=True)
    if not ints_as_floats_in(loaded):
        return cfg.merge_from_file(config_file)  # (detectron2's VERSION handling included)
    return cfg.merge_from_other_cfg(type(cfg)(loaded))


def load_lazy_config(config_file, opts=()):
    """
    LazyConfig from a ``.py`` file and ``dotted.key=value`` overrides. detectron2 creates any
    key an override names; here a key that does not exist is an error (SetupError), except
    inside a ``LazyCall`` node, where a new key is a new keyword argument of the call (a typo
    there fails at instantiate time, with the callable's own TypeError).
    """
    from omegaconf import OmegaConf  # (detectron2's LazyConfig dependency)

    _check_config_file(config_file)
    cfg = LazyConfig.load(config_file)
    update_moved_targets(cfg, config_file)  # a config.yaml saved before lip_det's new layout
    for override in opts:
        key = override.split("=", 1)[0].lstrip("+~")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or not OmegaConf.is_dict(node):
            raise SetupError(f"command-line overrides: Non-existent key: {parent or key}")
        if leaf not in node and "_target_" not in node and key not in OPTIONAL_LAZY_KEYS:
            raise SetupError(f"command-line overrides: Non-existent key: {key}")
    try:
        return LazyConfig.apply_overrides(cfg, list(opts))
    except Exception as e:  # hydra's override grammar errors, KeyError for non-config prefixes
        raise SetupError(f"command-line overrides: {e}") from e


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run that the checks and the launcher read, from either kind of config.
    Each ``*_key`` is the name the user would write, for error messages."""

    weights_key: str
    weights: str
    device: str
    output_dir_key: str
    output_dir: str
    train_datasets: tuple
    test_datasets: tuple
    amp_enabled: bool
    amp_precision: str
    amp_precision_key: str


def run_settings(cfg):
    """:class:`RunSettings` of a yacs CfgNode or a LazyConfig."""
    if not is_lazy_config_object(cfg):
        return RunSettings(
            weights_key="MODEL.WEIGHTS",
            weights=cfg.MODEL.WEIGHTS,
            device=cfg.MODEL.DEVICE,
            output_dir_key="OUTPUT_DIR",
            output_dir=cfg.OUTPUT_DIR,
            train_datasets=tuple(cfg.DATASETS.TRAIN),
            test_datasets=tuple(cfg.DATASETS.TEST),
            amp_enabled=cfg.SOLVER.AMP.ENABLED,
            amp_precision=cfg.SOLVER.AMP.PRECISION,
            amp_precision_key="SOLVER.AMP.PRECISION",
        )

    def names(loader):
        dataset = cfg.dataloader.get(loader, {}).get("dataset", {})
        found = dataset.get("names", []) if hasattr(dataset, "get") else []
        return (found,) if isinstance(found, str) else tuple(found)

    amp = cfg.train.get("amp", {})
    return RunSettings(
        weights_key="train.init_checkpoint",
        weights=cfg.train.init_checkpoint,
        device=cfg.train.device,
        output_dir_key="train.output_dir",
        output_dir=cfg.train.output_dir,
        train_datasets=names("train"),
        test_datasets=names("test"),
        amp_enabled=amp.get("enabled", False),
        amp_precision=amp.get("precision", "auto"),
        amp_precision_key="train.amp.precision",
    )


def load_config_file(args):
    """The config of ``args.config_file`` (yacs or LazyConfig, by extension) with ``args.opts``."""
    loader = load_lazy_config if is_lazy_config(args.config_file) else load_config
    return loader(args.config_file, args.opts)
