"""The Fast R-CNN CaffeNet detector, its Caffe parameter multipliers, and the multi-task loss.

The network is the bundled ``prototxt/fast_rcnn/CaffeNet/train.prototxt`` (rbgirshick/fast-rcnn@b612190
``models/CaffeNet/train.prototxt``: conv1 pad 5, pool1/pool2 pad 1, ROIPooling 6x6 at 1/16, fc6/fc7 4096,
cls_score 21, bbox_pred 84), run by `caffe_import` with its Python data layer cut off: inputs ``data`` and ``rois``.
Layers keep their Caffe names, so conv weights transfer by name from any converted model, and the trained
detector can be written back as a caffemodel for fast-rcnn's own ``test_net.py``.

Transfer (Noroozi et al. 2018 transfer the conv layers only; `jigsawpp.transfer_weights` is the choice every
protocol shares): conv1..conv5 come from the model, fc6/fc7 and the two heads start from the prototxt's fillers
(fc6/fc7 gaussian 0.005 / bias 1, cls_score 0.01, bbox_pred 0.001); ``transfer="conv+fc"`` takes fc6/fc7 from the
model too (they fit: ROI pooling gives the 256 x 6 x 6 that fc6 of a 227-pixel AlexNet reads).

Loss (``SoftmaxWithLoss`` + fast-rcnn's ``SmoothL1Loss``, caffe-fast-rcnn@bcd9b4e
``src/caffe/layers/smooth_L1_loss_layer.cu``)::

    L = mean_r -log softmax(cls_score_r)[label_r]  +  (1 / R) * sum_{r,j} smoothL1(w_rj * (bbox_pred_rj - t_rj))
    smoothL1(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5

R is the number of ROIs in the batch (the layer divides by ``bottom[0]->num()``), w the inside weights (1 on the
4 outputs of the ROI's class). Caffe clamps probabilities at FLT_MIN before the log; ``log_softmax`` does not, which
only matters for probabilities below 1e-38.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import caffe_import
import prototxt
from caffe_import.proto import caffe_pb2
from jigsawpp.engine.solver import ParamSpec  # re-exported: the detector's blobs are engine ParamSpecs
from jigsawpp.transfer_weights import TRANSFER_CONV_LAYERS, TransferWeights, transfer_weights

__all__ = [
    "CONV_LAYERS",
    "HEAD_LAYERS",
    "ConvWeights",
    "FastRCNN",
    "FastRCNNOutput",
    "LossParts",
    "ParamSpec",
    "build_detector",
    "conv_weights_from_model_dir",
    "detector_definition",
    "fast_rcnn_loss",
    "load_caffe_detector",
    "smooth_l1_loss",
]

CONV_LAYERS = TRANSFER_CONV_LAYERS
HEAD_LAYERS = ("fc6", "fc7", "cls_score", "bbox_pred")
TRAIN_PROTOTXT = "fast_rcnn/CaffeNet/train.prototxt"
# Any input shape works at run time; these only seed caffe_import's shape inference.
_INPUT_SHAPES = {"data": (1, 3, 227, 227), "rois": (1, 5)}


class FastRCNNOutput(NamedTuple):
    cls_score: torch.Tensor  # (R, K + 1) raw scores; softmax gives fast-rcnn's cls_prob
    bbox_pred: torch.Tensor  # (R, 4 (K + 1)) deltas per class


class FastRCNN(nn.Module):
    """(data (N, 3, H, W) mean-subtracted BGR, rois (R, 5) [batch, x1, y1, x2, y2]) -> `FastRCNNOutput`."""

    def __init__(self, net: caffe_import.CaffeNet, *, description: str) -> None:
        super().__init__()
        missing = [b for b in ("cls_score", "bbox_pred") if b not in net.blob_shapes]
        if missing or set(net.input_names) != {"data", "rois"}:
            raise ValueError(f"{description}: a Fast R-CNN net needs inputs data and rois and blobs cls_score and "
                             f"bbox_pred; it has inputs {list(net.input_names)} and lacks {missing}.")
        self.net = net
        self.description = description

    def forward(self, data: torch.Tensor, rois: torch.Tensor) -> FastRCNNOutput:
        out = self.net(data=data, rois=rois, outputs=["cls_score", "bbox_pred"])
        return FastRCNNOutput(out["cls_score"], out["bbox_pred"])

    @property
    def num_classes(self) -> int:
        return int(self.net.blob_shapes["cls_score"][1])

    def layer(self, name: str) -> nn.Module:
        return self.net.module_of(name)

    def param_specs(self, *, freeze_conv1: bool | None = None) -> list[ParamSpec]:
        """Every learnable blob with the multipliers of its layer's ``param`` fields (Caffe defaults 1 / 1).

        ``freeze_conv1=False`` gives conv1 the multipliers every other layer of the prototxt has (1 / 1 weights,
        2 / 0 biases) instead of its lr_mult 0; ``None`` keeps the prototxt's.
        """
        specs = []
        for layer in self.net.layers_with_shapes:
            module = self.net.module_of(layer.name)
            for index, attr in enumerate(module.caffe_blobs):
                param = getattr(module, attr)
                if not isinstance(param, nn.Parameter):
                    continue
                if index < len(layer.param.param):
                    lr, decay = layer.param.param[index].lr_mult, layer.param.param[index].decay_mult
                else:
                    lr, decay = 1.0, 1.0
                if layer.name == "conv1" and freeze_conv1 is not None:
                    lr, decay = (0.0, 0.0) if freeze_conv1 else ((1.0, 1.0) if index == 0 else (2.0, 0.0))
                attr_name = self.net.layer_attr[layer.name]
                specs.append(ParamSpec(f"{attr_name}.{attr}", layer.name, param, float(lr), float(decay)))
        return specs


def detector_definition(groups: Mapping[str, int] | None = None) -> caffe_pb2.NetParameter:
    """The bundled Fast R-CNN CaffeNet definition, with conv ``group`` values replaced where given."""
    net = caffe_import.read_prototxt(prototxt.path(TRAIN_PROTOTXT))
    for layer in net.layer:
        if groups and layer.name in groups:
            layer.convolution_param.group = int(groups[layer.name])
    return net


# The transferred layers (`jigsawpp.transfer_weights`); ConvWeights is the name this module used before.
ConvWeights = TransferWeights


def conv_weights_from_model_dir(model_dir: str | os.PathLike[str], *, layers: str = "conv") -> TransferWeights:
    """The detector's transferred layers from a model folder (`jigsawpp.transfer_weights.transfer_weights`):
    conv1..conv5, and fc6/fc7 with ``layers="conv+fc"``."""
    return transfer_weights(model_dir, layers=layers)


def build_detector(conv_weights: TransferWeights | None = None, *, seed: int = 0) -> FastRCNN:
    """The detector with the transferred layers of `conv_weights` (conv1..conv5, and fc6/fc7 when it holds them;
    fillers when None) and the other layers from the prototxt's fillers.

    `seed` seeds the fillers, so two builds with the same seed are identical.
    """
    groups = conv_weights.groups() if conv_weights is not None else None
    net = caffe_import.load(detector_definition(groups), inputs=_INPUT_SHAPES,
                            outputs=["cls_score", "bbox_pred"], phase="TRAIN", seed=seed)
    taken = "conv1-5" + ("+fc6-7" if conv_weights is not None and "fc6.weight" in conv_weights.tensors else "")
    description = "Fast R-CNN CaffeNet (" + (f"{taken} from {conv_weights.source}" if conv_weights else
                                             "filler-initialised") + ")"
    model = FastRCNN(net, description=description)
    if conv_weights is not None:
        with torch.no_grad():
            for key, value in conv_weights.tensors.items():
                layer, blob = key.split(".")
                target = getattr(model.layer(layer), blob)
                if tuple(target.shape) != tuple(value.shape):
                    raise ValueError(f"{conv_weights.source}: {key} has shape {tuple(value.shape)}, the Fast R-CNN "
                                     f"CaffeNet needs {tuple(target.shape)}"
                                     + (" (fc6 over the 6 x 6 ROI-pooled conv5)" if layer == "fc6" else "") + ".")
                target.copy_(value)
    return model


def load_caffe_detector(prototxt_path: str | os.PathLike[str],
                        caffemodel: str | os.PathLike[str] | None = None) -> FastRCNN:
    """A trained Caffe Fast R-CNN (e.g. fast-rcnn's ``caffenet_fast_rcnn_iter_40000.caffemodel`` with
    ``models/CaffeNet/test.prototxt``), evaluated as it is: its bbox_pred is already un-normalised."""
    net = caffe_import.load(prototxt_path, caffemodel, outputs=["cls_score", "bbox_pred"])
    return FastRCNN(net, description=f"Caffe model {Path(caffemodel).name if caffemodel else '(fillers)'} with "
                                     f"{Path(prototxt_path).name}")


class LossParts(NamedTuple):
    total: torch.Tensor
    cls: torch.Tensor
    bbox: torch.Tensor


def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """fast-rcnn's SmoothL1Loss: sum of smoothL1(w * (pred - target)) over all entries, divided by the row count."""
    d = weights * (pred - target)
    a = d.abs()
    return torch.where(a < 1, 0.5 * d * d, a - 0.5).sum() / pred.shape[0]


def fast_rcnn_loss(output: FastRCNNOutput, labels: torch.Tensor, bbox_targets: torch.Tensor,
                   bbox_weights: torch.Tensor) -> LossParts:
    """The multi-task loss (loss_weight 1 each), computed in float32 whatever the forward's precision."""
    cls = F.cross_entropy(output.cls_score.float(), labels)
    bbox = smooth_l1_loss(output.bbox_pred.float(), bbox_targets, bbox_weights)
    return LossParts(cls + bbox, cls, bbox)
