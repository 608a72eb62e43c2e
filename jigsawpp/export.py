"""`jigsawpp export`: any model we can load (converted folder, release variant, prototxt + caffemodel) to ONNX.

The export itself is `caffe_import.export_onnx` (one ONNX node group per Caffe layer); every export is run in
onnxruntime against the PyTorch net (`caffe_import.check_onnx`) and, for nets that accept any input size, again
on a second size, so a user never receives an unchecked file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
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
               variant: str = "transfer", stages: Sequence[str] = (), level: int = 0):
    """(CaffeNet, description) from a converted folder, a release output folder (its `variant`), or a prototxt.

    `stages`/`level` select layers by their Caffe include/exclude rules (see `caffe_import.load`). A converted
    folder records the NetState it was converted with (`net_state` in its manifest) and is reloaded with it; other
    stages or levels for a folder are an error, since its weights were written for that selection.
    """
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
        recorded = _recorded_state(path)
        if (stages or level) and (list(stages), level) != (recorded["stages"], recorded["level"]):
            raise ValueError(
                f"{path}: the folder was converted with stages {recorded['stages']} and level {recorded['level']} "
                f"(manifest.json net_state), not stages {list(stages)} and level {level}; drop --stage/--level for a "
                "converted folder, or convert the prototxt again with the ones you want.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = caffe_import.load(deploy, seed=None, stages=recorded["stages"], level=recorded["level"])
        net.load_state_dict(load_state_dict_file(weights), strict=True)
        return net.eval(), f"{path.name}/ (deploy.prototxt + model.safetensors{_state_words(net)})"
    if caffemodel is None:
        raise ValueError(f"{path}: a prototxt needs --caffemodel (or pass a converted folder).")
    net = caffe_import.load(path, caffemodel, stages=stages, level=level)
    return net, f"{path.name} + {Path(caffemodel).name}{_state_words(net)}"


def _recorded_state(folder: Path) -> dict:
    """The `net_state` of a `jigsawpp convert` folder's manifest (TEST, level 0, no stages when absent)."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    state = manifest.get("net_state") or {}
    return {"stages": list(state.get("stages", [])), "level": int(state.get("level", 0))}


def _state_words(net) -> str:
    state = net.graph.state
    if not state.stages and not state.level:
        return ""
    return f"; stages {list(state.stages)}, level {state.level}"


def export_model(model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 caffemodel: str | os.PathLike[str] | None = None, variant: str = "transfer",
                 stages: Sequence[str] = (), level: int = 0,
                 opset: int | None = None, dynamic: bool = True) -> ExportResult:
    """Export and check; raises when onnxruntime and PyTorch disagree beyond 1e-4 relative.

    `stages`/`level`: Caffe NetState for a prototxt `model` (see `load_model`).
    """
    import caffe_import

    net, source = load_model(model, caffemodel, variant=variant, stages=stages, level=level)
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
