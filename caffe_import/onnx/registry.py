"""One ONNX emitter per Caffe layer type, in a registry that is loud about gaps and duplicates.

An emitter takes the `Builder` of the model being written, a `graph.Layer` (with `in_shapes` filled) and the
`nn.Module` the converter in `caffe_import.layers` made for it, and appends the ONNX nodes computing the layer's
tops from its bottoms. The settings come from the converted module, so the export and the PyTorch net cannot
disagree on how a prototxt field was read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer

if TYPE_CHECKING:
    from caffe_import.onnx.builder import Builder

Emitter = Callable[["Builder", Layer, nn.Module], None]
_EMITTERS: dict[str, Emitter] = {}


def emits(*types: str) -> Callable[[Emitter], Emitter]:
    """Register the ONNX emitter of one or more Caffe layer types; registering a type twice is an error."""

    def wrap(fn: Emitter) -> Emitter:
        for type_name in types:
            if type_name in _EMITTERS:
                raise RuntimeError(f"an ONNX emitter for Caffe layer type '{type_name}' is already registered")
            _EMITTERS[type_name] = fn
        return fn

    return wrap


def onnx_exportable_types() -> list[str]:
    """Caffe layer types with an ONNX emitter, sorted."""
    return sorted(_EMITTERS)


def get_emitter(layer: Layer) -> Emitter:
    """The emitter for `layer`, or an error naming the layer and listing the exportable types."""
    if layer.type not in _EMITTERS:
        raise CaffeImportError(
            f"{layer.where()}: Caffe layer type '{layer.type}' has no ONNX emitter, so the net cannot be exported. "
            f"Exportable types: {', '.join(onnx_exportable_types())}. Prune the layer with outputs=[...] when loading, "
            "or register an emitter with caffe_import.onnx_export.emits."
        )
    return _EMITTERS[layer.type]
