"""The caffemodel fast path (`caffe_import.wire`): lifting blob payloads out of the bytes must change nothing.

The oracle is the protobuf runtime itself: putting each lifted array back into the parsed, stripped message must
give exactly the message protobuf parses from the untouched bytes (compared as deterministic serializations), on
random nets covering every payload alignment, V1 layers, double_data, empty blobs, and on hand-encoded bytes that
protobuf accepts but the fast path must leave alone (unpacked floats, data split over two chunks, repeated names).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from caffe_import import CaffeImportError
from caffe_import.parse import read_caffemodel, read_caffemodel_arrays, upgrade_net
from caffe_import.proto import caffe_pb2
from caffe_import.wire import WireError, lift_blob_data
from jigsawpp.fixtures import seeded_caffemodel


def parse(data: bytes) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    return net


def put_back(stripped: bytes, arrays: dict) -> caffe_pb2.NetParameter:
    """The stripped message with every lifted array written back into its blob."""
    net = parse(stripped)
    for layers in (net.layer, net.layers):
        for layer in layers:
            for i, blob in enumerate(layer.blobs):
                if (layer.name, i) in arrays:
                    assert not len(blob.data), "a lifted blob still carries data"
                    blob.data.extend(arrays[(layer.name, i)].tolist())
    return net


def serialized(net: caffe_pb2.NetParameter) -> bytes:
    return net.SerializeToString(deterministic=True)


def random_net(rng: np.random.Generator, *, v1: bool) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="n" * int(rng.integers(0, 4)))
    for k in range(int(rng.integers(1, 7))):
        layer = net.layers.add() if v1 else net.layer.add()
        layer.name = f"l{k}" + "x" * int(rng.integers(0, 5))   # shifts every later offset by 0..4 bytes
        if v1:
            layer.type = caffe_pb2.V1LayerParameter.CONVOLUTION
        else:
            layer.type = "Convolution"
        layer.bottom.append("b" * int(rng.integers(1, 4)))
        for _ in range(int(rng.integers(0, 4))):
            blob = layer.blobs.add()
            count = int(rng.choice([0, 1, 2, 3, 5, 31, 32, 33, 200, 1000]))
            if count:
                blob.shape.dim.append(count)
            if rng.random() < 0.15:
                blob.double_data.extend(rng.standard_normal(count).tolist())
            else:
                blob.data.extend(rng.standard_normal(count).astype(np.float32).tolist())
    return net


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("holder", ["bytearray", "mmap", "bytes"])
def test_lifting_then_putting_back_gives_protobufs_own_parse(seed: int, holder: str):
    rng = np.random.default_rng(seed)
    data = serialized(random_net(rng, v1=seed % 3 == 0))
    buffer = {"bytearray": lambda: bytearray(data), "bytes": lambda: data}.get(holder, lambda: None)()
    if holder == "mmap":
        buffer = mmap.mmap(-1, len(data))
        buffer[:] = data
    stripped, arrays = lift_blob_data(buffer)
    assert serialized(put_back(stripped, arrays)) == serialized(parse(data))
    for array in arrays.values():
        assert array.dtype == np.float32 and array.ctypes.data % 4 == 0
        assert array.flags.writeable                 # read-only bytes are copied, torch needs writable storage
    expected = sum(len(b.data) > 0 for layer in list(parse(data).layer) + list(parse(data).layers) for b in layer.blobs)
    assert len(arrays) == expected                   # every blob with data was lifted (names are unique here)


def test_arrays_are_fresh_aligned_writable_and_independent_of_the_source():
    """Small payloads are numpy copies, large ones (>= 1 MiB) their own mapping; none views the file's bytes, at
    any byte offset the payload happens to have in the file."""
    offsets = set()
    for pad in range(4):
        for count in (64, (1 << 18) + 3):
            net = caffe_pb2.NetParameter()
            layer = net.layer.add(name="c" + "p" * pad, type="InnerProduct")
            layer.blobs.add().data.extend(np.arange(count, dtype=np.float32).tolist())
            data = serialized(net)
            offsets.add(data.index(struct.pack("<f", 1.0)) % 4)
            buffer = bytearray(data)
            _, arrays = lift_blob_data(buffer)
            array = arrays[(layer.name, 0)]
            assert not np.shares_memory(array, np.frombuffer(buffer, np.uint8))
            assert array.ctypes.data % 16 == 0 and array.flags.writeable and array.dtype == np.float32
            assert np.array_equal(array, np.arange(count, dtype=np.float32))
    assert offsets == {0, 1, 2, 3}


# Hand-encoded wire bytes: what protobuf accepts but the fast path must leave to protobuf.
def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def field(number: int, body: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(body)) + body


def packed(values) -> bytes:
    return field(5, struct.pack(f"<{len(values)}f", *values))


def unpacked(values) -> bytes:
    return b"".join(varint(5 << 3 | 5) + struct.pack("<f", v) for v in values)


def v2_layer(name: str, *blobs: bytes) -> bytes:
    return field(100, field(1, name.encode()) + b"".join(field(7, b) for b in blobs))


@pytest.mark.parametrize("case", ["unpacked", "split", "repeated name", "mixed"])
def test_encodings_left_to_protobuf_parse_the_same(case: str):
    a, b = [1.5, -2.0, 3.25], [4.0, 5.5]
    data = {
        "unpacked": v2_layer("fc", unpacked(a)),
        "split": v2_layer("fc", packed(a) + packed(b)),                    # protobuf concatenates the chunks
        "repeated name": v2_layer("fc", packed(a)) + v2_layer("fc", packed(b)),
        "mixed": v2_layer("fc", packed(a) + unpacked(b)),
    }[case]
    stripped, arrays = lift_blob_data(bytearray(data))
    assert arrays == {}
    assert serialized(parse(stripped)) == serialized(parse(data))


def test_bytes_that_do_not_walk_raise_wire_error_and_are_left_untouched():
    good = v2_layer("fc", packed([1.0] * 40))
    for bad in (good[:-3], good + b"\x07", good + b"\x0b\x00"):   # truncated; wire type 7; a group (3)
        mapping = mmap.mmap(-1, len(bad))
        mapping[:] = bad
        with pytest.raises(WireError):
            lift_blob_data(mapping)
        assert mapping[:] == bad
        mapping.close()                                              # no view of it is left behind


def test_truncated_caffemodel_keeps_the_protobuf_error(tmp_path: Path):
    path = tmp_path / "cut.caffemodel"
    seeded_caffemodel(prototxt.path("caffenet/deploy.prototxt"), path)
    path.write_bytes(path.read_bytes()[:-1000])
    for reader in (read_caffemodel, read_caffemodel_arrays):
        with pytest.raises(CaffeImportError, match="not a binary Caffe NetParameter"):
            reader(path)


def test_read_caffemodel_arrays_matches_read_caffemodel_on_v1_and_v2_files(tmp_path: Path):
    path = tmp_path / "caffenet.caffemodel"
    seeded_caffemodel(prototxt.path("caffenet/deploy.prototxt"), path, seed=5)
    v2 = read_caffemodel(path)
    v1 = caffe_pb2.NetParameter(name="v1")                   # the same weights in V1 `layers` entries
    for layer in v2.layer:
        old = v1.layers.add(name=layer.name, type=caffe_pb2.V1LayerParameter.CONVOLUTION)
        old.blobs.extend(layer.blobs)
    v1_path = tmp_path / "v1.caffemodel"
    v1_path.write_bytes(v1.SerializeToString())
    for source, expected in ((path, v2), (v1_path, upgrade_net(v1, source="v1"))):
        net, arrays = read_caffemodel_arrays(source)
        assert len(arrays) == sum(len(layer.blobs) for layer in expected.layer) > 0
        for layer, mine in zip(expected.layer, net.layer, strict=True):
            for i, blob in enumerate(layer.blobs):
                assert np.array_equal(arrays[(layer.name, i)], np.array(blob.data, np.float32))
                assert mine.blobs[i].shape == blob.shape


def test_load_from_path_equals_load_from_parsed_message(tmp_path: Path):
    """The fast path (a file) and the plain path (a NetParameter) bind identical weights."""
    deploy = prototxt.path("caffenet/deploy.prototxt")
    path = tmp_path / "caffenet.caffemodel"
    seeded_caffemodel(deploy, path, seed=9)
    fast = caffe_import.load(deploy, path)
    plain = caffe_import.load(deploy, read_caffemodel(path))
    fast_state, plain_state = fast.state_dict(), plain.state_dict()
    assert fast_state.keys() == plain_state.keys()
    assert all(torch.equal(fast_state[k], plain_state[k]) for k in fast_state)
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        # equal up to BLAS summation order, which for batch 1 (gemv) may follow the weights' memory alignment
        torch.testing.assert_close(fast(data=x)["prob"], plain(data=x)["prob"], rtol=1e-5, atol=1e-7)
    next(iter(fast.parameters())).data.add_(1.0)    # the bound storage is writable
