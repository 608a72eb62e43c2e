"""`jigsawpp convert --prototxt P --caffemodel W --out DIR`: a Caffe model as safetensors plus a manifest.

Output (other tools rely on it): DIR/model.safetensors (state dict keyed by Caffe layer names), DIR/deploy.prototxt
(a copy of the definition used), DIR/manifest.json (sha256 of the inputs, the NetState the layers were selected
with, layers, input/output blobs and shapes, the weight accounting). Everything is written into a staging folder
and renamed into place, so a failed conversion leaves no partial output.

A DIGITS-style prototxt (train, val and deploy layers in one file, told apart by `include { stage: ... }` rules)
converts with `stages=["deploy"]`; the stages and level are recorded as `net_state` so that reloading the folder
selects the same layers. Shared params (`param { name }`) are one tensor in the state dict, stored once in the
safetensors file with the other keys as aliases, so a reload is exact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import caffe_import
from jigsawpp import __version__
from jigsawpp.io import save_state_dict_file, sha256_file, write_json_atomic


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


def convert_caffe(prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], *, outputs: list[str] | None = None,
                  stages: Sequence[str] = (), level: int = 0, overwrite: bool = False) -> ConvertResult:
    """Convert one prototxt + caffemodel pair into `out_dir` (see the module docstring for the layout).

    `stages`/`level` complete Caffe's NetState (TEST phase) that the layers' include/exclude rules are evaluated
    against, as `caffe.Net(prototxt, caffe.TEST, level=level, stages=stages)` does. Raises CaffeImportError for a
    net or caffemodel that cannot be loaded, FileExistsError for a non-empty `out_dir` without `overwrite`.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite.")
    net = caffe_import.load(prototxt, caffemodel, outputs=outputs, stages=stages, level=level)
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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_state_dict_file(net.state_dict(), staging / "model.safetensors",
                             metadata={"format": "caffe_import state dict, keys = Caffe layer names"})
        shutil.copyfile(prototxt, staging / "deploy.prototxt")
        write_json_atomic(staging / "manifest.json", manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConvertResult(out_dir=out_dir, manifest=manifest, seconds=time.perf_counter() - start)
