"""Find the parts of a release zip by content: caffemodel, deploy prototxt(s), pseudo-label lists, permutations.

The zips' layout is undocumented (research notes, section 1.2), so nothing here trusts folder or file names alone:

* a caffemodel is a binary `NetParameter` whose layers carry blobs, read from the member's bytes as
  `caffe_import.read_caffemodel_arrays` reads a file (`caffe_import.wire`: the float payloads are lifted into
  numpy arrays before protobuf parses the rest; about twice as fast as converting parsed repeated fields on
  release-size caffemodels, benchmarks/onnx_speed.py);
* a prototxt is text that parses as a `NetParameter` with layers, scored against the caffemodel by
  `jigsawpp.release_prototxt`;
* a 9-tower caffemodel (MehdiNoroozi/JigsawPuzzleSolver `train_val_cfn_jps++.prototxt`: layers `conv1_s{i}` sharing
  param `conv1_w`...) stores one copy of the shared weights per tower, which must be identical;
* permutation files are the authors' `.bin` (int32 LE header [N, 9], then N*9 1-based indices; read by
  `data_transformer.cpp` of their Caffe fork) or an (N, 9) `.npy`;
* label lists are recognised by their lines (see `jigsawpp.label_files`).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from caffe_import.parse import upgrade_net
from caffe_import.proto import caffe_pb2
from caffe_import.weights import blob_shape
from caffe_import.wire import BlobKey, WireError, lift_blob_data

Shape = tuple[int, ...]
TOWER = re.compile(r"^(?P<base>.+)_s(?P<index>\d+)$")
WEIGHT_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "Bias", "PReLU",
                          "Embed"})
PROTOTXT_HINT = re.compile(r"^\s*(layers?\s*\{|input\s*:|input_shape\s*\{|input_dim\s*:)", re.MULTILINE)
SOLVER_HINT = re.compile(r"^\s*(base_lr|lr_policy|train_net|max_iter|solver_mode)\s*:", re.MULTILINE)


class ReleaseError(ValueError):
    """A release zip that cannot be converted as asked; the message says what was found and what to do."""


# -- caffemodel ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TowerReport:
    """The shared-weight towers of a context-free network caffemodel."""

    towers: tuple[int, ...]                 # tower indices found, e.g. (1, ..., 9)
    bases: tuple[str, ...]                  # per-tower layer names without the suffix: conv1 .. fc6
    max_abs_diff: dict[str, float]          # base -> max |copy_i - copy_first| over all towers and blobs
    missing: tuple[str, ...]                # "<base>_s<i>" layers absent from some tower

    @property
    def identical(self) -> bool:
        return not self.missing and all(d == 0.0 for d in self.max_abs_diff.values())


class LayerWeights(NamedTuple):
    """Caffemodel layers ready for `caffe_import.load_weights(net, weights.net, lifted=weights.arrays)`."""

    net: caffe_pb2.NetParameter              # the layers; blob data left out where `arrays` holds it
    arrays: dict[BlobKey, np.ndarray]        # (layer name, blob index) -> float32 values, flat


@dataclass(frozen=True)
class CaffemodelInfo:
    """A parsed caffemodel and what it is; `net` lacks the blob data that `arrays` holds (see `parse_caffemodel`)."""

    member: str
    kind: str                                # "cfn" (9 towers), "alexnet" (conv1..conv5 [fc6..fc8]), "other"
    why: str
    layers: dict[str, tuple[Shape, ...]]     # layer name -> blob shapes, layers with blobs only
    collapsed: dict[str, tuple[Shape, ...]]  # the same after collapsing towers (base names; tower 1 = first)
    towers: TowerReport | None
    net: caffe_pb2.NetParameter = field(repr=False, compare=False)
    arrays: dict[BlobKey, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def blobs(self, name: str, *, collapsed: bool) -> list[caffe_pb2.BlobProto] | None:
        """BlobProtos of layer `name` (raw name, or base name of the first tower when collapsed)."""
        lookup = self._collapsed_index if collapsed else self._raw_index
        lp = lookup.get(name)
        return list(lp.blobs) if lp is not None else None

    @property
    def _raw_index(self) -> dict[str, caffe_pb2.LayerParameter]:
        return {lp.name: lp for lp in self.net.layer if len(lp.blobs)}

    @property
    def _collapsed_index(self) -> dict[str, caffe_pb2.LayerParameter]:
        out: dict[str, caffe_pb2.LayerParameter] = {}
        first = min(self.towers.towers) if self.towers else None
        bases = set(self.towers.bases) if self.towers else set()
        for lp in self.net.layer:
            if not len(lp.blobs):
                continue
            m = TOWER.match(lp.name)
            if m and m["base"] in bases:
                if int(m["index"]) == first:
                    out[m["base"]] = lp
            else:
                out[lp.name] = lp
        return out

    def weights_for(self, names: list[str], *, collapsed: bool) -> LayerWeights:
        """Exactly the layers `names` (renamed to base names when collapsed) with their lifted arrays. The arrays
        are shared, not copied: a net that binds them must not write to its parameters in place."""
        index = self._collapsed_index if collapsed else self._raw_index
        out = caffe_pb2.NetParameter(name=self.net.name)
        arrays: dict[BlobKey, np.ndarray] = {}
        for name in names:
            source = index[name]
            lp = out.layer.add()
            lp.CopyFrom(source)
            lp.name = name
            del lp.param[:]  # tower param names (conv1_w) would tie nothing in a single tower
            for i in range(len(source.blobs)):
                if (source.name, i) in self.arrays:
                    arrays[(name, i)] = self.arrays[(source.name, i)]
        return LayerWeights(out, arrays)


def parse_caffemodel(member: str, data: bytes | bytearray | memoryview
                     ) -> tuple[caffe_pb2.NetParameter, dict[BlobKey, np.ndarray]]:
    """(upgraded NetParameter without the lifted blob data, {(layer name, blob index): float32 array}).

    The payloads of packed float blobs are lifted out of `data` first (`caffe_import.wire.lift_blob_data`, as
    `caffe_import.read_caffemodel_arrays` does for a file); bytes that do not walk as protobuf go to protobuf
    whole, so a corrupt member gets protobuf's error. The arrays are fresh copies: `data` can be freed.
    """
    try:
        stripped, arrays = lift_blob_data(data)
    except WireError:
        stripped, arrays = bytes(data), {}
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(stripped)
    except Exception as exc:  # DecodeError or RuntimeError depending on the protobuf backend
        raise ReleaseError(f"{member}: not a binary Caffe NetParameter ({exc}); the caffemodel is corrupt or "
                           "truncated.") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = upgrade_net(net, source=member)
    if not any(len(lp.blobs) for lp in net.layer):
        raise ReleaseError(f"{member}: a NetParameter without weights (no layer has blobs); not a caffemodel.")
    return net, arrays


ALEXNET_CONV_SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
                       "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3)}


def describe_caffemodel(member: str, net: caffe_pb2.NetParameter,
                        arrays: dict[BlobKey, np.ndarray] | None = None) -> CaffemodelInfo:
    """What the caffemodel `net` is (`arrays`: its lifted blob data, from `parse_caffemodel`)."""
    arrays = arrays or {}
    layers = {lp.name: tuple(blob_shape(b) for b in lp.blobs) for lp in net.layer if len(lp.blobs)}
    towers = _towers(net, arrays)
    collapsed: dict[str, tuple[Shape, ...]] = {}
    for name, shapes in layers.items():
        m = TOWER.match(name)
        if towers and m and m["base"] in towers.bases:
            if int(m["index"]) == min(towers.towers):
                collapsed[m["base"]] = shapes
        else:
            collapsed[name] = shapes
    conv_ok = all(_squeeze(collapsed.get(k, ((),))[0]) == v for k, v in ALEXNET_CONV_SHAPES.items())
    if towers and conv_ok:
        kind = "cfn"
        why = (f"{len(towers.towers)} towers ({', '.join(f'conv1_s{i}' for i in towers.towers[:2])}, ...) sharing "
               f"{', '.join(towers.bases)}: a context-free network; its collapsed tower has AlexNet's conv shapes")
    elif conv_ok:
        kind = "alexnet"
        fc = [k for k in ("fc6", "fc7", "fc8") if k in collapsed]
        why = "conv1..conv5 have AlexNet's shapes" + (f", with {', '.join(fc)}" if fc else ", no fc layers")
    else:
        kind = "other"
        why = "the layers are not AlexNet's conv1..conv5 (nor a 9-tower CFN of them)"
    return CaffemodelInfo(member, kind, why, layers, collapsed, towers, net, arrays)


def fc6_inputs(model: CaffemodelInfo) -> int | None:
    """How many inputs the caffemodel's fc6 (tower-collapsed) takes: C*H*W of the pool5 it was trained on (2304 =
    256x3x3 for a 64-px tile at conv1 stride 2, 9216 = 256x6x6 for 227 px at stride 4); None without fc6."""
    shapes = model.collapsed.get("fc6")
    if not shapes:
        return None
    weight = _squeeze(shapes[0])
    return int(np.prod(weight[1:])) if len(weight) >= 2 else None


def _squeeze(shape: Shape) -> Shape:
    """Legacy 4-D blob shapes (1, 1, N, K) of old caffemodels -> (N, K); conv shapes are 4-D either way."""
    while len(shape) > 1 and shape[0] == 1 and len(shape) > 2:
        shape = shape[1:]
    return shape


def _towers(net: caffe_pb2.NetParameter, arrays: dict[BlobKey, np.ndarray]) -> TowerReport | None:
    groups: dict[str, dict[int, caffe_pb2.LayerParameter]] = {}
    for lp in net.layer:
        m = TOWER.match(lp.name)
        if m and len(lp.blobs):
            groups.setdefault(m["base"], {})[int(m["index"])] = lp
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return None
    indices = tuple(sorted({i for g in groups.values() for i in g}))
    diffs: dict[str, float] = {}
    missing: list[str] = []
    for base, members in groups.items():
        first = members[min(members)]
        ref = [_blob_values(first, i, arrays) for i in range(len(first.blobs))]
        worst = 0.0
        for i in indices:
            lp = members.get(i)
            if lp is None:
                missing.append(f"{base}_s{i}")
                continue
            if len(lp.blobs) != len(ref) or any(blob_shape(b) != blob_shape(r) for b, r in zip(lp.blobs, first.blobs)):
                worst = float("inf")
                continue
            for j, r in enumerate(ref):
                a = _blob_values(lp, j, arrays)
                if a.size:
                    worst = max(worst, float(np.max(np.abs(a - r))))
        diffs[base] = worst
    return TowerReport(indices, tuple(groups), diffs, tuple(missing))


def _blob_values(lp: caffe_pb2.LayerParameter, index: int, arrays: dict[BlobKey, np.ndarray]) -> np.ndarray:
    """Blob `index` of layer `lp`: its lifted array, else the values parsed into the message."""
    lifted = arrays.get((lp.name, index))
    if lifted is not None:
        return lifted
    blob = lp.blobs[index]
    if len(blob.data):
        return np.asarray(blob.data, dtype=np.float32)
    return np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)


# -- permutations ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Permutations:
    member: str
    count: int
    one_based: bool
    min_hamming: int
    format: str

    def summary(self) -> dict[str, object]:
        return {"member": self.member, "count": self.count, "one_based": self.one_based,
                "min_hamming": self.min_hamming, "format": self.format}


def read_permutations(member: str, data: bytes) -> Permutations | None:
    """An (N, 9) permutation table from the authors' .bin or a .npy, or None when `data` is not one."""
    if data.startswith(b"\x93NUMPY"):
        try:
            table = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError:
            return None
        fmt = f"npy {table.dtype} {tuple(table.shape)}"
    else:
        if len(data) < 8 or len(data) % 4:
            return None
        n, width = np.frombuffer(data[:8], "<i4")
        if width != 9 or n <= 0 or len(data) != 8 + 4 * int(n) * 9:
            return None
        table = np.frombuffer(data[8:], "<i4").reshape(int(n), 9)
        fmt = "int32 LE, header [N, 9], N*9 indices (the authors' .bin)"
    if table.ndim != 2 or table.shape[1] != 9 or not np.issubdtype(table.dtype, np.integer):
        return None
    base = int(table.min())
    if base not in (0, 1) or not np.all(np.sort(table, axis=1) == np.arange(base, base + 9)):
        return None
    diff = (table[:, None, :] != table[None, :, :]).sum(-1) if len(table) <= 4000 else None
    if diff is not None:
        np.fill_diagonal(diff, 9)
    return Permutations(member, int(table.shape[0]), base == 1, int(diff.min()) if diff is not None else -1, fmt)
