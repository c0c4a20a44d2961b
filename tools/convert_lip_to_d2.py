#!/usr/bin/env python
"""Convert an ImageNet (LIP-)ResNet or (LIP-)DenseNet checkpoint into a detectron2 checkpoint for
MODEL.WEIGHTS.

    # the authors' published LIP-ResNet-50 -> lip_det's LIP-ResNet-50 (every tensor one-to-one)
    python tools/convert_lip_to_d2.py lip_resnet-50.pth weights/LIP-R-50.pkl --from lip
    # torchvision's ResNet-50 -> initial weights of a LIP-ResNet-50 (LIP modules start as avg pool)
    python tools/convert_lip_to_d2.py resnet50-0676ba61.pth weights/LIP-R-50-from-torchvision.pkl
    # ... or of detectron2's plain ResNet-50 (the plain twin of the LIP configs)
    python tools/convert_lip_to_d2.py resnet50-0676ba61.pth weights/R-50-torchvision.pkl --plain
    # the published LIP-DenseNet-121, and torchvision's DenseNet-121 for the plain twin
    python tools/convert_lip_to_d2.py lip_densenet_121.pth weights/LIP-DenseNet-121.pkl --from lip
    python tools/convert_lip_to_d2.py densenet121-a639ec97.pth weights/DenseNet-121.pkl --plain

The architecture, the source layout (lip, torchvision, msra) and the depth are read from the
file; --arch, --from and --depth make them checks. An existing output is replaced only with
--overwrite, the source never.
The logic lives in lip_det/checkpoint/convert.py.
"""

import argparse
import sys

import lip_det  # noqa: F401  (detectron2 compatibility fixes before any detectron2 import)
from lip_det.checkpoint.conversion import check_output
from lip_det.checkpoint.convert import (
    ARCHITECTURES,
    DEFAULT_PREFIX,
    SOURCES,
    ConversionError,
    convert_file,
)
from lip_det.checkpoint.files import Detectron2CheckpointError
from lip_det.modeling import NUM_BLOCKS_PER_STAGE, NUM_LAYERS_PER_BLOCK


def get_parser():
    parser = argparse.ArgumentParser(
        description="Convert a LIP-ResNet (sebgao/LIP), torchvision ResNet or detectron2 MSRA "
        "ResNet checkpoint into a detectron2 .pkl checkpoint with exact parameter names.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("src", help="checkpoint to convert (.pth/.pth.tar/.pkl)")
    parser.add_argument("dst", help="detectron2 checkpoint to write (.pkl)")
    parser.add_argument(
        "--from",
        dest="source",
        choices=("auto", *SOURCES),
        default="auto",
        help="layout of SRC: lip = the published LIP-ResNets and LIP-DenseNet-121, torchvision, "
        "msra = detectron2's "
        "caffe2 R-50.pkl/R-101.pkl; anything but auto fails unless SRC has that layout",
    )
    parser.add_argument(
        "--depth",
        type=int,
        choices=sorted({*NUM_BLOCKS_PER_STAGE, *NUM_LAYERS_PER_BLOCK}),
        help="fail unless SRC has this depth (default: read it from SRC)",
    )
    parser.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default="auto",
        help="architecture of SRC: resnet (LIP-ResNets, torchvision/MSRA ResNets) or densenet "
        "(the published LIP-DenseNet-121, torchvision DenseNets); auto reads it from the names",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="target the plain twin (detectron2's ResNet, lip_det's plain DenseNet) instead of the "
        "LIP model (torchvision/msra sources)",
    )
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help='where the backbone sits in the detectron2 model: "backbone.bottom_up." under a FPN, '
        '"backbone." for a bare (LIP-)ResNet backbone',
    )
    parser.add_argument(
        "--keep-input-format",
        action="store_true",
        help="msra only: keep caffe2's BGR / std-1 input instead of rewriting conv1 for the RGB, "
        "torchvision-normalised input of lip_det's configs",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DST if it exists (never SRC itself)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every mapped tensor")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        # the output before the (slow) reading and converting
        check_output(args.dst, args.prefix, source=args.src, overwrite=args.overwrite)
        conversion = convert_file(
            args.src,
            args.dst,
            source=args.source,
            depth=args.depth,
            arch=args.arch,
            plain=args.plain,
            prefix=args.prefix,
            keep_input_format=args.keep_input_format,
        )
    except Detectron2CheckpointError as e:
        print(f"error: {e.for_depth(args.depth)}", file=sys.stderr)
        return 1
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(conversion.report(args.src, args.dst, args.prefix, verbose=args.verbose)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
