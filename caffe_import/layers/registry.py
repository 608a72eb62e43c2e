"""One converter per Caffe layer type, in a registry that is loud about gaps and duplicates.

A converter takes a `graph.Layer` (with `in_shapes` filled) and returns an `nn.Module` whose forward takes the
bottoms in Caffe order and returns one tensor or a tuple (one per top); built-in converters declare the module's
Caffe blobs in `caffe_blobs`. Caffe "Python" layers dispatch through a second registry keyed by `module.layer`,
since their behaviour is user code, not weights; its contract (any nn.Module, optional extras) is documented on
`register_python`.
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
    """Register a re-implementation of a Caffe Python layer, keyed "module.Layer" as in its prototxt
    `python_param { module: "module" layer: "Layer" }` (e.g. `rpn.proposal_layer.ProposalLayer`).

    The decorated converter takes the `graph.Layer` (its `param.python_param.param_str`, `in_shapes`, `name`) and
    returns ANY `torch.nn.Module` whose `forward(*bottoms)` takes the bottoms in Caffe order and returns one tensor
    or a tuple with one tensor per top. The module is built on the CPU (not the meta device), so tensors it makes in
    `__init__` (anchors, lookup tables) are kept as they are. Nothing else is required; optional extras:

    * `caffe_blobs: tuple[str, ...]` — attribute names of the module's Caffe blobs, in the layer's blob order (what
      pycaffe's `self.blobs` holds). These, and only these, are loaded from the caffemodel by layer name, written
      by `save_caffemodel`, and may be shared with `param { name }`. A module without it gets `caffe_blobs = ()`
      and expects no weights (its own parameters and buffers are left as built). `caffe_fillers` (one
      `FillerParameter` or None per blob) gives the fillers used when no caffemodel provides the blob.
    * `caffe_top_shapes(self, *bottom_shapes) -> tuple[tuple[int, ...], ...]` — shape-inference hook, one shape
      per top, as Caffe's `Layer::Reshape` computes them. Without it the top shapes are found by running the module
      once on meta tensors (shapes only, no arithmetic), or, when that fails (numpy code, CPU constants in the
      arithmetic), once on zero-filled CPU bottoms, as Caffe sets layers up on freshly zeroed blobs. Define it when
      neither gives the right shapes (sizes that depend on the data) or the zero run is too costly.
    * ONNX: `caffe_import.export_onnx` emits ONNX nodes per Caffe layer type; a Python layer exports once an
      emitter for type "Python" is registered with `caffe_import.onnx_export.emits("Python")` (one emitter serves
      every Python layer, so it dispatches on `layer.param.python_param`). Without one, export names the layer and
      refuses; loading and running in PyTorch never need it.

    Registering a key twice is an error.
    """
    if not isinstance(key, str) or "." not in key.strip(".") or " " in key:
        raise ValueError(f"register_python key {key!r} must be 'module.Layer', joining python_param's module and "
                         "layer with a dot (e.g. 'rpn.proposal_layer.ProposalLayer').")

    def wrap(fn: Converter) -> Converter:
        if key in _PYTHON_LAYERS:
            raise RuntimeError(f"a Python layer '{key}' is already registered; register each module.Layer key once.")
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
