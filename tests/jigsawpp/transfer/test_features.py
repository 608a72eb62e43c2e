"""Feature extraction: the paper's pooled sizes, parity with caffe_import's conv4 pooled by a float64 numpy port of
Caffe's pooling (tests/reference), exact resume after an interruption, and refusal of stale folders. Images: the
digits ImageFolder of conftest.py (real scans). Tolerances: float16 storage, rtol 1e-3 of the value + 1e-3."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from reference import pooling

import caffe_import
import prototxt as bundled
from jigsawpp.convert import convert_caffe
from jigsawpp.fixtures import make_release_zip, write_release_caffemodel
from jigsawpp.release import convert_release
from jigsawpp.transfer.features import FeatureConfig, ModelFeatures, extract_features
from jigsawpp.transfer.store import FeatureStoreError, images_from_data, open_features
from jigsawpp.transfer.teacher import POOL_PRESETS, load_teacher

MEAN = np.asarray([104.0, 117.0, 123.0], np.float32)


def _caffemodel(prototxt: Path, path: Path, *, seed: int, scale: float = 1.0, outputs=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = caffe_import.load(prototxt, outputs=outputs, seed=seed)
    if scale != 1.0:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
    caffe_import.save_caffemodel(net, path)
    return path


def _subset(digits_folder: Path, per_class: int):
    images = images_from_data(digits_folder)
    keep = [i for i, y in enumerate(images.labels) if list(images.labels[:i]).count(y) < per_class]
    return type(images)(images.root, tuple(images.names[i] for i in keep), tuple(images.labels[i] for i in keep))


def test_pooling_presets_give_the_papers_sizes(tmp_path):
    alexnet = ModelFeatures(load_teacher("random:alexnet"), FeatureConfig())
    assert alexnet.teacher.blob_shape() == (384, 13, 13) and alexnet.dim == 5 * 5 * 384
    assert (alexnet.pooling.kernel, alexnet.pooling.stride) == (5, 2)
    vgg = bundled.path("vgg16/deploy.prototxt")
    weights = _caffemodel(vgg, tmp_path / "vgg_conv4.caffemodel", seed=0, outputs=["conv4_3"])
    teacher = load_teacher(vgg, caffemodel=weights)
    assert teacher.blob == "conv4_3" and teacher.input_size == 224 and teacher.blob_shape() == (512, 28, 28)
    features = ModelFeatures(teacher, FeatureConfig())
    assert features.dim == 4 * 4 * 512 and features.pooling == POOL_PRESETS[(512, 28)]
    with pytest.raises(ValueError, match="--pool-grid"):
        ModelFeatures(teacher, FeatureConfig(crop=200))  # conv4_3 25 x 25: no preset
    assert ModelFeatures(teacher, FeatureConfig(crop=200, pool_grid=4)).dim == 4 * 4 * 512


def _reference_rows(net, images, *, kernel: int, stride: int) -> np.ndarray:
    """conv4 of caffe_import on inputs made here with OpenCV (warp 256, centre 227, minus the mean), pooled by the
    float64 numpy Caffe pooling reference."""
    rows = []
    for name in images.names:
        image = cv2.resize(cv2.imread(str(images.root / name)), (256, 256), interpolation=cv2.INTER_LINEAR)
        x = (image[14:241, 14:241].astype(np.float32) - MEAN).transpose(2, 0, 1)[None]
        with torch.no_grad():
            conv4 = net(data=torch.from_numpy(np.ascontiguousarray(x)), outputs=["conv4"])["conv4"].numpy()
        rows.append(pooling(conv4.astype(np.float64), kernel=kernel, stride=stride, method="MAX").reshape(-1))
    return np.stack(rows)


def test_converted_caffe_model_equals_caffe_import_conv4_pooled(tmp_path, digits_folder):
    """Both kinds of `jigsawpp convert` folder: prototxt + caffemodel (run by caffe_import from safetensors) and a
    release zip (run by CaffeAlexNet, another implementation)."""
    full = _subset(digits_folder, 1)
    images = type(full)(full.root, full.names[::4], full.labels[::4])
    proto = bundled.path("alexnet/conv_conv1s4.prototxt")
    weights = write_release_caffemodel("conv", tmp_path / "conv.caffemodel", seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = caffe_import.load(proto, weights)
    reference = _reference_rows(net, images, kernel=5, stride=2)
    convert_caffe(proto, weights, tmp_path / "converted")
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", caffemodel=weights)
    convert_release(made["path"], tmp_path / "release", onnx=False)
    config = FeatureConfig(batch_size=4, workers=0)
    for i, teacher in enumerate([load_teacher(tmp_path / "converted"), load_teacher(tmp_path / "release")]):
        result = extract_features(ModelFeatures(teacher, config), images, tmp_path / f"f{i}", config=config,
                                  progress=False)
        rows = np.asarray(open_features(result.path).array, dtype=np.float64)
        assert rows.shape == reference.shape == (3, 9600)
        np.testing.assert_allclose(rows, reference, rtol=1e-3, atol=1e-3, err_msg=teacher.description)


class _Interrupt(RuntimeError):
    pass


def test_resume_is_exact_and_stale_folders_are_refused(tmp_path, digits_folder, tiny_prototxt):
    images = _subset(digits_folder, 2)
    weights = _caffemodel(tiny_prototxt, tmp_path / "a.caffemodel", seed=1)
    config = FeatureConfig(batch_size=2, workers=0, chunk_rows=4, pool_grid=3)
    features = ModelFeatures(load_teacher(tiny_prototxt, caffemodel=weights), config)
    whole = extract_features(features, images, tmp_path / "whole", config=config, progress=False)
    calls = {"n": 0}
    original = features.batch

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 5:  # chunks 0 and 1 (2 batches each) are done, chunk 2 is half written
            raise _Interrupt
        return original(x)

    features.batch = failing
    with pytest.raises(_Interrupt):
        extract_features(features, images, tmp_path / "cut", config=config, progress=False)
    assert not open_features(tmp_path / "cut").complete
    features.batch = original
    resumed = extract_features(features, images, tmp_path / "cut", config=config, progress=False)
    assert resumed.chunks_resumed == 2 and not resumed.skipped
    np.testing.assert_array_equal(open_features(tmp_path / "cut").array, open_features(whole.path).array)
    assert not (tmp_path / "cut" / "progress").exists()
    assert extract_features(features, images, tmp_path / "cut", config=config, progress=False).skipped
    other = _caffemodel(tiny_prototxt, tmp_path / "b.caffemodel", seed=2)
    stale = ModelFeatures(load_teacher(tiny_prototxt, caffemodel=other), config)
    with pytest.raises(FeatureStoreError, match=r"teacher\.caffemodel_sha256"):
        extract_features(stale, images, tmp_path / "cut", config=config, progress=False)
    with pytest.raises(FeatureStoreError, match=r"pooling\.grid: 3 in the folder, 2 now"):
        smaller = FeatureConfig(batch_size=2, workers=0, chunk_rows=4, pool_grid=2)
        extract_features(ModelFeatures(features.teacher, smaller), images, tmp_path / "cut", config=smaller,
                         progress=False)


def test_float16_overflow_is_refused(tmp_path, digits_folder, tiny_prototxt):
    images = _subset(digits_folder, 1)
    weights = _caffemodel(tiny_prototxt, tmp_path / "big.caffemodel", seed=1, scale=40.0)
    teacher = load_teacher(tiny_prototxt, caffemodel=weights)
    config = FeatureConfig(batch_size=5, workers=0, pool_grid=2)
    with pytest.raises(FeatureStoreError, match="--dtype float32"):
        extract_features(ModelFeatures(teacher, config), images, tmp_path / "f16", config=config, progress=False)
    wide = FeatureConfig(batch_size=5, workers=0, pool_grid=2, dtype="float32")
    result = extract_features(ModelFeatures(teacher, wide), images, tmp_path / "f32", config=wide, progress=False)
    assert np.abs(open_features(result.path).array).max() > 65504
