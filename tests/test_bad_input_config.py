"""Config values, round 2 (and start-up noise): repeated list entries, an empty PLACES, integers
for float keys, values that can only hurt."""

import logging
import subprocess
import sys

import pytest
from conftest import CONFIGS, REPO

from lip_det.engine import SetupError, load_config
from lip_det.engine.checks import check_model

LIP_R50 = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml")


def _model_error(*opts):
    cfg = load_config(LIP_R50, list(opts))
    with pytest.raises(ValueError) as info:
        check_model(cfg, "MODEL.WEIGHTS", "")
    return str(info.value)


def test_repeated_place_is_an_error():
    assert _model_error("MODEL.LIP.PLACES", "['stem', 'res3.main', 'stem']") == (
        "MODEL.LIP.PLACES = ['stem', 'res3.main', 'stem'] repeats ['stem']; list each place once"
    )


def test_empty_places_points_to_the_plain_backbone():
    message = _model_error("MODEL.LIP.PLACES", "[]")
    assert message.startswith("MODEL.LIP.PLACES is empty: a LIP-ResNet without LIP is")
    assert "'build_resnet_fpn_backbone'" in message and "faster_rcnn_R_50_FPN_1x.yaml" in message


def test_integers_are_accepted_for_float_keys_on_the_command_line_and_in_files(tmp_path):
    cfg = load_config(LIP_R50, ["MODEL.LIP.GATE_COEFF", "6"])
    assert cfg.MODEL.LIP.GATE_COEFF == 6.0 and isinstance(cfg.MODEL.LIP.GATE_COEFF, float)
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {LIP_R50}\nMODEL:\n  LIP:\n    GATE_COEFF: 7\n")
    cfg = load_config(str(child))
    assert cfg.MODEL.LIP.GATE_COEFF == 7.0 and cfg.MODEL.BACKBONE.NAME.startswith("build_lip")
    # other type errors stay errors
    with pytest.raises(SetupError, match="Type mismatch"):
        load_config(LIP_R50, ["MODEL.LIP.GATE_COEFF", "'six'"])


def test_a_saturating_gate_coefficient_warns_with_the_reason(caplog):
    cfg = load_config(LIP_R50, ["MODEL.LIP.GATE_COEFF", "40"])
    with caplog.at_level(logging.WARNING, logger="lip_det"):
        check_model(cfg, "MODEL.WEIGHTS", "")
    assert "MODEL.LIP.GATE_COEFF = 40.0: importance weights span up to e^40" in caplog.text
    assert "max pooling" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lip_det"):
        check_model(load_config(LIP_R50), "MODEL.WEIGHTS", "")
    assert "GATE_COEFF" not in caplog.text


def test_importing_lip_det_and_loading_our_configs_prints_no_noise():
    code = (
        "import lip_det\nfrom lip_det.engine import load_config\n"
        f"load_config({LIP_R50!r})\n"
        "import detectron2.modeling, detectron2.engine, detectron2.evaluation\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "torch.jit.script" not in result.stderr
    assert "has no VERSION" not in result.stderr + result.stdout


def test_log_files_carry_no_ansi_colour_codes(tmp_path):
    from lip_det.engine import argument_parser, setup

    demo = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")
    setup(argument_parser().parse_args(["--config-file", demo, "OUTPUT_DIR", str(tmp_path)]))
    log = (tmp_path / "log.txt").read_text()
    assert "Contents of args.config_file" in log and "Running with full config" in log
    assert "\x1b[" not in log
