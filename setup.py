#!/usr/bin/env python
from setuptools import find_packages, setup

setup(
    name="lip_det",
    version="0.1.0",
    description="LIP (Local Importance-based Pooling) backbones for Detectron2",
    url="https://github.com/lip-det/lip_det",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    python_requires=">=3.9",
    # detectron2 is deliberately not listed: upstream installs as "detectron2" from source and the
    # package index only carries the v0.6 code under another name ("pb1-detectron2"), so pip could
    # not resolve it either way. `import lip_det` checks for it and prints the install command.
    install_requires=["torch", "torchvision", "fvcore", "pycocotools"],
    extras_require={"dev": ["pytest", "ruff"]},
)
