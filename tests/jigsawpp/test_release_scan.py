"""A release zip's caffemodel member is read through the wire path (`caffe_import.wire`), with protobuf's values.

The reference values come from `caffe_import.read_caffemodel` (protobuf alone, no lifting); they must be equal
exactly, since both paths copy the same float32 bytes.
"""

from __future__ import annotations

import numpy as np
import pytest

import caffe_import
from jigsawpp.release_scan import ReleaseError, describe_caffemodel, parse_caffemodel


def test_member_bytes_are_lifted_into_arrays_equal_to_protobufs(conv_caffemodel):
    data = conv_caffemodel.read_bytes()
    net, arrays = parse_caffemodel("conv.caffemodel", bytearray(data))
    reference = caffe_import.read_caffemodel(conv_caffemodel)
    blobs = [(lp, i) for lp in reference.layer for i in range(len(lp.blobs))]
    assert len(blobs) == 10 and set(arrays) == {(lp.name, i) for lp, i in blobs}
    for lp, i in blobs:
        np.testing.assert_array_equal(arrays[(lp.name, i)], np.asarray(lp.blobs[i].data, np.float32))
    assert not any(len(b.data) for lp in net.layer for b in lp.blobs)      # the payloads were lifted out
    info = describe_caffemodel("conv.caffemodel", net, arrays)
    assert info.kind == "alexnet" and info.layers["conv2"] == ((256, 48, 5, 5), (256,))
    weights = info.weights_for(["conv2", "conv5"], collapsed=False)
    assert [lp.name for lp in weights.net.layer] == ["conv2", "conv5"] and set(weights.arrays) == {
        ("conv2", 0), ("conv2", 1), ("conv5", 0), ("conv5", 1)}
    assert weights.arrays[("conv5", 1)] is arrays[("conv5", 1)]


def test_what_the_wire_walk_leaves_alone_keeps_protobufs_values(conv_caffemodel):
    """Layers whose name repeats are not lifted (the wire walk cannot tell which one a key means)."""
    net = caffe_import.read_caffemodel(conv_caffemodel)
    twin = net.layer.add()
    twin.CopyFrom(next(lp for lp in net.layer if lp.name == "conv3"))
    twin.blobs[1].data[0] += 1.0                         # Caffe and our index keep the last layer of a name
    parsed, arrays = parse_caffemodel("twin.caffemodel", net.SerializeToString())
    assert ("conv3", 0) not in arrays and ("conv4", 0) in arrays
    weights = describe_caffemodel("twin.caffemodel", parsed, arrays).weights_for(["conv3"], collapsed=False)
    assert not weights.arrays
    np.testing.assert_array_equal(np.asarray(weights.net.layer[0].blobs[1].data, np.float32),
                                  np.asarray(twin.blobs[1].data, np.float32))


def test_a_truncated_member_gets_protobufs_error(conv_caffemodel):
    data = conv_caffemodel.read_bytes()
    with pytest.raises(ReleaseError, match="half.caffemodel: not a binary Caffe NetParameter .*corrupt or truncated"):
        parse_caffemodel("half.caffemodel", data[: len(data) // 2])
