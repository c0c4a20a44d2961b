"""Print the software environment lip_det runs in: ``python -m lip_det.collect_env``.

Paste its output into bug reports. Besides versions it says where detectron2 was loaded from,
whether its C++ extension ``_C`` is compiled, and which of lip_det's detectron2 compatibility fixes
(:mod:`lip_det.compat`) are active, each with the problem it works around, or why it is not
needed here.
"""

import importlib
import importlib.metadata
import os
import platform
import sys

from lip_det import compat

__all__ = ["collect_env_info", "main"]


def _distribution_version(*names):
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _module_row(label, module_name, *distributions, missing="not installed"):
    """(label, "version @ location"); for a missing module (label, missing), or None if that is
    None (optional modules that need no mention)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None if missing is None else (label, missing)
    except Exception as e:  # report, don't crash: this is what bug reports are made of
        return label, f"installed but fails to import: {type(e).__name__}: {e}"
    version = getattr(module, "__version__", None) or _distribution_version(*distributions)
    location = os.path.dirname(getattr(module, "__file__", None) or "") or "?"
    return label, f"{version or 'unknown version'} @ {location}"


def _detectron2_rows():
    import detectron2

    dists = importlib.metadata.packages_distributions().get("detectron2", [])
    dist = ", ".join(f"{d} {_distribution_version(d)}" for d in sorted(set(dists)))
    rows = [
        (
            "detectron2",
            f"{detectron2.__version__} @ {os.path.dirname(detectron2.__file__)}"
            + (f" (distribution: {dist})" if dist else ""),
        )
    ]
    c_module = sys.modules.get("detectron2._C")
    if compat.has_c_extension():
        c_status = f"compiled @ {getattr(c_module, '__file__', None) or '?'}"
    elif compat.c_extension.stand_in_installed():
        c_status = "missing (package-index build without C++ extension; lip_det's stand-in)"
    elif compat.find_spec("detectron2._C") is not None:
        try:
            importlib.import_module("detectron2._C")
            c_status = "present"
        except ImportError as e:
            c_status = f"present but fails to import: {e}"
    else:
        c_status = "missing"
    rows.append(("detectron2._C", c_status))
    return rows


def _torch_rows():
    try:
        import torch
    except ImportError as e:
        return [("torch", f"not importable ({e})")]
    rows = [("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}")]
    cuda = torch.cuda.is_available()
    rows.append(
        (
            "CUDA available",
            f"{cuda} (torch built with CUDA {torch.version.cuda})"
            if torch.version.cuda
            else f"{cuda} (CPU-only torch build)",
        )
    )
    if cuda:
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        rows.append(("GPUs", f"{torch.cuda.device_count()} x {', '.join(names)}"))
    rows.append(_module_row("torchvision", "torchvision"))
    return rows


def _self_test_rows(device):
    """Each lip2d implementation on ``device``, forward and backward, against the float64
    reference (lip_det.layers.self_test): a GPU kernel that fails shows up here, not in a run."""
    from lip_det.layers import self_test

    return [(f"lip2d self-test {impl} ({device})", status) for impl, status in self_test(device)]


def _lip2d_rows():
    """lip_det's own compiled kernels (lip_det._C, optional) and the lip2d implementations."""
    spec = compat.find_spec("lip_det._C")
    rows = [("lip_det._C", f"compiled @ {spec.origin}" if spec else "not built")]
    try:
        from lip_det.layers import available_implementations as available

        rows.append(("lip2d on CPU", ", ".join(available("cpu")) + " (best first)"))
        import torch

        if torch.cuda.is_available():
            rows.append(("lip2d on CUDA", ", ".join(available("cuda")) + " (best first)"))
            rows += _self_test_rows("cuda")
    except Exception as e:  # report, don't crash
        rows.append(("lip2d", f"fails: {type(e).__name__}: {e}"))
    return rows


def collect_env_info():
    """The environment report as a string (two columns, then the compatibility fixes)."""
    import lip_det

    rows = [
        ("sys.platform", f"{sys.platform} ({platform.machine()})"),
        ("Python", f"{sys.version.split()[0]} @ {sys.executable}"),
        *_torch_rows(),
        *_detectron2_rows(),
        _module_row("fvcore", "fvcore", "fvcore"),
        _module_row("iopath", "iopath", "iopath"),
        _module_row("pycocotools", "pycocotools", "pycocotools"),
        _module_row("faster-coco-eval", "faster_coco_eval", "faster-coco-eval", missing=None),
        _module_row("numpy", "numpy"),
        _module_row("Pillow", "PIL", "pillow"),
        _module_row(
            "opencv (cv2)",
            "cv2",
            "opencv-python",
            "opencv-python-headless",
            missing="not installed (optional; detectron2.utils.visualizer needs it)",
        ),
        ("lip_det", f"{lip_det.__version__} @ {os.path.dirname(lip_det.__file__)}"),
        *_lip2d_rows(),
    ]
    rows = [row for row in rows if row is not None]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]

    fixes = compat.applied_fixes()
    active = [fix for fix in fixes if fix.active]
    lines += ["", f"detectron2 compatibility fixes (lip_det.compat): {len(active)} active"]
    width = max((len(fix.name) for fix in fixes), default=0)
    for fix in fixes:
        state = "active  " if fix.active else "inactive"
        lines.append(f"  {state}  {fix.name:<{width}}  {fix.problem}")
    return "\n".join(lines)


def main():
    print(collect_env_info())


if __name__ == "__main__":
    main()
