"""
Importance maps: where each LIP layer of a model looks, drawn over the input image.

A LIP layer pools ``x`` with weights ``exp(logit)``. For each LIP layer this module records the
logits the layer computed on an image (a forward hook on its logit module) and turns them into a
2-D map:

- **channels** are reduced by the mean of ``exp(logit)`` over channels (the average pooling weight
  a position gets; a position that any channel finds important stands out);
- **normalisation** is per layer by default: the map is divided by its maximum over the image, so
  1.0 marks the most important position of that layer and the colours of two layers are not on a
  common scale. ``normalize="window"`` shows instead the share a position takes in the
  ``kernel_size`` x ``kernel_size`` window centred on it (its softmax weight in that window: 1/k²
  where the window is flat, towards 1 where the position dominates its window, towards 0 where a
  neighbour does): local contrast rather than global importance.

The map has the resolution of the layer's input; it is cropped to the image's part of the padded
batch and resized to the image, so it overlays the image pixel for pixel.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .layers import LIP

__all__ = [
    "NORMALIZATIONS",
    "find_lip_layers",
    "importance_maps",
    "overlay",
    "save_importance",
    "visualize_images",
]

NORMALIZATIONS = ("layer", "window")


def _place_name(module_name):
    """'backbone.bottom_up.res3.0.shortcut_lip' -> 'res3.shortcut'; 'stem' for the stem; the
    module name itself for a LIP elsewhere."""
    parts = module_name.split(".")
    stage = next((p for p in parts if p == "stem" or p.startswith("res")), None)
    if stage == "stem":
        return "stem"
    for kind in ("main", "shortcut"):
        if stage and f"{kind}_lip" in parts:
            return f"{stage}.{kind}"
    return module_name


def find_lip_layers(model):
    """{place name: LIP module} in forward order (stem, res3.main, res3.shortcut, ...)."""
    return {_place_name(name): m for name, m in model.named_modules() if isinstance(m, LIP)}


def _reduce(logit, lip, normalize):
    """(C, h, w) logits of one image -> (h, w) map in [0, 1]."""
    importance = logit.double().exp()
    if normalize == "window":
        k = lip.kernel_size
        # sum over the in-image positions of the window (zero padding adds nothing)
        window_sum = F.avg_pool2d(importance[None], k, 1, k // 2, count_include_pad=True)[0] * k * k
        return (importance / window_sum).mean(0)
    reduced = importance.mean(0)
    return reduced / reduced.max()


@torch.no_grad()
def importance_maps(model, image, *, normalize="layer", size=None):
    """
    Importance map of every LIP layer of a detectron2 model for one image.

    Args:
        model: a detectron2 meta-architecture (``model.backbone`` and ``preprocess_image``) whose
            backbone holds LIP layers, in eval mode.
        image: (H, W, 3) uint8 array in the model's input format (``cfg.INPUT.FORMAT``), already
            resized as the model sees it at test time.
        normalize: "layer" or "window" (see the module docstring).
        size: (height, width) of the maps; default: the image's. Give the original image's size
            to overlay the maps on the image before its test-time resize.

    Returns:
        {place name: (height, width) float32 array in [0, 1]}, in forward order.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}; choose one of {list(NORMALIZATIONS)}")
    layers = find_lip_layers(model.backbone)
    if not layers:
        raise ValueError("the model's backbone has no LIP layers")
    logits = {}
    handles = [
        lip.logit.register_forward_hook(
            lambda module, inputs, output, place=place: logits.__setitem__(place, output)
        )
        for place, lip in layers.items()
    ]
    try:
        height, width = image.shape[:2]
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        batch = model.preprocess_image([{"image": tensor, "height": height, "width": width}])
        model.backbone(batch.tensor)
    finally:
        for handle in handles:
            handle.remove()

    padded_h, padded_w = batch.tensor.shape[-2:]
    maps = {}
    for place, lip in layers.items():
        reduced = _reduce(logits[place][0].float(), lip, normalize)
        h, w = reduced.shape
        # the image's part of the padded batch, at this layer's resolution
        crop = reduced[
            : max(1, round(h * height / padded_h)), : max(1, round(w * width / padded_w))
        ]
        resized = F.interpolate(crop[None, None], size=size or (height, width), mode="bilinear")
        maps[place] = resized[0, 0].clamp(0, 1).float().numpy()
    return maps


def overlay(image_rgb, importance, alpha=0.55, cmap="inferno"):
    """(H, W, 3) uint8 image with the (H, W) map in [0, 1] blended over it in a colour map."""
    colours = colormaps[cmap](importance)[..., :3] * 255
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def save_importance(image_rgb, maps, out_dir, stem, *, normalize="layer"):
    """
    Write ``out_dir/<stem>/<index>_<place>.png`` (the map over the image, at the image's size)
    for every layer, and ``out_dir/<stem>_layers.png`` (the image and every layer in one
    figure). Returns the list of written paths, the figure last.
    """
    folder = os.path.join(out_dir, stem)
    os.makedirs(folder, exist_ok=True)
    written = []
    for index, (place, importance) in enumerate(maps.items()):
        path = os.path.join(folder, f"{index}_{place}.png")
        Image.fromarray(overlay(image_rgb, importance)).save(path)
        written.append(path)

    panels = [("input", image_rgb)] + [(p, overlay(image_rgb, m)) for p, m in maps.items()]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    figure = Figure(figsize=(3 * ncols, 3 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, pixels) in zip(axes, panels):
        ax.imshow(pixels)
        ax.set_title(title, fontsize="medium")
    for ax in axes:
        ax.axis("off")
    scale = "per layer (1 = its maximum)" if normalize == "layer" else "per window (softmax share)"
    figure.suptitle(f"{stem}: LIP importance exp(logit), channel mean, normalised {scale}")
    figure_path = os.path.join(out_dir, f"{stem}_layers.png")
    figure.savefig(figure_path, dpi=100)
    written.append(figure_path)
    return written


# ---- what tools/visualize_importance.py runs -----------------------------------------------------


def _build_model(config_file, opts):
    """(model in eval mode with its weights, input format, test-time resize) of a yacs or
    LazyConfig config; SetupError for a config without LIP layers or missing weights."""
    import logging

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.data import transforms as T
    from detectron2.modeling import build_model

    from .engine import SetupError, is_lazy_config, load_config, load_lazy_config

    if is_lazy_config(config_file):
        cfg = load_lazy_config(config_file, opts)
        model, weights, key = (
            instantiate(cfg.model),
            cfg.train.init_checkpoint,
            "train.init_checkpoint",
        )
        model.to(cfg.train.device)
        input_format = cfg.model.get("input_format", "BGR")
        resize = instantiate(cfg.dataloader.test.mapper.augmentations)
        resize = resize[0] if resize else T.NoOpTransform()
    else:
        cfg = load_config(config_file, opts)
        model, weights, key = build_model(cfg), cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"
        input_format = cfg.INPUT.FORMAT
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    if not find_lip_layers(model.backbone):
        raise SetupError(f"{config_file}: the model's backbone has no LIP layers; use a LIP config")
    if weights:
        if "://" not in weights and not os.path.isfile(weights):
            raise SetupError(f"{key} = {weights!r}: file not found")
        DetectionCheckpointer(model).load(weights)
    else:
        logging.getLogger(__name__).warning(
            f"{key} is empty: these are the maps of an untrained model"
        )
    return model.eval(), input_format, resize


def _read_rgb_and_model_input(path, input_format):
    from detectron2.data.detection_utils import convert_PIL_to_numpy

    from .engine import SetupError

    try:
        with Image.open(path) as img:
            img.load()
            rgb = np.asarray(img.convert("RGB"))
            model_input = convert_PIL_to_numpy(img.convert("RGB"), input_format)
    except (OSError, ValueError) as e:  # missing, unreadable or not an image
        raise SetupError(f"--input {path}: cannot read the image ({e})") from e
    return rgb, model_input


def _check_output_folder(out_dir):
    """SetupError unless ``out_dir`` is a folder or can be created as one."""
    from .engine import SetupError

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SetupError(f"--output {out_dir!r} is a file; expected a folder for the maps")
    folder = os.path.abspath(out_dir)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the first existing folder above it
    if not os.path.isdir(folder):
        raise SetupError(f"--output {out_dir!r} cannot be created: {folder!r} is a file")


def _file_ids(path):
    """What makes two paths the same file: the real path and, for an existing file, its device
    and inode (hard links)."""
    ids = {os.path.realpath(path)}
    try:
        stat = os.stat(path)
        ids.add((stat.st_dev, stat.st_ino))
    except OSError:
        pass
    return ids


def _plan(inputs, out_dir, places):
    """[(input, stem, its layer PNGs, its figure)]: what :func:`save_importance` will write for
    each input. Inputs with the same file name (from different folders) get distinct stems."""
    stems, plan = set(), []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        while stem in stems:  # same file name from another folder: keep both
            stem += "_"
        stems.add(stem)
        folder = os.path.join(out_dir, stem)
        layers = [os.path.join(folder, f"{i}_{place}.png") for i, place in enumerate(places)]
        plan.append((path, stem, layers, os.path.join(out_dir, f"{stem}_layers.png")))
    return plan


def _check_plan(plan, out_dir, overwrite):
    """SetupError before anything is written if a PNG to write is an input (even with
    ``overwrite``), a folder, or (without ``overwrite``) an existing file, or if a folder to
    create is a file."""
    from .engine import SetupError

    inputs = {file_id: path for path, *_ in plan for file_id in _file_ids(path)}
    existing = []
    for path, _stem, layers, figure in plan:
        folder = os.path.dirname(layers[0]) if layers else None
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise SetupError(
                f"--output {out_dir!r}: {folder!r} is a file, where the maps of --input "
                f"{path!r} go into a folder of that name; move it or choose another --output"
            )
        for png in [*layers, figure]:
            source = next((inputs[i] for i in _file_ids(png) if i in inputs), None)
            if source is not None:
                raise SetupError(
                    f"--input {source!r} is also a file the maps of --input {path!r} would be "
                    "written to (not even --overwrite replaces an input); choose another --output"
                )
            if os.path.isdir(png):
                raise SetupError(f"--output {out_dir!r}: {png!r} is a folder, expected a PNG")
            if os.path.lexists(png):
                existing.append(png)
    if existing and not overwrite:
        raise SetupError(
            f"--output {out_dir!r} already holds {len(existing)} of the PNGs this run would write "
            f"(e.g. {existing[0]!r}); pass --overwrite to replace them, or choose another --output"
        )


def visualize_images(
    config_file, inputs, out_dir, *, opts=(), normalize="layer", threads=None, overwrite=True
):
    """Importance maps of every LIP layer for each image in ``inputs``, saved with
    :func:`save_importance` under ``out_dir``; returns the written paths.

    Raises SetupError before anything is written if ``out_dir`` or a folder in it is a file, if
    a PNG to write is one of ``inputs`` or a folder, or, with ``overwrite=False`` (what
    tools/visualize_importance.py passes without --overwrite), if one exists already."""
    from tqdm import tqdm

    _check_output_folder(out_dir)
    if threads:
        torch.set_num_threads(threads)
    model, input_format, resize = _build_model(config_file, opts)
    plan = _plan(inputs, out_dir, list(find_lip_layers(model.backbone)))
    _check_plan(plan, out_dir, overwrite)
    written = []
    for path, stem, _layers, _figure in tqdm(
        plan, desc="importance maps", unit="img", disable=len(plan) < 4
    ):
        rgb, model_input = _read_rgb_and_model_input(path, input_format)
        resized = resize.get_transform(model_input).apply_image(model_input)
        maps = importance_maps(model, resized, normalize=normalize, size=rgb.shape[:2])
        written += save_importance(rgb, maps, out_dir, stem, normalize=normalize)
    return written
