"""The cluster-classification network: a CaffeNet-layout AlexNet (conv1 stride 4) with a k-way fc8, its Caffe
initialisation, its deploy prototxt and its caffemodel.

Architecture: `jigsawpp.models.CaffeAlexNet` (BVLC `models/bvlc_reference_caffenet`, pool before LRN; conv1 stride 4
as the author states for every transfer network, MehdiNoroozi/JigsawPuzzleSolver issue #1); fc8 has k = 2000 outputs
(paper §4, "k = 2K for k-means"). The paper does not give the initialisation: we use the fillers of BVLC
`models/bvlc_reference_caffenet/train_val.prototxt@9b89154` (the recipe the training follows), listed in
`CAFFENET_FILLERS`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from google.protobuf import text_format

import prototxt as bundled
from jigsawpp.models import AlexNetConfig, CaffeAlexNet

# layer: (weight gaussian std, bias constant) from BVLC models/bvlc_reference_caffenet/train_val.prototxt@9b89154.
CAFFENET_FILLERS: dict[str, tuple[float, float]] = {
    "conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv3": (0.01, 0.0), "conv4": (0.01, 1.0), "conv5": (0.01, 1.0),
    "fc6": (0.005, 1.0), "fc7": (0.005, 1.0), "fc8": (0.01, 0.0),
}


INITS = ("caffenet", "msra")
# Standard deviation of ImageNet pixels on the 0-255 scale: torchvision's normalisation stds (0.229, 0.224, 0.225)
# (torchvision references/classification) times 255 are 58.4, 57.1, 57.4.
PIXEL_STD = 57.6


@torch.no_grad()
def caffenet_init_(model: CaffeAlexNet, *, generator: torch.Generator, init: str = "caffenet") -> CaffeAlexNet:
    """Fill the weights of `model` in layer order (one generator, so a seed fixes the whole net); returns `model`.

    init "caffenet": CaffeNet's gaussian fillers and bias constants (`CAFFENET_FILLERS`), the default.
    init "msra": Caffe's MSRAFiller, gaussian std sqrt(2 / fan_in) (He et al. 2015), biases 0, with conv1's std
    also divided by PIXEL_STD because the input is 0-255 pixels minus the mean, not unit-variance; train it with
    `solver_multipliers("msra")`. CaffeNet's small fixed stds need thousands of iterations before the loss moves
    (at small input sizes it does not move at all), so short runs (tests, small data) use this.
    """
    if init not in INITS:
        raise ValueError(f"init {init!r}: expected one of {INITS}.")
    for name, module in model.named_children():
        if name not in CAFFENET_FILLERS:
            continue
        std, bias = CAFFENET_FILLERS[name]
        if init == "msra":
            std, bias = (2.0 / (module.weight.numel() / module.weight.shape[0])) ** 0.5, 0.0
            if name == "conv1":
                std /= PIXEL_STD
        weight = torch.empty_like(module.weight, device="cpu").normal_(0.0, std, generator=generator)
        module.weight.copy_(weight)
        module.bias.fill_(bias)
    return model


def solver_multipliers(init: str) -> dict[str, tuple[float, float]]:
    """Caffe (lr_mult, decay_mult) overrides that go with `init`: none for "caffenet" (train_val.prototxt's 1/1 and
    2/0); for "msra", conv1's weights learn at 1 / PIXEL_STD^2, which makes SGD on raw 0-255 pixels with conv1 /
    PIXEL_STD the same as SGD on unit-variance pixels with plain He initialisation (the gradient grows with the input
    scale, the weights shrink with it)."""
    return {"conv1.weight": (1.0 / PIXEL_STD ** 2, 1.0)} if init == "msra" else {}


def cc_config(*, num_classes: int, input_size: int = 227, fc: int = 4096) -> AlexNetConfig:
    """AlexNetConfig of the CC network: stride-4 CaffeNet, fc6/fc7 `fc` wide (4096 in CaffeNet), fc8 `num_classes`.
    Smaller `input_size`/`fc` only serve tests and quick runs."""
    return AlexNetConfig(conv1_stride=4, input_size=input_size, fc6=fc, fc7=fc, num_classes=num_classes)


def deploy_text(config: AlexNetConfig, *, name: str, header: str) -> str:
    """A deploy prototxt describing `config` (input 1 x 3 x S x S, fc sizes, fc8 rows), from the bundled stride-4
    AlexNet deploys, with `header` as a leading comment block."""
    import caffe_import

    if config.conv1_stride != 4 or config.conv1_pad or config.pool_pad or not config.lrn_after_pool:
        raise ValueError(f"deploy_text writes the stride-4 CaffeNet layout only, not {config}.")
    source = "alexnet/conv_conv1s4.prototxt" if config.fc6 is None else "alexnet/deploy_conv1s4.prototxt"
    net = caffe_import.read_prototxt(bundled.path(source), warn=False)
    net.name = name
    for layer in net.layer:
        if layer.type == "Input":
            del layer.input_param.shape[0].dim[:]
            layer.input_param.shape[0].dim.extend([1, 3, config.input_size, config.input_size])
        sizes = {"fc6": config.fc6, "fc7": config.fc7, "fc8": config.num_classes}
        if layer.name in sizes:
            layer.inner_product_param.num_output = int(sizes[layer.name])  # type: ignore[arg-type]
    if config.fc6 is not None and config.num_classes is None:
        kept = [layer for layer in net.layer if layer.name not in ("fc8", "prob")]
        del net.layer[:]
        net.layer.extend(kept)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + text_format.MessageToString(net)


def write_caffemodel(model: CaffeAlexNet, deploy: str, path: str | os.PathLike[str]) -> Path:
    """Write `model`'s weights as a caffemodel for the deploy text `deploy` (which must describe the same layers);
    Caffe, OpenCV and `caffe_import` read it back. Atomic (temp file, then rename)."""
    import caffe_import

    net_param = caffe_import.read_prototxt_string(deploy, source="<cc deploy>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe_import.CaffeImportWarning)
        net = caffe_import.load(net_param)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    expected = net.state_dict()
    if set(state) != set(expected):
        raise ValueError(f"the model's parameters {sorted(state)} do not match the deploy's {sorted(expected)}.")
    net.load_state_dict(state, strict=True)
    return caffe_import.save_caffemodel(net, path)
