"""The README's "Use the backbones in your own detectron2 project" snippet, run as written:
detectron2's public API only (get_cfg, add_lip_config, build_model), no lip_det internals."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet():
    text = README.read_text()
    section = text.split("## Use the backbones in your own detectron2 project", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_builds_and_runs_a_lip_faster_rcnn():
    namespace = {}
    exec(compile(readme_snippet(), str(README), "exec"), namespace)
    model, cfg = namespace["model"], namespace["cfg"]
    assert cfg.MODEL.BACKBONE.NAME == "build_lip_resnet_fpn_backbone"
    # the snippet's model has LIP in all seven places of a LIP-ResNet-50
    lips = [m for m in model.modules() if type(m).__name__ == "LIP"]
    assert len(lips) == 7
    assert type(model.backbone.bottom_up).__name__ == "LIPResNet"
    outputs = namespace["outputs"]
    assert len(outputs) == 1 and outputs[0]["instances"].image_size == (120, 160)


def test_snippet_training_step_updates_lip_logit_modules():
    namespace = {}
    exec(compile(readme_snippet(), str(README), "exec"), namespace)
    model = namespace["model"]
    model.train()
    image = torch.rand(3, 128, 160) * 255
    from detectron2.structures import Boxes, Instances

    instances = Instances((128, 160))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 30.0, 90.0, 44.0]]))
    instances.gt_classes = torch.tensor([0, 1])
    from detectron2.utils.events import EventStorage

    with EventStorage():
        losses = model([{"image": image, "instances": instances}])
    sum(losses.values()).backward()
    head = model.backbone.bottom_up.res3[0].main_lip.logit.conv.weight
    assert torch.isfinite(head.grad).all() and head.grad.abs().sum() > 0
