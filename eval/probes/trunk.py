"""The frozen AlexNet a probe reads: loaded from a `jigsawpp convert` folder, with its identity for caches and stamps.

Two folder kinds are accepted: a converted release (``jigsawpp convert RELEASE.zip --out DIR``: its transfer
variant, via `jigsawpp.models.from_release`) and a converted Caffe model (``jigsawpp convert --prototxt P
--caffemodel W --out DIR``: ``deploy.prototxt`` + ``model.safetensors``; the deploy must be a CaffeNet/AlexNet
layout, checked by `jigsawpp.models.alexnet_config_from_prototxt`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from jigsawpp.constants import IMAGENET_MEAN_BGR
from jigsawpp.models import CaffeAlexNet

__all__ = ["Trunk", "load_trunk", "state_sha256"]


@dataclass(frozen=True)
class Trunk:
    """A loaded model and what identifies it."""

    model: CaffeAlexNet
    source: str                          # the folder (and variant) it came from
    weights_sha256: str                  # sha256 of the safetensors file read
    mean_bgr: tuple[float, float, float]  # subtracted from 0..255 BGR pixels (the model's preprocessing)
    paper_method: str | None             # the paper's row for this model, when the manifest names one


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes in name order): identifies weights in memory."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def load_trunk(model_dir: str | os.PathLike[str], *, variant: str = "transfer") -> Trunk:
    """The CaffeAlexNet of `model_dir` in eval mode. Raises FileNotFoundError / ValueError / KeyError with a
    sentence naming the folder and what was expected."""
    from jigsawpp.io import load_state_dict_file, sha256_file
    from jigsawpp.models import alexnet_config_from_prototxt, from_release

    directory = Path(model_dir)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{directory}: no manifest.json; --model must be the --out folder of `jigsawpp "
                                "convert` (a release zip, or --prototxt with --caffemodel).")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    paper = (manifest.get("paper") or {}).get("method") or (manifest.get("release") or {}).get("paper_method")
    if "variants" in manifest:
        model = from_release(directory, variant)
        name = manifest.get("transfer_variant") if variant == "transfer" else next(
            (k for k, v in manifest["variants"].items() if v.get("role") == variant), variant)
        entry = manifest["variants"][name]
        mean = (entry.get("preprocessing") or {}).get("mean_bgr")
        if mean is None:
            raise ValueError(f"{directory}: variant {name!r} takes no mean-subtracted image (its preprocessing is "
                             f"{(entry.get('preprocessing') or {}).get('normalisation')!r}); probe the transfer "
                             "variant instead.")
        weights = directory / name / entry["files"]["weights"]
        return Trunk(model, f"{directory.name}/{name}", sha256_file(weights), tuple(float(v) for v in mean), paper)
    deploy, weights = directory / "deploy.prototxt", directory / "model.safetensors"
    if not (deploy.is_file() and weights.is_file()):
        raise FileNotFoundError(f"{directory}: expected deploy.prototxt and model.safetensors beside manifest.json "
                                "(a `jigsawpp convert --prototxt ... --caffemodel ...` output folder).")
    from caffe_import.parse import read_prototxt

    config = alexnet_config_from_prototxt(read_prototxt(deploy, warn=False), source=str(deploy))
    model = CaffeAlexNet.from_caffe_state(load_state_dict_file(weights), config).eval()
    return Trunk(model, directory.name, sha256_file(weights), IMAGENET_MEAN_BGR, paper)
