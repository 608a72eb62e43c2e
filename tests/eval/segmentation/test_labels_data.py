"""Label maps on disk (VOC PNGs, SBD .mat), the VOC palette, FCN's splits and training order, and scoring a folder
of predictions, on the real sample photos and masks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from eval.segmentation.data import (
    SEG11VALID_SHA256,
    FCNTrainSource,
    load_image_blob,
    sbd_split,
    seg11valid_split,
    voc_segmentation_split,
)
from eval.segmentation.labels import read_label_png, read_sbd_cls_mat, voc_palette, write_label_png
from eval.segmentation.results import score_prediction_folder


def test_palette_is_the_devkit_colour_map(seg_sample):
    from PIL import Image

    from eval.segmentation.sample_data import labelme_seg_dir

    assert voc_palette()[[0, 1, 15, 255]].tolist() == [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]]
    source = labelme_seg_dir()
    if source is None:
        pytest.skip("labelme-examples not installed (its PNGs carry an independently generated VOC palette)")
    with Image.open(next((source / "SegmentationClassPNG").glob("*.png"))) as image:
        theirs = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(voc_palette(len(theirs)), theirs)


def test_png_round_trip_and_refusals(tmp_path):
    from PIL import Image

    labels = np.random.default_rng(0).integers(0, 21, size=(7, 9)).astype(np.uint8)
    labels[0, 0] = 255
    path = write_label_png(tmp_path / "a.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(read_label_png(path), labels)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png is a RGB image; expected an indexed"):
        read_label_png(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot be read as a PNG"):
        read_label_png(tmp_path / "junk.png")


def test_sbd_mat_reads_what_the_png_holds(seg_sample, sbd_sample, tmp_path):
    import scipy.io

    split = sbd_split(sbd_sample, "train")
    assert split.image_ids == seg_sample.image_ids
    for sample in split.samples:
        png = read_label_png(seg_sample.root / "SegmentationClass" / f"{sample.image_id}.png")
        np.testing.assert_array_equal(read_sbd_cls_mat(sample.label_path), png)
    scipy.io.savemat(str(tmp_path / "other.mat"), {"labels": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="no GTcls.Segmentation field .*'labels'"):
        read_sbd_cls_mat(tmp_path / "other.mat")
    assert sbd_split(sbd_sample.parent, "train").image_ids == split.image_ids  # the parent of dataset/ works too


def test_training_order_is_fcns_python_random_stream(sbd_sample):
    split = sbd_split(sbd_sample, "train")
    source = FCNTrainSource(split, mean_bgr=(104.00699, 116.66877, 122.67892), seed=1337)
    # voc_layers.py: random.seed(self.seed) in setup, then random.randint(0, len(self.indices)-1) per image
    random.seed(1337)
    expected = [random.randint(0, len(split.samples) - 1) for _ in range(50)]
    assert [source.next_index() for _ in range(50)] == expected
    state = source.state_dict()
    batch = source.next_batch()
    again = FCNTrainSource(split, mean_bgr=(104.00699, 116.66877, 122.67892))
    again.load_state_dict(state)
    other = again.next_batch()
    assert other.image_id == batch.image_id and torch.equal(other.data, batch.data)
    assert batch.label.shape == (1, *batch.data.shape[2:]) and batch.label.dtype == torch.int64


def test_image_blob_is_bgr_minus_the_mean(seg_sample):
    import cv2

    path = seg_sample.root / "JPEGImages" / f"{seg_sample.image_ids[0]}.jpg"
    blob = load_image_blob(path, (104.0, 116.0, 122.0))
    raw = cv2.imread(str(path))
    assert blob.shape == (1, 3, *raw.shape[:2])
    np.testing.assert_array_equal(blob[0, 2].numpy(), raw[:, :, 2].astype(np.float32) - 122.0)  # R is channel 2


def test_seg11valid_from_the_list_or_computed(seg_sample, sbd_sample, tmp_path):
    import shutil

    voc = tmp_path / "VOC2011"
    shutil.copytree(seg_sample.root, voc)
    ids = list(seg_sample.image_ids)
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids))
    sbd_train = sbd_sample / "train.txt"
    original = sbd_train.read_text()
    try:
        sbd_train.write_text(f"{ids[0]}\n{ids[2]}\n")
        split = seg11valid_split(voc, sbd_sample)
        assert split.image_ids == (ids[1], ids[3]) and split.source["is_fcn_seg11valid"] is False
        assert split.source["how"].endswith("minus SBD train.txt")
        sbd_train.write_text("".join(f"{i}\n" for i in ids))  # SBD train holds every val image: no test set
        with pytest.raises(ValueError, match="seg11valid is empty: all 4 images of VOC2011 .*--val-data voc_val"):
            seg11valid_split(voc, sbd_sample)
    finally:
        sbd_train.write_text(original)
    with pytest.raises(FileNotFoundError, match="seg11valid.txt.*--sbd"):
        seg11valid_split(voc, None)
    (voc / "ImageSets/Segmentation/seg11valid.txt").write_text(f"{ids[3]}\n")
    split = seg11valid_split(voc, None)
    assert split.image_ids == (ids[3],) and split.source["how"].startswith("read from")
    assert len(SEG11VALID_SHA256) == 64


def test_scoring_a_prediction_folder(seg_sample, tmp_path):
    split = voc_segmentation_split(seg_sample.root, "val")
    perfect = tmp_path / "perfect"
    for sample in split.samples:
        gt = sample.read_label()
        write_label_png(perfect / f"{sample.image_id}.png", np.where(gt == 255, 0, gt))
    scores = score_prediction_folder(split, perfect)
    assert scores.mean_iu == 1.0 and scores.pixel_accuracy == 1.0 and scores.n_images == len(split.samples)
    background = tmp_path / "background"
    for sample in split.samples:
        write_label_png(background / f"{sample.image_id}.png", np.zeros_like(sample.read_label()))
    scores = score_prediction_folder(split, background)
    assert 0 < scores.mean_iu < scores.pixel_accuracy < 1
    (background / f"{split.image_ids[1]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of 4 predictions .* image {split.image_ids[1]}"):
        score_prediction_folder(split, background)
    write_label_png(background / f"{split.image_ids[1]}.png", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=f"prediction of image {split.image_ids[1]} .* is 3x3 pixels"):
        score_prediction_folder(split, background)
