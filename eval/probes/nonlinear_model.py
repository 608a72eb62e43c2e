"""The network of the nonlinear classifier (Table 6): the model's AlexNet up to a frozen layer, the rest fresh.

Noroozi & Favaro (ECCV 2016) trained "CFN for recognition initialized with jigsaw puzzle solver weights and lock
desired convolutional layers" (MehdiNoroozi/JigsawPuzzleSolver ``README.md@8c7ec09``); the 2018 paper (Table 6
caption) does the same on AlexNet: "The learned weights from conv1 up to the displayed layer are frozen. The rest
of the network is randomly initialized and retrained." No reference code for the AlexNet version exists
(reference_protocols §2e), so this follows Caffe's semantics of locking a layer (lr_mult 0: its weights never move,
but the net keeps running in TRAIN phase, so dropout after a frozen fc6/fc7 stays active) and initialises the fresh
layers with CaffeNet's fillers (BVLC ``models/bvlc_reference_caffenet/train_val.prototxt``, the same values as
``train_val_cfn_rec.prototxt``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from eval.probes.config import FREEZE_POINTS, NonlinearConfig
from jigsawpp.models import CaffeAlexNet

__all__ = ["CONV_BIAS_FILLERS", "NonlinearNet", "build_nonlinear_net"]

# Constant bias filler of each conv layer in CaffeNet's train_val.prototxt (and train_val_cfn_rec.prototxt).
CONV_BIAS_FILLERS = {"conv1": 0.0, "conv2": 1.0, "conv3": 0.0, "conv4": 1.0, "conv5": 1.0}
FC_BIAS_FILLERS = {"fc6": 1.0, "fc7": 1.0, "fc8": 0.0}


class NonlinearNet(torch.nn.Module):
    """A CaffeAlexNet (conv1..fc8, `num_classes` outputs) whose layers up to `freeze_upto` are frozen.

    Frozen parameters have requires_grad False. `train()` keeps Caffe's TRAIN phase for every layer (dropout on),
    as locking a layer in Caffe only zeroes its learning rate.
    """

    def __init__(self, net: CaffeAlexNet, frozen: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.frozen = frozen
        for name, p in net.named_parameters():
            p.requires_grad_(name.split(".")[0] not in frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 227, 227) BGR minus mean -> fc8 logits (N, num_classes)."""
        return self.net(x)

    @property
    def trained_layers(self) -> tuple[str, ...]:
        names = {n.split(".")[0] for n, _ in self.net.named_parameters()}
        return tuple(layer for layer in FREEZE_POINTS + ("fc8",) if layer in names and layer not in self.frozen)


def build_nonlinear_net(trunk: CaffeAlexNet, config: NonlinearConfig, *, num_classes: int = 1000,
                        seed: int | None = None) -> NonlinearNet:
    """Copy conv1..`config.freeze_upto` from `trunk` and initialise the later layers with CaffeNet's fillers
    (seeded by `seed`, default `config.seed`). Raises ValueError when the trunk lacks a layer to freeze."""
    frozen = config.frozen_layers
    names = {n.split(".")[0] for n, _ in trunk.named_parameters()}
    lacking = [layer for layer in frozen if layer not in names]
    if lacking:
        raise ValueError(f"freezing up to {config.freeze_upto} needs the model's {', '.join(lacking)}, which it does "
                         "not have (a conv-only model supports conv1..conv5).")
    arch = replace(trunk.config, fc6=trunk.config.fc6 if "fc6" in frozen else config.fc_units,
                   fc7=trunk.config.fc7 if "fc7" in frozen else config.fc_units, num_classes=num_classes,
                   dropout=config.dropout, input_size=config.crop_size)
    net = CaffeAlexNet(arch)
    generator = torch.Generator().manual_seed(config.seed if seed is None else seed)
    source = dict(trunk.named_parameters())
    with torch.no_grad():
        for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            module = getattr(net, layer)
            if layer in frozen:
                for blob in ("weight", "bias"):
                    value = source[f"{layer}.{blob}"]
                    target = getattr(module, blob)
                    if value.shape != target.shape:
                        raise ValueError(f"the model's {layer}.{blob} has shape {tuple(value.shape)}, the classifier "
                                         f"needs {tuple(target.shape)} at a {config.crop_size}-pixel input.")
                    target.copy_(value)
                continue
            if layer.startswith("conv"):
                std, bias = config.conv_std, CONV_BIAS_FILLERS[layer]
            else:
                std, bias = (config.fc8_std if layer == "fc8" else config.fc_std), FC_BIAS_FILLERS[layer]
            module.weight.normal_(0.0, std, generator=generator)
            module.bias.fill_(bias)
    return NonlinearNet(net, frozen)
