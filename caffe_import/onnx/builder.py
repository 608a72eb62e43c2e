"""The graph builder the ONNX emitters write through: nodes, initializers, constants and run-time shape arithmetic.

Naming: helper values of a layer are "<layer>/<what>"; weights are initializers "<layer>.<blob attr>" (conv1.weight,
conv1.bias); a tensor shared by several layers (Caffe `param { name }`) becomes one initializer, named after the
first layer that uses it; identical small constants are shared across layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from caffe_import.graph import Layer


def pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    """A module's (h, w) setting from an int or a tuple (first and last entry)."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


class Builder:
    """Collects nodes and initializers; hands out unique names for the layer being emitted."""

    def __init__(self, graph: onnx.GraphProto, opset: int, value_names: dict[str, str], static_spatial: bool) -> None:
        self.graph, self.opset, self.value_names = graph, opset, value_names
        self.static_spatial = static_spatial   # input height/width are fixed: sizes may be folded at export
        self.taken: set[str] = set(value_names.values())
        self.layer: Layer | None = None
        self._weights: dict[tuple, str] = {}
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._shapes: dict[str, str] = {}

    # names
    def inputs(self, layer: Layer) -> list[str]:
        return [self.value_names[b] for b in layer.bottoms]

    def outputs(self, layer: Layer) -> list[str]:
        return [self.value_names[t] for t in layer.tops]

    def fresh(self, hint: str) -> str:
        base = f"{self.layer.name}/{hint}" if self.layer is not None else hint
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    # nodes
    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1, **attrs: Any) -> Any:
        """Append one node; returns its output name (or the list of names when n_out > 1)."""
        if out is not None:
            outputs = [out]
        else:
            outputs = [self.fresh(op_type.lower() if n_out == 1 else f"{op_type.lower()}{i}") for i in range(n_out)]
        name = self.fresh(f"{op_type}") if self.layer is not None else op_type
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.graph.node.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs[0] if n_out == 1 else outputs

    # tensors
    def _initializer(self, name: str, array: np.ndarray) -> str:
        # Filled in place: numpy_helper.from_array + make_graph + make_model would copy the weights three times.
        self.taken.add(name)
        tensor = self.graph.initializer.add()
        tensor.name, tensor.data_type = name, helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def weight(self, module: nn.Module, attr: str, shape: tuple[int, ...] | None = None) -> str:
        """A Caffe blob of `module` as initializer "<layer>.<attr>" (reshaped for broadcasting when `shape`)."""
        tensor = getattr(module, attr)
        shape = tuple(tensor.shape) if shape is None else tuple(shape)
        # Keyed by the memory the values live in, not by id(): a PERMISSIVE sharer's weight is a fresh view on each
        # getattr, and a freed view's id can be reused by an unrelated tensor of the same shape.
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
               tensor.dtype, shape)
        if key not in self._weights:
            array = tensor.detach().to("cpu", torch.float32).numpy().reshape(shape)
            name = f"{self.layer.name}.{attr}"
            if name in self.taken:
                name = self.fresh(attr)
            self._weights[key] = self._initializer(name, array)
        return self._weights[key]

    def derived(self, attr: str, array: np.ndarray) -> str:
        """An initializer computed from a layer's blobs, named "<layer>.<attr>"."""
        name = f"{self.layer.name}.{attr}"
        return self._initializer(name if name not in self.taken else self.fresh(attr), array)

    def const(self, value: Any, dtype: Any = np.float32, hint: str = "const") -> str:
        """A small constant initializer; identical constants are shared across layers."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self._initializer(self.fresh(hint), array)
        return self._consts[key]

    def ints(self, values: Iterable[int], hint: str = "ints") -> str:
        return self.const(list(values), np.int64, hint)

    # shape arithmetic (all int64, evaluated at run time)
    def shape(self, x: str) -> str:
        if x not in self._shapes:
            self._shapes[x] = self.op("Shape", x)
        return self._shapes[x]

    def dims(self, x: str, start: int, end: int) -> str:
        """Shape(x)[start:end] as an int64 vector."""
        return self.op("Slice", self.shape(x), self.ints([start], "start"), self.ints([end], "end"))

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(axes, "axes"), keepdims=1)
        return self.op("ReduceMean", x, axes=axes, keepdims=1)
