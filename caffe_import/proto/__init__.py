"""Caffe's protobuf schema (``caffe.proto``: BVLC master plus Fast R-CNN fork fields) and its generated module.

``caffe_pb2`` is imported lazily so that ``python -m caffe_import.proto.regen`` still runs when the generated
module is missing or stale.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["caffe_pb2"]


def __getattr__(name: str) -> ModuleType:
    if name == "caffe_pb2":
        return importlib.import_module("caffe_import.proto.caffe_pb2")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
