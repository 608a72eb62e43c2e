"""Which layers of a converted model initialise an evaluation network: one shared choice, recorded in every stamp.

Noroozi et al. (2018) transfer only the convolutional layers of their stride-4 AlexNet to every evaluation (the
release page: "only convolutional layers ... are used for all the transfer learnings"; the CC models' fc6-fc8 were
trained to classify k-means clusters). Every protocol here (Fast R-CNN detection, VOC07 classification, FCN
segmentation) therefore starts from conv1..conv5 of the model by default (``"conv"``), and can take fc6/fc7 too on
request (``"conv+fc"``), as the original protocol code does with ImageNet models (philkr/voc-classification@c209779
``train_cls.py`` copies every layer below ``--random-from drop7``; FCN's ``solve.py`` copies an AlexNet whose
fc6/fc7 were cast to convolutions). The layers not taken are initialised by each protocol's own rule, which its
stamp records.

Weights come by Caffe layer name (``conv1.weight``, ``fc6.bias``) from a model folder: a converted release
(``jigsawpp convert RELEASE.zip``: its transfer variant, loaded through `jigsawpp.models.from_release`) or a
converted Caffe model (``jigsawpp convert --prototxt --caffemodel``: ``model.safetensors``). A release's transfer
variant must have the CaffeNet layout the protocols build on (conv1 stride 4, LRN after pooling, CaffeNet's LRN),
or its weights would compute something else there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from jigsawpp.models import AlexNetConfig, from_release

__all__ = [
    "FC_SHAPES",
    "TRANSFER_CHOICES",
    "TRANSFER_CONV_LAYERS",
    "TRANSFER_FC_LAYERS",
    "TransferWeights",
    "transfer_weights",
]

TRANSFER_CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
TRANSFER_FC_LAYERS = ("fc6", "fc7")
TRANSFER_CHOICES = {"conv": TRANSFER_CONV_LAYERS, "conv+fc": TRANSFER_CONV_LAYERS + TRANSFER_FC_LAYERS}
# fc6 of the stride-4 AlexNet at its 227-pixel input: 4096 outputs over pool5's 256 x 6 x 6 (CaffeNet deploy).
FC_SHAPES = {"fc6.weight": (4096, 256 * 6 * 6), "fc6.bias": (4096,), "fc7.weight": (4096, 4096), "fc7.bias": (4096,)}


@dataclass(frozen=True, eq=False)
class TransferWeights:
    """The transferred layers' weights and biases (Caffe layer names, Caffe shapes) and where they came from.

    Attributes:
        tensors: ``"<layer>.weight"`` / ``"<layer>.bias"`` float32 tensors for every layer of `layers`; fc6/fc7 keep
            InnerProduct shapes ((4096, 9216), (4096, 4096)), which a fully convolutional net reshapes to
            (4096, 256, 6, 6) and (4096, 4096, 1, 1) as FCN's ``surgery.transplant`` does (same memory order).
        choice: "conv" or "conv+fc" (`TRANSFER_CHOICES`).
        source: the model folder (and variant) as a readable name.
        weights_sha256: sha256 of the weights file the tensors were read from.
        model: ``jigsawpp.convert.model_record`` of the folder (its manifest's sha256): what `verify` checks a
            result against; None for a folder without a manifest.
        config: the CaffeAlexNet layout of a release variant (None for a plain converted Caffe model).
    """

    tensors: dict[str, torch.Tensor]
    choice: str = "conv"
    source: str = "?"
    weights_sha256: str | None = None
    model: dict[str, str] | None = None
    config: AlexNetConfig | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return TRANSFER_CHOICES[self.choice]

    @property
    def manifest_sha256(self) -> str | None:
        return (self.model or {}).get("manifest_sha256")

    def groups(self) -> dict[str, int]:
        """Each conv layer's group count, from its input channels and the weight's (Cout, Cin / group, k, k)."""
        in_channels = {"conv1": 3}
        for prev, layer in zip(TRANSFER_CONV_LAYERS, TRANSFER_CONV_LAYERS[1:]):
            in_channels[layer] = int(self.tensors[f"{prev}.weight"].shape[0])
        out = {}
        for layer in TRANSFER_CONV_LAYERS:
            per_group = int(self.tensors[f"{layer}.weight"].shape[1])
            if in_channels[layer] % per_group:
                raise ValueError(f"{self.source}: {layer}.weight has {per_group} input channels per group, which "
                                 f"does not divide the {in_channels[layer]} channels of its input.")
            out[layer] = in_channels[layer] // per_group
        return out

    def record(self) -> dict[str, object]:
        """What a provenance stamp records: the choice, the layers taken, whether fc6/fc7 came from the model, the
        weights file and the model record (``model``: what `jigsawpp verify` checks a result against)."""
        return {"transfer": self.choice, "transferred_layers": list(self.layers),
                "fc6_fc7": "from the model" if "fc6" in self.layers else "not transferred",
                "from": self.source, "weights_sha256": self.weights_sha256, "model": self.model}


def _pick_layers(state: Mapping[str, torch.Tensor], layers: tuple[str, ...], source: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer in layers:
        for blob in ("weight", "bias"):
            wanted = f"{layer}.{blob}"
            hits = [k for k in state if k == wanted or k.endswith("." + wanted)]
            if len(hits) != 1:
                found = "none" if not hits else ", ".join(hits)
                hint = (" The model has no fully connected layers to transfer: use the conv layers only "
                        "(transfer 'conv', the paper's choice)." if layer in TRANSFER_FC_LAYERS and not hits else "")
                raise KeyError(f"{source}: need exactly one tensor named like {wanted!r} (found {found}); layers "
                               f"{', '.join(layers)} are transferred by their Caffe layer names.{hint}")
            tensors[wanted] = state[hits[0]].detach().float().clone()
    for key, shape in FC_SHAPES.items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(tensors[key].shape)}; the AlexNet fc layers the "
                             f"protocols transfer have {shape} (fc6 over pool5 256 x 6 x 6 at a 227-pixel input).")
    return tensors


def _check_caffenet_layout(config: AlexNetConfig, where: str) -> None:
    problems = []
    if config.conv1_stride != 4:
        problems.append(f"conv1 stride {config.conv1_stride} (the protocols use the stride-4 AlexNet; ROI pooling at "
                        "1/16 and FCN's crop need it)")
    if not config.lrn_after_pool:
        problems.append("LRN before pooling (the protocols' CaffeNet pools first)")
    lrn = (config.lrn_size, config.lrn_alpha, config.lrn_beta, config.lrn_k)
    if lrn != (5, 1e-4, 0.75, 1.0):
        problems.append(f"LRN {lrn[0]}/{lrn[1]}/{lrn[2]}/k={lrn[3]} (CaffeNet: 5/0.0001/0.75/k=1)")
    if problems:
        raise ValueError(f"{where}: the transfer variant differs from the CaffeNet layout of the evaluation protocols "
                         "(Fast R-CNN, FCN-AlexNet, VOC classification) in " + "; ".join(problems) + ". Its weights "
                         "would compute something else there.")


def _model_record(directory: Path) -> dict[str, str] | None:
    from jigsawpp.convert import model_record

    try:
        return model_record(directory)
    except FileNotFoundError:  # no manifest: nothing for verify to check the results against
        return None


def transfer_weights(model_dir: str | os.PathLike[str], *, layers: str = "conv") -> TransferWeights:
    """The layers an evaluation network takes from a converted model: ``layers="conv"`` (conv1..conv5, the paper's
    choice) or ``"conv+fc"`` (also fc6 and fc7).

    `model_dir` is a converted release (``jigsawpp convert RELEASE.zip``: its transfer variant, read through
    `from_release`, which must have the CaffeNet layout) or a converted Caffe model (``jigsawpp convert --prototxt
    --caffemodel``: ``model.safetensors`` keyed by Caffe layer names; a key prefix such as ``features.conv1.weight``
    is accepted when unambiguous).

    Raises:
        ValueError: an unknown `layers` choice; a release variant without the CaffeNet layout; fc shapes that are
            not AlexNet's.
        FileNotFoundError: the folder is not a ``jigsawpp convert`` output.
        KeyError: a layer is missing (e.g. fc6 of a conv-only model) or ambiguous.
    """
    from jigsawpp.io import load_state_dict_file, sha256_file

    if layers not in TRANSFER_CHOICES:
        raise ValueError(f"transfer layers {layers!r}: choose 'conv' (conv1..conv5, the paper's choice) or 'conv+fc' "
                         "(also fc6 and fc7).")
    wanted = TRANSFER_CHOICES[layers]
    directory = Path(model_dir)
    manifest_path = directory / "manifest.json"
    record = _model_record(directory)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if "variants" in manifest:
            alexnet = from_release(directory, "transfer")
            name = manifest.get("transfer_variant")
            _check_caffenet_layout(alexnet.config, f"{directory} (variant {name!r})")
            weights = directory / name / manifest["variants"][name]["files"]["weights"]
            return TransferWeights(tensors=_pick_layers(alexnet.state_dict(), wanted, str(weights)), choice=layers,
                                   source=f"{directory.name}/{name}", weights_sha256=sha256_file(weights),
                                   model=record, config=alexnet.config)
    path = directory / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the model must be a folder written by `jigsawpp convert` "
                                "(a release folder with manifest.json, or model.safetensors + manifest.json).")
    return TransferWeights(tensors=_pick_layers(load_state_dict_file(path), wanted, str(path)), choice=layers,
                           source=directory.name, weights_sha256=sha256_file(path), model=record)
