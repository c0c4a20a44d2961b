#!/usr/bin/env python
"""Install detectron2 into the Python that runs this script (standard library only).

    python tools/install_detectron2.py               # v0.6 release code from the package index
    python tools/install_detectron2.py --source SRC  # upstream source: git URL or local clone
    DETECTRON2_SOURCE=SRC python tools/install_detectron2.py

With a source, it runs ``pip install --no-build-isolation SRC``, which builds detectron2 with its
C++ extension (``_C``), as detectron2's own install instructions do; e.g.
``--source git+https://github.com/facebookresearch/detectron2.git`` or ``--source ~/detectron2``.

Without one, it installs ``pb1-detectron2==0.6`` from the package index: that sdist is detectron2's
v0.6 release code, but it omits the C++ sources of ``_C``, so the script downloads it into a
temporary directory, patches its setup.py to build no extension (and not to install detectron2's
``tools/`` as a top-level ``tools`` package, which would shadow this repository's ``tools/``), and
installs it as a pure-Python package. ``lip_det.compat`` then provides what the missing extension
and the 2021 code need on a current stack.

Idempotent: if detectron2 is already importable and no source is given, it does nothing (pass
``--force`` to reinstall). torch must be installed first (detectron2's setup.py imports it).
"""

import argparse
import glob
import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile

INDEX_REQUIREMENT = "pb1-detectron2==0.6"
# (what, pattern, replacement, required) patches of the sdist's setup.py
SETUP_PATCHES = (
    ("build no C++ extension", "ext_modules=get_extensions(),", "ext_modules=[],", True),
    (
        "do not install tools/ as a top-level package",
        'find_packages(exclude=("configs", "tests*"))',
        'find_packages(exclude=("configs", "tests*", "tools", "tools.*"))',
        False,
    ),
)


class InstallError(RuntimeError):
    pass


def run(cmd, **kwargs):
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def pip(*args, **kwargs):
    run([sys.executable, "-m", "pip", *args], **kwargs)


def detectron2_location():
    """ "VERSION @ DIR (_C compiled|no _C)" of the detectron2 this Python imports, or None.

    Asked in a fresh interpreter, from a neutral directory (a detectron2 clone in the current
    directory would otherwise shadow the installed package).
    """
    code = (
        "import importlib.util, os, detectron2; "
        "c = importlib.util.find_spec('detectron2._C') is not None; "
        "print(detectron2.__version__, '@', os.path.dirname(detectron2.__file__), "
        "'(_C compiled)' if c else '(no _C)')"
    )
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False
        )
    return result.stdout.strip() if result.returncode == 0 else None


def installed_distributions():
    """Names of the installed distributions that provide the ``detectron2`` package."""
    return sorted(set(importlib.metadata.packages_distributions().get("detectron2", [])))


def patch_setup_py(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for what, pattern, replacement, required in SETUP_PATCHES:
        if pattern in text:
            text = text.replace(pattern, replacement)
            print(f"patched {path}: {what} ({pattern!r} -> {replacement!r})")
        elif required:
            raise InstallError(
                f"cannot {what}: {path} does not contain {pattern!r}. The sdist of "
                f"{INDEX_REQUIREMENT} is not the one this script knows; install detectron2 from "
                "source instead (--source / DETECTRON2_SOURCE)."
            )
        else:
            print(f"note: {path} has no {pattern!r}; skipped: {what}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def prepare_index_source(workdir):
    """Download the package-index sdist into ``workdir``, extract and patch it; return its dir."""
    download_dir = os.path.join(workdir, "download")
    # setup.py imports torch, hence no build isolation even for reading the metadata
    pip(
        "download",
        "--no-deps",
        "--no-build-isolation",
        "--no-binary",
        ":all:",
        INDEX_REQUIREMENT,
        "-d",
        download_dir,
    )
    archives = glob.glob(os.path.join(download_dir, "*.tar.gz"))
    if len(archives) != 1:
        raise InstallError(f"expected one .tar.gz sdist in {download_dir}, found {archives}")
    print(f"extracting {archives[0]}")
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # Python < 3.11.4
            tar.extractall(workdir)
    sources = [
        d
        for d in glob.glob(os.path.join(workdir, "*"))
        if os.path.isfile(os.path.join(d, "setup.py"))
    ]
    if len(sources) != 1:
        raise InstallError(f"expected one source tree with setup.py in {workdir}, found {sources}")
    patch_setup_py(os.path.join(sources[0], "setup.py"))
    return sources[0]


def resolve_source(source):
    if os.path.exists(os.path.expanduser(source)):
        path = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(path) and not any(
            os.path.isfile(os.path.join(path, name)) for name in ("setup.py", "pyproject.toml")
        ):
            raise InstallError(f"{path} has no setup.py or pyproject.toml: not a detectron2 clone")
        return path
    if "://" in source or source.startswith("git+"):
        return source
    raise InstallError(f"DETECTRON2_SOURCE={source!r} is neither an existing path nor a URL")


def install(source="", force=False):
    if importlib.util.find_spec("torch") is None:
        raise InstallError(
            f"torch is not installed in {sys.executable}; install torch and torchvision first "
            "(detectron2's setup.py imports torch), e.g. `make install` does."
        )
    current = detectron2_location()
    if current and not source and not force:
        print(f"detectron2 {current} is already installed in {sys.executable}: nothing to do")
        print("(pass --force to reinstall from the package index, or --source to install another)")
        return
    target = resolve_source(source) if source else None
    with tempfile.TemporaryDirectory(prefix="install-detectron2-") as workdir:
        if target is None:
            print(f"installing detectron2 from the package index ({INDEX_REQUIREMENT}), no _C")
            target = prepare_index_source(workdir)
        else:
            print(f"installing detectron2 from {target}")
        # Different distribution names (pb1-detectron2, detectron2) own the same files: remove
        # the old one first so that the two do not end up mixed in site-packages.
        old = installed_distributions()
        if old:
            pip("uninstall", "--yes", *old)
        pip("install", "--no-build-isolation", target)
    current = detectron2_location()
    if current is None:
        raise InstallError(f"pip succeeded but {sys.executable} cannot import detectron2")
    print(f"installed: detectron2 {current} in {sys.executable}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (tools/install_detectron2.py) for details.",
    )
    parser.add_argument(
        "--source",
        default=os.environ.get("DETECTRON2_SOURCE", ""),
        help="git URL or local clone of upstream detectron2 (default: $DETECTRON2_SOURCE; empty: "
        f"the package index's {INDEX_REQUIREMENT})",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    parser.add_argument(
        "--prepare",
        metavar="DIR",
        help="only download, extract and patch the package-index sdist into DIR; print its path",
    )
    args = parser.parse_args(argv)
    try:
        if args.prepare:
            os.makedirs(args.prepare, exist_ok=True)
            print(prepare_index_source(os.path.abspath(args.prepare)))
        else:
            install(args.source.strip(), args.force)
    except (InstallError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
