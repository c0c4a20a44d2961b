"""pil_image_linear: ``PIL.Image.LINEAR`` while detectron2's transform module is imported.

Problem: Pillow 10 removed ``Image.LINEAR`` (an alias of ``BILINEAR``), and v0.6's
``data/transforms/transform.py:46`` has it as a default argument of ``ExtentTransform.__init__``,
evaluated at import: ``import detectron2.data`` (and so ``detectron2.modeling``) fails with
AttributeError.

Probe: ``hasattr(PIL.Image, "LINEAR")`` (direct), then whether detectron2 uses the name, read from
the source of :data:`KNOWN_USERS`. That part has to read source: the name sits in a function
signature that only executing the module (the very import that fails) would evaluate, and without
it the fix would be reported active on every detectron2 with Pillow >= 10, HEAD included.

Change: while that module executes (and only then), ``Image.LINEAR = Image.BILINEAR``; the alias
is removed again afterwards, so nothing else sees it.

Upstream: ff53992b ("fix PIL.LINEAR warning", 2023-07-06); HEAD's
``data/transforms/transform.py:46`` says ``interp=Image.BILINEAR``.
"""

import contextlib

from . import _hooks
from ._base import Finding, uses

__all__ = ["KNOWN_USERS", "USE"]

NAME = "pil_image_linear"
UPSTREAM = "fixed in ff53992b (2023-07): HEAD data/transforms/transform.py:46 uses Image.BILINEAR"

# Every detectron2 file that used Image.LINEAR in some commit from v0.6 to HEAD 02b5c4e
# (`git log -G'Image\.LINEAR' v0.6..HEAD -- detectron2/`, and a grep of v0.6).
KNOWN_USERS = ("data/transforms/transform.py",)
USE = ("Image.LINEAR", r"\bImage\.LINEAR\b")  # (a substring of every match, the regex)


def probe():
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return Finding(False, "not needed: this Pillow still has Image.LINEAR")
    users = tuple(uses(KNOWN_USERS, *USE))
    if not users:
        return Finding(False, "not needed: detectron2 no longer uses Image.LINEAR (ff53992b)")
    return Finding(True, f"PIL.Image.LINEAR (gone in Pillow 10) used by {', '.join(users)}", users)


def apply(finding):
    for name in finding.modules:
        _hooks.on_import(name, _linear_alias)


@contextlib.contextmanager
def _linear_alias(module):
    from PIL import Image

    Image.LINEAR = Image.BILINEAR
    try:
        yield
    finally:
        del Image.LINEAR
