"""The package's shape: no import cycles, no oversized module without a stated reason, and
configs saved under the old flat layout still load."""

import ast
import os
from pathlib import Path

import pytest

from lip_det.engine import SetupError, load_lazy_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lip_det"
MAX_LINES = 400
LONG_MODULE_MARKER = "Why this module is long:"


def _module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name, path, modules):
    """The lip_det modules that ``name`` imports anywhere in its code (module level or inside
    functions), resolved to modules: ``from .x import y`` counts as ``x.y`` when that is a
    module, else as ``x``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else base for t in targets]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a module's own packages run first anyway: an import of one is no edge
            if target and not name.startswith(target + ".") and target != name:
                found.add(target)
    return found


def test_no_import_cycles_inside_lip_det():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["lip_det.engine.train_net"] >= {"lip_det.engine.trainers", "lip_det.checkpoint"}

    cycles, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_over_400_lines_without_a_reason_at_its_top():
    too_long = []
    for name, path in sorted(_modules().items()):
        text = path.read_text()
        if text.count("\n") > MAX_LINES and LONG_MODULE_MARKER not in text[:3000]:
            too_long.append(f"{name} ({text.count(chr(10))} lines)")
    assert not too_long, f"over {MAX_LINES} lines without '{LONG_MODULE_MARKER}': {too_long}"


OLD_TARGETS = {
    "lip_det.backbone.LIPResNet": "lip_det.modeling.lip_resnet.LIPResNet",
    "lip_det.blocks.LIPStem": "lip_det.modeling.blocks.LIPStem",
    "lip_det.blocks.LIPBottleneckBlock": "lip_det.modeling.blocks.LIPBottleneckBlock",
}


def _saved_config_with_old_targets(tmp_path):
    """A config.yaml as detectron2's LazyConfig.save wrote it before the move: stages listed
    block by block, with the old module paths."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(REPO / "configs/COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py"))
    bottom_up = cfg.model.backbone.bottom_up
    bottom_up._target_ = "lip_det.backbone.LIPResNet"
    bottom_up.stem._target_ = "lip_det.blocks.LIPStem"
    lip_block = {
        "_target_": "lip_det.blocks.LIPBottleneckBlock",
        "in_channels": 64,
        "out_channels": 256,
        "bottleneck_channels": 64,
        "stride": 2,
        "norm": "FrozenBN",
    }
    plain = {
        "_target_": "detectron2.modeling.backbone.resnet.BottleneckBlock",
        "in_channels": 256,
        "out_channels": 256,
        "bottleneck_channels": 64,
        "norm": "FrozenBN",
    }
    bottom_up.stages = [[lip_block, plain]]
    bottom_up.out_features = ["res2"]
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))
    return path


def test_saved_lazy_config_with_old_module_paths_loads_and_builds(tmp_path, caplog):
    from detectron2.config import instantiate

    path = _saved_config_with_old_targets(tmp_path)
    assert "lip_det.blocks.LIPStem" in path.read_text()
    cfg = load_lazy_config(str(path))
    bottom_up = cfg.model.backbone.bottom_up
    assert bottom_up._target_ == OLD_TARGETS["lip_det.backbone.LIPResNet"]
    assert bottom_up.stem._target_ == OLD_TARGETS["lip_det.blocks.LIPStem"]
    assert bottom_up.stages[0][0]._target_ == OLD_TARGETS["lip_det.blocks.LIPBottleneckBlock"]
    assert bottom_up.stages[0][1]._target_.startswith("detectron2.")  # untouched
    for old, new in OLD_TARGETS.items():
        assert f"_target_ {old} is now {new}" in caplog.text
    model = instantiate(bottom_up)
    assert type(model).__name__ == "LIPResNet" and model.output_shape()["res2"].stride == 8


def test_saved_lazy_config_with_a_vanished_old_name_fails_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  _target_: lip_det.backbone.NoSuchThing\n")
    with pytest.raises(SetupError, match="lip_det.backbone.NoSuchThing.*old layout") as error:
        load_lazy_config(str(path))
    assert "\n" not in str(error.value)
    assert os.path.exists(path)
