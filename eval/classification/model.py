"""The VOC07 classifier of Krähenbühl et al.: CaffeAlexNet clipped at drop7 (or pool5) plus a fresh 20-way fc8_cls.

philkr/voc-classification@c209779 ``src/train_cls.py``:

* the deploy net is clipped at ``--clip`` (``drop7``; ``pool5`` for the pool5 variant) and an InnerProduct
  ``fc8_cls`` with 20 outputs is added;
* ``--train-from L`` gives every layer from L on ``lr_mult`` 1 (weights) / 2 (biases) and ``decay_mult`` 1 / 1
  (``setLR(t, 1, 2)``, ``setDecay(t, 1, 1)``: biases are decayed too), and the layers before it 0 / 0;
* ``--random-from drop7`` re-initialises every layer after drop7 (i.e. fc8_cls) with N(0, 0.01) weights and bias
  0.1. In the pool5 variant drop7 does not exist, so nothing is re-initialised and fc8_cls keeps Caffe's default
  filler (constant 0); we reproduce both.

The variants of ``experiments/ALL_PARAMS``: ``all`` (the paper's Table 3: everything trained), ``fc678``
(``--train-from pool5``), ``fc8`` (``--train-from drop7``) and ``pool5`` (``--clip pool5 --train-from pool5``).

Which layers come from the model is `jigsawpp.transfer_weights`' shared choice: conv1..conv5 by default, fc6/fc7 on
request. philkr's code copies fc6/fc7 from an ImageNet model; when they are not transferred here they are fresh,
initialised by philkr's re-initialisation rule (N(0, 0.01), bias 0.1, what ``--random-from pool5`` does). Fresh
fc6/fc7 that a variant freezes (``fc8``) would classify random features, so that combination is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jigsawpp.models import AlexNetConfig, CaffeAlexNet
from jigsawpp.transfer_weights import TRANSFER_CONV_LAYERS as CONV_LAYERS
from jigsawpp.transfer_weights import TRANSFER_FC_LAYERS as FC_LAYERS
from jigsawpp.transfer_weights import TransferWeights

__all__ = ["VARIANTS", "ClassifierVariant", "VOCClassifier", "build_classifier", "classifier_param_specs"]

RANDOM_STD, RANDOM_BIAS = 0.01, 0.1  # train_cls.py: np.random.normal(0, 0.01, ...), blobs[1] = 0.1


@dataclass(frozen=True)
class ClassifierVariant:
    """One line of philkr's experiments/ALL_PARAMS: where the net is clipped and which layers train."""

    name: str
    clip: str  # "drop7" or "pool5"
    train_from: str | None  # first trained layer's bottom (None: everything trains)
    trained: tuple[str, ...]  # the layers with lr_mult > 0


VARIANTS = {
    "all": ClassifierVariant("all", "drop7", None, CONV_LAYERS + FC_LAYERS + ("fc8_cls",)),
    "fc678": ClassifierVariant("fc678", "drop7", "pool5", FC_LAYERS + ("fc8_cls",)),
    "fc8": ClassifierVariant("fc8", "drop7", "drop7", ("fc8_cls",)),
    "pool5": ClassifierVariant("pool5", "pool5", "pool5", ("fc8_cls",)),
}


class VOCClassifier(CaffeAlexNet):
    """CaffeAlexNet (stride-4, CaffeNet layout, 227-pixel input) clipped at drop7 or pool5, plus ``fc8_cls``.

    Input (N, 3, 227, 227) BGR 0-255 minus the mean; output (N, 20) scores (logits of the sigmoid loss).
    Parameters keep the Caffe layer names (``conv1.weight`` ... ``fc7.bias``, ``fc8_cls.weight``).
    """

    def __init__(self, *, clip: str = "drop7", num_classes: int = 20, dropout: float = 0.5) -> None:
        if clip not in ("drop7", "pool5"):
            raise ValueError(f"clip is {clip!r}; philkr's variants clip at 'drop7' or 'pool5'.")
        fc = 4096 if clip == "drop7" else None
        super().__init__(AlexNetConfig(fc6=fc, fc7=fc, num_classes=None, dropout=dropout))
        self.clip = clip
        self.top_blob = "fc7" if clip == "drop7" else "pool5"
        in_features = 4096 if clip == "drop7" else 256 * self.config.pool5_size() ** 2
        self.fc8_cls = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8_cls(torch.flatten(self.features(x, self.top_blob), 1))


@torch.no_grad()
def build_classifier(weights: TransferWeights, variant: ClassifierVariant, *, seed: int = 0) -> VOCClassifier:
    """The classifier of ``variant`` with the transferred layers of ``weights``, fresh layers as the module
    docstring says (seeded by ``seed``).

    Raises:
        ValueError: a variant that freezes fc6/fc7 while they are not transferred, or weights of another shape.
    """
    with torch.device("meta"):  # every parameter is set below: skip PyTorch's own initialisation
        model = VOCClassifier(clip=variant.clip)
    model.to_empty(device="cpu")
    fresh_fc = [n for n in FC_LAYERS if n not in weights.layers] if variant.clip == "drop7" else []
    frozen_fresh = [n for n in fresh_fc if n not in variant.trained]
    if frozen_fresh:
        raise ValueError(f"variant {variant.name!r} freezes {', '.join(frozen_fresh)}, which are not transferred from "
                         "the model (conv layers only by default), so it would classify random features; transfer "
                         "fc6/fc7 too (--transfer conv+fc) or choose variant 'all' or 'fc678'.")
    generator = torch.Generator().manual_seed(seed)
    for name in fresh_fc + ["fc8_cls"]:
        layer = getattr(model, name)
        if name == "fc8_cls" and variant.clip == "pool5":  # no --random-from layer in the clipped net
            layer.weight.zero_()
            layer.bias.zero_()
            continue
        layer.weight.normal_(0.0, RANDOM_STD, generator=generator)
        layer.bias.fill_(RANDOM_BIAS)
    state = model.state_dict()
    for key, value in weights.tensors.items():
        if key.split(".")[0] in FC_LAYERS and variant.clip == "pool5":
            continue  # clipped away
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(f"{weights.source}: {key} has shape {tuple(value.shape)}; the classifier needs "
                             f"{tuple(state[key].shape)} (a CaffeNet-layout stride-4 AlexNet).")
        state[key].copy_(value)
    return model


def classifier_param_specs(model: VOCClassifier, variant: ClassifierVariant) -> list:
    """Caffe multipliers of ``train_cls.py``: trained layers weights lr 1 / decay 1, biases lr 2 / decay 1
    (``setLR(t, 1, 2)``, ``setDecay(t, 1, 1)``); the other layers 0 / 0."""
    from jigsawpp.engine.solver import param_specs

    layers = {name.rpartition(".")[0] for name, _ in model.named_parameters()}
    return param_specs(model, weight=(1.0, 1.0), bias=(2.0, 1.0), frozen=sorted(layers - set(variant.trained)))
