"""Bundled Caffe network and solver definitions (package data), one folder per net, variants as files.

The layout follows rbgirshick/fast-rcnn's `models/<Net>/{train,test,solver}.prototxt`. Each file opens with a
`#` comment block naming the net, the paper or original file its architecture facts come from, and the input
preprocessing it expects (channel order, value range, mean). Files are addressed by their path relative to this
package, e.g. ``path("alexnet/deploy_conv1s4.prototxt")``.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["available", "path"]

_SUFFIXES = (".prototxt",)

# Only needed when the package is imported from a zip: extracted copies live until the interpreter exits.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def _walk(node: Traversable, prefix: str) -> list[str]:
    names: list[str] = []
    for child in node.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if not child.name.startswith(("_", ".")):
                names.extend(_walk(child, rel + "/"))
        elif child.name.endswith(_SUFFIXES):
            names.append(rel)
    return names


def available() -> list[str]:
    """Names of all bundled prototxt files, sorted, as accepted by `path`."""
    return sorted(_walk(resources.files(__name__), ""))


def path(name: str) -> Path:
    """Filesystem path of the bundled file `name` (e.g. "fast_rcnn/CaffeNet/test.prototxt").

    Raises FileNotFoundError listing the available names, so a typo shows what exists instead.
    """
    names = available()
    key = name.replace("\\", "/").strip("/")
    if key not in names:
        listing = "\n  ".join(names)
        raise FileNotFoundError(f"no bundled prototxt named {name!r}; available:\n  {listing}")
    resource = resources.files(__name__).joinpath(*key.split("/"))
    if isinstance(resource, Path):
        return resource
    return _extracted.enter_context(resources.as_file(resource))
