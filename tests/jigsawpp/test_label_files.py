"""Pseudo-label files: every accepted format parses back to the names and labels that were written."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from jigsawpp.fixtures import LABEL_FORMATS, encode_labels, release_pseudo_labels
from jigsawpp.label_files import LabelFileError, guess_split, load_pseudo_labels, parse_label_file, save_pseudo_labels


@pytest.mark.parametrize("label_format", sorted(LABEL_FORMATS))
def test_every_format_round_trips(tmp_path, label_format):
    names, labels = release_pseudo_labels("train", 57, clusters=2000, seed=4)
    data = encode_labels(names, labels, label_format)
    parsed = parse_label_file(f"lists/train{LABEL_FORMATS[label_format]}", data)
    assert parsed.labels.dtype == np.int32
    np.testing.assert_array_equal(parsed.labels, labels)
    if label_format in ("labels_only", "npy"):
        assert not parsed.names_from_file
        assert list(parsed.names) == [str(i) for i in range(len(labels))]
    else:
        assert parsed.names_from_file
        assert list(parsed.names) == names
    saved = load_pseudo_labels(save_pseudo_labels(tmp_path / "train.npz", parsed))
    np.testing.assert_array_equal(saved.labels, parsed.labels)
    np.testing.assert_array_equal(saved.names, parsed.names)


def test_caffe_list_paths_may_contain_spaces():
    parsed = parse_label_file("train.txt", b"my photos/a b.JPEG 7\nc.JPEG 12\n")
    assert list(parsed.names) == ["my photos/a b.JPEG", "c.JPEG"]
    assert list(parsed.labels) == [7, 12]
    assert parsed.format == "text 'path label' (space-separated)"


def test_csv_with_extra_columns_uses_the_named_label_column():
    parsed = parse_label_file("val.csv", b"path,distance,cluster\na.JPEG,0.5,3\nb.JPEG,1.5,9\n")
    assert list(parsed.names) == ["a.JPEG", "b.JPEG"]
    assert list(parsed.labels) == [3, 9]


@pytest.mark.parametrize("data, message", [
    (b"a.JPEG 1\nb.JPEG x\n", "line 2: label 'x' is not an integer"),
    (b"a.JPEG 1\n7\n", "line 2 .* mixes 'label' lines"),
    (b"a.JPEG 99999999999\n", "do not fit int32"),
])
def test_bad_lines_are_reported_with_their_number(data, message):
    with pytest.raises(LabelFileError, match=message):
        parse_label_file("train.txt", data)


def test_gzip_bomb_is_refused():
    from jigsawpp.label_files import gunzip_capped

    bomb = gzip.compress(b"0\n" * (1 << 20))
    with pytest.raises(LabelFileError, match="decompresses to more than"):
        gunzip_capped(bomb, source="train.txt.gz", limit=1 << 20)


def test_split_from_path_then_from_image_names():
    val_names, val_labels = release_pseudo_labels("val", 20, clusters=10)
    train_names, train_labels = release_pseudo_labels("train", 20, clusters=10)
    assert guess_split("x/imagenet_train_clusters.txt")[0] == "train"
    assert guess_split("x/val.npy")[0] == "val"
    val = parse_label_file("a.txt", encode_labels(val_names, val_labels, "txt"))
    train = parse_label_file("b.txt", encode_labels(train_names, train_labels, "txt"))
    assert guess_split("lists/a.txt", val) == ("val", "names are ILSVRC2012_val_* images")
    assert guess_split("lists/b.txt", train)[0] == "train"
    assert guess_split("lists/c.txt", None)[0] is None
