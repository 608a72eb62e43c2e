"""End-to-end parity of every bundled prototxt against OpenCV 4.x's independent Caffe importer.

Each net gets seeded weights, which our writer saves as a caffemodel; OpenCV reads prototxt + caffemodel and runs
the same input. Tolerance: max |ours - OpenCV| <= 1e-4 * max(1, max |OpenCV|) per compared blob (float32 nets
with up to 16 layers of accumulation; observed errors are ~1e-6 relative). LRN `k` is 1 in all bundled nets, the
only setting in which OpenCV is itself faithful.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from jigsawpp.fixtures import randomize_weights

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("OpenCV 5.x has no Caffe importer; the oracle needs opencv-*-headless<5", allow_module_level=True)

TOLERANCE = 1e-4

# (bundled file, {input: shape}, [(our blob, OpenCV layer)], marks)
CASES = [
    ("caffenet/deploy.prototxt", {"data": (2, 3, 227, 227)}, [("pool5", "pool5"), ("fc7", "drop7"), ("prob", "prob")]),
    ("alexnet/deploy_conv1s2.prototxt", {"data": (2, 3, 64, 64)}, [("pool5", "pool5")]),
    ("alexnet/deploy_conv1s4.prototxt", {"data": (1, 3, 227, 227)}, [("conv4", "relu4"), ("prob", "prob")]),
    ("alexnet/conv_conv1s4.prototxt", {"data": (1, 3, 227, 227)}, [("pool5", "pool5")]),
    ("fast_rcnn/CaffeNet/test.prototxt", {"data": (1, 3, 227, 300), "rois": None},
     [("cls_prob", "cls_prob"), ("bbox_pred", "bbox_pred")]),
    ("fcn_alexnet/deploy.prototxt", {"data": (1, 3, 187, 211)}, [("score", "score")]),
]


def _rois(height: int, width: int, n: int = 7) -> np.ndarray:
    rng = np.random.default_rng(3)
    x1 = rng.uniform(-8, width - 10, n)
    y1 = rng.uniform(-8, height - 10, n)
    boxes = np.stack([np.zeros(n), x1, y1, x1 + rng.uniform(5, 120, n), y1 + rng.uniform(5, 120, n)], 1)
    boxes[0, 1:] = [8.0, 24.0, 104.0, 120.0]  # half-pixel coordinates at scale 1/16
    return boxes.astype(np.float32)


def _compare(tmp_path, name, input_shapes, pairs, seed=0):
    path = prototxt.path(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = randomize_weights(caffe_import.load(path), seed=seed)
    weights = tmp_path / "w.caffemodel"
    caffe_import.save_caffemodel(net, weights)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for blob, shape in input_shapes.items():
        if blob == "rois":
            data_shape = input_shapes["data"]
            feeds[blob] = _rois(data_shape[2], data_shape[3])
        else:
            feeds[blob] = (rng.standard_normal(shape) * 50).astype(np.float32)
    reloaded = caffe_import.load(path, weights)
    with torch.no_grad():
        ours = reloaded(**{k: torch.from_numpy(v) for k, v in feeds.items()}, outputs=[p[0] for p in pairs])
    cv_net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    errors = {}
    for blob, cv_layer in pairs:
        for key, value in feeds.items():
            cv_net.setInput(value, key)
        theirs = cv_net.forward(cv_layer)
        mine = ours[blob].numpy()
        assert mine.size == theirs.size, (blob, mine.shape, theirs.shape)
        theirs = theirs.reshape(mine.shape)
        scale = max(1.0, float(np.abs(theirs).max()))
        errors[blob] = float(np.abs(mine - theirs).max()) / scale
    return errors


@pytest.mark.parametrize("name,input_shapes,pairs", CASES, ids=[c[0] for c in CASES])
def test_bundled_net_matches_opencv(tmp_path, name, input_shapes, pairs):
    errors = _compare(tmp_path, name, input_shapes, pairs)
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.slow
def test_vgg16_matches_opencv(tmp_path):
    errors = _compare(tmp_path, "vgg16/deploy.prototxt", {"data": (1, 3, 224, 224)},
                      [("pool5", "pool5"), ("prob", "prob")])
    assert max(errors.values()) <= TOLERANCE, errors


def test_jigsawpp_cfn_matches_opencv(tmp_path):
    """The 9-tower context-free network: MVN, Power, weight-shared towers, Concat, fc7, fc8.

    OpenCV 4.14 cannot run MVN with across_channels (its fastNormChannel asserts a per-channel scale), so OpenCV
    runs the net without the MVN layers, fed with tiles normalised by the float64 numpy MVN reference.
    """
    from google.protobuf import text_format
    from reference import mvn

    path = prototxt.path("jigsawpp/cfn_deploy.prototxt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = randomize_weights(caffe_import.load(path), seed=1)
    weights = tmp_path / "cfn.caffemodel"
    caffe_import.save_caffemodel(net, weights)
    definition = caffe_import.read_prototxt(path)
    kept = [layer for layer in definition.layer if layer.type != "MVN"]
    rename = {layer.top[0]: layer.bottom[0] for layer in definition.layer if layer.type == "MVN"}
    for layer in kept:
        for i, bottom in enumerate(layer.bottom):
            layer.bottom[i] = rename.get(bottom, bottom)
    del definition.layer[:]
    definition.layer.extend(kept)
    no_mvn = tmp_path / "cfn_no_mvn.prototxt"
    no_mvn.write_text(text_format.MessageToString(definition))
    rng = np.random.default_rng(1)
    tiles = {f"data_{i}": (rng.standard_normal((2, 3, 64, 64)) * 40 + 100).astype(np.float32) for i in range(1, 10)}
    with torch.no_grad():
        ours = caffe_import.load(path, weights)(**{k: torch.from_numpy(v) for k, v in tiles.items()},
                                                outputs=["fc7", "prob"])
    cv_net = cv2.dnn.readNetFromCaffe(str(no_mvn), str(weights))
    errors = {}
    for blob, cv_layer in (("fc7", "drop7"), ("prob", "prob")):
        for key, value in tiles.items():
            cv_net.setInput(mvn(value, across_channels=True).astype(np.float32), key)
        theirs = cv_net.forward(cv_layer).reshape(ours[blob].shape)
        errors[blob] = float(np.abs(ours[blob].numpy() - theirs).max()) / max(1.0, float(np.abs(theirs).max()))
    assert max(errors.values()) <= TOLERANCE, errors


def test_cfn_towers_share_parameters():
    net = caffe_import.load(prototxt.path("jigsawpp/cfn_deploy.prototxt"))
    first = net.module_of("conv1_s1").weight
    assert all(net.module_of(f"conv1_s{i}").weight is first for i in range(2, 10))
    assert all(net.module_of(f"fc6_s{i}").bias is net.module_of("fc6_s1").bias for i in range(2, 10))
    assert net.blob_shapes["pool5_s1"] == (1, 256, 3, 3)  # Caffe ceil pooling on 64-px tiles (floor gives 2x2)
    assert net.blob_shapes["concat"] == (1, 9 * 1024)


def test_fork_training_net_parses_and_cuts(recwarn):
    """The authors'-shaped training net: unknown fork fields warn once, MergeData is a train-only data layer, and
    declaring the tiles as inputs turns it into a runnable deploy net."""
    path = prototxt.path("jigsawpp/train_val_cfn_jps++.prototxt")
    with pytest.raises(caffe_import.CaffeImportError, match="no inputs"):
        caffe_import.load(path)
    unknown = [w for w in recwarn.list if "unknown to the Caffe schema" in str(w.message)]
    assert len(unknown) == 1 and "siamese_size" in str(unknown[0].message)
    tiles = {f"data_{i}": (2, 3, 64, 64) for i in range(1, 10)}
    net = caffe_import.load(path, inputs=tiles)
    assert set(net.output_names) == {"fc8"}
    out = net(**{k: torch.randn(v) for k, v in tiles.items()})
    assert out["fc8"].shape == (2, 1000)
    assert any("SoftmaxWithLoss" in note for note in net.notes)
