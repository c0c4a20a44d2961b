"""Every shipped config builds on CPU, trains one iteration and runs inference; the LIP and plain
recipes differ only in the backbone; the LazyConfig builds the same model as its yaml twin."""

import math

import pytest
import torch
from conftest import CONFIGS, SYNTHETIC_TRAIN, TINY_OVERRIDES
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from lip_det.data import MARKS
from lip_det.engine import load_config
from lip_det.layers import LIP
from lip_det.modeling import DenseNet, LIPResNet

YAML_CONFIGS = sorted(
    p.relative_to(CONFIGS).as_posix()
    for p in CONFIGS.rglob("*.yaml")
    if not p.name.startswith("Base-")
)
LAZY_CONFIG = "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py"

TORCHVISION_INPUT = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
}
LIP_BACKBONES = {
    "build_lip_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone",
    "build_lip_densenet_fpn_backbone",
    "build_retinanet_lip_densenet_fpn_backbone",
}


def _flatten(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_the_shipped_config_set():
    assert YAML_CONFIGS == sorted(
        [f"COCO-Detection/faster_rcnn_{b}R_{d}_FPN_{s}.yaml"
         for b in ("LIP_", "") for d in (50, 101) for s in ("1x", "3x")]
        + ["COCO-Detection/retinanet_LIP_R_50_FPN_1x.yaml",
           "COCO-InstanceSegmentation/mask_rcnn_LIP_R_50_FPN_1x.yaml",
           "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml", "Demo/faster_rcnn_R_18_FPN_demo.yaml"]
        + ["COCO-Detection/faster_rcnn_LIP_DenseNet_121_FPN_1x.yaml",
           "COCO-Detection/faster_rcnn_DenseNet_121_FPN_1x.yaml",
           "COCO-Detection/retinanet_LIP_DenseNet_121_FPN_1x.yaml"]
    )  # fmt: skip
    # A new config must be added here on purpose (and so be covered by the tests below).
    assert (CONFIGS / LAZY_CONFIG).is_file()


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("schedule", ["1x", "3x"])
def test_lip_and_plain_recipes_differ_only_in_backbone(depth, schedule):
    lip = _flatten(
        load_config(str(CONFIGS / f"COCO-Detection/faster_rcnn_LIP_R_{depth}_FPN_{schedule}.yaml"))
    )
    plain = _flatten(
        load_config(str(CONFIGS / f"COCO-Detection/faster_rcnn_R_{depth}_FPN_{schedule}.yaml"))
    )
    differing = {k for k in lip if lip[k] != plain[k]}
    assert differing == {"MODEL.BACKBONE.NAME", "MODEL.WEIGHTS"}
    assert (lip["MODEL.BACKBONE.NAME"], plain["MODEL.BACKBONE.NAME"]) == (
        "build_lip_resnet_fpn_backbone",
        "build_resnet_fpn_backbone",
    )
    assert (lip["MODEL.WEIGHTS"], plain["MODEL.WEIGHTS"]) == (
        f"weights/LIP-R-{depth}.pkl",
        f"weights/R-{depth}-torchvision.pkl",
    )
    # detectron2's COCO schedules, 16 images per batch at lr 0.02 (the paper's mmdetection recipe)
    steps, max_iter = {"1x": ((60000, 80000), 90000), "3x": ((210000, 250000), 270000)}[schedule]
    assert (lip["SOLVER.STEPS"], lip["SOLVER.MAX_ITER"]) == (steps, max_iter)
    assert (lip["SOLVER.IMS_PER_BATCH"], lip["SOLVER.BASE_LR"]) == (16, 0.02)
    assert (lip["MODEL.RESNETS.DEPTH"], lip["MODEL.MASK_ON"]) == (depth, False)


def test_demo_twins_differ_only_in_backbone():
    lip = _flatten(load_config(str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")))
    plain = _flatten(load_config(str(CONFIGS / "Demo/faster_rcnn_R_18_FPN_demo.yaml")))
    assert {k for k in lip if lip[k] != plain[k]} == {"MODEL.BACKBONE.NAME", "OUTPUT_DIR"}
    assert (lip["MODEL.BACKBONE.NAME"], plain["MODEL.BACKBONE.NAME"]) == (
        "build_lip_resnet_fpn_backbone",
        "build_resnet_fpn_backbone",
    )
    assert lip["MODEL.ROI_HEADS.NUM_CLASSES"] == len(MARKS)  # the synthetic dataset's classes
    assert lip["DATASETS.TRAIN"] == ("lip_synthetic_train",)


@pytest.mark.parametrize("name", YAML_CONFIGS)
def test_config_uses_torchvision_input_convention(name):
    cfg = load_config(str(CONFIGS / name))
    for key, value in TORCHVISION_INPUT.items():
        assert _get(cfg, key) == value, key
    if "LIP" in name:
        assert cfg.MODEL.BACKBONE.NAME in LIP_BACKBONES
    weights = cfg.MODEL.WEIGHTS
    if name.startswith("Demo/"):
        assert weights == ""  # the demo trains from scratch: nothing to download
    else:
        # A local file the converter writes, of the depth the config builds.
        if "densenet" in cfg.MODEL.BACKBONE.NAME:
            depth = f"DenseNet-{cfg.MODEL.DENSENET.DEPTH}"
        else:
            depth = f"R-{cfg.MODEL.RESNETS.DEPTH}"
        assert weights.startswith("weights/") and depth in weights


def _tiny_cfg(name, *extra):
    return load_config(str(CONFIGS / name), TINY_OVERRIDES + list(extra))


def _train_batch(cfg, n=2):
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get(SYNTHETIC_TRAIN)[:n]]


def _check_one_iteration(model, optimizer, batch, expected_losses):
    """One SGD step: the losses named and finite, trainable parameters updated, frozen ones not."""
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == expected_losses
    total = sum(losses.values())
    assert math.isfinite(total.item()) and total.item() > 0
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable
    return changed, trainable


def _check_inference(model, cfg, batch):
    """Detections come back as Instances of the *original* image size (here 120x150, while the
    network saw the 64 px short side)."""
    model.eval()
    image = batch[0]["image"]
    with torch.no_grad():
        outputs = model([{"image": image, "height": 120, "width": 150}])
    instances = outputs[0]["instances"]
    assert isinstance(instances, Instances)
    assert instances.image_size == (120, 150)
    assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
    fields = {"pred_boxes", "scores", "pred_classes"}
    if cfg.MODEL.MASK_ON:
        fields.add("pred_masks")
    assert fields <= set(instances.get_fields())
    if len(instances):
        boxes = instances.pred_boxes.tensor
        assert boxes[:, 0::2].max() <= 150 and boxes[:, 1::2].max() <= 120
        assert instances.pred_classes.max() < 3
        if cfg.MODEL.MASK_ON:
            assert tuple(instances.pred_masks.shape[1:]) == (120, 150)


@pytest.mark.parametrize("name", YAML_CONFIGS)
def test_config_trains_one_iteration_and_infers(name, synthetic_coco):
    torch.manual_seed(0)
    cfg = _tiny_cfg(name)
    model = build_model(cfg)
    backbone = model.backbone.bottom_up
    is_lip = cfg.MODEL.BACKBONE.NAME in LIP_BACKBONES
    densenet = isinstance(backbone, DenseNet)  # (LIP or plain: one module tree)
    last, first_lip = ("dense5", ".dense3.transition.") if densenet else ("res5", ".res3.0.")
    assert isinstance(backbone, LIPResNet) == (is_lip and not densenet)
    assert any(isinstance(m, LIP) for m in backbone.modules()) == is_lip
    assert backbone.output_shape()[last].stride == 32

    batch = _train_batch(cfg)
    # The mapper applied the config's input convention: RGB at the 64 px training size.
    assert min(batch[0]["image"].shape[1:]) == 64
    expected = {"loss_cls", "loss_box_reg"}
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        expected |= {"loss_rpn_cls", "loss_rpn_loc"} | (
            {"loss_mask"} if cfg.MODEL.MASK_ON else set()
        )
    changed, trainable = _check_one_iteration(model, build_optimizer(cfg, model), batch, expected)

    # Every part of the detector learns: late backbone stage, FPN, and the heads.
    for part in (f"backbone.bottom_up.{last}.", "backbone.fpn_", "head." if "RetinaNet" in
                 cfg.MODEL.META_ARCHITECTURE else "roi_heads."):  # fmt: skip
        assert any(n.startswith(part) for n in changed), part
    # FREEZE_AT: the stem (and res2 when 2) stays fixed; so do the LIPs inside them.
    frozen = {n for n, _ in model.named_parameters()} - trainable
    if cfg.MODEL.BACKBONE.FREEZE_AT >= 1:
        assert any(n.startswith("backbone.bottom_up.stem.") for n in frozen)
        assert not any(n.startswith("backbone.bottom_up.stem.") for n in trainable)
    else:
        assert not frozen
    if is_lip:  # LIP logit heads in res3-res5 (dense3-dense5) receive gradients and move
        assert any(first_lip in n and "lip" in n for n in changed)

    _check_inference(model, cfg, batch)


def test_lazy_config_builds_the_same_model_and_trains(synthetic_coco):
    """The LazyConfig twin of faster_rcnn_LIP_R_50_FPN_1x: same parameters (names, shapes,
    frozen or not), same solver and input recipe; one training iteration and one inference."""
    lazy = LazyConfig.load(str(CONFIGS / LAZY_CONFIG))
    yaml_cfg = load_config(str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml"))

    model = instantiate(lazy.model)
    reference = build_model(
        load_config(str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml"),
                    ["MODEL.DEVICE", "cpu"])
    )  # fmt: skip
    lazy_params = {n: (tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()}
    yaml_params = {n: (tuple(p.shape), p.requires_grad) for n, p in reference.named_parameters()}
    assert lazy_params == yaml_params
    assert {n for n, _ in model.named_buffers()} == {n for n, _ in reference.named_buffers()}
    assert list(model.pixel_mean.flatten()) == pytest.approx(yaml_cfg.MODEL.PIXEL_MEAN)
    assert list(model.pixel_std.flatten()) == pytest.approx(yaml_cfg.MODEL.PIXEL_STD)
    assert model.input_format == "RGB"
    del reference

    assert lazy.train.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert lazy.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert lazy.optimizer.lr == yaml_cfg.SOLVER.BASE_LR
    assert lazy.dataloader.train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert lazy.dataloader.train.mapper.image_format == "RGB"
    assert lazy.dataloader.train.dataset.names == yaml_cfg.DATASETS.TRAIN[0]

    # One iteration through the config's own data loader, optimizer and LR schedule.
    lazy.dataloader.train.dataset.names = SYNTHETIC_TRAIN
    lazy.dataloader.train.total_batch_size = 2
    lazy.dataloader.train.num_workers = 0
    lazy.dataloader.train.mapper.augmentations[0].short_edge_length = (64,)
    lazy.dataloader.train.mapper.augmentations[0].max_size = 96
    lazy.model.roi_heads.num_classes = 3
    lazy.model.proposal_generator.batch_size_per_image = 32
    lazy.model.roi_heads.batch_size_per_image = 16
    torch.manual_seed(0)
    model = instantiate(lazy.model)
    lazy.optimizer.params.model = model
    optimizer = instantiate(lazy.optimizer)
    scheduler = instantiate(lazy.lr_multiplier)
    assert scheduler(0.0) == pytest.approx(0.001)  # linear warm-up from 0.001
    batch = next(iter(instantiate(lazy.dataloader.train)))
    assert len(batch) == 2 and min(batch[0]["image"].shape[1:]) == 64
    changed, _ = _check_one_iteration(
        model, optimizer, batch, {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    )
    assert any(n.startswith("backbone.bottom_up.res5.") for n in changed)
    assert any(".res3.0." in n and "lip" in n for n in changed)

    cfg = _tiny_cfg("COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml")
    _check_inference(model, cfg, batch)


def test_base_chain_resolves_from_any_working_directory(tmp_path, monkeypatch):
    # _BASE_ paths are relative to the yaml file, not to the current directory.
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml"))
    # from Base-RCNN-FPN.yaml (detectron2) and Base-RCNN-FPN-torchvision.yaml (lip_det)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 1000
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.INPUT.FORMAT == "RGB"
