"""Bind caffemodel blobs to a `CaffeNet`, with accounting.

Caffe's `Net::CopyTrainedLayersFrom` (BVLC `src/caffe/net.cpp`) matches layers by name, requires the blob count
and shapes to match, and ignores caffemodel layers the net does not have. We do the same, but say what happened:
every blob is consumed once and every shape asserted; a net layer without weights is an error unless
`allow_missing`; unused caffemodel layers are reported (an error with `strict=True`).

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
from caffe_import.proto import caffe_pb2


@dataclass
class WeightReport:
    """What `load_weights` did, for manifests and for users wondering why a layer was not loaded."""

    loaded: dict[str, int] = field(default_factory=dict)          # layer -> number of blobs bound
    unused: list[str] = field(default_factory=list)               # caffemodel layers with blobs the net lacks
    filled: list[str] = field(default_factory=list)               # net layers initialised by fillers instead
    double_data: list[str] = field(default_factory=list)          # layers whose blobs came from double_data
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


def _layers_with_blobs(weights: caffe_pb2.NetParameter) -> dict[str, caffe_pb2.LayerParameter]:
    """Caffemodel layers by name; a repeated name keeps its last layer, as Caffe's CopyTrainedLayersFrom does."""
    by_name: dict[str, caffe_pb2.LayerParameter] = {}
    for lp in weights.layer:
        if len(lp.blobs):
            by_name[lp.name] = lp
    return by_name


def load_weights(net, weights: caffe_pb2.NetParameter, *, strict: bool = False, allow_missing: bool = False,
                 source: str = "<caffemodel>", lifted: Mapping[tuple[str, int], np.ndarray] | None = None
                 ) -> WeightReport:
    """Copy `weights` (an upgraded caffemodel NetParameter) into `net` (a materialised or meta `CaffeNet`).

    `lifted`: blob data that `read_caffemodel_arrays` took out of `weights`, by (layer name, blob index).
    """
    by_name = _layers_with_blobs(weights)
    lifted = lifted or {}
    report = WeightReport()
    used: set[str] = set()
    missing: list[str] = []
    first_copy: dict[str, tuple[str, np.ndarray]] = {}
    with torch.no_grad():
        for layer in net.layers_with_shapes:
            module = net.module_of(layer.name)
            names = module.caffe_blobs
            if not names:
                continue
            lp = by_name.get(layer.name)
            if lp is None:
                missing.append(layer.name)
                continue
            used.add(layer.name)
            if len(lp.blobs) != len(names):
                raise CaffeImportError(
                    f"{source}: {layer.where()} has {len(lp.blobs)} blobs in the caffemodel but the prototxt implies "
                    f"{len(names)} ({', '.join(names)}); check bias_term and the layer type."
                )
            for i, (attr, blob) in enumerate(zip(names, lp.blobs)):
                target = getattr(module, attr)
                taken_out = lifted.get((lp.name, i))
                if taken_out is None and not len(blob.data) and len(blob.double_data):
                    report.double_data.append(layer.name)
                values = blob_array(blob, tuple(target.shape), where=f"{source}: {layer.where()}", index=i,
                                    lifted=taken_out)
                _bind(module, attr, target, torch.from_numpy(values))
                spec = layer.param.param[i] if i < len(layer.param.param) else None
                if spec is not None and spec.name:
                    if spec.name in first_copy:
                        diff = float(np.max(np.abs(first_copy[spec.name][1] - values))) if values.size else 0.0
                        if diff > report.shared_mismatch.get(spec.name, 0.0):
                            report.shared_mismatch[spec.name] = diff
                    else:
                        first_copy[spec.name] = (layer.name, values)
            report.loaded[layer.name] = len(names)
    if missing and not allow_missing:
        raise CaffeImportError(
            f"{source}: no weights for layer(s) {', '.join(missing)} (matched by layer name, as Caffe does). "
            "Rename the layers to match the caffemodel, or pass allow_missing=True to initialise them from their "
            "fillers."
        )
    for layer in net.layers_with_shapes:  # layers left without weights (allow_missing) get storage to fill
        module = net.module_of(layer.name)
        if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
            module.to_empty(device="cpu")
    if missing:
        report.filled = missing
        for layer in net.layers_with_shapes:
            if layer.name in missing:
                module = net.module_of(layer.name)
                from caffe_import.fillers import fill

                fillers = getattr(module, "caffe_fillers", ())
                for i, attr in enumerate(module.caffe_blobs):
                    fill(getattr(module, attr), fillers[i] if i < len(fillers) else None, where=layer.where())
        warnings.warn(f"{source}: layer(s) {', '.join(missing)} are not in the caffemodel and were initialised from "
                      "their fillers.", CaffeImportWarning, stacklevel=3)
    report.unused = [name for name in by_name if name not in used]
    if report.unused:
        message = (f"{source}: {len(report.unused)} caffemodel layer(s) with weights are not used by this net: "
                   f"{', '.join(report.unused[:12])}{', ...' if len(report.unused) > 12 else ''}")
        if strict:
            raise CaffeImportError(message + " (strict=True).")
        net.notes.append(message)
    for name, diff in report.shared_mismatch.items():
        if diff > 0:
            warnings.warn(
                f"{source}: the copies of shared param '{name}' differ in the caffemodel (max |diff| {diff:.3g}); "
                "as in Caffe, the copy of the last layer loaded wins.", CaffeImportWarning, stacklevel=3)
    net.tie_shared_params()
    return report
