"""`jigsawpp export`: any model we can load (converted folder, release variant, prototxt + caffemodel) to ONNX.

The export itself is `caffe_import.export_onnx` (one ONNX node group per Caffe layer); every export is run in
onnxruntime against the PyTorch net (`caffe_import.check_onnx`) and, for nets that accept any input size, again
on a second size, so a user never receives an unchecked file: the export is written into a ``.NAME.partial-<pid>``
folder beside the target and moved into place only once it passed (with its ``NAME.data`` side file, for models
above protobuf's 2 GiB limit). An existing file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
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
               variant: str = "transfer", stages: Sequence[str] = (), level: int = 0, allow_missing: bool = False):
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
    from jigsawpp.convert import check_caffemodel_file

    check_caffemodel_file(caffemodel)
    net = caffe_import.load(path, caffemodel, stages=stages, level=level, allow_missing=allow_missing)
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


def _check_target(out: Path, *, overwrite: bool) -> None:
    from jigsawpp.outputs import OutputDirError

    if out.is_dir():
        raise OutputDirError(f"--out: {out} is a folder; give the ONNX file to write, e.g. {out / 'model.onnx'}.")
    if out.exists() and not overwrite:
        raise OutputDirError(f"--out: {out} exists; choose another file or pass --overwrite to replace it.")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputDirError(f"--out: {out} would be inside {parent}, which is a file; choose another path.")
            break


def _move_export_into_place(staged: Path, out: Path) -> None:
    side = staged.with_name(staged.name + ".data")
    if side.exists():
        os.replace(side, out.with_name(out.name + ".data"))
    else:
        out.with_name(out.name + ".data").unlink(missing_ok=True)  # a stale side file of an earlier, larger export
    os.replace(staged, out)


def export_model(model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 caffemodel: str | os.PathLike[str] | None = None, variant: str = "transfer",
                 stages: Sequence[str] = (), level: int = 0, allow_missing: bool = False,
                 opset: int | None = None, dynamic: bool = True, overwrite: bool = False) -> ExportResult:
    """Export and check; the file appears at `out` only when onnxruntime agrees with PyTorch within 1e-4 relative.

    `stages`/`level`/`allow_missing`: for a prototxt `model` (see `load_model`).

    Raises:
        jigsawpp.outputs.OutputDirError: `out` exists (without `overwrite`), is a folder or lies under a file;
            checked before the model is loaded.
        ValueError: onnxruntime and PyTorch disagree (the rejected export is kept in ``<out>.rejected/``).
    """
    import caffe_import
    from jigsawpp.outputs import clean_stale_partials, partial_path

    out = Path(out)
    _check_target(out, overwrite=overwrite)
    net, source = load_model(model, caffemodel, variant=variant, stages=stages, level=level,
                             allow_missing=allow_missing)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out)
    staging = partial_path(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        staged = caffe_import.export_onnx(net, staging / out.name, opset=opset, dynamic=dynamic)
        checks = {"export input": caffe_import.check_onnx(net, staged)}
        any_size = dynamic and not any(layer.type == "InnerProduct" for layer in net.layers_with_shapes)
        shapes = net.graph.input_shapes
        if any_size and len(shapes) == 1:
            (name, shape), = shapes.items()
            if len(shape) == 4:
                bigger = (shape[0], shape[1], shape[2] + 32, shape[3] + 32)
                feeds = {name: np.random.default_rng(1).normal(0.0, 50.0, bigger).astype(np.float32)}
                checks[f"second input {bigger[2]}x{bigger[3]}"] = caffe_import.check_onnx(net, staged, feeds)
        for label, check in checks.items():
            if not check.passed():
                rejected = out.with_name(out.name + ".rejected")
                shutil.rmtree(rejected, ignore_errors=True)
                os.replace(staging, rejected)
                raise ValueError(f"{out}: onnxruntime differs from PyTorch on the {label} (max rel. error "
                                 f"{check.worst_rel_err:.3g} > 1e-4); nothing was written to {out.name}, the "
                                 f"rejected export is in {rejected} for inspection.")
        _move_export_into_place(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    first = checks["export input"]
    return ExportResult(out, source, checks, first.provider, first.notice)
