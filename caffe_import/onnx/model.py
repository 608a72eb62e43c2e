"""Assemble the ONNX model of a `CaffeNet` from its Caffe graph: value names, input and output dims, opset.

Names:
  * graph inputs and outputs are Caffe blob names; outputs are `net.output_names`;
  * every value is named after its Caffe blob. The last version of a blob has the plain name, as pycaffe's
    `net.blobs` shows it (after the in-place `relu4`, "conv4" is the rectified value); a version that a later
    in-place layer overwrites is "<blob>#<k>" with k its 0-based version ("conv4#0" is conv4 before relu4).
    Net inputs keep their plain name, so an input overwritten in place has its last version named "<blob>#<k>";
  * helper values of a layer are "<layer>/<what>", weights are initializers "<layer>.<blob attr>" (conv1.weight,
    conv1.bias; bn1.mean / bn1.var for BatchNorm's normalised statistics). Weight-shared layers (Caffe
    `param { name }`) share one initializer, named after the first layer that uses it.

Shapes: with `dynamic=True` dim 0 of every input is symbolic ("batch"; "num_rois" for an ROIPooling roi input),
and so are the spatial dims when no InnerProduct or Reshape consumes a value whose size follows them (fully
convolutional nets; Fast R-CNN, whose only InnerProducts follow ROIPooling). Every size a layer derives from its
input (Crop windows, explicit pooling pads) is computed from `Shape` at run time (pooling pads are folded to
constants when the spatial size is fixed).

Opsets: 17 by default; 13 is the minimum (Softmax flattens its input below 13, wrong for a per-pixel softmax);
nets with ROIPooling are limited to 13..21 because onnxruntime has no MaxRoiPool-22 kernel. ONNX shape inference
for padded ceil-mode pooling is wrong below opset 22 (onnx/onnx#5711), so no intermediate `value_info` is written
and output shapes come from the PyTorch net itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.net import CaffeNet
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import get_emitter

DEFAULT_OPSET = 17
MIN_OPSET = 13               # Softmax-13 normalises along one axis; older versions flatten from `axis` on
MAX_ROI_POOL_OPSET = 21      # onnxruntime implements MaxRoiPool-1 only; MaxRoiPool-22 has no kernel

Dim = int | str


def _value_names(net: CaffeNet) -> dict[str, str]:
    """SSA name -> ONNX value name (see the module docstring)."""
    graph = net.graph
    names = {name: name for name in graph.inputs}
    for layer in net.layers_with_shapes:
        for ssa, blob in zip(layer.tops, layer.blob_tops):
            version = 0 if ssa == blob else int(ssa[len(blob) + 1:])
            final = graph.final_version.get(blob) == ssa and blob not in graph.inputs
            names[ssa] = blob if final else f"{blob}#{version}"
    return names


def _spatially_free(net: CaffeNet) -> bool:
    """True when no InnerProduct / Reshape / Scale-Bias blob over a spatial axis fixes the size of a value that
    follows the inputs' spatial dims, i.e. the net runs at any input height and width."""
    follows = {name for name, shape in net.graph.input_shapes.items() if len(shape) >= 3}
    for layer in net.layers_with_shapes:
        reads = layer.bottoms[:1] if layer.type == "ROIPooling" else layer.bottoms
        if not any(b in follows for b in reads):
            continue
        module = net.module_of(layer.name)
        if layer.type in ("InnerProduct", "Reshape"):
            return False
        if layer.type in ("Scale", "Bias"):
            blobs = [getattr(module, a) for a in module.caffe_blobs]
            if any(t.dim() and module.axis + t.dim() > 2 for t in blobs):
                return False
        # ROI pooling, global pooling and a whole-sample ArgMax give outputs of a fixed size.
        if layer.type == "ROIPooling" or isinstance(module, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
            continue
        if layer.type == "ArgMax" and module.axis is None:
            continue
        follows.update(layer.tops)
    return True


def _input_dims(net: CaffeNet, dynamic: bool) -> dict[str, list[Dim]]:
    """Each input's dims, symbolic where `dynamic` allows (see the module docstring)."""
    shapes = net.graph.input_shapes
    if not dynamic:
        return {name: list(shape) for name, shape in shapes.items()}
    roi_inputs = {layer.bottoms[1] for layer in net.layers_with_shapes
                  if layer.type == "ROIPooling" and len(layer.bottoms) > 1}
    spatial = _spatially_free(net)
    images = [name for name, shape in shapes.items() if len(shape) >= 3]
    batches = {shape[0] for name, shape in shapes.items() if shape and name not in roi_inputs}
    dims: dict[str, list[Dim]] = {}
    for name, shape in shapes.items():
        d: list[Dim] = list(shape)
        if d:
            # Inputs declared with one batch size share the symbol (CFN's nine tiles are concatenated per sample).
            d[0] = "num_rois" if name in roi_inputs else "batch" if len(batches) == 1 else f"{name}_batch"
        if spatial and name in images and name not in roi_inputs:
            labels = ["height", "width"] if len(shape) == 4 else [f"dim{i}" for i in range(2, len(shape))]
            prefix = "" if len(images) == 1 else f"{name}_"
            d[2:] = [prefix + label for label in labels]
        dims[name] = d
    return dims


@torch.no_grad()
def _meta_shapes(net: CaffeNet, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes of every SSA value for the given input shapes, by running the modules on meta tensors."""
    env = {name: torch.empty(shape, device="meta") for name, shape in input_shapes.items()}
    for layer in net.layers_with_shapes:
        module = net.module_of(layer.name)
        state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                 for k, v in chain(module.named_parameters(remove_duplicate=False),
                                   module.named_buffers(remove_duplicate=False))}
        out = torch.func.functional_call(module, state, tuple(env[b] for b in layer.bottoms))
        for ssa, value in zip(layer.tops, out if isinstance(out, tuple) else (out,)):
            env[ssa] = value
    return {k: tuple(v.shape) for k, v in env.items()}


def _output_dims(net: CaffeNet, inputs: dict[str, list[Dim]]) -> dict[str, list[Dim]]:
    """Output dims: those that change when the symbolic input dims change are symbolic, named after the input
    dim they equal at two sizes (e.g. FCN's score is (batch, 21, height, width)), or "<output>_d<i>"."""
    final = net.graph.final_version
    base_inputs = net.graph.input_shapes
    base = {blob: net.blob_shapes[blob] for blob in net.output_names}
    symbols = sorted({d for dims in inputs.values() for d in dims if isinstance(d, str)})
    if not symbols:
        return {blob: list(shape) for blob, shape in base.items()}
    delta = {symbol: 1 + 4 * i for i, symbol in enumerate(symbols)}   # distinct, so matches are unambiguous
    values = {d: (base_inputs[name][i], base_inputs[name][i] + delta[d])
              for name, dims in inputs.items() for i, d in enumerate(dims) if isinstance(d, str)}
    try:
        moved = _meta_shapes(net, {name: tuple(d if isinstance(d, int) else values[d][1] for d in dims)
                                   for name, dims in inputs.items()})
    except Exception:  # a size the net cannot run at: leave every dim of the outputs open
        return {blob: [f"{blob}_d{i}" for i in range(len(shape))] for blob, shape in base.items()}
    out: dict[str, list[Dim]] = {}
    for blob, shape in base.items():
        moved_shape = moved[final[blob]]
        dims: list[Dim] = []
        for i, (a, c) in enumerate(zip(shape, moved_shape)):
            if a == c:
                dims.append(a)
            else:
                dims.append(next((s for s, pair in values.items() if pair == (a, c)), f"{blob}_d{i}"))
        out[blob] = dims
    return out


def _resolve_opset(net: CaffeNet, opset: int | None) -> int:
    types = {layer.type for layer in net.layers_with_shapes}
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        why = ("the net has a Softmax layer, and Softmax before opset 13 flattens its input from `axis` on "
               "(wrong for Caffe's per-position softmax along axis 1)" if "Softmax" in types else
               "the emitters use opset-13 operators (Slice/Unsqueeze with tensor inputs, Softmax along one axis)")
        raise CaffeImportError(f"ONNX opset {opset} is not supported: {why}. Use opset {MIN_OPSET} or later "
                               f"(default {DEFAULT_OPSET}).")
    if "ROIPooling" in types and opset > MAX_ROI_POOL_OPSET:
        raise CaffeImportError(f"ONNX opset {opset} is not supported for a net with ROIPooling: MaxRoiPool-22 has no "
                               f"kernel in onnxruntime. Use opset {MIN_OPSET}..{MAX_ROI_POOL_OPSET} "
                               f"(default {DEFAULT_OPSET}).")
    if opset > newest:
        raise CaffeImportError(f"ONNX opset {opset} is newer than this onnx package supports ({newest}).")
    return opset


def value_info(name: str, dims: list[Dim] | None) -> onnx.ValueInfoProto:
    """A float tensor value named `name` with `dims` (None: shape unknown)."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def build_onnx_model(net: CaffeNet, *, opset: int | None = None, dynamic: bool = True) -> onnx.ModelProto:
    """The ONNX model of `net` (TEST-phase semantics), in memory; see `export_onnx`."""
    opset = _resolve_opset(net, opset)
    names = _value_names(net)
    for blob in net.output_names:
        if blob in net.graph.inputs and net.graph.final_version[blob] != blob:
            raise CaffeImportError(f"output blob '{blob}' is a net input overwritten in place; ONNX cannot name the "
                                   "input and the overwritten value alike. Request another output blob.")
    in_dims = _input_dims(net, dynamic)
    static_spatial = all(isinstance(d, int) for dims in in_dims.values() for d in dims[2:])
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(helper.make_graph([], net.graph.name, [], []), opset_imports=opset_ids,
                              producer_name="caffe_import", ir_version=helper.find_min_ir_version_for(opset_ids))
    builder = Builder(model.graph, opset, names, static_spatial)
    for layer in net.layers_with_shapes:
        emit = get_emitter(layer)
        builder.layer = layer
        emit(builder, layer, net.module_of(layer.name))
    builder.layer = None
    out_dims = _output_dims(net, in_dims)
    model.graph.input.extend(value_info(name, in_dims[name]) for name in net.graph.inputs)
    model.graph.output.extend(value_info(names[net.graph.final_version[blob]], out_dims[blob])
                              for blob in net.output_names)
    model.doc_string = (f"Caffe net '{net.graph.name}' exported by caffe_import. Values carry Caffe blob names; "
                        "'<blob>#<k>' is version k of a blob that a later in-place layer overwrites.")
    return model
