"""Write a `CaffeNet` as an ONNX file straight from its Caffe graph, and check the file in onnxruntime against PyTorch.

The model itself is built by `caffe_import.onnx` (one emitter per Caffe layer type, one file per family; value
names, symbolic dims and opsets are described in `caffe_import/onnx/model.py`). This module writes it (with ONNX
external data above protobuf's 2 GiB limit) and runs it (`check_onnx`), and is the import path of the public
names: `export_onnx`, `check_onnx`, `build_onnx_model`, `emits`, `onnx_exportable_types`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto

from caffe_import.errors import CaffeImportError
from caffe_import.net import CaffeNet
from caffe_import.onnx import (
    DEFAULT_OPSET,
    MAX_ROI_POOL_OPSET,
    MIN_OPSET,
    build_onnx_model,
    emits,
    onnx_exportable_types,
    value_info,
)

__all__ = ["DEFAULT_OPSET", "MAX_ROI_POOL_OPSET", "MIN_OPSET", "OnnxCheck", "build_onnx_model", "check_onnx",
           "default_feeds", "emits", "export_onnx", "onnx_exportable_types", "random_rois"]

# Protobuf cannot serialise a message of 2 GiB or more; above this many weight bytes the weights go to a side file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def export_onnx(net: CaffeNet, path: str | Path, *, opset: int | None = None, dynamic: bool = True) -> Path:
    """Write `net` as an ONNX model at `path` and verify it with `onnx.checker`; returns the path.

    Args:
        net: a loaded CaffeNet; the TEST-phase computation is exported (Dropout as identity or its TEST scale).
        opset: default-domain opset, 17 when None; 13..21 for nets with ROIPooling, >= 13 otherwise.
        dynamic: symbolic batch dim for every input (roi count for ROIPooling inputs), and symbolic height and
            width when the net runs at any size (no InnerProduct on a spatially sized value, e.g. FCN, Fast R-CNN).

    Weights above `EXTERNAL_DATA_THRESHOLD` bytes (protobuf's 2 GiB message limit) are written to
    `<path name>.data` next to the model (ONNX external data).
    """
    path = Path(path)
    model = build_onnx_model(net, opset=opset, dynamic=dynamic)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    path.parent.mkdir(parents=True, exist_ok=True)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD:
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)   # onnx appends to an existing side file
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(path))
    else:
        data = model.SerializeToString()   # serialised once, for the checker and the file
        onnx.checker.check_model(data)
        path.write_bytes(data)
    return path


# -- onnxruntime check ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime vs the PyTorch net on the same feeds.

    max_abs_err: per output, max |ort - torch|; max_rel_err: per output, max |ort - torch| / max(1, max |torch|).
    provider: the execution provider that ran the model; notice: a one-line note for the user (e.g. CPU fallback).
    """

    max_abs_err: dict[str, float]
    max_rel_err: dict[str, float]
    provider: str
    notice: str | None
    shapes: dict[str, tuple[int, ...]]

    @property
    def worst_rel_err(self) -> float:
        return max(self.max_rel_err.values(), default=0.0)

    def passed(self, tolerance: float = 1e-4) -> bool:
        return self.worst_rel_err <= tolerance


def random_rois(rng: np.random.Generator, count: int, *, batch: int, height: int, width: int) -> np.ndarray:
    """`count` valid ROIs [batch_index, x1, y1, x2, y2] (inclusive pixel corners) inside a height x width image."""
    x1 = rng.uniform(0, width - 2, count)
    y1 = rng.uniform(0, height - 2, count)
    x2 = np.minimum(x1 + rng.uniform(1, width, count), width - 1)
    y2 = np.minimum(y1 + rng.uniform(1, height, count), height - 1)
    index = rng.integers(0, batch, count)
    return np.stack([index, x1, y1, x2, y2], axis=1).astype(np.float32)


def default_feeds(net: CaffeNet, *, seed: int = 0, scale: float = 50.0) -> dict[str, np.ndarray]:
    """Seeded feeds of the declared input shapes: N(0, scale^2) images (Caffe nets see mean-subtracted 0..255
    pixels), and, for ROI inputs (second bottom of ROIPooling, or an (R, 5) input named like "rois"), at least 8
    valid ROIs inside the first 4-D input."""
    rng = np.random.default_rng(seed)
    shapes = net.graph.input_shapes
    roi_inputs = {layer.bottoms[1] for layer in net.layers_with_shapes
                  if layer.type == "ROIPooling" and len(layer.bottoms) > 1}
    image = next((s for n, s in shapes.items() if len(s) == 4 and n not in roi_inputs), (1, 3, 224, 224))
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name in roi_inputs or ("roi" in name.lower() and len(shape) == 2 and shape[1] == 5):
            feeds[name] = random_rois(rng, max(shape[0], 8), batch=image[0], height=image[2], width=image[3])
        else:
            feeds[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return feeds


def _providers(ort: Any) -> tuple[list[Any], str | None]:
    """CUDA first when onnxruntime-gpu and a CUDA device are both there; otherwise CPU and a notice."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"], ("onnxruntime ran on CPU: this onnxruntime build has no "
                                          "CUDAExecutionProvider (install onnxruntime-gpu for GPU checks).")
    if not torch.cuda.is_available():
        return ["CPUExecutionProvider"], "onnxruntime ran on CPU: no CUDA device is available."
    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu loads CUDA/cuDNN from the nvidia-* wheels that torch also uses.
        try:
            ort.preload_dlls()
        except Exception:  # a failed preload shows up as the CPU fallback checked after session creation
            pass
    # TF32 (on by default in the CUDA EP) would put 1e-3 relative errors into a float32 parity check.
    return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"], None


def check_onnx(net: CaffeNet, path: str | Path, feeds: Mapping[str, np.ndarray] | None = None, *,
               outputs: Iterable[str] | None = None) -> OnnxCheck:
    """Run the exported model in onnxruntime and compare with `net` (eval mode) on the same feeds.

    feeds: {input blob: array}; seeded random ones (`default_feeds`) when None.
    outputs: Caffe blob names to compare; default the model's outputs. Blobs that are not model outputs (e.g.
        "conv4") are fetched by adding them as outputs to a temporary copy of the model.
    """
    import onnxruntime as ort

    path = Path(path)
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in
             (default_feeds(net) if feeds is None else feeds).items()}
    model = onnx.load(str(path), load_external_data=False)
    graph_outputs = [o.name for o in model.graph.output]
    wanted = graph_outputs if outputs is None else list(outputs)
    extra = [name for name in wanted if name not in graph_outputs]
    providers, notice = _providers(ort)
    options = ort.SessionOptions()
    options.log_severity_level = 3   # below-22 pooling shape-inference warnings are known (module docstring)
    source: str | bytes = str(path)
    copy: Path | None = None
    if extra:
        model.graph.output.extend(value_info(name, None) for name in extra)
        if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
            # External data is found relative to the model file, so the copy must sit beside it.
            handle, name = tempfile.mkstemp(suffix=".onnx", prefix=f".{path.stem}-", dir=path.parent)
            os.close(handle)
            copy = Path(name)
            onnx.save_model(model, copy)
            source = str(copy)
        else:
            source = model.SerializeToString()
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph ...), none a ValueError
        text = " ".join(str(exc).split())
        why = re.search(r"Unsupported model IR version: \d+, max supported IR version: \d+|Opset \d+ is under "
                        r"development[^.]*", text)
        if why is not None:
            opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
            raise ValueError(f"onnxruntime {ort.__version__} cannot load the export of {path.name} at opset "
                             f"{opsets.get('ai.onnx')} ({why.group(0)}); export with a lower opset "
                             "(opset=...).") from None
        raise
    finally:
        if copy is not None:
            copy.unlink(missing_ok=True)
    used = session.get_providers()[0]
    if len(providers) > 1 and used != "CUDAExecutionProvider":
        notice = "onnxruntime ran on CPU: CUDAExecutionProvider could not be created (CUDA/cuDNN libraries not found)."
    needed = {i.name for i in session.get_inputs()}
    ort_out = session.run(wanted, {k: v for k, v in feeds.items() if k in needed})
    device = next(chain(net.parameters(), net.buffers()), torch.empty(0)).device
    was_training, cudnn_tf32 = net.training, torch.backends.cudnn.allow_tf32
    net.eval()
    torch.backends.cudnn.allow_tf32 = False   # full float32 on the torch side too
    try:
        with torch.no_grad():
            ref = net(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()}, outputs=wanted)
    finally:
        net.train(was_training)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    abs_err, rel_err, shapes = {}, {}, {}
    for name, got in zip(wanted, ort_out):
        expected = ref[name].detach().to("cpu", torch.float64).numpy()
        if got.shape != expected.shape:
            raise CaffeImportError(f"ONNX output '{name}' has shape {got.shape} but the PyTorch net gives "
                                   f"{expected.shape} for the same feeds.")
        diff = float(np.abs(got.astype(np.float64) - expected).max()) if expected.size else 0.0
        scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
        abs_err[name], rel_err[name], shapes[name] = diff, diff / scale, tuple(got.shape)
    return OnnxCheck(abs_err, rel_err, used, notice, shapes)
