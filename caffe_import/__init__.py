"""caffe_import: an exact, Caffe-free importer of Caffe models (prototxt + caffemodel) into PyTorch.

    net = caffe_import.load("deploy.prototxt", "weights.caffemodel")
    blobs = net(data=x)                       # {output blob: tensor}
    conv4 = net(data=x, outputs=["conv4"])    # intermediate blobs, as pycaffe's net.blobs shows them

Depends on torch, torchvision, numpy, protobuf (and onnx for export) only — never on the rest of jigsawpp.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from caffe_import.errors import CaffeImportError, CaffeImportWarning
from caffe_import.graph import Graph, Layer, NetState, build_graph
from caffe_import.layers import register, register_python, supported_types
from caffe_import.net import CaffeNet
from caffe_import.onnx_export import check_onnx, export_onnx
from caffe_import.parse import read_caffemodel, read_caffemodel_arrays, read_prototxt, read_prototxt_string
from caffe_import.proto import caffe_pb2
from caffe_import.weights import WeightReport, load_weights
from caffe_import.writer import save_caffemodel

__all__ = [
    "CaffeImportError", "CaffeImportWarning", "CaffeNet", "Graph", "Layer", "NetState", "WeightReport", "build_graph",
    "check_onnx", "export_onnx", "load", "load_weights", "read_caffemodel", "read_caffemodel_arrays", "read_prototxt",
    "read_prototxt_string", "register", "register_python", "save_caffemodel", "supported_types",
]

PathOrNet = str | os.PathLike[str] | caffe_pb2.NetParameter


def _as_net(value: PathOrNet, reader) -> tuple[caffe_pb2.NetParameter, str]:
    if isinstance(value, caffe_pb2.NetParameter):
        return value, f"<NetParameter {value.name or 'net'}>"
    return reader(value), str(Path(value))


def load(
    prototxt: PathOrNet,
    caffemodel: PathOrNet | None = None,
    *,
    outputs: Iterable[str] | None = None,
    inputs: Mapping[str, Sequence[int]] | None = None,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
    strict: bool = False,
    allow_missing: bool = False,
    seed: int | None = 0,
) -> CaffeNet:
    """Load a Caffe net as a ready-to-run PyTorch module (TEST phase, eval mode).

    Args:
        prototxt: the net definition (text prototxt path, or a parsed NetParameter).
        caffemodel: trained weights (binary caffemodel path or NetParameter); without it, parameters come from the
            layers' Caffe fillers, seeded by `seed`.
        outputs: Caffe blob names to compute; the graph is pruned to what they need (heads with unsupported layers
            can then be left out) and these become the outputs. Default: tops no later layer consumes.
        inputs: extra input blobs {name: shape} that cut the net there (turns a train_val net into a deploy net).
        phase: "TEST" (default) or "TRAIN" include/exclude rules.
        stages, level: the rest of Caffe's NetState, as `caffe.Net(prototxt, phase, level=, stages=)` takes them:
            a layer's include/exclude rules are evaluated against (phase, level, stages), the stages being added to
            the file's own `state { stage }`. A DIGITS-style prototxt (train, val and deploy in one file) loads as
            its deploy net with `stages=["deploy"]`.
        strict: unused caffemodel layers with weights become an error instead of a note.
        allow_missing: blobs missing from the caffemodel are filled by their fillers instead of raising (a shared
            param stored under any of its layers is not missing, and is never overwritten by a filler).

    `net.weight_report` says what was loaded, filled and shared (`WeightReport`); `net.graph.state` the NetState.
    """
    net_param, source = _as_net(prototxt, read_prototxt)
    graph = build_graph(net_param, phase=phase, stages=stages, level=level, outputs=outputs,
                        inputs={k: tuple(v) for k, v in (inputs or {}).items()}, source=source)
    net = CaffeNet(graph)
    if caffemodel is None:
        import torch

        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        net.materialize(generator=generator)
    else:
        lifted = None
        if isinstance(caffemodel, caffe_pb2.NetParameter):
            weights, weights_source = _as_net(caffemodel, read_caffemodel)
        else:
            (weights, lifted), weights_source = read_caffemodel_arrays(caffemodel), str(Path(caffemodel))
        net.weight_report = vars(load_weights(net, weights, strict=strict, allow_missing=allow_missing,
                                              source=weights_source, lifted=lifted))
    net.train(phase == "TRAIN")
    return net
