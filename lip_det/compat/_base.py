"""What every fix module of :mod:`lip_det.compat` shares: the records and the probe helpers.

A fix module has ``NAME``, ``UPSTREAM`` (one line: where upstream HEAD stands), ``probe()``, which
returns a :class:`Finding` without changing anything, and ``apply(finding)``, which
:func:`lip_det.compat.apply` calls only when the finding is active.

Probes prefer a direct test (a module that is missing, an attribute, a call that raises). Some
problems show only in the body of a detectron2 function, which no attribute or signature reveals
without importing (and so executing) the module a fix has to prepare; those probes read the source
of the few files known to hold the problem (:func:`uses`), never the whole package.

Standard library only, and nothing from lip_det: the tests load this package by file path next to
a fake detectron2.
"""

import functools
import importlib.util
import os
import re
from dataclasses import dataclass

__all__ = [
    "Finding",
    "Fix",
    "class_defines",
    "detectron2_files",
    "find_spec",
    "module_name",
    "read_source",
    "uses",
]


@dataclass(frozen=True)
class Fix:
    """What :func:`lip_det.compat.apply` found and did for one fix."""

    name: str
    active: bool
    problem: str  # one line: what was detected, or why the fix is not needed here
    modules: tuple[str, ...] = ()  # detectron2 modules the fix acts on
    upstream: str = ""  # one line: upstream HEAD's code for it (file:line, commit)


@dataclass(frozen=True)
class Finding:
    """A probe's answer: ``active`` when the problem exists here and the fix can act on it."""

    active: bool
    problem: str
    modules: tuple[str, ...] = ()


def find_spec(name):
    """importlib.util.find_spec, with None for "cannot tell" as well as for "not there"."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _detectron2_root():
    spec = find_spec("detectron2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return locations[0] if locations else None


def module_name(path):
    """``"data/build.py"`` -> ``"detectron2.data.build"`` (a path relative to the package)."""
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["detectron2", *parts])


@functools.cache
def read_source(path):
    """The text of ``detectron2/<path>`` (``/``-separated), or None if that file does not exist.
    Read without importing anything below ``detectron2``: that import may be what a fix prepares.
    """
    root = _detectron2_root()
    if root is None:
        return None
    try:
        with open(os.path.join(root, *path.split("/")), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _code_lines(source, needle):
    # The lines that hold ``needle`` outside a comment (a name in a comment is no use of it).
    # The regex then runs over those alone, ~10x faster than over the whole file.
    lines = (line.split("#", 1)[0] for line in source.splitlines() if needle in line)
    return "\n".join(code for code in lines if needle in code)


def uses(paths, needle, pattern):
    """{module name: matches} for the files among ``paths`` (relative to the detectron2 package)
    whose code, comments aside, matches the regex ``pattern`` (its groups, if any, are what is
    reported); ``needle`` is a substring of every match, which lies within one line."""
    found = {}
    pattern = re.compile(pattern, re.M)
    for path in paths:
        source = read_source(path)
        if source is None or needle not in source:
            continue
        matches = pattern.findall(_code_lines(source, needle))
        if matches:
            found[module_name(path)] = matches
    return found


def detectron2_files():
    """Every ``.py`` file of the installed detectron2 package, relative to it, ``/``-separated.
    Not used by the probes (they read known files only): the tests check with it that those lists
    of known files miss no user of a removed name."""
    root = _detectron2_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root) if root else ():
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "configs"))
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                relative = os.path.relpath(os.path.join(dirpath, filename), root)
                found.append(relative.replace(os.sep, "/"))
    return found


def class_defines(source, class_name, method_name):
    """Whether the module ``source`` defines ``class_name`` with a method ``method_name`` in its
    own body (an ast walk of the top level: nothing is executed)."""
    import ast  # (only the probes that need it pay for it)

    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return any(
                isinstance(item, ast.FunctionDef) and item.name == method_name for item in node.body
            )
    return False
