"""Caffe graph -> ONNX model, one emitter per Caffe layer type, one file per family as in `caffe_import.layers`.

Emitters write ONNX nodes with `onnx.helper`; nothing goes through `torch.onnx`, which decomposes LRN, fails on
`roi_pool` with its dynamo path and renames every value. They reproduce the same BVLC / Fast R-CNN fork sources
as the converters in `caffe_import/layers/` (`pooling_layer.cpp`, `lrn_layer.cpp`, `roi_pooling_layer.cpp`,
`crop_layer.cpp`, ...) and read the resolved settings from the converted modules. `model.py` assembles the graph
(value names, symbolic dims, opset; see its docstring); `caffe_import.onnx_export` writes and checks the file.
Importing this package registers every emitter.
"""

# Importing the family modules fills the registry (each module registers its emitters at import time).
from caffe_import.onnx import _families  # noqa: F401
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.model import DEFAULT_OPSET, MAX_ROI_POOL_OPSET, MIN_OPSET, build_onnx_model, value_info
from caffe_import.onnx.registry import Emitter, emits, get_emitter, onnx_exportable_types

__all__ = ["DEFAULT_OPSET", "MAX_ROI_POOL_OPSET", "MIN_OPSET", "Builder", "Emitter", "build_onnx_model", "emits",
           "get_emitter", "onnx_exportable_types", "value_info"]
