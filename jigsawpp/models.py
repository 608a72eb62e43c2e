"""`CaffeAlexNet`: the one PyTorch AlexNet every evaluation fine-tunes, in Caffe's layout, loading converted weights.

Layout of BVLC `models/bvlc_reference_caffenet/deploy.prototxt` (the CaffeNet order the authors' nets use:
pooling before LRN), with the variants the paper's pipeline needs as configuration:

    conv1 96 k11 s{4|2} p{0|5|100} -> relu -> pool1 MAX k3 s2 -> norm1 LRN 5 / 1e-4 / 0.75
    conv2 256 k5 p2 g2 -> relu -> pool2 -> norm2
    conv3 384 k3 p1 -> relu;  conv4 384 k3 p1 g2 -> relu;  conv5 256 k3 p1 g2 -> relu -> pool5 MAX k3 s2
    [fc6 4096 -> relu -> drop 0.5 -> fc7 4096 -> relu -> drop 0.5 -> fc8 num_classes]

conv1 stride 2 is the Jigsaw++ pretext tower (MehdiNoroozi/JigsawPuzzleSolver `train_val_cfn_jps++.prototxt`),
stride 4 the transfer network; conv1 pad 5 with pool pad 1 is Fast R-CNN's CaffeNet (`models/CaffeNet/test.prototxt`).
Caffe rounds pooled sizes up (`pooling_layer.cpp`); `nn.MaxPool2d(ceil_mode=True)` is exact for these geometries
(pad <= kernel // 2 and kernel >= stride, see `caffe_import/layers/pooling.py`).

Parameter names are the Caffe layer names (`conv1.weight`, `fc8.bias`) with Caffe's blob shapes, so a converted
state dict loads with every key and shape accounted for (`from_caffe_state`), and `blobs()` returns what pycaffe's
`net.blobs[name]` holds (e.g. `conv1` after the in-place `relu1`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from caffe_import.layers.pooling import caffe_pool_output_size
from caffe_import.proto import caffe_pb2
from jigsawpp.config_fields import refuse_unknown

# Blob names in execution order; the LRN/pool order of blocks 1 and 2 depends on the config.
CONV_BLOBS = ("conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5")
HEAD_BLOBS = ("fc6", "fc7", "fc8")

# (num_output, kernel, pad, group) of conv1..conv5 (CaffeNet deploy.prototxt); conv1 pad and stride are configurable.
CONV_SPECS = {"conv1": (96, 11, 0, 1), "conv2": (256, 5, 2, 2), "conv3": (384, 3, 1, 1), "conv4": (384, 3, 1, 2),
              "conv5": (256, 3, 1, 2)}


@dataclass(frozen=True)
class AlexNetConfig:
    """Architecture switches of CaffeAlexNet; defaults are the stride-4 transfer AlexNet of the paper."""

    conv1_stride: int = 4          # 4: transfer nets (CaffeNet); 2: Jigsaw++ pretext tower (train_val_cfn_jps++)
    conv1_pad: int = 0             # 5 in Fast R-CNN models/CaffeNet/{train,test}.prototxt, 100 in FCN-AlexNet
    pool_pad: int = 0              # pool1/pool2 pad: 1 in Fast R-CNN CaffeNet, 0 elsewhere
    lrn_after_pool: bool = True    # CaffeNet order (pool1 -> norm1); BVLC AlexNet normalises before pooling
    lrn_size: int = 5              # lrn_param of CaffeNet norm1/norm2
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 1.0
    input_size: int = 227          # input side the fc6 input size is computed for (227 -> pool5 6x6 at stride 4)
    fc6: int | None = 4096         # None: convolutional layers only (what the paper transfers)
    fc7: int | None = 4096
    num_classes: int | None = 1000  # fc8 rows: 1000 ImageNet classes, 2000 for the CC models (k-means k = 2000)
    dropout: float = 0.5           # drop6 / drop7 ratio (CaffeNet)

    def __post_init__(self) -> None:
        if self.conv1_stride < 1 or self.conv1_pad < 0 or self.pool_pad < 0:
            raise ValueError(f"invalid AlexNetConfig geometry: {self}")
        if self.pool_pad > 1:
            raise ValueError(f"pool_pad = {self.pool_pad}: Caffe requires pad < kernel (3) and CaffeAlexNet uses "
                             "native ceil-mode pooling, exact only for pad <= 1.")
        if (self.fc6 is None) != (self.fc7 is None) or (self.fc6 is None and self.num_classes is not None):
            raise ValueError("fc6, fc7 and fc8 (num_classes) form the head: give fc6 and fc7, then optionally "
                             "num_classes, or none of them.")

    @property
    def blob_names(self) -> tuple[str, ...]:
        names = list(CONV_BLOBS)
        if not self.lrn_after_pool:
            names[1:3] = ["norm1", "pool1"]
            names[4:6] = ["norm2", "pool2"]
        if self.fc6 is not None:
            names += ["fc6", "fc7"] + (["fc8"] if self.num_classes is not None else [])
        return tuple(names)

    def pool5_size(self, input_size: int | None = None) -> int:
        """Spatial side of pool5 for a square input, with Caffe's conv floor / pooling ceil rounding."""
        n = input_size or self.input_size
        n = (n + 2 * self.conv1_pad - 11) // self.conv1_stride + 1
        pool = (3, 2, self.pool_pad)
        n = caffe_pool_output_size(n, *pool)  # pool1
        n = caffe_pool_output_size(n, *pool)  # pool2 (conv2 keeps the size)
        return caffe_pool_output_size(n, 3, 2, 0)  # pool5

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> AlexNetConfig:
        """Strict: an unknown key is an error naming it (manifests written by a newer version fail loudly)."""
        refuse_unknown(cls, data, what="AlexNetConfig key(s)")
        return cls(**data)  # type: ignore[arg-type]


class CaffeAlexNet(nn.Module):
    """AlexNet with Caffe's layout and parameter names. Input (N, 3, H, W) BGR 0-255 minus the mean (the caller's
    preprocessing); `forward` returns fc8 logits (N, num_classes), or the last blob of a headless config
    (pool5, (N, 256, h, w))."""

    def __init__(self, config: AlexNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or AlexNetConfig()
        in_channels = {"conv1": 3, "conv2": 96, "conv3": 256, "conv4": 384, "conv5": 384}
        for blob in c.blob_names:  # registered in execution order, so print(model) reads like the prototxt
            if blob in CONV_SPECS:
                out, kernel, pad, group = CONV_SPECS[blob]
                stride, pad = (c.conv1_stride, c.conv1_pad) if blob == "conv1" else (1, pad)
                self.add_module(blob, nn.Conv2d(in_channels[blob], out, kernel, stride=stride, padding=pad,
                                                groups=group))
                self.add_module(blob.replace("conv", "relu"), nn.ReLU(inplace=True))
            elif blob.startswith("pool"):
                self.add_module(blob, nn.MaxPool2d(3, 2, 0 if blob == "pool5" else c.pool_pad, ceil_mode=True))
            elif blob.startswith("norm"):
                self.add_module(blob, nn.LocalResponseNorm(c.lrn_size, alpha=c.lrn_alpha, beta=c.lrn_beta, k=c.lrn_k))
            elif blob == "fc6":
                side = c.pool5_size()
                if side <= 0:
                    raise ValueError(f"input_size {c.input_size} gives an empty pool5 with {c}.")
                self.fc6 = nn.Linear(256 * side * side, c.fc6)
                self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(c.dropout)
            elif blob == "fc7":
                self.fc7 = nn.Linear(c.fc6, c.fc7)
                self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(c.dropout)
            elif blob == "fc8":
                self.fc8 = nn.Linear(c.fc7, c.num_classes)
        # blob -> modules producing it (in-place ReLU/Dropout belong to the blob they modify, as in pycaffe)
        self._steps: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (blob, _modules_of(blob)) for blob in c.blob_names)

    def blobs(self, x: torch.Tensor, outputs: Iterable[str] = ("pool5",)) -> dict[str, torch.Tensor]:
        """{blob: tensor} for the requested Caffe blobs, stopping after the last one needed."""
        wanted = list(outputs)
        order = [blob for blob, _ in self._steps]
        unknown = [b for b in wanted if b not in order]
        if unknown:
            raise KeyError(f"unknown blob(s) {unknown}; this CaffeAlexNet has {order}")
        last = max(order.index(b) for b in wanted)
        out: dict[str, torch.Tensor] = {}
        for blob, modules in self._steps[:last + 1]:
            if blob == "fc6":
                x = torch.flatten(x, 1)
            for name in modules:
                x = self._modules[name](x)
            if blob in wanted:  # no later layer works in place on an earlier blob, so no copy is needed
                out[blob] = x
        return out

    def features(self, x: torch.Tensor, upto: str = "pool5") -> torch.Tensor:
        """The blob `upto` (e.g. "conv5", "pool5"): the frozen-feature taps of the linear/nonlinear protocols."""
        return self.blobs(x, (upto,))[upto]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, self._steps[-1][0])

    @classmethod
    def from_caffe_state(cls, state: Mapping[str, torch.Tensor], config: AlexNetConfig | None = None) -> CaffeAlexNet:
        """Build from a state dict keyed by Caffe layer names (a converted caffemodel), accounting for every tensor:
        missing keys, unexpected keys and shape mismatches are one error listing all of them."""
        model = cls(config)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k}: {tuple(state[k].shape)} given, {tuple(v.shape)} expected"
                 for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unexpected:
                parts.append(f"unexpected {unexpected}")
            if wrong:
                parts.append("shape mismatch " + "; ".join(wrong))
            raise ValueError(f"state dict does not fit CaffeAlexNet({model.config}): {'; '.join(parts)}. Check the "
                             "config (conv1 stride, input size, head sizes) against the deploy prototxt.")
        model.load_state_dict({k: state[k].to(torch.float32) for k in expected}, strict=True)
        return model


def _modules_of(blob: str) -> tuple[str, ...]:
    if blob.startswith("conv"):
        return (blob, blob.replace("conv", "relu"))
    if blob in ("fc6", "fc7"):
        i = blob[2]
        return (blob, f"relu{i}", f"drop{i}")
    return (blob,)


# -- prototxt -> config -------------------------------------------------------------------------------------------

def _conv_geometry(p: caffe_pb2.ConvolutionParameter) -> tuple[int, int, int, int, int]:
    kernel = p.kernel_size[0] if len(p.kernel_size) else p.kernel_h
    stride = p.stride[0] if len(p.stride) else (p.stride_h or 1)
    pad = p.pad[0] if len(p.pad) else p.pad_h
    return p.num_output, kernel, stride, pad, p.group


def alexnet_config_from_prototxt(net: caffe_pb2.NetParameter, *, source: str = "<prototxt>") -> AlexNetConfig:
    """Read the CaffeAlexNet config of a deploy NetParameter, refusing anything CaffeAlexNet would not reproduce.

    The check is structural: weight layers named conv1..conv5 [fc6, fc7, fc8] with CaffeNet's kernels/groups, MAX
    pooling k3 s2, ACROSS_CHANNELS LRN, in CaffeNet (or BVLC AlexNet) order; ReLU/Dropout/Softmax layers anywhere.
    """
    kinds = {"Convolution", "InnerProduct", "Pooling", "LRN"}
    seq = [lp for lp in net.layer if lp.type in kinds]
    names = [lp.name for lp in seq]
    problems: list[str] = []
    by_name = {lp.name: lp for lp in seq}
    for name, (out, kernel, pad, group) in CONV_SPECS.items():
        lp = by_name.get(name)
        if lp is None or lp.type != "Convolution":
            problems.append(f"no Convolution layer '{name}'")
            continue
        got = _conv_geometry(lp.convolution_param)
        if got[0] != out or got[1] != kernel or got[4] != group or (name != "conv1" and (got[2] != 1 or got[3] != pad)):
            problems.append(f"'{name}' is num_output/kernel/stride/pad/group {got[0]}/{got[1]}/{got[2]}/{got[3]}/"
                            f"{got[4]}, CaffeNet has {out}/{kernel}/1/{pad}/{group}")
    extra = [f"{lp.name} ({lp.type})" for lp in net.layer
             if lp.type in ("Convolution", "Deconvolution", "BatchNorm", "Scale", "Bias", "PReLU", "Embed")
             and lp.name not in CONV_SPECS]
    if extra:
        problems.append(f"layers CaffeAlexNet does not have: {', '.join(extra)}")
    pools = [lp for lp in seq if lp.type == "Pooling"]
    lrns = [lp for lp in seq if lp.type == "LRN"]
    if len(pools) != 3 or len(lrns) != 2:
        problems.append(f"expected 3 Pooling and 2 LRN layers, found {len(pools)} and {len(lrns)}")
    for lp in pools:
        p = lp.pooling_param
        if p.pool != caffe_pb2.PoolingParameter.MAX or p.kernel_size != 3 or p.stride != 2 or p.global_pooling:
            problems.append(f"pooling '{lp.name}' is not MAX kernel 3 stride 2")
        if p.round_mode != caffe_pb2.PoolingParameter.CEIL:
            problems.append(f"pooling '{lp.name}' has round_mode FLOOR")
    for lp in lrns:
        if lp.lrn_param.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            problems.append(f"LRN '{lp.name}' is WITHIN_CHANNEL")
    fcs = [lp for lp in seq if lp.type == "InnerProduct"]
    fc_names = [lp.name for lp in fcs]
    if fc_names not in ([], ["fc6", "fc7"], ["fc6", "fc7", "fc8"]):
        problems.append(f"InnerProduct layers {fc_names}; expected none, fc6+fc7 or fc6+fc7+fc8")
    if problems:
        raise ValueError(f"{source} is not a Caffe AlexNet/CaffeNet layout that CaffeAlexNet reproduces: "
                         f"{'; '.join(problems)}. Load it with caffe_import.load instead.")
    canonical = {pools[0].name: "pool1", pools[1].name: "pool2", pools[2].name: "pool5", lrns[0].name: "norm1",
                 lrns[1].name: "norm2"}
    order = [canonical.get(n, n) for n in names]
    lrn_after_pool = order.index("norm1") > order.index("pool1")
    expected = list(CONV_BLOBS) + fc_names
    if not lrn_after_pool:
        expected[1:3], expected[4:6] = ["norm1", "pool1"], ["norm2", "pool2"]
    if order != expected:
        raise ValueError(f"{source} is not a Caffe AlexNet/CaffeNet layout: layer order {names} (expected "
                         f"{expected}).")
    conv1 = _conv_geometry(by_name["conv1"].convolution_param)
    pool_pads = {lp.pooling_param.pad for lp in pools[:2]}
    if len(pool_pads) != 1 or pools[2].pooling_param.pad != 0:
        raise ValueError(f"{source}: pool1/pool2 must share one pad and pool5 have none (got "
                         f"{[lp.pooling_param.pad for lp in pools]}).")
    lrn_params = {(lp.lrn_param.local_size, lp.lrn_param.alpha, lp.lrn_param.beta, lp.lrn_param.k) for lp in lrns}
    if len(lrn_params) != 1:
        raise ValueError(f"{source}: norm1 and norm2 have different lrn_param {sorted(lrn_params)}.")
    size, alpha, beta, k = lrn_params.pop()
    alpha, beta, k = (float(f"{v:.7g}") for v in (alpha, beta, k))  # float32 in the proto; 1e-4, not 9.99e-05
    drops = [lp.dropout_param.dropout_ratio for lp in net.layer if lp.type == "Dropout"]
    input_size = _input_side(net)
    return AlexNetConfig(
        conv1_stride=conv1[2], conv1_pad=conv1[3], pool_pad=pool_pads.pop(), lrn_after_pool=lrn_after_pool,
        lrn_size=size, lrn_alpha=alpha, lrn_beta=beta, lrn_k=k, input_size=input_size,
        fc6=fcs[0].inner_product_param.num_output if fcs else None,
        fc7=fcs[1].inner_product_param.num_output if fcs else None,
        num_classes=fcs[2].inner_product_param.num_output if len(fcs) == 3 else None,
        dropout=drops[0] if drops else 0.5,
    )


def _input_side(net: caffe_pb2.NetParameter) -> int:
    for lp in net.layer:
        if lp.type == "Input" and len(lp.input_param.shape):
            dims = list(lp.input_param.shape[0].dim)
            if len(dims) == 4 and dims[2] == dims[3]:
                return int(dims[2])
    return 227


# -- converted release folders ------------------------------------------------------------------------------------

def from_release(directory: str | os.PathLike[str], variant: str = "transfer") -> CaffeAlexNet:
    """The CaffeAlexNet of a `jigsawpp convert RELEASE.zip --out DIR` folder, weights loaded, in eval mode.

    `variant`: "transfer" (the variant the paper transfers: conv1 stride 4), "pretext" (the stride-2 pretext tower,
    when the release has one), or a variant folder name from DIR/manifest.json.
    """
    from jigsawpp.io import load_state_dict_file

    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{directory}: no manifest.json; is it the --out folder of `jigsawpp convert "
                                "RELEASE.zip`?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    variants = manifest.get("variants", {})
    if variant == "transfer":
        name = manifest.get("transfer_variant")
    elif variant == "pretext":
        name = next((k for k, v in variants.items() if v.get("role") == "pretext"), None)
    else:
        name = variant
    if name not in variants:
        raise KeyError(f"{directory}: no variant {variant!r}; the release has {sorted(variants)} "
                       f"(transfer = {manifest.get('transfer_variant')!r}).")
    entry = variants[name]
    config = AlexNetConfig.from_dict(entry["alexnet_config"])
    state = load_state_dict_file(directory / name / entry["files"]["weights"])
    return CaffeAlexNet.from_caffe_state(state, config).eval()


def config_dict(config: AlexNetConfig) -> dict[str, object]:
    """JSON-ready config (manifests)."""
    return asdict(config)
