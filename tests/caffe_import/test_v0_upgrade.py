"""V0 nets (2013-era `layers { layer { type: "conv" } }` with separate padding layers) upgrade to V2 exactly as
Caffe's `UpgradeV0Net` does: types mapped, `kernelsize`/`biasterm` renamed, padding folded into the consumer."""

from __future__ import annotations

import torch

import caffe_import

V0_NET = """
name: "v0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 13 input_dim: 11
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 group: 1
                 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.2 } }
         bottom: "data" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "conv1" top: "pad1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.01 beta: 0.75 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 weight_filler { type: "xavier" } }
         bottom: "norm1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V2_NET = """
name: "v2"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 13 dim: 11 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_v0_layers_upgrade_to_v2():
    net = caffe_import.read_prototxt_string(V0_NET)
    assert [layer.type for layer in net.layer] == ["Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct",
                                                    "Softmax"]
    pool = next(layer for layer in net.layer if layer.name == "pool1")
    assert list(pool.bottom) == ["conv1"] and pool.pooling_param.pad == 1   # padding layer folded in
    conv = net.layer[1]
    assert conv.convolution_param.bias_term and list(conv.convolution_param.kernel_size) == [3]
    assert net.layer[4].lrn_param.k == 2


def test_v0_net_equals_its_v2_equivalent(tmp_path):
    v0 = caffe_import.load(caffe_import.read_prototxt_string(V0_NET), seed=5)
    weights = tmp_path / "v0.caffemodel"
    caffe_import.save_caffemodel(v0, weights)
    v2 = caffe_import.load(caffe_import.read_prototxt_string(V2_NET), weights)
    x = torch.randn(2, 3, 13, 11)
    with torch.no_grad():
        a = v0(data=x, outputs=["pool1", "prob"])
        b = v2(data=x, outputs=["pool1", "prob"])
    assert a["pool1"].shape == (2, 4, 6, 5)
    assert torch.equal(a["pool1"], b["pool1"]) and torch.equal(a["prob"], b["prob"])
    assert torch.all(v0.module_of("conv1").bias.detach() == torch.tensor(0.2))  # V0 bias_filler carried over
