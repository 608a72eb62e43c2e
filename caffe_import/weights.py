"""Bind caffemodel blobs to a `CaffeNet`, with accounting.

Caffe's `Net::CopyTrainedLayersFrom` (BVLC `src/caffe/net.cpp`) matches layers by name, requires the blob count
and shapes to match, and ignores caffemodel layers the net does not have. We do the same, but say what happened:
every shape is asserted; a net blob without weights is an error unless `allow_missing`; unused caffemodel layers
are reported (an error with `strict=True`). Shared params (`param { name }`) are one blob in Caffe, so they load
from whichever sharing layer stores them, the copy last in the file winning (see `load_weights`).

Shape matching follows `Blob::ShapeEquals`: blobs written before `BlobShape` existed carry the legacy 4-D
num/channels/height/width, compared to the expected shape padded with leading 1s (so an InnerProduct weight
stored as (1, 1, N, K) binds to (N, K)). Blobs stored in `double_data` are read and cast to float32.

Binding is zero-copy where it can be: on a net still on the meta device the parsed arrays (from
`read_caffemodel_arrays`, already fresh float32 memory) become the parameters themselves.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from caffe_import.errors import CaffeImportError, CaffeImportWarning
from caffe_import.fillers import fill
from caffe_import.net import _materialize_meta
from caffe_import.proto import caffe_pb2


@dataclass
class WeightReport:
    """What `load_weights` did, for manifests and for users wondering why a layer was not loaded.

    Blob names read "<layer>.<attr>" (`conv1.weight`). A shared param (`param { name }`) is one tensor, so its
    entry in `shared` says which caffemodel copy it holds; a layer absent from the caffemodel whose every blob is
    such a shared param is listed in `shared_only`, not as missing.
    """

    loaded: dict[str, int] = field(default_factory=dict)          # layer -> blobs read from its caffemodel entry
    unused: list[str] = field(default_factory=list)               # caffemodel layers with blobs the net lacks
    filled: list[str] = field(default_factory=list)               # blobs initialised by fillers ("layer.attr")
    double_data: list[str] = field(default_factory=list)          # layers whose blobs came from double_data
    shared: dict[str, dict] = field(default_factory=dict)         # param name -> layers, stored_by, value_from
    shared_only: list[str] = field(default_factory=list)          # layers not in the caffemodel, served by sharing
    shared_mismatch: dict[str, float] = field(default_factory=dict)  # param name -> max |diff| between copies


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def shape_equals(blob: caffe_pb2.BlobProto, expected: tuple[int, ...]) -> bool:
    """Caffe `Blob::ShapeEquals`, including the legacy 4-D rule."""
    if blob.HasField("shape"):
        return blob_shape(blob) == tuple(expected)
    if len(expected) > 4:
        return False
    legacy = (1,) * (4 - len(expected)) + tuple(expected)
    return (blob.num, blob.channels, blob.height, blob.width) == legacy


def blob_array(blob: caffe_pb2.BlobProto, expected: tuple[int, ...], *, where: str, index: int,
               lifted: np.ndarray | None = None) -> np.ndarray:
    """The blob's values as a float32 array of the expected shape, or an error naming layer, blob and shapes.

    `lifted` is the blob's data when `caffe_import.wire` took it out of the message before parsing.
    """
    if not shape_equals(blob, expected):
        raise CaffeImportError(
            f"{where}: blob {index} has shape {blob_shape(blob)} in the caffemodel but the prototxt implies "
            f"{tuple(expected)}; the caffemodel was trained with a different definition (check num_output, "
            "kernel_size, group and the input size)."
        )
    count = int(np.prod(expected)) if expected else 1
    if lifted is not None:
        values = lifted
    elif len(blob.data):
        values = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.zeros(0, np.float32)
    if values.size != count:
        raise CaffeImportError(
            f"{where}: blob {index} declares shape {tuple(expected)} ({count} values) but stores {values.size} values."
        )
    return values.reshape(expected)


def _bind(module, attr: str, target: torch.Tensor, values: torch.Tensor) -> None:
    """Use the parsed array itself as the parameter (no second 550 MB allocation and copy for VGG16) while the net
    is still on the meta device; copy into existing storage otherwise (a materialised or already-used net)."""
    if not target.is_meta:
        target.copy_(values)
    elif attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(values, requires_grad=target.requires_grad)
    else:
        module._buffers[attr] = values


def _layers_with_blobs(weights: caffe_pb2.NetParameter) -> tuple[dict[str, caffe_pb2.LayerParameter], dict[str, int]]:
    """Caffemodel layers with blobs by name, and the position of each; a repeated name keeps its last layer, as
    Caffe's CopyTrainedLayersFrom (which copies every one in file order) ends up with."""
    by_name: dict[str, caffe_pb2.LayerParameter] = {}
    position: dict[str, int] = {}
    for i, lp in enumerate(weights.layer):
        if len(lp.blobs):
            by_name[lp.name] = lp
            position[lp.name] = i
    return by_name, position


@dataclass
class _Copy:
    position: int           # index of the caffemodel layer the copy came from (later copies overwrite earlier ones)
    layer: str
    values: np.ndarray


def load_weights(net, weights: caffe_pb2.NetParameter, *, strict: bool = False, allow_missing: bool = False,
                 source: str = "<caffemodel>", lifted: Mapping[tuple[str, int], np.ndarray] | None = None
                 ) -> WeightReport:
    """Copy `weights` (an upgraded caffemodel NetParameter) into `net` (a materialised or meta `CaffeNet`).

    Reproduces BVLC `Net::CopyTrainedLayersFrom` (`src/caffe/net.cpp` at c9f71bd): caffemodel layers are matched to
    net layers by name, each blob's shape must equal the net layer's own blob shape, and copies are written in
    caffemodel order into the net's blobs. A shared param is one blob, so it holds the copy of the caffemodel layer
    that comes last in the file, whichever of its layers (owner or sharer) stored it; a sharer absent from the
    caffemodel simply uses it. A blob that no caffemodel layer provides is an error naming its layer, unless
    `allow_missing`: then it gets its Caffe filler (for a shared param, its owner's filler), and a loaded blob is
    never overwritten by a filler.

    `lifted`: blob data that `read_caffemodel_arrays` took out of `weights`, by (layer name, blob index).
    Raises CaffeImportError for blob count/shape mismatches, missing layers, and (with `strict`) unused layers.
    """
    by_name, position = _layers_with_blobs(weights)
    lifted = lifted or {}
    report = WeightReport()
    copies: dict[tuple[str, str], list[_Copy]] = {}   # (owner layer, attr) -> copies read for that blob
    with torch.no_grad():
        for layer in net.layers_with_shapes:
            module = net.module_of(layer.name)
            names = module.caffe_blobs
            lp = by_name.get(layer.name)
            if not names or lp is None:
                continue
            if len(lp.blobs) != len(names):
                raise CaffeImportError(
                    f"{source}: {layer.where()} has {len(lp.blobs)} blobs in the caffemodel but the prototxt implies "
                    f"{len(names)} ({', '.join(names)}); check bias_term and the layer type."
                )
            for i, (attr, blob) in enumerate(zip(names, lp.blobs)):
                taken_out = lifted.get((lp.name, i))
                if taken_out is None and not len(blob.data) and len(blob.double_data):
                    report.double_data.append(layer.name)
                values = blob_array(blob, tuple(getattr(module, attr).shape), where=f"{source}: {layer.where()}",
                                    index=i, lifted=taken_out)
                owner = net.owner_of(layer.name, i)
                key = (owner.layer, owner.attr) if owner is not None else (layer.name, attr)
                copies.setdefault(key, []).append(_Copy(position[layer.name], layer.name, values))
            report.loaded[layer.name] = len(names)
        for (layer_name, attr), found in copies.items():
            found.sort(key=lambda c: c.position)
            module = net.module_of(layer_name)
            target = getattr(module, attr)
            _bind(module, attr, target, torch.from_numpy(found[-1].values.reshape(tuple(target.shape))))

    blobs_missing: dict[str, list[str]] = {}   # layer -> its blobs that nothing provides
    for layer in net.layers_with_shapes:
        module = net.module_of(layer.name)
        for i, attr in enumerate(module.caffe_blobs):
            owner = net.owner_of(layer.name, i)
            key = (owner.layer, owner.attr) if owner is not None else (layer.name, attr)
            if key not in copies:
                blobs_missing.setdefault(layer.name, []).append(attr)
    if blobs_missing and not allow_missing:
        raise CaffeImportError(_missing_message(net, blobs_missing, source))
    _report_shared(net, copies, report)
    report.shared_only = [layer.name for layer in net.layers_with_shapes if net.module_of(layer.name).caffe_blobs
                          and layer.name not in report.loaded and layer.name not in blobs_missing]

    _materialize_meta(net)  # blobs left without weights (allow_missing), and sharers' own slots, get storage
    sharers = {(ref.layer, ref.index) for group in net.param_groups.values() for ref in group.sharers}
    for layer in net.layers_with_shapes:
        if layer.name not in blobs_missing:
            continue
        module = net.module_of(layer.name)
        fillers = getattr(module, "caffe_fillers", ())
        for i, attr in enumerate(module.caffe_blobs):
            if attr in blobs_missing[layer.name] and (layer.name, i) not in sharers:
                fill(getattr(module, attr), fillers[i] if i < len(fillers) else None, where=layer.where())
                report.filled.append(f"{layer.name}.{attr}")
    if report.filled:
        warnings.warn(f"{source}: blob(s) {', '.join(report.filled)} are not in the caffemodel and were initialised "
                      "from their Caffe fillers (allow_missing=True).", CaffeImportWarning, stacklevel=3)
    report.unused = [name for name in by_name if name not in report.loaded]
    if report.unused:
        message = (f"{source}: {len(report.unused)} caffemodel layer(s) with weights are not used by this net: "
                   f"{', '.join(report.unused[:12])}{', ...' if len(report.unused) > 12 else ''}")
        if strict:
            raise CaffeImportError(message + " (strict=True); remove them or load without strict.")
        net.notes.append(message)
    for name, diff in report.shared_mismatch.items():
        entry = report.shared[name]
        warnings.warn(
            f"{source}: the caffemodel stores shared param '{name}' under layers {', '.join(entry['stored_by'])} with "
            f"different values (max |diff| {diff:.3g}); as in Caffe, which copies them in file order into the one "
            f"shared blob, the copy of '{entry['value_from']}' (last in the file) is used.",
            CaffeImportWarning, stacklevel=3)
    net.tie_shared_params()
    return report


def _missing_message(net, blobs_missing: dict[str, list[str]], source: str) -> str:
    """One sentence: which layers lack weights, and for partly shared layers which blobs."""
    parts = []
    for layer_name, attrs in blobs_missing.items():
        n_blobs = len(net.module_of(layer_name).caffe_blobs)
        parts.append(layer_name if len(attrs) == n_blobs else f"{layer_name} ({', '.join(attrs)})")
    return (f"{source}: no weights for layer(s) {', '.join(parts)} (matched by layer name, as Caffe does; a shared "
            "param counts as present when any layer sharing it stores it). Rename the layers to match the "
            "caffemodel, or pass allow_missing=True to initialise them from their fillers.")


def _report_shared(net, copies: dict[tuple[str, str], list[_Copy]], report: WeightReport) -> None:
    for name, group in net.param_groups.items():
        found = copies.get((group.owner.layer, group.owner.attr), [])
        entry = {"layers": group.layers, "stored_by": [c.layer for c in found],
                 "value_from": found[-1].layer if found else f"filler of {group.owner.layer}"}
        report.shared[name] = entry
        if len(found) > 1:
            last = found[-1].values.reshape(-1)
            diff = max(float(np.max(np.abs(c.values.reshape(-1) - last))) if last.size else 0.0 for c in found)
            if diff > 0:
                report.shared_mismatch[name] = diff
