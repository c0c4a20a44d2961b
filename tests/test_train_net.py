"""tools/train_net.py and lip_det.engine: one clear error for each setup mistake, training and
--eval-only on CPU for yacs and LazyConfig configs."""

import glob
import json
import math
import os
import subprocess

import pytest
import torch
from conftest import (
    CONFIGS,
    PYTHON,
    REPO,
    SYNTHETIC_TRAIN,
    SYNTHETIC_VAL,
    TINY_OVERRIDES,
    TRAIN_NET,
)
from detectron2.data import DatasetCatalog, MetadataCatalog

from lip_det.engine import (
    SetupError,
    Trainer,
    argument_parser,
    check_output_dir,
    check_setup,
    load_config,
    parameter_digest,
    run,
)

LIP_R50 = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml")
LIP_R50_LAZY = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py")
DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")
ON_SYNTHETIC = [
    "DATASETS.TRAIN",
    f"('{SYNTHETIC_TRAIN}',)",
    "DATASETS.TEST",
    f"('{SYNTHETIC_VAL}',)",
]


def _args(*argv):
    return argument_parser().parse_args([str(a) for a in argv])


def _setup_error(*argv):
    with pytest.raises(SetupError) as info:
        check_setup(_args(*argv))
    return str(info.value)


def _train_net(*argv, env=None):
    return subprocess.run(
        [PYTHON, str(TRAIN_NET), *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


# ---- one clear error per setup mistake ---------------------------------------------------------


def test_config_key_typo_is_one_line_from_the_command_line():
    """The user sees yacs's KeyError message, once, and no traceback."""
    result = _train_net("--config-file", LIP_R50, "MODEL.RESNETS.DEPHT", "101")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: command-line overrides: Non-existent key: MODEL.RESNETS.DEPHT"
    )


def test_config_key_typo_in_a_yaml_names_the_file(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f'_BASE_: "{LIP_R50}"\nMODEL:\n  RPN:\n    POST_NMS_TOPK_TRAN: 500\n')
    assert _setup_error("--config-file", config) == (
        f"{config}: Non-existent config key: MODEL.RPN.POST_NMS_TOPK_TRAN"
    )


def test_bad_override_values_are_setup_errors():
    message = _setup_error("--config-file", LIP_R50, "SOLVER.MAX_ITER", "[1, 2]")
    assert message.startswith("command-line overrides: Type mismatch")
    assert "SOLVER.MAX_ITER" in message
    assert _setup_error("--config-file", LIP_R50, "SOLVER.MAX_ITER").startswith(
        "command-line overrides: Override list has odd length"
    )
    assert _setup_error("--config-file", "configs/nope.yaml") == (
        "config file not found: configs/nope.yaml"
    )


def test_missing_local_weights_name_the_file_and_the_readme(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no weights/ here
    message = _setup_error("--config-file", LIP_R50, "MODEL.DEVICE", "cpu")
    assert message == (
        "MODEL.WEIGHTS = 'weights/LIP-R-50.pkl' does not exist (looked for "
        f"{tmp_path / 'weights/LIP-R-50.pkl'}). Convert the ImageNet weights as described in "
        'README.md, section "Pretrained weights", or set MODEL.WEIGHTS to "" to train from '
        "scratch."
    )


def test_empty_or_remote_weights_pass_the_weights_check(synthetic_coco):
    for weights in ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"):
        cfg = check_setup(
            _args("--config-file", LIP_R50, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights,
                  *ON_SYNTHETIC)
        )  # fmt: skip
        assert cfg.MODEL.WEIGHTS == weights


def test_eval_only_needs_weights(synthetic_coco):
    message = _setup_error(
        "--config-file", LIP_R50, "--eval-only", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        *ON_SYNTHETIC,
    )  # fmt: skip
    assert message == "--eval-only needs trained weights: set MODEL.WEIGHTS to a model file"


def test_missing_builtin_coco_names_the_path_and_the_env_var(tmp_path):
    """detectron2 resolves coco_2017_* under $DETECTRON2_DATASETS when it is imported."""
    result = _train_net(
        "--config-file", LIP_R50, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        env={"DETECTRON2_DATASETS": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("error: ") :]
    json_file = tmp_path / "coco/annotations/instances_train2017.json"
    assert error.startswith(
        f"error: dataset 'coco_2017_train': annotation file not found: {json_file}\n"
    )
    assert f"$DETECTRON2_DATASETS, which is '{tmp_path}'" in error


def test_unregistered_dataset_points_to_the_dataset_flag():
    message = _setup_error(
        "--config-file", DEMO, "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "()"
    )
    assert message.startswith("dataset 'my_train' is not registered. Register a COCO-format")
    assert "--dataset my_train JSON_FILE IMAGE_ROOT" in message


def test_dataset_flag_registers_coco_json_datasets(synthetic_coco):
    (train_json, train_images, _), (val_json, val_images, _) = synthetic_coco.values()
    args = _args(
        "--config-file", DEMO,
        "--dataset", "lip_test_flag_train", train_json, train_images,
        "--dataset", "lip_test_flag_val", val_json, val_images,
        "DATASETS.TRAIN", "('lip_test_flag_train',)", "DATASETS.TEST", "('lip_test_flag_val',)",
    )  # fmt: skip
    assert args.dataset == [
        ["lip_test_flag_train", str(train_json), str(train_images)],
        ["lip_test_flag_val", str(val_json), str(val_images)],
    ]
    cfg = check_setup(args)
    assert cfg.DATASETS.TRAIN == ("lip_test_flag_train",)
    assert len(DatasetCatalog.get("lip_test_flag_train")) == 4
    assert len(DatasetCatalog.get("lip_test_flag_val")) == 2
    assert MetadataCatalog.get("lip_test_flag_val").json_file == os.path.abspath(val_json)
    check_setup(args)  # again (what each worker does): same files, no "already registered"

    args.dataset[0][2] = os.path.dirname(train_images)
    assert _setup_error_of(args).startswith("dataset 'lip_test_flag_train' is already registered")


def _setup_error_of(args):
    with pytest.raises(SetupError) as info:
        check_setup(args)
    return str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_says_how_to_use_the_cpu(synthetic_coco):
    message = _setup_error("--config-file", DEMO, "MODEL.DEVICE", "cuda", *ON_SYNTHETIC)
    assert message.startswith("the config asks for device 'cuda' but no CUDA device is available")
    assert "MODEL.DEVICE cpu" in message


def test_output_dir_holding_a_run_is_refused_unless_resume_or_overwrite(synthetic_coco, tmp_path):
    common = ["--config-file", DEMO, *TINY_OVERRIDES, *ON_SYNTHETIC, "OUTPUT_DIR", tmp_path]
    (tmp_path / "log.txt").write_text("")  # a run that died before writing anything is no run
    check_setup(_args(*common))
    for marker in ("metrics.json", "last_checkpoint", "model_final.pth"):
        (tmp_path / marker).write_text("")
        assert _setup_error(*common) == (
            f"OUTPUT_DIR = '{tmp_path}' already holds a training run ({marker}); pass --resume "
            "to continue it, --overwrite to delete it and start over, or set OUTPUT_DIR to a new "
            "directory"
        )
        (tmp_path / marker).unlink()
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    (tmp_path / "model_final.pth").write_text("")
    for flag in ("--resume", "--overwrite"):
        check_setup(_args(flag, *common))
    check_output_dir("OUTPUT_DIR", str(tmp_path), eval_only=True)  # writes inference/ only
    assert _setup_error("--resume", "--overwrite", *common) == (
        "--resume continues the run in OUTPUT_DIR, --overwrite deletes it: pass one or neither"
    )
    message = _setup_error("--config-file", LIP_R50_LAZY, "train.device=cpu",
                           "train.init_checkpoint=", f"train.output_dir={tmp_path}")  # fmt: skip
    assert message.startswith(f"train.output_dir = '{tmp_path}' already holds a training run (")


def test_overwrite_deletes_the_previous_run_and_nothing_else(synthetic_coco, tmp_path):
    previous = ["last_checkpoint", "model_0000004.pth", "model_final.pth", "model_0000009.pth.tmp",
                "metrics.json", "events.out.tfevents.1.vm.1.0", "log.txt", "log.txt.rank1",
                "inference/coco_instances_results.json", "report/val/report.md"]  # fmt: skip
    for name in [*previous, "notes.txt", "data/train.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("previous")
    run(_args("--overwrite", "--config-file", DEMO, *TINY_OVERRIDES, *ON_SYNTHETIC,
              "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", tmp_path))  # fmt: skip
    assert (tmp_path / "notes.txt").read_text() == "previous"
    assert (tmp_path / "data/train.json").read_text() == "previous"
    assert sorted(f for f in os.listdir(tmp_path) if not f.startswith("events.out.")) == [
        "config.yaml", "data", "last_checkpoint", "log.txt", "metrics.json", "model_final.pth",
        "notes.txt",
    ]  # fmt: skip
    assert len(glob.glob(str(tmp_path / "events.out.*"))) == 1
    assert not (tmp_path / "log.txt").read_text().startswith("previous")
    assert [m["iteration"] for m in _metrics(tmp_path)] == [0]  # the new run's only


def test_two_cpu_processes_train_over_gloo_and_end_with_identical_weights(synthetic_coco, tmp_path):
    """--num-gpus 2 with MODEL.DEVICE cpu: two processes (lip_det.launch, gloo) train 3
    iterations with DistributedDataParallel and evaluate; both log the SHA-256 of their final
    parameters, and it is that of rank 0's model_final.pth."""
    (train_json, train_images, _), (val_json, val_images, _) = synthetic_coco.values()
    config = [*TINY_OVERRIDES, *ON_SYNTHETIC, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", tmp_path]
    result = _train_net(
        "--config-file", DEMO, "--num-gpus", "2", "--dist-url", "auto",
        "--dataset", SYNTHETIC_TRAIN, train_json, train_images,
        "--dataset", SYNTHETIC_VAL, val_json, val_images, *config,
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    digests = []
    for log in ("log.txt", "log.txt.rank1"):
        text = (tmp_path / log).read_text()
        assert "Parameters identical in all 2 processes: sha256 " in text, log
        digests.append(text.split("Parameters identical in all 2 processes: sha256 ")[1][:64])
    assert digests[0] == digests[1]
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 2
    model = Trainer.build_model(load_config(DEMO, [str(a) for a in config]))
    names = [name for name, _ in model.named_parameters()]
    assert parameter_digest((name, final["model"][name]) for name in names) == digests[0]
    assert "AP" in (tmp_path / "log.txt").read_text()  # evaluated by both processes


def test_lazy_config_override_typo_is_a_setup_error():
    message = _setup_error("--config-file", LIP_R50_LAZY, "train.max_itr=10")
    assert message == "command-line overrides: Non-existent key: train.max_itr"
    message = _setup_error("--config-file", LIP_R50_LAZY, "trian.max_iter=10")
    assert message == "command-line overrides: Non-existent key: trian"


def test_class_count_mismatch_is_caught_when_the_data_is_loaded(synthetic_coco, tmp_path):
    args = _args(
        "--config-file", DEMO, *TINY_OVERRIDES, "MODEL.ROI_HEADS.NUM_CLASSES", "5",
        *ON_SYNTHETIC, "OUTPUT_DIR", tmp_path,
    )  # fmt: skip
    with pytest.raises(SetupError) as info:
        run(args)
    assert str(info.value) == (
        f"dataset '{SYNTHETIC_TRAIN}' has 3 classes but MODEL.ROI_HEADS.NUM_CLASSES is 5; "
        "add `MODEL.ROI_HEADS.NUM_CLASSES 3` to the command line or the config"
    )


# ---- training and evaluation -------------------------------------------------------------------


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def test_train_on_cpu_then_eval_only_reproduces_the_final_evaluation(synthetic_coco, tmp_path):
    """Two iterations of the LIP-ResNet-18 demo model through run() (what train_net calls):
    checkpoint, logs and COCO results written; --eval-only on model_final.pth loads it and
    gives the same AP as the evaluation at the end of training."""
    out = tmp_path / "train"
    common = ["--config-file", DEMO, *TINY_OVERRIDES, *ON_SYNTHETIC, "OUTPUT_DIR", out]
    results = run(_args(*common, "SOLVER.MAX_ITER", "2"))

    assert set(results) == {"bbox"}
    for key in ("AP", "AP50", "AP75", "APs", "AP[8,16)"):
        assert key in results["bbox"]
    assert 0 <= results["bbox"]["AP50"] <= 100
    for name in ("config.yaml", "log.txt", "model_final.pth", "last_checkpoint"):
        assert (out / name).is_file(), name
    losses = [m for m in _metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [1]  # written at the last iteration
    assert math.isfinite(losses[0]["total_loss"]) and losses[0]["total_loss"] > 0
    with open(out / "inference/coco_instances_results.json") as f:
        detections = json.load(f)
    image_ids = {d["image_id"] for d in detections}
    assert image_ids <= {1, 2} and {d["category_id"] for d in detections} <= {1, 2, 3}
    trained = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert trained["iteration"] == 1

    evaluated = run(
        _args("--eval-only", *common, "MODEL.WEIGHTS", out / "model_final.pth",
              "OUTPUT_DIR", tmp_path / "eval")
    )  # fmt: skip
    assert evaluated["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"], nan_ok=True)
    assert evaluated["bbox"]["AP50"] == pytest.approx(results["bbox"]["AP50"], nan_ok=True)
    # --eval-only also writes the small-object report, from the same evaluation
    report = tmp_path / "eval/report" / SYNTHETIC_VAL
    assert (report / "report.md").is_file()
    with open(report / "metrics.json") as f:
        reported = json.load(f)["model_final"]
    for key in ("AP", "AP50", "AP[8,16)"):
        assert (reported[key] if reported[key] is not None else math.nan) == pytest.approx(
            evaluated["bbox"][key], nan_ok=True
        ), key


def test_lazy_config_trains_through_train_net(synthetic_coco, tmp_path):
    """The LazyConfig takes the same path (chosen by the .py extension): one iteration, a
    checkpoint, an evaluation with lip_det's evaluator."""
    results = run(
        _args(
            "--config-file", LIP_R50_LAZY,
            "train.device=cpu", "train.init_checkpoint=", f"train.output_dir={tmp_path}",
            "train.max_iter=1", "train.eval_period=0",
            f"dataloader.train.dataset.names={SYNTHETIC_TRAIN}",
            f"dataloader.test.dataset.names={SYNTHETIC_VAL}",
            "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
            "dataloader.train.mapper.augmentations.0.max_size=96",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=96",
            "model.roi_heads.num_classes=3",
            "model.proposal_generator.batch_size_per_image=32",
            "model.roi_heads.batch_size_per_image=16",
        )
    )  # fmt: skip
    assert "AP" in results["bbox"] and "AP[8,16)" in results["bbox"]
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "inference/coco_instances_results.json").is_file()
    assert "train.max_iter" not in (tmp_path / "config.yaml").read_text()  # nested, not dotted
    assert "max_iter: 1" in (tmp_path / "config.yaml").read_text()
