"""The small real image set: IDX parsing checked on hand-made bytes, and the ImageFolder layout written."""

from __future__ import annotations

import gzip

import cv2
import numpy as np
import pytest

from eval.probes.sample_data import fashion_mnist_dir, make_sample_folder, read_idx


def test_read_idx_bytes(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + np.array([2, 3, 4], ">i4").tobytes() + images.tobytes()
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + np.array([2, 3, 5], ">i4").tobytes() + images.tobytes())
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "bad")
    (tmp_path / "float").write_bytes(b"\x00\x00\x0d\x01" + np.array([1], ">i4").tobytes() + b"\x00" * 4)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "float")


@pytest.mark.parametrize("source", ["fashion-mnist", "digits"])
def test_sample_folder_layout(tmp_path, source):
    if source == "fashion-mnist" and fashion_mnist_dir() is None:
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/install.sh installs it)")
    folder = make_sample_folder(tmp_path, train_per_class=2, val_per_class=1, size=40, source=source)
    assert (folder.train_count, folder.val_count) == (20, 10)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(folder.classes)
    files = sorted((tmp_path / "val").rglob("*.png"))
    assert len(files) == 10
    image = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    assert image.shape == (40, 40, 3) and np.array_equal(image[..., 0], image[..., 2])  # gray in three channels
    if source == "fashion-mnist":  # real photos: the training labels say what the file says
        labels = read_idx(fashion_mnist_dir() / "train-labels-idx1-ubyte.gz")
        assert len(labels) == 60000 and set(np.unique(labels)) == set(range(10))
