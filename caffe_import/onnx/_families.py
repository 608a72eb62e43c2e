"""Imports every emitter family so that the registry is complete once `caffe_import.onnx` is imported."""

import importlib
import pkgutil

import caffe_import.onnx as _pkg

# Modules of the package that are not emitter families.
_NOT_FAMILIES = {"registry", "builder", "model"}

for _info in pkgutil.iter_modules(_pkg.__path__):
    if not _info.name.startswith("_") and _info.name not in _NOT_FAMILIES:
        importlib.import_module(f"caffe_import.onnx.{_info.name}")
