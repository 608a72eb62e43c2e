"""Imports every converter family so that the registry is complete once `caffe_import.layers` is imported."""

import importlib
import pkgutil

import caffe_import.layers as _pkg

for _info in pkgutil.iter_modules(_pkg.__path__):
    if not _info.name.startswith("_") and _info.name != "registry":
        importlib.import_module(f"caffe_import.layers.{_info.name}")
