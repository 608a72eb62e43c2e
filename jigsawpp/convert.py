"""`jigsawpp convert --prototxt P --caffemodel W --out DIR`: a Caffe model as safetensors plus a manifest.

Output (other tools rely on it): DIR/model.safetensors (state dict keyed by Caffe layer names), DIR/deploy.prototxt
(a copy of the definition used), DIR/manifest.json (sha256 of the inputs, the NetState the layers were selected
with, layers, input/output blobs and shapes, the weight accounting). Everything is written into a staging folder
and renamed into place (`jigsawpp.outputs.staged_output`), so a failed conversion leaves no partial output.

Results computed from a converted folder record `model_record(folder)`: the sha256 of its manifest.json, which
names every input file by its sha256, so that `jigsawpp verify` can tell which model a result came from.

A DIGITS-style prototxt (train, val and deploy layers in one file, told apart by `include { stage: ... }` rules)
converts with `stages=["deploy"]`; the stages and level are recorded as `net_state` so that reloading the folder
selects the same layers. Shared params (`param { name }`) are one tensor in the state dict, stored once in the
safetensors file with the other keys as aliases, so a reload is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import caffe_import
from jigsawpp import __version__
from jigsawpp.io import save_state_dict_file, sha256_file, write_json_atomic
from jigsawpp.outputs import staged_output

__all__ = ["ConvertResult", "check_caffemodel_file", "convert_caffe", "model_manifest_path", "model_record",
           "net_summary"]


@dataclass(frozen=True)
class ConvertResult:
    out_dir: Path
    manifest: dict
    seconds: float


def _layer_summary(net: caffe_import.CaffeNet, layer: caffe_import.Layer) -> dict:
    module = net.module_of(layer.name)
    return {"name": layer.name, "type": layer.type, "bottoms": list(layer.blob_bottoms), "tops": list(layer.blob_tops),
            "blobs": [list(getattr(module, attr).shape) for attr in module.caffe_blobs]}


def net_summary(net: caffe_import.CaffeNet) -> dict:
    """Layers, inputs and outputs of a loaded net with Caffe shapes (for manifests and `info`)."""
    return {
        "name": net.graph.name,
        "inputs": {name: list(net.graph.input_shapes[name]) for name in net.input_names},
        "outputs": {name: list(net.blob_shapes[name]) for name in net.output_names},
        "layers": [_layer_summary(net, layer) for layer in net.layers_with_shapes],
        "shared_params": net.shared_params(),
        "n_parameters": sum(p.numel() for p in {id(p): p for p in net.parameters()}.values()),
        "notes": list(net.notes),
    }


def check_caffemodel_file(path: str | os.PathLike[str]) -> None:
    """Refuse an empty caffemodel with a sentence saying so (read as protobuf, 0 bytes is a valid net without
    layers, which would surface later as "no weights for layer conv1")."""
    if Path(path).stat().st_size == 0:
        raise caffe_import.CaffeImportError(f"{path}: the caffemodel is empty (0 bytes); the download or copy failed, "
                                            "fetch it again.")


def convert_caffe(prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], *, outputs: list[str] | None = None,
                  stages: Sequence[str] = (), level: int = 0, allow_missing: bool = False,
                  overwrite: bool = False) -> ConvertResult:
    """Convert one prototxt + caffemodel pair into `out_dir` (see the module docstring for the layout).

    `stages`/`level` complete Caffe's NetState (TEST phase) that the layers' include/exclude rules are evaluated
    against, as `caffe.Net(prototxt, caffe.TEST, level=level, stages=stages)` does. `allow_missing` initialises
    layers without weights in the caffemodel from their fillers (listed under ``weights.filled`` in the manifest).

    Raises:
        jigsawpp.outputs.OutputDirError: `out_dir` is a non-empty folder (without `overwrite`), a file, or lies
            under a file; checked before anything is loaded.
        caffe_import.CaffeImportError: a net or caffemodel that cannot be loaded (an empty caffemodel included).
        OSError: the output cannot be written.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    with staged_output(out_dir, overwrite=overwrite, what="--out") as staging:
        check_caffemodel_file(caffemodel)
        net = caffe_import.load(prototxt, caffemodel, outputs=outputs, stages=stages, level=level,
                                allow_missing=allow_missing)
        manifest = {
            "tool": f"jigsawpp {__version__}",
            "inputs": {
                "prototxt": {"file": Path(prototxt).name, "sha256": sha256_file(prototxt)},
                "caffemodel": {"file": Path(caffemodel).name, "sha256": sha256_file(caffemodel)},
            },
            "net_state": net.graph.state.as_dict(),
            "net": net_summary(net),
            "weights": {k: v for k, v in net.weight_report.items() if v},
            "files": {"weights": "model.safetensors", "prototxt": "deploy.prototxt"},
        }
        save_state_dict_file(net.state_dict(), staging / "model.safetensors",
                             metadata={"format": "caffe_import state dict, keys = Caffe layer names"})
        shutil.copyfile(prototxt, staging / "deploy.prototxt")
        write_json_atomic(staging / "manifest.json", manifest)
    return ConvertResult(out_dir=out_dir, manifest=manifest, seconds=time.perf_counter() - start)


def model_manifest_path(model_dir: str | os.PathLike[str]) -> Path:
    """The manifest.json describing a converted model: ``DIR/manifest.json``, or for a variant folder of a release
    conversion (``ROOT/<variant>/``) the release's ``ROOT/manifest.json``.

    Raises:
        FileNotFoundError: neither exists (the message says what `model_dir` should be).
    """
    folder = Path(model_dir)
    own = folder / "manifest.json"
    if own.is_file():
        return own
    parent = folder.parent / "manifest.json"
    if parent.is_file():
        try:
            variants = json.loads(parent.read_text(encoding="utf-8")).get("variants") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            variants = {}
        if folder.name in variants:
            return parent
    raise FileNotFoundError(f"{own} does not exist; the model must be a folder written by `jigsawpp convert` (or "
                            "one of its variant folders).")


# Manifest entries that differ between two conversions of the same inputs (how long it took).
VOLATILE_MANIFEST_KEYS = ("seconds",)


def manifest_sha256(manifest: str | os.PathLike[str]) -> str:
    """The identity of a converted model: sha256 of its manifest.json as canonical JSON (sorted keys, no spaces),
    without `VOLATILE_MANIFEST_KEYS`, so that converting the same zip again gives the same identity. The manifest
    holds the sha256 of every input file, the variants and their weights, so any other difference changes it.

    Raises:
        OSError, ValueError: the file cannot be read or is not a JSON object.
    """
    data = json.loads(Path(manifest).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{manifest}: not a JSON object; is it a `jigsawpp convert` manifest?")
    kept = {k: v for k, v in data.items() if k not in VOLATILE_MANIFEST_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_record(model_dir: str | os.PathLike[str]) -> dict[str, str]:
    """What a result stamp records about the converted model it was computed from (its ``"model"`` entry):
    ``{"folder": name as given, "manifest_sha256": manifest_sha256 of its manifest.json}``."""
    manifest = model_manifest_path(model_dir)
    return {"folder": Path(model_dir).name, "manifest_sha256": manifest_sha256(manifest)}
