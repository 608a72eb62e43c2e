"""Which layers of a converted model initialise an evaluation network: one shared choice, recorded in every stamp.

Noroozi et al. (2018) transfer only the convolutional layers of their stride-4 AlexNet to every evaluation (the
release page: the conv layers of the transfer network are what is evaluated; the CC models' fc6-fc8 were trained
to classify k-means clusters). Every protocol here (Fast R-CNN detection, VOC07 classification, FCN segmentation)
therefore starts from conv1..conv5 of the model by default (`TRANSFER_CONV`), and can take fc6/fc7 too on request
(`TRANSFER_CONV_FC`), as the original protocol code does with ImageNet models (philkr/voc-classification@c209779
``train_cls.py`` copies every layer below ``--random-from drop7``; FCN's ``solve.py`` copies an AlexNet whose
fc6/fc7 were cast to convolutions). The layers not taken are initialised by each protocol's own rule, which its
stamp records.

Weights come by Caffe layer name (``conv1.weight``, ``fc6.bias``) from a model folder: a converted release
(``jigsawpp convert RELEASE.zip``: its transfer variant, loaded through `jigsawpp.models.from_release`) or a
converted Caffe model (``jigsawpp convert --prototxt --caffemodel``: ``model.safetensors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CONV_LAYERS",
    "FC_LAYERS",
    "TRANSFER_CHOICES",
    "TRANSFER_CONV",
    "TRANSFER_CONV_FC",
    "ConvWeights",
    "TransferWeights",
    "conv_weights_from_model_dir",
    "transfer_weights_from_model_dir",
]

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7")
TRANSFER_CONV = "conv"  # the paper's choice: conv1..conv5 only
TRANSFER_CONV_FC = "conv+fc"  # conv1..conv5 and fc6/fc7
TRANSFER_CHOICES = {TRANSFER_CONV: CONV_LAYERS, TRANSFER_CONV_FC: CONV_LAYERS + FC_LAYERS}
# fc6 of the stride-4 AlexNet at its 227-pixel input: 4096 outputs over pool5's 256 x 6 x 6 (CaffeNet deploy).
FC_SHAPES = {"fc6.weight": (4096, 256 * 6 * 6), "fc6.bias": (4096,), "fc7.weight": (4096, 4096), "fc7.bias": (4096,)}


@dataclass(frozen=True, eq=False)
class TransferWeights:
    """Weights and biases of the transferred layers (Caffe layer names) and where they came from.

    ``tensors`` holds ``<layer>.weight`` / ``<layer>.bias`` for every layer of ``layers``; fc6/fc7 keep Caffe's
    InnerProduct shapes ((4096, 9216), (4096, 4096)), which a fully convolutional net reshapes to (4096, 256, 6, 6)
    and (4096, 4096, 1, 1) as FCN's ``surgery.transplant`` does (same memory order).
    """

    tensors: dict[str, torch.Tensor]
    source: str
    sha256: str | None = None
    layers: tuple[str, ...] = CONV_LAYERS

    def groups(self) -> dict[str, int]:
        """Each conv layer's group count, from its input channels and the weight's (Cout, Cin / group, k, k) shape."""
        in_channels = {"conv1": 3}
        for prev, layer in zip(CONV_LAYERS, CONV_LAYERS[1:]):
            in_channels[layer] = int(self.tensors[f"{prev}.weight"].shape[0])
        out = {}
        for layer in CONV_LAYERS:
            per_group = int(self.tensors[f"{layer}.weight"].shape[1])
            if in_channels[layer] % per_group:
                raise ValueError(f"{self.source}: {layer}.weight has {per_group} input channels per group, which "
                                 f"does not divide the {in_channels[layer]} channels of its input.")
            out[layer] = in_channels[layer] // per_group
        return out

    def stamp(self) -> dict[str, object]:
        """What a provenance stamp records about the initialisation."""
        return {"transferred_layers": list(self.layers), "from": self.source, "sha256": self.sha256}


# The name the detection protocol has always used for the conv-only case.
ConvWeights = TransferWeights


def _pick(state: Mapping[str, torch.Tensor], layers: tuple[str, ...], source: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer in layers:
        for blob in ("weight", "bias"):
            wanted = f"{layer}.{blob}"
            hits = [k for k in state if k == wanted or k.endswith("." + wanted)]
            if len(hits) != 1:
                found = "none" if not hits else ", ".join(hits)
                hint = (" (the model has no fully connected layers: transfer the conv layers only)"
                        if layer in FC_LAYERS and not hits else "")
                raise KeyError(f"{source}: need exactly one tensor named like {wanted!r} (found {found}){hint}; "
                               f"layers {', '.join(layers)} are transferred by their Caffe layer names.")
            tensors[wanted] = state[hits[0]].detach().float().clone()
    for key, shape in FC_SHAPES.items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(tensors[key].shape)}; the AlexNet fc layers the "
                             f"protocols transfer have {shape} (fc6 over pool5 256 x 6 x 6 at a 227-pixel input).")
    return tensors


def _release_weights(directory: Path, manifest: dict, layers: tuple[str, ...]) -> TransferWeights:
    """The layers of a converted release's transfer variant (`jigsawpp.models.from_release`)."""
    from jigsawpp.io import sha256_file
    from jigsawpp.models import from_release

    alexnet = from_release(directory, "transfer")
    c = alexnet.config
    problems = []
    if c.conv1_stride != 4:
        problems.append(f"conv1 stride {c.conv1_stride} (the transfer protocols use the stride-4 AlexNet)")
    if not c.lrn_after_pool:
        problems.append("LRN before pooling (the protocols' CaffeNet pools first)")
    if (c.lrn_size, c.lrn_alpha, c.lrn_beta, c.lrn_k) != (5, 1e-4, 0.75, 1.0):
        problems.append(f"LRN {c.lrn_size}/{c.lrn_alpha}/{c.lrn_beta}/k={c.lrn_k} (CaffeNet: 5/0.0001/0.75/k=1)")
    name = manifest.get("transfer_variant")
    if problems:
        raise ValueError(f"{directory}: the transfer variant {name!r} differs from the CaffeNet layout of the "
                         "evaluation protocols (Fast R-CNN, FCN-AlexNet, VOC classification) in "
                         + "; ".join(problems) + ". Its weights would compute something else there.")
    entry = manifest["variants"][name]
    weights = directory / name / entry["files"]["weights"]
    return TransferWeights(tensors=_pick(alexnet.state_dict(), layers, str(weights)),
                           source=f"{directory.name}/{name}", sha256=sha256_file(weights), layers=layers)


def transfer_weights_from_model_dir(model_dir: str | os.PathLike[str], *,
                                    transfer: str = TRANSFER_CONV) -> TransferWeights:
    """The transferred layers of a model folder: conv1..conv5 (``transfer="conv"``, the paper's choice) or also
    fc6/fc7 (``"conv+fc"``). Keys may carry a prefix (``features.conv1.weight``) if it is unambiguous.

    Raises:
        FileNotFoundError: the folder is not a ``jigsawpp convert`` output.
        KeyError: a layer is missing (e.g. fc6 of a conv-only release) or ambiguous.
        ValueError: an unknown ``transfer`` choice, or shapes that do not fit the CaffeNet layout.
    """
    from jigsawpp.io import load_state_dict_file, sha256_file

    if transfer not in TRANSFER_CHOICES:
        raise ValueError(f"transfer is {transfer!r}; expected one of {sorted(TRANSFER_CHOICES)} (conv: conv1..conv5, "
                         "the paper's choice; conv+fc: also fc6 and fc7).")
    layers = TRANSFER_CHOICES[transfer]
    directory = Path(model_dir)
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if "variants" in manifest:
            return _release_weights(directory, manifest, layers)
    path = directory / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; --model must be a folder written by `jigsawpp convert` "
                                "(a release folder with manifest.json, or model.safetensors + manifest.json).")
    return TransferWeights(tensors=_pick(load_state_dict_file(path), layers, str(path)), source=str(directory.name),
                           sha256=sha256_file(path), layers=layers)


def conv_weights_from_model_dir(model_dir: str | os.PathLike[str]) -> TransferWeights:
    """conv1..conv5 of a model folder (`transfer_weights_from_model_dir` with ``transfer="conv"``)."""
    return transfer_weights_from_model_dir(model_dir, transfer=TRANSFER_CONV)
