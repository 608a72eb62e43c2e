"""CaffeAlexNet against caffe_import on the same weights, its config reader, and its weight accounting.

Tolerance: max |CaffeAlexNet - caffe_import| <= 1e-5 * max(1, max |caffe_import|) per blob. Both run the same
torch kernels, so the observed difference is 0; the bound only allows for a different summation order.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import caffe_import
import prototxt
from caffe_import.proto import caffe_pb2
from jigsawpp.fixtures import randomize_weights
from jigsawpp.models import AlexNetConfig, CaffeAlexNet, alexnet_config_from_prototxt

TOLERANCE = 1e-5


def _net_param(name: str) -> caffe_pb2.NetParameter:
    return caffe_import.read_prototxt(prototxt.path(name))


def _layer(net: caffe_pb2.NetParameter, name: str) -> caffe_pb2.LayerParameter:
    return next(lp for lp in net.layer if lp.name == name)


def _fast_rcnn_geometry() -> caffe_pb2.NetParameter:
    """CaffeNet with Fast R-CNN's conv1 pad 5 and pool1/pool2 pad 1 (models/CaffeNet/test.prototxt)."""
    net = _net_param("caffenet/deploy.prototxt")
    conv1 = _layer(net, "conv1").convolution_param
    del conv1.pad[:]
    conv1.pad.append(5)
    for name in ("pool1", "pool2"):
        _layer(net, name).pooling_param.pad = 1
    return net


def _lrn_before_pool() -> caffe_pb2.NetParameter:
    """BVLC AlexNet order: conv -> relu -> norm -> pool."""
    net = _net_param("alexnet/deploy_conv1s4.prototxt")
    for i in (1, 2):
        pool, norm = _layer(net, f"pool{i}"), _layer(net, f"norm{i}")
        norm.bottom[0], norm.top[0] = f"conv{i}", f"norm{i}"
        pool.bottom[0], pool.top[0] = f"norm{i}", f"pool{i}"
        _layer(net, f"conv{i + 1}").bottom[0] = f"pool{i}"
    layers = list(net.layer)
    order = {lp.name: i for i, lp in enumerate(layers)}
    for i in (1, 2):
        a, b = order[f"pool{i}"], order[f"norm{i}"]
        layers[a], layers[b] = layers[b], layers[a]
    del net.layer[:]
    net.layer.extend(layers)
    return net


CASES = {
    "cc_conv1s4_fc8_2000": (lambda: _net_param("alexnet/deploy_conv1s4.prototxt"), 227, 4, 2000),
    "pretext_conv1s2_tile": (lambda: _net_param("alexnet/deploy_conv1s2.prototxt"), 64, 2, None),
    "transfer_conv_only": (lambda: _net_param("alexnet/conv_conv1s4.prototxt"), 227, 4, None),
    "caffenet": (lambda: _net_param("caffenet/deploy.prototxt"), 227, 4, 1000),
    "fast_rcnn_pads": (_fast_rcnn_geometry, 227, 4, 1000),
    "lrn_before_pool": (_lrn_before_pool, 227, 4, 2000),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_caffe_alexnet_equals_caffe_import(case):
    make, size, stride, classes = CASES[case]
    net_param = make()
    config = alexnet_config_from_prototxt(net_param, source=case)
    assert (config.conv1_stride, config.num_classes) == (stride, classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = randomize_weights(caffe_import.load(net_param), seed=7)
    model = CaffeAlexNet.from_caffe_state(net.state_dict(), config).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255 - 128
    names = list(config.blob_names)
    with torch.inference_mode():
        ref = net(x, outputs=names)
        got = model.blobs(x, names)
        logits = model(x)
    for name in names:
        assert got[name].shape == ref[name].shape, name
        scale = max(1.0, float(ref[name].abs().max()))
        assert float((got[name] - ref[name]).abs().max()) <= TOLERANCE * scale, name
    assert torch.equal(logits, got[names[-1]])


def test_pool5_sizes_follow_caffe_ceil_rounding():
    tile = CaffeAlexNet(AlexNetConfig(conv1_stride=2, input_size=64, fc6=None, fc7=None, num_classes=None))
    assert tile.features(torch.zeros(1, 3, 64, 64)).shape == (1, 256, 3, 3)   # floor rounding would give 2x2
    assert AlexNetConfig().pool5_size() == 6
    assert AlexNetConfig(conv1_pad=5, pool_pad=1).pool5_size(600) == 19


def test_from_caffe_state_accounts_for_every_tensor():
    config = AlexNetConfig(num_classes=2000)
    state = CaffeAlexNet(config).state_dict()
    CaffeAlexNet.from_caffe_state(state, config)
    broken = dict(state)
    del broken["conv3.bias"]
    broken["fc9.weight"] = torch.zeros(1)
    broken["fc8.weight"] = torch.zeros(1000, 4096)
    with pytest.raises(ValueError) as err:
        CaffeAlexNet.from_caffe_state(broken, config)
    message = str(err.value)
    assert "missing ['conv3.bias']" in message
    assert "unexpected ['fc9.weight']" in message
    assert "fc8.weight: (1000, 4096) given, (2000, 4096) expected" in message


@pytest.mark.parametrize("name", ["vgg16/deploy.prototxt", "fcn_alexnet/deploy.prototxt",
                                  "fast_rcnn/CaffeNet/test.prototxt"])
def test_config_reader_refuses_other_nets(name):
    with pytest.raises(ValueError, match="not a Caffe AlexNet"):
        alexnet_config_from_prototxt(_net_param(name), source=name)


def test_config_from_dict_is_strict():
    assert AlexNetConfig.from_dict({"conv1_stride": 2}).conv1_stride == 2
    with pytest.raises(ValueError, match="unknown AlexNetConfig key"):
        AlexNetConfig.from_dict({"conv1_strid": 2})


def test_blobs_rejects_unknown_names_and_keeps_pycaffe_semantics():
    model = CaffeAlexNet(AlexNetConfig(fc6=None, fc7=None, num_classes=None)).eval()
    with pytest.raises(KeyError, match="fc8"):
        model.blobs(torch.zeros(1, 3, 227, 227), ["fc8"])
    with torch.no_grad():
        out = model.blobs(torch.randn(1, 3, 227, 227) * 50, ["conv1", "conv5"])
    assert float(out["conv1"].min()) >= 0.0   # conv1 is the blob after the in-place relu1, as in pycaffe
