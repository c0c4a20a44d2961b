#!/usr/bin/env python
import os
import sys

from setuptools import find_packages, setup


def cpu_extension():
    """lip_det._C, the fused CPU lip2d kernels. Built like detectron2's _C, so torch must be
    importable at build time: install with `pip install --no-build-isolation -e .` (what the
    Makefile does). Without torch, or with LIP_NO_EXTENSION=1, lip_det installs without it and
    lip2d falls back to its ATen implementation (`python -m lip_det.collect_env` tells)."""
    if os.environ.get("LIP_NO_EXTENSION") == "1":
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print(
            "lip_det: torch is not importable at build time (pip build isolation?): building "
            "without the fused CPU kernels. Use `pip install --no-build-isolation`.",
            file=sys.stderr,
        )
        return {}

    class BuildExtensionOrFallBack(BuildExtension):
        # A failed compile (no compiler, unusual platform) must not fail the install: lip2d then
        # runs its ATen implementation. The tests of the project's own environment require the
        # extension, so CI still notices.
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # compiler errors come as several exception types
                print(f"lip_det: building {ext.name} failed ({e}); lip2d falls back to ATen")
                self.failed = [*getattr(self, "failed", []), ext.name]

        def copy_extensions_to_source(self):
            # editable and --inplace installs copy every extension: skip the one that failed
            failed = getattr(self, "failed", [])
            self.extensions = [ext for ext in self.extensions if ext.name not in failed]
            super().copy_extensions_to_source()

    # at::parallel_for is inlined from ATen's headers: without -fopenmp it runs on one thread
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else ["-fopenmp-simd"]
    ext = CppExtension(
        "lip_det._C",
        ["lip_det/layers/csrc/lip2d_cpu.cpp"],
        extra_compile_args=["-O3", *openmp],
        extra_link_args=openmp if openmp == ["-fopenmp"] else [],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtensionOrFallBack}}


setup(
    name="lip_det",
    version="0.1.0",
    description="LIP (Local Importance-based Pooling) backbones for Detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    python_requires=">=3.9",
    # detectron2 is deliberately not listed: upstream installs as "detectron2" from source and the
    # package index only carries the v0.6 code under another name ("pb1-detectron2"), so pip could
    # not resolve it either way. `import lip_det` checks for it and prints the install command.
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "pycocotools",
        # the "fast" small-object evaluation engine: a maintained C++ COCOeval with custom
        # area ranges, ~6x faster than pycocotools on our 7-bucket benchmark
        "faster-coco-eval>=1.6",
        "matplotlib",
        "tabulate",
        "tqdm",
    ],
    extras_require={
        # the tests cover every extra's feature
        "dev": ["pytest", "ruff", "submitit>=1.5", "onnx", "onnxscript", "onnxruntime"],
        # tools/train_net.py --slurm: submission, requeue on preemption (submitit's checkpoint())
        "slurm": ["submitit>=1.5"],
        # tools/export_model.py: ONNX export (onnxscript: torch's dynamo exporter) and the
        # onnxruntime check of the exported graph
        "export": ["onnx", "onnxscript", "onnxruntime"],
    },
    **cpu_extension(),
)
