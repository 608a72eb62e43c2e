"""CaffeAlexNet against an implementation that shares nothing with this project: OpenCV 4.x's Caffe importer
(``cv2.dnn.readNetFromCaffe``) on the same deploy prototxt and caffemodel, for a real photograph.

Blobs compared: every pooling and LRN output, and fc8 where the net has one (OpenCV fuses the in-place ReLU and
Dropout layers differently, so conv and fc6/fc7 are compared through the layers that consume them). Tolerance:
max |CaffeAlexNet - OpenCV| <= 2e-5 * max(1, max |OpenCV|) per blob (float32, different summation orders).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe_import
import prototxt
from caffe_import.proto import caffe_pb2
from jigsawpp.fixtures import randomize_weights
from jigsawpp.models import CaffeAlexNet, alexnet_config_from_prototxt

TOLERANCE = 2e-5


def _fast_rcnn_caffenet() -> caffe_pb2.NetParameter:
    """CaffeNet's conv layers with Fast R-CNN's conv1 pad 5 and pool1/pool2 pad 1 (fast-rcnn
    models/CaffeNet/test.prototxt); the fully connected layers are left out to keep the test small."""
    net = caffe_import.read_prototxt(prototxt.path("caffenet/deploy.prototxt"))
    layers = [lp for lp in net.layer if not lp.name.startswith(("fc", "relu6", "relu7", "drop", "prob"))]
    del net.layer[:]
    net.layer.extend(layers)
    for layer in net.layer:
        if layer.name == "conv1":
            del layer.convolution_param.pad[:]
            layer.convolution_param.pad.append(5)
        if layer.name in ("pool1", "pool2"):
            layer.pooling_param.pad = 1
    return net


CASES = {
    "transfer_conv1s4": (lambda: caffe_import.read_prototxt(prototxt.path("alexnet/conv_conv1s4.prototxt")), 227),
    # the stride-2 pretext tower with its fully connected layers (fc6 over a 3 x 3 pool5 at 64 pixels)
    "pretext_conv1s2_tile": (lambda: caffe_import.read_prototxt(prototxt.path("alexnet/deploy_conv1s2.prototxt")), 64),
    "fast_rcnn_caffenet": (_fast_rcnn_caffenet, 227),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_caffe_alexnet_equals_opencv_caffe_importer(case, tmp_path):
    make, size = CASES[case]
    net_param = make()
    deploy, weights = tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel"
    deploy.write_text(text_format.MessageToString(net_param))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = randomize_weights(caffe_import.load(net_param), seed=3)
    caffe_import.save_caffemodel(net, weights)
    config = alexnet_config_from_prototxt(net_param, source=case)
    model = CaffeAlexNet.from_caffe_state(net.state_dict(), config).eval()

    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR)
    x = (cv2.resize(photo, (size, size)).astype(np.float32) - np.float32([104, 117, 123])).transpose(2, 0, 1)[None]
    blobs = [b for b in config.blob_names if b.startswith(("pool", "norm")) or b == "fc8"]
    opencv = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    opencv.setInput(x)
    theirs = dict(zip(blobs, opencv.forward(blobs)))
    with torch.inference_mode():
        ours = model.blobs(torch.from_numpy(x), blobs)
    for name in blobs:
        got, want = ours[name].numpy(), np.asarray(theirs[name]).reshape(ours[name].shape)
        scale = max(1.0, float(np.abs(want).max()))
        assert float(np.abs(got - want).max()) <= TOLERANCE * scale, (name, float(np.abs(got - want).max()), scale)
