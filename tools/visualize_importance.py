#!/usr/bin/env python
"""
Draw the importance maps exp(logit) of every LIP layer of a trained model over input images.

    python tools/visualize_importance.py \
        --config-file configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml \
        --input img1.png img2.jpg --output vis/ MODEL.WEIGHTS output/demo/lip_r18/model_final.pth

For each image IMG it writes OUTPUT/IMG/<i>_<layer>.png (the map of LIP layer i over the image,
at the image's size) and OUTPUT/IMG_layers.png (the image and all layers in one figure). Maps are
the channel mean of exp(logit), normalised per layer (1 = the layer's maximum) or, with
--normalize window, as the softmax share of each position in the window centred on it; see
lip_det/visualize.py. Works with any config whose backbone has LIP layers (yacs .yaml or
LazyConfig .py; KEY VALUE or key=value overrides as in tools/train_net.py). PNGs that exist
already are replaced only with --overwrite; an input, never.
"""

import argparse
import os
import sys

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes, backbone registration)
from lip_det.engine import SetupError
from lip_det.visualize import NORMALIZATIONS, visualize_images


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, nargs="+", metavar="IMG", help="image files")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--normalize", default="layer", choices=NORMALIZATIONS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace PNGs of an earlier run in --output"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE)")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        written = visualize_images(
            args.config_file,
            args.input,
            args.output,
            opts=args.opts,
            normalize=args.normalize,
            threads=args.threads,
            overwrite=args.overwrite,
        )
    except SetupError as e:
        sys.exit(f"error: {e}")
    for figure in (path for path in written if path.endswith("_layers.png")):
        print(f"wrote {figure} (and one PNG per layer in {os.path.splitext(figure)[0][:-7]}/)")
    return written


if __name__ == "__main__":
    main()
