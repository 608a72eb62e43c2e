"""Fixtures shared by the evaluation protocols' tests (detection, classification, segmentation)."""

from __future__ import annotations

import pytest

import prototxt


@pytest.fixture(scope="session")
def conv_model_dir(tmp_path_factory):
    """A `jigsawpp convert` folder of the stride-4 AlexNet conv layers with seeded (He) weights."""
    from jigsawpp.convert import convert_caffe
    from jigsawpp.fixtures import seeded_caffemodel

    base = tmp_path_factory.mktemp("model")
    definition = prototxt.path("alexnet/conv_conv1s4.prototxt")
    seeded_caffemodel(definition, base / "weights.caffemodel", seed=0)
    return convert_caffe(definition, base / "weights.caffemodel", base / "converted").out_dir
