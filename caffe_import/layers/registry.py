"""One converter per Caffe layer type, in a registry that is loud about gaps and duplicates.

A converter takes a `graph.Layer` (with `in_shapes` filled) and returns an `nn.Module` whose forward takes the
bottoms in Caffe order and returns one tensor or a tuple (one per top). Caffe "Python" layers dispatch through a
second registry keyed by `module.layer`, since their behaviour is user code, not weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer

Converter = Callable[[Layer], nn.Module]

_CONVERTERS: dict[str, Converter] = {}
_PYTHON_LAYERS: dict[str, Converter] = {}


def register(*types: str) -> Callable[[Converter], Converter]:
    """Register a converter for one or more Caffe type strings; registering a type twice is an error."""

    def wrap(fn: Converter) -> Converter:
        for type_name in types:
            if type_name in _CONVERTERS:
                raise RuntimeError(f"a converter for Caffe layer type '{type_name}' is already registered")
            _CONVERTERS[type_name] = fn
        return fn

    return wrap


def register_python(key: str) -> Callable[[Converter], Converter]:
    """Register a re-implementation of a Caffe Python layer, keyed `module.layer`.

    Example key: `rpn.proposal_layer.ProposalLayer` (py-faster-rcnn's test-time proposal layer).
    """

    def wrap(fn: Converter) -> Converter:
        if key in _PYTHON_LAYERS:
            raise RuntimeError(f"a Python layer '{key}' is already registered")
        _PYTHON_LAYERS[key] = fn
        return fn

    return wrap


def supported_types() -> list[str]:
    return sorted(_CONVERTERS)


def python_layers() -> list[str]:
    return sorted(_PYTHON_LAYERS)


def get_converter(layer: Layer) -> Converter:
    """The converter for `layer`, or an error naming the layer and listing what is supported."""
    if layer.type == "Python":
        p = layer.param.python_param
        key = f"{p.module}.{p.layer}"
        if key not in _PYTHON_LAYERS:
            known = ", ".join(python_layers()) or "none"
            raise CaffeImportError(
                f"{layer.where()}: Python layer module '{p.module}', layer '{p.layer}' is user code that is not "
                f"registered; register a re-implementation with caffe_import.register_python('{key}'). "
                f"Registered Python layers: {known}."
            )
        return _PYTHON_LAYERS[key]
    if layer.type not in _CONVERTERS:
        raise CaffeImportError(
            f"{layer.where()}: layer type '{layer.type}' is not supported in the inference path. "
            f"Supported types: {', '.join(supported_types())}. Drop the layer from the deploy prototxt, prune it with "
            "outputs=[...], or register a converter with caffe_import.layers.registry.register."
        )
    return _CONVERTERS[layer.type]
