"""Read prototxt / caffemodel files into an upgraded V2 `NetParameter`, with no Caffe and no protoc at run time.

Reproduces BVLC Caffe's `src/caffe/util/upgrade_proto.cpp` `UpgradeNetAsNeeded` path that matters for
inference: V0 (`layers { layer { type: "conv" } }`) and V1 (`layers { type: CONVOLUTION }`) layers become V2
`layer { type: "Convolution" }`, and the deprecated `input` + `input_dim`/`input_shape` fields become one
`Input` layer named "input" placed first. Caffe applies the same upgrade to caffemodels before matching weights
by layer name, and so do we.
"""

from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path

import numpy as np

from caffe_import.errors import CaffeImportError, CaffeImportWarning
from caffe_import.proto import caffe_pb2
from caffe_import.textproto import parse_text
from caffe_import.wire import BlobKey, WireError, lift_blob_data

# protobuf messages cannot exceed 2 GiB - 1 byte (Caffe's own reader stops there too: io.cpp SetTotalBytesLimit).
MAX_MESSAGE_BYTES = 2**31 - 1

# V1LayerParameter.LayerType -> V2 type string (upgrade_proto.cpp UpgradeV1LayerType).
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 type strings -> V2 type strings (upgrade_proto.cpp UpgradeV0LayerType).
V0_TYPE_NAMES = {
    "accuracy": "Accuracy", "bnll": "BNLL", "concat": "Concat", "conv": "Convolution", "data": "Data",
    "dropout": "Dropout", "euclidean_loss": "EuclideanLoss", "flatten": "Flatten", "hdf5_data": "HDF5Data",
    "hdf5_output": "HDF5Output", "im2col": "Im2col", "images": "ImageData", "infogain_loss": "InfogainLoss",
    "innerproduct": "InnerProduct", "lrn": "LRN", "multinomial_logistic_loss": "MultinomialLogisticLoss",
    "pool": "Pooling", "relu": "ReLU", "sigmoid": "Sigmoid", "softmax": "Softmax",
    "softmax_loss": "SoftmaxWithLoss", "split": "Split", "tanh": "TanH", "window_data": "WindowData",
}


def _check_size(path: Path) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CaffeImportError(f"{path}: no such file.") from None
    if size > MAX_MESSAGE_BYTES:
        raise CaffeImportError(
            f"{path}: {size / 2**30:.2f} GiB is over the 2 GiB limit of a protobuf message, so neither Caffe nor any "
            "protobuf reader can parse it; a caffemodel this large was not written by Caffe (check the file)."
        )
    return size


def read_prototxt(path: str | os.PathLike[str], *, warn: bool = True) -> caffe_pb2.NetParameter:
    """Parse a text prototxt into an upgraded V2 NetParameter.

    Unknown fields (fork extensions) are skipped and reported in ONE warning listing them with their layer; the
    PoolingParameter field-13 collision is resolved by name (see `textproto._fork_alias`) with a note.
    """
    path = Path(path)
    _check_size(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    net = caffe_pb2.NetParameter()
    report = parse_text(text, net, source=str(path))
    if warn and report.unknown:
        listed = "; ".join(f"{_describe_path(net, u.path)} (line {u.line})" for u in report.unknown[:40])
        more = f"; and {len(report.unknown) - 40} more" if len(report.unknown) > 40 else ""
        warnings.warn(
            f"{path}: {len(report.unknown)} field(s) unknown to the Caffe schema were skipped (fork extensions?): "
            f"{listed}{more}.",
            CaffeImportWarning,
            stacklevel=2,
        )
    if warn:
        for note in report.notes:
            warnings.warn(f"{path}: {note}", CaffeImportWarning, stacklevel=2)
    return upgrade_net(net, source=str(path))


def read_prototxt_string(text: str, *, source: str = "<string>") -> caffe_pb2.NetParameter:
    """Same as `read_prototxt` for text held in memory (tests, zips)."""
    net = caffe_pb2.NetParameter()
    report = parse_text(text, net, source=source)
    if report.unknown:
        listed = "; ".join(f"{_describe_path(net, u.path)} (line {u.line})" for u in report.unknown)
        warnings.warn(f"{source}: fields unknown to the Caffe schema were skipped: {listed}.", CaffeImportWarning,
                      stacklevel=2)
    for note in report.notes:
        warnings.warn(f"{source}: {note}", CaffeImportWarning, stacklevel=2)
    return upgrade_net(net, source=source)


def _describe_path(net: caffe_pb2.NetParameter, path: str) -> str:
    """Turn `layer[3].transform_param.x` into `layer 'data_0': transform_param.x` for humans."""
    for field_name in ("layer", "layers"):
        prefix = f"{field_name}["
        if path.startswith(prefix):
            index_text, _, rest = path[len(prefix):].partition("]")
            layers = getattr(net, field_name)
            index = int(index_text)
            name = layers[index].name if index < len(layers) else f"#{index}"
            return f"layer '{name}': {rest.lstrip('.')}"
    return path


def read_caffemodel(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Parse a binary caffemodel (any version) into an upgraded V2 NetParameter."""
    path = Path(path)
    _check_size(path)
    return upgrade_net(_parse_binary(path.read_bytes(), path), source=str(path))


def read_caffemodel_arrays(path: str | os.PathLike[str]) -> tuple[caffe_pb2.NetParameter, dict[BlobKey, np.ndarray]]:
    """Like `read_caffemodel`, but the float data of uniquely named layers' blobs comes back as numpy arrays keyed
    by (layer name, blob index) and is left out of the message (see `caffe_import.wire`): the same values, several
    times faster and at half the peak memory."""
    path = Path(path)
    _check_size(path)
    if path.stat().st_size == 0:
        return upgrade_net(_parse_binary(b"", path), source=str(path)), {}
    with path.open("rb", buffering=0) as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        try:
            stripped, arrays = lift_blob_data(mapped, file=handle)
        except WireError:
            stripped, arrays = mapped[:], {}
    return upgrade_net(_parse_binary(stripped, path), source=str(path)), arrays


def _parse_binary(data: bytes, path: Path) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError depending on the backend
        raise CaffeImportError(
            f"{path}: not a binary Caffe NetParameter ({exc}); is it a text prototxt, a truncated download or a zip?"
        ) from None
    return net


def upgrade_net(net: caffe_pb2.NetParameter, *, source: str) -> caffe_pb2.NetParameter:
    """Apply Caffe's upgrade path in place and return the net (V0/V1 -> V2, net inputs -> Input layer)."""
    if len(net.layers) and len(net.layer):
        raise CaffeImportError(
            f"{source}: the net mixes V1 'layers' and V2 'layer' entries; Caffe refuses such nets "
            "(upgrade_proto.cpp UpgradeV1Net). Convert it to one format."
        )
    if len(net.layers):
        upgraded = [_upgrade_layer(v1, source) for v1 in net.layers]
        upgraded = _fold_v0_padding(upgraded)
        del net.layers[:]
        net.layer.extend(upgraded)
    _upgrade_inputs(net, source)
    return net


def _upgrade_layer(v1: caffe_pb2.V1LayerParameter, source: str) -> caffe_pb2.LayerParameter:
    if v1.HasField("layer"):
        return _upgrade_v0(v1, source)
    out = caffe_pb2.LayerParameter()
    out.name = v1.name
    type_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
    if type_name not in V1_TYPE_NAMES:
        raise CaffeImportError(f"{source}: V1 layer '{v1.name}' has unknown type {type_name}.")
    out.type = V1_TYPE_NAMES[type_name]
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.loss_weight.extend(v1.loss_weight)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.blobs.extend(v1.blobs)
    # V1 spreads per-blob settings over parallel lists; V2 has one ParamSpec per blob (UpgradeV1LayerParameter).
    n_specs = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(n_specs):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for fdesc, value in v1.ListFields():
        if fdesc.name.endswith("_param") and fdesc.name in layer_fields:
            getattr(out, fdesc.name).CopyFrom(value)
    return out


def _upgrade_v0(v1: caffe_pb2.V1LayerParameter, source: str) -> caffe_pb2.LayerParameter:
    """V0 layers: a V1 connection wrapping a V0LayerParameter (`layers { layer { type: "conv" } bottom: ... }`)."""
    v0 = v1.layer
    if v0.type not in V0_TYPE_NAMES and v0.type != "padding":
        raise CaffeImportError(f"{source}: V0 layer '{v0.name}' has unknown type '{v0.type}'.")
    out = caffe_pb2.LayerParameter()
    out.name = v0.name
    out.type = V0_TYPE_NAMES.get(v0.type, "Padding")  # "Padding" is folded away by _fold_v0_padding
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.blobs.extend(v0.blobs)
    for i in range(max(len(v0.blobs_lr), len(v0.weight_decay))):
        spec = out.param.add()
        if i < len(v0.blobs_lr):
            spec.lr_mult = v0.blobs_lr[i]
        if i < len(v0.weight_decay):
            spec.decay_mult = v0.weight_decay[i]
    if v0.type == "conv":
        p = out.convolution_param
        _copy_v0_weights_params(v0, p)
        if v0.HasField("pad"):
            p.pad.append(v0.pad)
        p.kernel_size.append(v0.kernelsize)
        p.group = v0.group
        p.stride.append(v0.stride)
    elif v0.type == "pool":
        p = out.pooling_param
        p.pool = v0.pool
        p.kernel_size = v0.kernelsize
        p.stride = v0.stride
        p.pad = v0.pad
    elif v0.type == "innerproduct":
        p = out.inner_product_param
        _copy_v0_weights_params(v0, p)
    elif v0.type == "lrn":
        p = out.lrn_param
        p.local_size = v0.local_size
        p.alpha = v0.alpha
        p.beta = v0.beta
        p.k = v0.k
    elif v0.type == "dropout":
        out.dropout_param.dropout_ratio = v0.dropout_ratio
    elif v0.type == "concat":
        out.concat_param.concat_dim = v0.concat_dim
    elif v0.type == "padding":
        out.convolution_param.pad.append(v0.pad)  # carrier for the pad until it is folded
    return out


def _copy_v0_weights_params(v0: caffe_pb2.V0LayerParameter, p) -> None:
    """Fields V0 conv and innerproduct layers share: outputs, bias switch, fillers."""
    p.num_output = v0.num_output
    p.bias_term = v0.biasterm
    if v0.HasField("weight_filler"):
        p.weight_filler.CopyFrom(v0.weight_filler)
    if v0.HasField("bias_filler"):
        p.bias_filler.CopyFrom(v0.bias_filler)


def _fold_v0_padding(layers: list[caffe_pb2.LayerParameter]) -> list[caffe_pb2.LayerParameter]:
    """V0 nets express padding as separate layers; Caffe folds each into the conv/pool that consumes it."""
    if not any(layer.type == "Padding" for layer in layers):
        return layers
    padding = {layer.top[0]: layer for layer in layers if layer.type == "Padding"}
    out = []
    for layer in layers:
        if layer.type == "Padding":
            continue
        if layer.bottom and layer.bottom[0] in padding:
            pad_layer = padding[layer.bottom[0]]
            pad = pad_layer.convolution_param.pad[0]
            if layer.type == "Convolution":
                del layer.convolution_param.pad[:]
                layer.convolution_param.pad.append(pad)
            elif layer.type == "Pooling":
                layer.pooling_param.pad = pad
            else:
                raise CaffeImportError(
                    f"V0 padding layer '{pad_layer.name}' feeds '{layer.name}' ({layer.type}); Caffe only folds "
                    "padding into convolution or pooling layers."
                )
            layer.bottom[0] = pad_layer.bottom[0]
        out.append(layer)
    return out


def _upgrade_inputs(net: caffe_pb2.NetParameter, source: str) -> None:
    """`input:` + `input_shape`/`input_dim` -> a first `Input` layer named "input" (UpgradeNetInput)."""
    if not len(net.input):
        if len(net.input_shape) or len(net.input_dim):
            raise CaffeImportError(f"{source}: input_shape/input_dim given without any 'input:' blob names.")
        return
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    if len(net.input_shape):
        if len(net.input_shape) != len(net.input):
            raise CaffeImportError(
                f"{source}: {len(net.input)} 'input' blobs but {len(net.input_shape)} 'input_shape' entries; "
                "give one shape per input."
            )
        for shape in net.input_shape:
            layer.input_param.shape.add().CopyFrom(shape)
    elif len(net.input_dim):
        if len(net.input_dim) != 4 * len(net.input):
            raise CaffeImportError(
                f"{source}: 'input_dim' must list 4 values per input blob ({len(net.input)} inputs, "
                f"{len(net.input_dim)} values)."
            )
        for i in range(len(net.input)):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i:4 * i + 4])
    else:
        raise CaffeImportError(f"{source}: 'input' blobs are declared without input_shape or input_dim.")
    existing = list(net.layer)
    del net.layer[:]
    net.layer.append(layer)
    net.layer.extend(existing)
    del net.input[:]
    del net.input_shape[:]
    del net.input_dim[:]
