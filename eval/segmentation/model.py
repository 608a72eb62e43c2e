"""FCN-AlexNet ("voc-fcn-alexnet", 32-pixel stride) built around `jigsawpp.models.CaffeAlexNet`'s conv trunk.

shelhamer/fcn.berkeleyvision.org@1305c73 ``voc-fcn-alexnet/net.py`` (also the bundled
``prototxt/fcn_alexnet/deploy.prototxt``)::

    CaffeNet conv1..pool5 with conv1 pad 100         (the pad lets the output be cropped back to any input size)
    fc6       Convolution 4096, kernel 6      -> relu6 -> drop6 (0.5)
    fc7       Convolution 4096, kernel 1      -> relu7 -> drop7 (0.5)
    score_fr  Convolution 21, kernel 1        (param lr 1/2, decay 1/0; no filler: Caffe's constant 0)
    upscore   Deconvolution 21, kernel 63, stride 32, no bias, lr_mult 0, weights = bilinear kernel on the diagonal
              (``surgery.interp`` / ``upsample_filt``, = `caffe_import.fillers.bilinear_kernel`), 0 elsewhere
    score     Crop(upscore, data) on axes 2-3 at offset 18      (the offset caffe.coord_map computes; see the
              prototxt's header)

Why CaffeAlexNet and not `caffe_import` on the prototxt: every protocol fine-tunes the same module class, so the
transferred weights load by the same names and checks (`jigsawpp.models.CaffeAlexNet.from_caffe_state`), and the
parameters keep Caffe's names and shapes (``fc6.weight`` (4096, 256, 6, 6)): a trained model runs unchanged in
`caffe_import` or OpenCV with the bundled deploy prototxt (tested), which also checks this module against an
independent build of the same net. ``--caffe-test`` evaluates a user's Caffe FCN through `caffe_import` instead.

Initialisation (recorded in the stamp): transferred layers from `jigsawpp.transfer_weights` (conv1..conv5 by default,
fc6/fc7 on request, reshaped from InnerProduct as FCN's ``surgery.transplant`` does); fresh fc6/fc7 from the fillers
the self-supervised FCN fine-tuning uses (richzhang/colorization@4617507
``feature_learning_tests/segmentation/train_val.prototxt``: gaussian std 0.005, bias 1, as BVLC CaffeNet's fc6/fc7);
score_fr zero (no filler in net.py); upscore bilinear and frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from caffe_import.fillers import bilinear_kernel
from jigsawpp.models import AlexNetConfig, CaffeAlexNet
from jigsawpp.transfer_weights import TRANSFER_FC_LAYERS as FC_LAYERS
from jigsawpp.transfer_weights import TransferWeights

__all__ = ["FCN_CROP_OFFSET", "FCNAlexNet", "build_fcn", "fcn_param_specs"]

FCN_CROP_OFFSET = 18  # deploy.prototxt crop_param offset (coord_map of data -> upscore)
UPSCORE_KERNEL, UPSCORE_STRIDE = 63, 32  # voc-fcn-alexnet/net.py
FRESH_FC_STD, FRESH_FC_BIAS = 0.005, 1.0  # colorization segmentation train_val.prototxt fc6/fc7 fillers


class FCNAlexNet(CaffeAlexNet):
    """FCN-AlexNet. Input (N, 3, H, W) BGR minus FCN's mean, any H, W >= 1; output ``score`` (N, 21, H, W).

    Parameter names are the deploy prototxt's layer names (``conv1.weight`` ... ``fc6.weight`` (4096, 256, 6, 6),
    ``score_fr.weight``, ``upscore.weight`` (21, 21, 63, 63)); ``upscore`` is not trained (``requires_grad`` False).
    """

    def __init__(self, *, num_classes: int = 21, dropout: float = 0.5) -> None:
        super().__init__(AlexNetConfig(conv1_stride=4, conv1_pad=100, fc6=None, fc7=None, num_classes=None,
                                       dropout=dropout))
        self.fc6 = nn.Conv2d(256, 4096, 6)
        self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, UPSCORE_KERNEL, stride=UPSCORE_STRIDE, bias=False)
        self.num_classes = num_classes
        self.upscore.weight.requires_grad_(False)
        if not self.upscore.weight.is_meta:
            self.reset_upscore()

    @torch.no_grad()
    def reset_upscore(self) -> None:
        """The bilinear kernel on the (class, class) diagonal, 0 elsewhere (``surgery.interp``)."""
        self.upscore.weight.zero_()
        # Caffe's bilinear filler equals FCN's upsample_filt (tests/test_reference_kernels.py)
        kernel = bilinear_kernel((1, 1, UPSCORE_KERNEL, UPSCORE_KERNEL))[0, 0].to(self.upscore.weight)
        for c in range(self.num_classes):
            self.upscore.weight[c, c] = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x, "pool5")
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        up = self.upscore(self.score_fr(h))
        height, width = x.shape[2:]
        top = FCN_CROP_OFFSET
        if up.shape[2] < top + height or up.shape[3] < top + width:
            raise ValueError(f"FCN-AlexNet: upscore is {tuple(up.shape[2:])} for a {height}x{width} input, smaller "
                             f"than the crop at offset {top} needs (conv1 pad must be 100).")
        return up[:, :, top:top + height, top:top + width]


@torch.no_grad()
def build_fcn(weights: TransferWeights | None, *, seed: int = 0, num_classes: int = 21) -> FCNAlexNet:
    """FCN-AlexNet with the transferred layers of ``weights`` (None: fillers everywhere, e.g. a random baseline) and
    the fresh layers initialised as the module docstring says, from ``torch.Generator().manual_seed(seed)``."""
    with torch.device("meta"):  # every parameter is set below: skip PyTorch's own initialisation
        model = FCNAlexNet(num_classes=num_classes)
    model.to_empty(device="cpu")
    model.reset_upscore()
    generator = torch.Generator().manual_seed(seed)
    taken: Sequence[str] = weights.layers if weights is not None else ()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        if name not in taken:  # CaffeNet's gaussian 0.01 conv fillers (bvlc_reference_caffenet train_val)
            conv = getattr(model, name)
            conv.weight.normal_(0.0, 0.01, generator=generator)
            conv.bias.fill_(0.0 if name in ("conv1", "conv3") else 1.0)
    for name in FC_LAYERS:
        layer = getattr(model, name)
        if name in taken:
            continue
        layer.weight.normal_(0.0, FRESH_FC_STD, generator=generator)
        layer.bias.fill_(FRESH_FC_BIAS)
    model.score_fr.weight.zero_()
    model.score_fr.bias.zero_()
    if weights is not None:
        state = model.state_dict()
        for key, value in weights.tensors.items():
            target = state[key]
            if value.numel() != target.numel() or (value.dim() == target.dim() and value.shape != target.shape):
                raise ValueError(f"{weights.source}: {key} has shape {tuple(value.shape)}; FCN-AlexNet needs "
                                 f"{tuple(target.shape)} (a CaffeNet-layout AlexNet).")
            target.copy_(value.reshape(target.shape))  # fc6 (4096, 9216) -> (4096, 256, 6, 6), as surgery.transplant
    return model


def fcn_param_specs(model: FCNAlexNet) -> list:
    """Caffe multipliers of ``voc-fcn-alexnet/net.py``: its conv/fc layers declare no ``param``, so weights and
    biases both get lr 1 / decay 1; ``score_fr`` biases lr 2 / decay 0; ``upscore`` lr 0 (frozen)."""
    from jigsawpp.engine.solver import param_specs

    return param_specs(model, weight=(1.0, 1.0), bias=(1.0, 1.0), multipliers={"score_fr.bias": (2.0, 0.0)},
                       frozen=("upscore",))
