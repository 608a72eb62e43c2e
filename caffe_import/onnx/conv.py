"""Convolution and Deconvolution -> Conv / ConvTranspose (as `caffe_import.layers.conv` resolved them)."""

from __future__ import annotations

from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.onnx.builder import Builder, pair
from caffe_import.onnx.registry import emits


def _conv(b: Builder, layer: Layer, m: nn.Module, op_type: str) -> None:
    if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        raise CaffeImportError(f"{layer.where()}: unexpected converted module {type(m).__name__} for ONNX export.")
    pad = pair(m.padding)
    attrs = dict(kernel_shape=list(pair(m.kernel_size)), strides=list(pair(m.stride)),
                 dilations=list(pair(m.dilation)), pads=[pad[0], pad[1], pad[0], pad[1]], group=m.groups)
    weights = [b.weight(m, "weight")] + ([b.weight(m, "bias")] if m.bias is not None else [])
    for x, y in zip(b.inputs(layer), b.outputs(layer)):
        b.op(op_type, x, *weights, out=y, **attrs)


@emits("Convolution")
def _convolution(b: Builder, layer: Layer, m: nn.Module) -> None:
    _conv(b, layer, m, "Conv")


@emits("Deconvolution")
def _deconvolution(b: Builder, layer: Layer, m: nn.Module) -> None:
    _conv(b, layer, m, "ConvTranspose")
