"""Score a prototxt of a release zip against its caffemodel: does it fit, in which view, and what it describes.

A prototxt is text that parses as a `NetParameter` with layers; it is scored by how many of its weight layers
match the caffemodel's layers by name AND blob shape (shapes inferred by building the net on the meta device),
directly or after collapsing the 9 towers of a context-free network (`conv1_s1..conv1_s9` -> `conv1`). A deploy
fits when loading the caffemodel into it succeeds; the score also records conv1's stride, the input shape and
pool5's shape, which decide the variant a deploy can serve (`jigsawpp.release_variants`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import caffe_import
from caffe_import.proto import caffe_pb2
from caffe_import.weights import blob_shape, shape_equals
from jigsawpp.release_scan import SOLVER_HINT, WEIGHT_TYPES, CaffemodelInfo, Shape

__all__ = ["PrototxtScore", "conv1_stride", "expected_weight_shapes", "input_shape", "read_prototxt_text",
           "score_prototxt"]


@dataclass(frozen=True)
class PrototxtScore:
    """How well one prototxt describes the caffemodel."""

    member: str
    net_name: str
    role: str                  # "deploy" (has inputs), "train_val" (data layers, no Input), "not a net"
    mode: str | None           # "raw" (names as in the caffemodel) or "towers collapsed"
    matched: tuple[str, ...]   # weight layers matching by name and shape
    mismatched: tuple[str, ...]  # "<layer>: <prototxt shapes> vs <caffemodel shapes>"
    missing: tuple[str, ...]   # weight layers the caffemodel lacks
    unused: tuple[str, ...]    # caffemodel layers (in that mode) the prototxt does not use
    conv1_stride: int | None
    input_shape: Shape | None
    notes: tuple[str, ...]
    net: caffe_pb2.NetParameter | None = field(default=None, repr=False, compare=False)
    text: str = field(default="", repr=False, compare=False)
    pool5: Shape | None = None   # output shape of the last Pooling layer (AlexNet's pool5) at the input size

    @property
    def fits(self) -> bool:
        """True when loading the caffemodel into this prototxt succeeds (every weight layer found, shapes equal)."""
        return self.role == "deploy" and bool(self.matched) and not self.mismatched and not self.missing

    @property
    def n_weight_layers(self) -> int:
        return len(self.matched) + len(self.mismatched) + len(self.missing)

    @property
    def rank(self) -> tuple:
        coverage = len(self.matched) / max(len(self.matched) + len(self.unused), 1)
        return (self.fits, len(self.matched) / max(self.n_weight_layers, 1), coverage, -len(self.mismatched))

    @property
    def why(self) -> str:
        if self.role != "deploy" and self.role != "train_val":
            return self.role
        parts = [f"{len(self.matched)}/{self.n_weight_layers} weight layers match the caffemodel by name and shape"
                 + (f" ({self.mode})" if self.mode else "")]
        if self.mismatched:
            parts.append("shape mismatch " + "; ".join(self.mismatched[:3]))
        if self.missing:
            parts.append(f"not in the caffemodel: {', '.join(self.missing[:6])}")
        if self.unused:
            parts.append(f"caffemodel layers it does not use: {', '.join(self.unused[:6])}"
                         + (", ..." if len(self.unused) > 6 else ""))
        if self.conv1_stride:
            parts.append(f"conv1 stride {self.conv1_stride}")
        if self.input_shape:
            parts.append(f"input {'x'.join(map(str, self.input_shape))}")
        if self.pool5:
            parts.append(f"pool5 {'x'.join(map(str, self.pool5[1:]))}")
        if self.role == "train_val":
            parts.append("a train/val net (no Input layer), not a deploy")
        return "; ".join(parts)


def read_prototxt_text(member: str, text: str) -> tuple[caffe_pb2.NetParameter, tuple[str, ...]]:
    """Parse prototxt text, turning the importer's warnings (unknown fork fields) into notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = caffe_import.read_prototxt_string(text, source=member)
    return net, tuple(str(w.message) for w in caught)


class DeployShapes(NamedTuple):
    weights: dict[str, tuple[Shape, ...]]   # weight layer -> blob shapes (() each when the net cannot be built)
    role: str                               # "deploy", "train_val" or "deploy?"
    note: str                               # why the net cannot be built, or ""
    pool5: Shape | None                     # output shape of the last Pooling layer


def expected_weight_shapes(net: caffe_pb2.NetParameter, member: str) -> DeployShapes:
    """Weight shapes and pool5 by building the net on the meta device (no memory, no fillers)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = caffe_import.build_graph(net, phase="TEST", source=member)
            cnet = caffe_import.CaffeNet(graph)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable as a deploy"; say why
        shapes = {lp.name: () for lp in net.layer if lp.type in WEIGHT_TYPES}
        role = "train_val" if any(lp.type in ("Data", "ImageData", "HDF5Data", "WindowData") for lp in net.layer) \
            else "deploy?"
        return DeployShapes(shapes, role, f"cannot build the net: {exc}", None)
    shapes = {}
    pool5 = None
    for layer in cnet.layers_with_shapes:
        module = cnet.module_of(layer.name)
        if module.caffe_blobs:
            shapes[layer.name] = tuple(tuple(getattr(module, a).shape) for a in module.caffe_blobs)
        if layer.type == "Pooling" and layer.blob_tops[0] in cnet.blob_shapes:
            pool5 = tuple(cnet.blob_shapes[layer.blob_tops[0]])
    return DeployShapes(shapes, "deploy", "", pool5)


def conv1_stride(net: caffe_pb2.NetParameter) -> int | None:
    """Stride of the first convolution (conv1, or conv1_s1 in a CFN)."""
    for lp in net.layer:
        if lp.type == "Convolution":
            p = lp.convolution_param
            return int(p.stride[0]) if len(p.stride) else int(p.stride_h or 1)
    return None


def input_shape(net: caffe_pb2.NetParameter) -> Shape | None:
    for lp in net.layer:
        if lp.type == "Input" and len(lp.input_param.shape):
            return tuple(int(d) for d in lp.input_param.shape[0].dim)
    return None


def score_prototxt(member: str, text: str, model: CaffemodelInfo | None) -> PrototxtScore:
    """Parse `text` and match its weight layers against `model` (raw names and tower-collapsed names)."""
    try:
        net, notes = read_prototxt_text(member, text)
    except Exception as exc:  # noqa: BLE001
        return PrototxtScore(member, "", f"not a net ({str(exc)[:160]})", None, (), (), (), (), None, None, ())
    weight_layers = [lp for lp in net.layer if lp.type in WEIGHT_TYPES]
    if not weight_layers:
        what = "a solver, not a net" if SOLVER_HINT.search(text) else "not a net (no layers with weights)"
        return PrototxtScore(member, net.name, what, None, (), (), (), (), None, None, notes)
    shapes, role, note, pool5 = expected_weight_shapes(net, member)
    notes = notes + ((note,) if note else ())
    best: PrototxtScore | None = None
    views = [("raw", False)] + ([("towers collapsed", True)] if model is not None and model.towers else [])
    for mode, collapsed in views:
        table = (model.collapsed if collapsed else model.layers) if model is not None else {}
        matched, mismatched, missing = [], [], []
        for name, expected in shapes.items():
            blobs = model.blobs(name, collapsed=collapsed) if model is not None else None
            if blobs is None:
                missing.append(name)
            elif not expected:  # shapes unknown (net could not be built): name match only
                matched.append(name)
            elif len(blobs) == len(expected) and all(shape_equals(b, e) for b, e in zip(blobs, expected)):
                matched.append(name)
            else:
                got = [blob_shape(b) for b in blobs]
                mismatched.append(f"{name}: {list(expected)} vs {got}")
        unused = tuple(k for k in table if k not in shapes)
        candidate = PrototxtScore(member, net.name, role, mode if model is not None else None, tuple(matched),
                                  tuple(mismatched), tuple(missing), unused, conv1_stride(net), input_shape(net),
                                  notes, net, text, pool5)
        if best is None or candidate.rank > best.rank:
            best = candidate
    assert best is not None
    return best
