"""The command line of tools/train_net.py: detectron2's plus lip_det's options."""

from detectron2.engine import default_argument_parser

__all__ = ["argument_parser"]


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
