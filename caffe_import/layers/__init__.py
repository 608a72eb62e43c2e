"""Layer converters, one file per family; importing this package registers them all."""

# Importing the family modules fills the registry (each module registers its converters at import time).
from caffe_import.layers import _families  # noqa: E402,F401
from caffe_import.layers.registry import get_converter, register, register_python, supported_types

__all__ = ["get_converter", "register", "register_python", "supported_types"]
