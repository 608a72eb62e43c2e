"""`jigsawpp export`: any model we can load (converted folder, release variant, prototxt + caffemodel) to ONNX.

The export itself is `caffe_import.export_onnx` (one ONNX node group per Caffe layer); every export is run in
onnxruntime against the PyTorch net (`caffe_import.check_onnx`) and, for nets that accept any input size, again
on a second size, so a user never receives an unchecked file.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ExportResult:
    path: Path
    source: str                             # what was loaded, in words
    checks: dict[str, object]               # input label -> caffe_import.OnnxCheck
    provider: str
    notice: str | None

    @property
    def worst_rel_err(self) -> float:
        return max((c.worst_rel_err for c in self.checks.values()), default=0.0)  # type: ignore[attr-defined]


def load_model(model: str | os.PathLike[str], caffemodel: str | os.PathLike[str] | None = None, *,
               variant: str = "transfer"):
    """(CaffeNet, description) from a converted folder, a release output folder (its `variant`), or a prototxt."""
    import caffe_import
    from jigsawpp.io import load_state_dict_file

    path = Path(model)
    if path.is_dir():
        manifest_path = path / "manifest.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
        if "variants" in manifest:  # the --out folder of `jigsawpp convert RELEASE.zip`
            variants = manifest["variants"]
            name = manifest.get("transfer_variant") if variant == "transfer" else next(
                (k for k, v in variants.items() if v.get("role") == variant), variant)
            if name not in variants:
                raise KeyError(f"{path}: no variant {variant!r}; available: {sorted(variants)}")
            path = path / name
        deploy, weights = path / "deploy.prototxt", path / "model.safetensors"
        if not (deploy.is_file() and weights.is_file()):
            raise FileNotFoundError(f"{path}: expected deploy.prototxt and model.safetensors (a `jigsawpp convert` "
                                    "output folder).")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = caffe_import.load(deploy, seed=None)
        net.load_state_dict(load_state_dict_file(weights), strict=True)
        return net.eval(), f"{path.name}/ (deploy.prototxt + model.safetensors)"
    if caffemodel is None:
        raise ValueError(f"{path}: a prototxt needs --caffemodel (or pass a converted folder).")
    return caffe_import.load(path, caffemodel), f"{path.name} + {Path(caffemodel).name}"


def export_model(model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 caffemodel: str | os.PathLike[str] | None = None, variant: str = "transfer",
                 opset: int | None = None, dynamic: bool = True) -> ExportResult:
    """Export and check; raises when onnxruntime and PyTorch disagree beyond 1e-4 relative."""
    import caffe_import

    net, source = load_model(model, caffemodel, variant=variant)
    out = caffe_import.export_onnx(net, out, opset=opset, dynamic=dynamic)
    checks = {"export input": caffe_import.check_onnx(net, out)}
    any_size = dynamic and not any(layer.type == "InnerProduct" for layer in net.layers_with_shapes)
    shapes = net.graph.input_shapes
    if any_size and len(shapes) == 1:
        (name, shape), = shapes.items()
        if len(shape) == 4:
            bigger = (shape[0], shape[1], shape[2] + 32, shape[3] + 32)
            feeds = {name: np.random.default_rng(1).normal(0.0, 50.0, bigger).astype(np.float32)}
            checks[f"second input {bigger[2]}x{bigger[3]}"] = caffe_import.check_onnx(net, out, feeds)
    for label, check in checks.items():
        if not check.passed():
            raise ValueError(f"{out}: onnxruntime differs from PyTorch on the {label} (max rel. error "
                             f"{check.worst_rel_err:.3g} > 1e-4); the file is kept for inspection.")
    first = checks["export input"]
    return ExportResult(Path(out), source, checks, first.provider, first.notice)
