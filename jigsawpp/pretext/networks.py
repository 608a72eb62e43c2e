"""The context-free network (CFN) of the jigsaw task, with one set of tower weights shared by the 9 tiles.

AlexNet CFN: MehdiNoroozi/JigsawPuzzleSolver `train_val_cfn_jps++.prototxt@d18dace`. Per tile: MVN across channels,
x50 (`mvn`/`scale` layers), an AlexNet tower with conv1 stride 2 in CaffeNet order (`CaffeAlexNet`, headless: a
64-px tile reaches pool5 3x3 with Caffe's ceil pooling), fc6 1024 + ReLU + dropout 0.5; then the 9 fc6 outputs
are concatenated in slot order (9216) -> fc7 4096 + ReLU + dropout 0.5 -> fc8 (one output per permutation). The
Caffe net has 9 towers whose blobs are tied by param names (conv1_w ... fc6s_b); here the tower runs once on all
B x 9 tiles, which is the same computation with one copy of the weights (dropout masks are drawn per tile, as in
the 9 separate drop6_s{i} layers).

VGG16 CFN (the paper's "vgg-Jigsaw++", CVPR 2018 Table 3; its tower head is not published): VGG16's 13 conv layers
(Simonyan & Zisserman, `VGG_ILSVRC_16_layers_deploy.prototxt` names conv1_1 ... conv5_3, pool1 ... pool5) on the
same 64-px tiles (pool5 2x2x512 = 2048), then the AlexNet CFN's head (fc6 1024 per tile, fc7 4096, fc8 N). Chosen
because it changes only the tower, which is what the paper varies ("vgg-" means VGG16 is used before the CC step),
keeps the puzzle data identical, and keeps the head small (a 4096-wide fc6 per tile would give fc7 a 36864-wide
input). There is no BatchNorm (the paper's VGG16 is Caffe's); conv weights start from MSRA (He) fillers, which
train a 16-layer net from scratch where CaffeNet's gaussian(0.01) does not. Both are recorded as `choices` in the
model's provenance.

Parameter names are Caffe layer names (`tower.conv1.weight` is conv1_s{i}'s first blob for every i, `fc6` is
fc6_s{i}, `fc7`, `fc8`): `caffe_blobs()` lists them for the caffemodel writer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from caffe_import.layers.normalization import CaffeMVN
from jigsawpp.config_fields import refuse_unknown
from jigsawpp.models import AlexNetConfig, CaffeAlexNet

Arch = Literal["alexnet", "vgg16"]
Init = Literal["caffe", "msra"]
INITS = ("caffe", "msra")
MVN_EPS = 1e-9          # MVNParameter.eps default (BVLC caffe.proto); the prototxt does not set it
TILE_SCALE = 50.0       # power_param { scale: 50 } after each tile's MVN
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@dataclass(frozen=True)
class CFNConfig:
    """Architecture of a context-free network; defaults are the authors' AlexNet CFN."""

    arch: Arch = "alexnet"
    num_classes: int = 1000        # fc8 num_output of train_val_cfn_jps++.prototxt (use the permutation count)
    tiles: int = 9                 # siamese_size
    tile_size: int = 64            # patch_size
    fc6: int = 1024                # fc6_s{i} num_output
    fc7: int = 4096                # fc7 num_output
    dropout: float = 0.5           # drop6_s{i}, drop7 dropout_ratio
    tile_scale: float = TILE_SCALE

    def __post_init__(self) -> None:
        if self.arch not in ("alexnet", "vgg16"):
            raise ValueError(f"CFNConfig: arch {self.arch!r}; choose alexnet or vgg16.")
        if self.num_classes < 1 or self.tiles < 1:
            raise ValueError(f"CFNConfig: num_classes {self.num_classes} and tiles {self.tiles} must be >= 1.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CFNConfig:
        refuse_unknown(cls, data, what="CFNConfig key(s)")
        return cls(**data)  # type: ignore[arg-type]


class TileNormalization(nn.Module):
    """Caffe MVN (across_channels: true) then Power (scale 50): per tile, y = 50 (x - E[x]) / (std(x) + 1e-9) with
    E and std over (C, H, W). (N, 3, T, T) -> same shape; statistics in float32 under AMP."""

    def __init__(self, scale: float = TILE_SCALE, eps: float = MVN_EPS) -> None:
        super().__init__()
        self.mvn = CaffeMVN(normalize_variance=True, across_channels=True, eps=eps)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mvn(x) * self.scale


def alexnet_tower_config(tile_size: int = 64) -> AlexNetConfig:
    """The CFN tower: CaffeAlexNet with conv1 stride 2, conv layers only."""
    return AlexNetConfig(conv1_stride=2, input_size=tile_size, fc6=None, fc7=None, num_classes=None)


class VGG16Tower(nn.Module):
    """VGG16's conv layers with Caffe's names; (N, 3, T, T) -> pool5 (N, 512, T/32, T/32)."""

    def __init__(self) -> None:
        super().__init__()
        channels = 3
        for block, widths in enumerate(VGG16_BLOCKS, start=1):
            for layer, width in enumerate(widths, start=1):
                self.add_module(f"conv{block}_{layer}", nn.Conv2d(channels, width, 3, padding=1))
                self.add_module(f"relu{block}_{layer}", nn.ReLU(inplace=True))
                channels = width
            self.add_module(f"pool{block}", nn.MaxPool2d(2, 2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    def features(self, x: torch.Tensor, upto: str = "pool5") -> torch.Tensor:
        """The blob `upto` (e.g. "conv4_3", taken after its in-place ReLU as pycaffe shows it; "pool4")."""
        names = [name for name, _ in self.named_children()]
        if upto not in names or upto.startswith("relu"):
            raise KeyError(f"VGG16Tower has no blob {upto!r}; blobs: {[n for n in names if not n.startswith('relu')]}")
        stop = upto.replace("conv", "relu") if upto.startswith("conv") else upto
        for name, module in self.named_children():
            x = module(x)
            if name == stop:
                break
        return x


def _msra_std(weight: torch.Tensor) -> float:
    """Caffe's MSRAFiller (variance_norm FAN_IN): std sqrt(2 / fan_in), fan_in = weight.numel() / num_output."""
    return (2.0 / weight[0].numel()) ** 0.5


class ContextFreeNetwork(nn.Module):
    """tiles (B, 9, 3, T, T) float BGR 0..255 in slot order -> fc8 logits (B, num_classes)."""

    def __init__(self, config: CFNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or CFNConfig()
        self.normalize = TileNormalization(c.tile_scale)
        if c.arch == "alexnet":
            tower_config = alexnet_tower_config(c.tile_size)
            self.tower: nn.Module = CaffeAlexNet(tower_config)
            features = 256 * tower_config.pool5_size() ** 2
        else:
            self.tower = VGG16Tower()
            side = -(-c.tile_size // 32)
            features = 512 * side * side
        self.fc6 = nn.Linear(features, c.fc6)
        self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(c.dropout)
        self.fc7 = nn.Linear(c.tiles * c.fc6, c.fc7)
        self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(c.dropout)
        self.fc8 = nn.Linear(c.fc7, c.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, *, init: Init = "caffe") -> None:
        """Draw every weight from `generator` with the fillers `init` names.

        "caffe": the prototxt's fillers (train_val_cfn_jps++.prototxt@d18dace): conv gaussian std 0.01 with biases
        conv1 0, conv2 1, conv3 0, conv4 1, conv5 1; fc6_s{i} and fc7 gaussian 0.005, bias 1; fc8 gaussian 0.01,
        bias 0. VGG16 towers: MSRA (std sqrt(2 / fan_in), Caffe's "msra" with fan_in) weights, zero biases.
        "msra" (not the authors'; for short runs, where the gaussian fillers sit at chance for a long time): every
        conv, fc6 and fc7 weight MSRA (He et al. 2015, std sqrt(2 / fan_in), fan_in = in_channels / groups x
        kernel area; Caffe's `msra` filler), zero biases, except that conv1's std is divided by `tile_scale` (its
        input is the MVN'd tile x 50, He's derivation assumes unit-variance input) and fc8 keeps the prototxt's
        gaussian 0.01 (an MSRA fc8 starts with large logits and the first updates overshoot).
        Raises:
            ValueError: an unknown `init`.
        """
        if init not in INITS:
            raise ValueError(f"ContextFreeNetwork: init {init!r}; choose {' or '.join(INITS)}.")
        alexnet_bias = {"conv1": 0.0, "conv2": 1.0, "conv3": 0.0, "conv4": 1.0, "conv5": 1.0}
        for name, module in self.tower.named_children():
            if isinstance(module, nn.Conv2d):
                if self.config.arch == "alexnet" and init == "caffe":
                    module.weight.normal_(0.0, 0.01, generator=generator)
                    module.bias.fill_(alexnet_bias[name])
                else:
                    std = _msra_std(module.weight)
                    if init == "msra" and name in ("conv1", "conv1_1"):
                        std /= self.config.tile_scale
                    module.weight.normal_(0.0, std, generator=generator)
                    module.bias.zero_()
        for layer, std, bias in ((self.fc6, 0.005, 1.0), (self.fc7, 0.005, 1.0), (self.fc8, 0.01, 0.0)):
            if init == "msra":
                std, bias = (0.01 if layer is self.fc8 else _msra_std(layer.weight)), 0.0
            layer.weight.normal_(0.0, std, generator=generator)
            layer.bias.fill_(bias)

    def tower_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, T) raw tiles -> pool5 of the tower (N, C, h, w)."""
        x = self.normalize(tiles)
        return self.tower(x)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        batch, n = tiles.shape[:2]
        if n != self.config.tiles or tiles.dim() != 5:
            raise ValueError(f"ContextFreeNetwork: expected (B, {self.config.tiles}, 3, T, T) tiles, got "
                             f"{tuple(tiles.shape)}.")
        x = self.tower_features(tiles.flatten(0, 1))
        x = self.drop6(self.relu6(self.fc6(torch.flatten(x, 1))))
        x = x.view(batch, n * self.config.fc6)
        x = self.drop7(self.relu7(self.fc7(x)))
        return self.fc8(x)

    def caffe_blobs(self) -> dict[str, list[torch.Tensor]]:
        """{Caffe layer name: [weight, bias]} of the 9-tower net (tower layers repeated per tower, as Caffe writes
        shared blobs), in the order of the deploy's layers."""
        out: dict[str, list[torch.Tensor]] = {}
        tower = [(name, m) for name, m in self.tower.named_children() if isinstance(m, nn.Conv2d)]
        for i in range(1, self.config.tiles + 1):
            for name, module in tower:
                out[f"{name}_s{i}"] = [module.weight, module.bias]
            out[f"fc6_s{i}"] = [self.fc6.weight, self.fc6.bias]
        out["fc7"] = [self.fc7.weight, self.fc7.bias]
        out["fc8"] = [self.fc8.weight, self.fc8.bias]
        return out

    def tower_state(self) -> dict[str, torch.Tensor]:
        """One tower's weights keyed by the plain Caffe names (conv1.weight ..., fc6.weight): what a converted
        release's pretext variant holds, plus fc6."""
        state = {k: v for k, v in self.tower.state_dict().items()}
        state.update({"fc6.weight": self.fc6.weight.detach(), "fc6.bias": self.fc6.bias.detach()})
        return state
