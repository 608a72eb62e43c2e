"""Write a `CaffeNet`'s weights as a binary caffemodel that Caffe and OpenCV read back.

The caffemodel is a `NetParameter` whose layers carry their `blobs` (BVLC `Net::ToProto`). Filling repeated
float fields through the Python protobuf API costs seconds per million values, so blob payloads are encoded on
the wire directly (BlobProto `shape` = field 7, packed `data` = field 5; LayerParameter `blobs` = field 7;
NetParameter `layer` = field 100), streamed to a temp file and renamed into place: a failed write leaves nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from caffe_import.proto import caffe_pb2
from caffe_import.wire import encode_varint as _varint

_LEN = 2  # protobuf wire type for length-delimited fields


def _tag(field_number: int) -> bytes:
    return _varint((field_number << 3) | _LEN)


def encode_blob(array: np.ndarray) -> list[bytes]:
    """BlobProto wire pieces for a float32 array: shape (field 7) then packed data (field 5)."""
    # Take the shape first: np.ascontiguousarray turns a 0-axis blob (PReLU channel_shared, Scale num_axes 0) into (1,).
    dims = [int(d) for d in np.shape(array)]
    array = np.ascontiguousarray(array, dtype="<f4")
    shape = caffe_pb2.BlobShape(dim=dims).SerializeToString()
    payload = array.tobytes()
    return [_tag(7), _varint(len(shape)), shape, _tag(5), _varint(len(payload)), payload]


def _write_layer(handle: BinaryIO, layer: caffe_pb2.LayerParameter, blobs: list[np.ndarray]) -> None:
    head_msg = caffe_pb2.LayerParameter()
    head_msg.CopyFrom(layer)
    del head_msg.blobs[:]
    pieces = [head_msg.SerializeToString()]
    for array in blobs:
        blob_pieces = encode_blob(array)
        pieces += [_tag(7), _varint(sum(len(p) for p in blob_pieces))] + blob_pieces
    handle.write(_varint((100 << 3) | _LEN))
    handle.write(_varint(sum(len(p) for p in pieces)))
    for piece in pieces:
        handle.write(piece)


def save_caffemodel(net, path: str | os.PathLike[str]) -> Path:
    """Write `net` (a `CaffeNet`) as a caffemodel at `path`; returns the path.

    Every layer is written with its layer parameters and its blobs in Caffe order. Layers sharing a param
    (`param { name }`) each get a copy of the one shared blob in their own shape, as Caffe's `Net::ToProto` writes
    them (every layer's `Layer::ToProto`; BVLC `src/caffe/net.cpp` at c9f71bd), so Caffe, OpenCV and
    `caffe_import` read the file back whichever layer they take the blob from. An `Input` layer named "input"
    records the net's input shapes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = net.graph
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            name = graph.name.encode("utf-8")
            handle.write(_varint((1 << 3) | _LEN) + _varint(len(name)) + name)
            if graph.inputs:
                inp = caffe_pb2.LayerParameter(name="input", type="Input", top=list(graph.inputs))
                for blob in graph.inputs:
                    inp.input_param.shape.add().dim.extend(graph.input_shapes[blob])
                _write_layer(handle, inp, [])
            with torch.no_grad():
                for layer in net.layers_with_shapes:
                    module = net.module_of(layer.name)
                    arrays = [getattr(module, attr).detach().to("cpu", torch.float32).numpy()
                              for attr in module.caffe_blobs]
                    _write_layer(handle, layer.param, arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
