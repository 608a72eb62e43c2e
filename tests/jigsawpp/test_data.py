"""Image reading, dataset layouts and Caffe's transform, on real photos that packages ship (scikit-image's data,
matplotlib's Grace Hopper JPEG). Oracles: scikit-image's own PNG decoding, OpenCV called directly, torchvision's
ImageFolder, and a plain-loop port of Caffe's DataTransformer written from ``data_transformer.cpp``."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from jigsawpp.data import (
    DatasetLayoutError,
    ImageDataset,
    ImageOrientationWarning,
    ImageReadError,
    caffe_transform,
    image_folder,
    image_list_file,
    imagenet_split,
    places205_split,
    read_image_bgr,
    ten_crops,
)

skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (test extra): real sample photos")
PHOTOS = Path(skimage_data.__file__).parent  # astronaut.png, chelsea.png, coffee.png, rocket.jpg, ...
MEAN = (104.0, 117.0, 123.0)


def _grace_hopper() -> Path:
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def test_png_and_jpeg_decode_as_caffe_reads_them():
    for name, rgb in (("astronaut.png", skimage_data.astronaut()), ("chelsea.png", skimage_data.chelsea())):
        image = read_image_bgr(PHOTOS / name)
        assert image.dtype == np.uint8 and image.shape == rgb.shape
        np.testing.assert_array_equal(image, rgb[:, :, ::-1])  # lossless: skimage's decoder, channels swapped
    grey = read_image_bgr(PHOTOS / "camera.png")  # a grey photo becomes three equal channels (CV_LOAD_IMAGE_COLOR)
    assert grey.shape == (512, 512, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    np.testing.assert_array_equal(grey[..., 1], skimage_data.camera())
    jpeg = PHOTOS / "rocket.jpg"
    np.testing.assert_array_equal(read_image_bgr(jpeg), cv2.imread(str(jpeg), cv2.IMREAD_COLOR))


def test_truncated_files_are_refused_where_opencv_fills_grey(tmp_path):
    data = _grace_hopper().read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    filled = cv2.imread(str(cut), cv2.IMREAD_COLOR)  # OpenCV alone: a full-size image, bottom rows grey
    assert filled is not None and filled.shape == (600, 512, 3) and np.all(filled[-20:] == 128)
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated JPEG"):
        read_image_bgr(cut)
    no_eoi = tmp_path / "no_eoi.jpg"
    no_eoi.write_bytes(data[:-2])  # only the end-of-image marker missing
    with pytest.raises(ImageReadError, match="no_eoi.jpg: truncated JPEG"):
        read_image_bgr(no_eoi)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + b"\x00" * 16)  # bytes after a complete image are tolerated, as decoders do
    np.testing.assert_array_equal(read_image_bgr(padded), read_image_bgr(_grace_hopper()))

    png = (PHOTOS / "coffee.png").read_bytes()
    half = tmp_path / "half.png"
    half.write_bytes(png[: len(png) // 2])
    with pytest.raises(ImageReadError, match="half.png: truncated PNG"):
        read_image_bgr(half)
    no_iend = tmp_path / "no_iend.png"
    no_iend.write_bytes(png[:-12])
    with pytest.raises(ImageReadError, match="no_iend.png: truncated PNG"):
        read_image_bgr(no_iend)

    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.jpg: OpenCV cannot decode"):
        read_image_bgr(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png: the file is empty"):
        read_image_bgr(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="missing.jpg: cannot be read"):
        read_image_bgr(tmp_path / "missing.jpg")


def test_exif_rotation_is_ignored_and_reported(tmp_path):
    from PIL import Image

    rgb = skimage_data.chelsea()  # 300 x 451
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "tagged.jpg"
    Image.fromarray(rgb).save(path, quality=95, exif=exif)
    assert cv2.imread(str(path), cv2.IMREAD_COLOR).shape == (451, 300, 3)  # plain OpenCV >= 3.1 rotates
    with pytest.warns(ImageOrientationWarning, match="tagged.jpg: EXIF orientation 6"):
        image = read_image_bgr(path)
    assert image.shape == (300, 451, 3)  # as stored, as Caffe read it
    Image.fromarray(rgb).save(tmp_path / "plain.jpg", quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image_bgr(tmp_path / "plain.jpg")


def _folder(root: Path, layout: dict[str, list[str]]) -> Path:
    for cls, names in layout.items():
        for name in names:
            target = root / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PHOTOS / Path(name).name, target)
    return root


def test_image_folder_matches_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _folder(tmp_path / "set", {"cat": ["chelsea.png", "deeper/coffee.png"], "astro": ["astronaut.png"],
                                      "rocket": ["rocket.jpg", "camera.png"]})
    (root / "cat" / "readme.txt").write_text("skipped: not an image")
    listing = image_folder(root)
    reference = ImageFolder(str(root))
    assert listing.classes == reference.classes == ["astro", "cat", "rocket"]
    assert [(p, y) for p, y in listing.samples] == reference.samples

    (root / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty: no image files"):
        image_folder(root)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(PHOTOS / "coffee.png", flat)
    with pytest.raises(DatasetLayoutError, match="holds 1 images directly"):
        image_folder(flat)


def test_imagenet_layouts(tmp_path):
    root = _folder(tmp_path / "imagenet", {"train/n00000001": ["chelsea.png"], "train/n00000002": ["coffee.png"],
                                           "val/n00000002": ["astronaut.png"]})
    train, val = imagenet_split(root, "train"), imagenet_split(root, "val")
    assert train.classes == val.classes == ["n00000001", "n00000002"]
    assert [y for _, y in val.samples] == [1]  # labelled with train's classes although val lacks the first one
    assert imagenet_split(root / "train", "train").samples == train.samples  # the split folder itself
    flat = tmp_path / "lists"
    (flat / "val").mkdir(parents=True)
    shutil.copy(PHOTOS / "coffee.png", flat / "val" / "ILSVRC2012_val_00000001.png")
    (flat / "val.txt").write_text("ILSVRC2012_val_00000001.png 65\n")
    assert imagenet_split(flat, "val").samples == [(str(flat / "val" / "ILSVRC2012_val_00000001.png"), 65)]
    with pytest.raises(DatasetLayoutError, match="WordNet-id class folders"):
        imagenet_split(_folder(tmp_path / "other", {"cats": ["chelsea.png"]}), "train")


def test_places205_lists(tmp_path):
    root = tmp_path / "places"
    images = _folder(root / "data/vision/torralba/deeplearning/images256",
                     {"a/abbey": ["coffee.png"], "c/church/outdoor": ["chelsea.png", "astronaut.png"]})
    lists = root / "trainvalsplit_places205"
    lists.mkdir()
    (lists / "train_places205.csv").write_text("a/abbey/coffee.png 0\nc/church/outdoor/chelsea.png 2\n")
    (lists / "val_places205.csv").write_text("c/church/outdoor/astronaut.png 2\n")
    train = places205_split(root, "train")
    assert train.samples == [(str(images / "a/abbey/coffee.png"), 0), (str(images / "c/church/outdoor/chelsea.png"), 2)]
    assert train.classes == ["abbey", "1", "church/outdoor"]
    assert places205_split(root, "val").samples[0].label == 2
    shutil.rmtree(root / "data")
    with pytest.raises(DatasetLayoutError, match="first image a/abbey/coffee.png is under none of"):
        places205_split(root, "train")
    with pytest.raises(DatasetLayoutError, match="train_places205.csv and val_places205.csv"):
        places205_split(tmp_path, "train")


def test_image_list_files(tmp_path):
    shutil.copy(PHOTOS / "coffee.png", tmp_path / "my coffee.png")
    (tmp_path / "list.txt").write_text("my coffee.png 3\n\n")
    listing = image_list_file(tmp_path / "list.txt", tmp_path)
    assert listing.samples == [(str(tmp_path / "my coffee.png"), 3)] and listing.classes == ["0", "1", "2", "3"]
    (tmp_path / "bad.txt").write_text("my coffee.png 3\nnolabel.png\n")
    with pytest.raises(DatasetLayoutError, match=r"bad.txt:2: expected 'relative/path label'"):
        image_list_file(tmp_path / "bad.txt", tmp_path)
    with pytest.raises(DatasetLayoutError, match="is not under"):
        image_list_file(tmp_path / "list.txt", tmp_path / "elsewhere")


def _caffe_transform_reference(image, *, h_off, w_off, crop, mirror, mean, scale):
    """DataTransformer::Transform for an 8-bit HxWxC image, as plain loops in float64."""
    channels = image.shape[2]
    out = np.zeros((channels, crop, crop))
    mean = np.asarray(mean, dtype=np.float64)
    for h in range(crop):
        for w in range(crop):
            for c in range(channels):
                pixel = float(image[h_off + h, w_off + w, c])
                m = mean[h_off + h, w_off + w, c] if mean.ndim == 3 else mean[c]
                out[c, h, crop - 1 - w if mirror else w] = (pixel - m) * scale
    return out


def test_caffe_transform_against_data_transformer():
    image = read_image_bgr(PHOTOS / "chelsea.png")  # 300 x 451
    small = cv2.resize(image, (24, 16), interpolation=cv2.INTER_LINEAR)  # W 24, H 16
    # TEST phase: centre crop at ((16 - 12) // 2, (24 - 12) // 2), no mirror
    test = caffe_transform(mean_bgr=MEAN, crop=12, scale=0.5)
    expected = _caffe_transform_reference(small, h_off=2, w_off=6, crop=12, mirror=False, mean=MEAN, scale=0.5)
    np.testing.assert_allclose(test(small).numpy(), expected, rtol=0, atol=1e-5)
    # TRAIN phase: each draw is one of Caffe's windows; offsets cover 0..H-crop inclusive, mirror about half
    train = caffe_transform(mean_bgr=MEAN, crop=12, train=True)
    # integer pixels minus integer means are exact in float32, so windows can be looked up by their bytes
    candidates = {_caffe_transform_reference(small, h_off=y, w_off=x, crop=12, mirror=m, mean=MEAN, scale=1)
                  .astype(np.float32).tobytes(): (y, x, m) for y in range(5) for x in range(13) for m in (False, True)}
    assert len(candidates) == 130
    rng = np.random.default_rng(0)
    seen = [candidates[train(small, rng).numpy().tobytes()] for _ in range(300)]
    assert {y for y, _, _ in seen} == set(range(5)) and {x for _, x, _ in seen} == set(range(13))
    assert 0.4 < np.mean([m for _, _, m in seen]) < 0.6
    # a mean image is cropped at the same offsets (mean_file)
    mean_image = np.random.default_rng(1).uniform(90, 130, size=(16, 24, 3))
    out = caffe_transform(mean_bgr=mean_image, crop=12)(small).numpy()
    ref = _caffe_transform_reference(small, h_off=2, w_off=6, crop=12, mirror=False, mean=mean_image, scale=1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        train(small)


def test_shorter_side_resize_and_ten_crops():
    image = read_image_bgr(PHOTOS / "chelsea.png")  # 300 x 451 -> 256 x round(451 * 256 / 300) = 385
    resized = caffe_transform(mean_bgr=MEAN, resize=256)(image)
    assert resized.shape == (3, 256, 385)
    direct = cv2.resize(image, (385, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32) - np.float32(MEAN)
    np.testing.assert_array_equal(resized.numpy(), direct.transpose(2, 0, 1))
    warped = caffe_transform(mean_bgr=MEAN, resize=(256, 256), crop=227)(image)
    assert warped.shape == (3, 227, 227)

    crops = ten_crops(resized, 227)
    assert crops.shape == (10, 3, 227, 227)
    # pycaffe oversample: corners (0,0) (0,W-c) (H-c,0) (H-c,W-c), centre int(H/2 - c/2) = 14, int(W/2 - c/2) = 79
    for k, (y, x) in enumerate([(0, 0), (0, 158), (29, 0), (29, 158), (14, 79)]):
        window = resized[:, y:y + 227, x:x + 227]
        assert torch.equal(crops[k], window) and torch.equal(crops[k + 5], window.flip(-1))


def test_image_dataset_draws_per_sample_and_epoch(tmp_path):
    listing = image_folder(_folder(tmp_path / "set", {"a": ["chelsea.png"], "b": ["coffee.png"]}))
    dataset = ImageDataset(listing.samples, caffe_transform(mean_bgr=MEAN, resize=64, crop=48, train=True), seed=5)
    first = [dataset[i] for i in range(2)]
    again = [dataset[i] for i in range(2)]
    assert all(torch.equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(first, again))
    assert [(y, i) for _, y, i in first] == [(0, 0), (1, 1)]
    draws = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        draws.add(dataset[0][0].numpy().tobytes())
    assert len(draws) > 1  # another epoch, another crop
