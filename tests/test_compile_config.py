"""MODEL.COMPILE: tools/train_net.py's Trainer compiles the backbone in place (checkpoint keys
unchanged, the same outputs), and a backend torch does not have is one clear error."""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from lip_det.config import add_lip_config
from lip_det.engine.compile import check_compile_config, compile_backends
from lip_det.engine.trainers import Trainer

REPO = Path(__file__).resolve().parents[1]


def _cfg(**compile_settings):
    cfg = get_cfg()
    add_lip_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    for key, value in compile_settings.items():
        cfg.MODEL.COMPILE[key] = value
    return cfg


def test_compile_is_off_by_default():
    model = Trainer.build_model(_cfg())
    assert getattr(model.backbone, "_compiled_call_impl", None) is None


def test_trainer_compiles_the_backbone_in_place():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Trainer.build_model(_cfg()).eval()
    compiled = Trainer.build_model(_cfg(ENABLED=True, BACKEND="aot_eager")).eval()
    assert compiled.backbone._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        want = eager.backbone(x)
        got = compiled.backbone(x)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(ValueError, match=r"MODEL\.COMPILE\.BACKEND.*'inductr'.*inductor"):
        check_compile_config(_cfg(ENABLED=True, BACKEND="inductr"))
    check_compile_config(_cfg(ENABLED=False, BACKEND="inductr"))  # unused when off
    assert {"inductor", "aot_eager"} <= set(compile_backends())
