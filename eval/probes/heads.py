"""The linear probe heads: Caffe's BatchNorm without affine (running statistics only) and one InnerProduct per tap.

richzhang/colorization ``feature_learning_tests/linear/train_val.prototxt@4617507``, per tap ``T``:

    T_pool (Resize) -> T_norm: BatchNorm, batch_norm_param {} and three param { lr_mult: 0 decay_mult: 0 }
                    -> T_cl: InnerProduct num_output 1000 (weights lr_mult 1 decay_mult 1, bias lr_mult 2 decay 0;
                       no filler given, so Caffe's default constant 0 for both blobs)
                    -> SoftmaxWithLoss loss_weight 1 (normalised by the batch size), Accuracy in TEST

Caffe's BatchNorm (``src/caffe/layers/batch_norm_layer.cpp``, BVLC master) without ``use_global_stats`` uses the
batch statistics in TRAIN and the stored ones in TEST. Per channel c over the N*H*W values of a 4-D blob:

    train:  mu = mean(x),  var = mean((x - mu)^2)  (biased),  y = (x - mu) / sqrt(var + eps)
            blob2 <- maf * blob2 + 1;  blob0 <- mu + maf * blob0;  blob1 <- var * m / (m - 1) + maf * blob1  (m = NHW)
    test:   s = 0 if blob2 == 0 else 1 / blob2;  y = (x - s * blob0) / sqrt(s * blob1 + eps)

with moving_average_fraction maf = 0.999 and eps = 1e-5 (caffe.proto BatchNormParameter defaults). The stored
statistics are thus a bias-corrected exponential average, not PyTorch's `momentum` update. Nothing upstream of the
BatchNorm learns, so the statistics are computed without autograd.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CaffeBatchNorm", "MultiHeadProbe", "ProbeHead", "probe_loss"]

BN_MOVING_AVERAGE_FRACTION = 0.999  # caffe.proto BatchNormParameter.moving_average_fraction default
BN_EPS = 1e-5                       # caffe.proto BatchNormParameter.eps default


class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm layer without Scale (no learnable parameters); blobs kept as buffers `mean_sum`,
    `var_sum`, `scale_factor` exactly as Caffe stores them. Input (N, C, H, W) or (N, C); statistics in float32."""

    def __init__(self, channels: int, *, moving_average_fraction: float = BN_MOVING_AVERAGE_FRACTION,
                 eps: float = BN_EPS) -> None:
        super().__init__()
        self.channels = channels
        self.moving_average_fraction = moving_average_fraction
        self.eps = eps
        self.register_buffer("mean_sum", torch.zeros(channels))
        self.register_buffer("var_sum", torch.zeros(channels))
        self.register_buffer("scale_factor", torch.zeros(1))

    def global_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) used at test time, each (C,)."""
        s = self.scale_factor[0]
        scale = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        return self.mean_sum * scale, self.var_sum * scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.channels:
            raise ValueError(f"CaffeBatchNorm({self.channels}) expects (N, {self.channels}[, H, W]), got "
                             f"{tuple(x.shape)}.")
        x = x.float()
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        if self.training:
            m = x.numel() // self.channels
            mean = x.mean(dim=dims)
            var = (x - mean.view(view)).pow(2).mean(dim=dims)
            maf = self.moving_average_fraction
            self.scale_factor.mul_(maf).add_(1.0)
            self.mean_sum.mul_(maf).add_(mean)
            self.var_sum.mul_(maf).add_(var * (m / (m - 1) if m > 1 else 1.0))
        else:
            mean, var = self.global_stats()
        return (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)


class ProbeHead(nn.Module):
    """BatchNorm (no affine) then one InnerProduct: (N, C, s, s) -> logits (N, num_classes).

    Parameter names follow the reference prototxt's layers (`norm`, `cl`); InnerProduct blobs start at 0 (Caffe's
    default constant filler, which the prototxt leaves in place).
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, *,
                 moving_average_fraction: float = BN_MOVING_AVERAGE_FRACTION, eps: float = BN_EPS) -> None:
        super().__init__()
        c, h, w = shape
        self.norm = CaffeBatchNorm(c, moving_average_fraction=moving_average_fraction, eps=eps)
        self.cl = nn.Linear(c * h * w, num_classes)
        nn.init.zeros_(self.cl.weight)
        nn.init.zeros_(self.cl.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cl(torch.flatten(self.norm(x), 1).to(self.cl.weight.dtype))


class MultiHeadProbe(nn.Module):
    """One `ProbeHead` per tap, trained together (the sum of the per-tap losses, each with weight 1).

    Modules are named `<tap>_head` so that Caffe-style parameter names read `conv1_head.cl.weight`; `param_layers`
    maps each learnable parameter to its reference layer name (`conv1_cl`) for the solver's lr/decay multipliers.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int, int]], num_classes: int, *,
                 moving_average_fraction: float = BN_MOVING_AVERAGE_FRACTION, eps: float = BN_EPS) -> None:
        super().__init__()
        self.taps = tuple(shapes)
        self.num_classes = num_classes
        for tap, shape in shapes.items():
            self.add_module(f"{tap}_head", ProbeHead(tuple(shape), num_classes,
                                                     moving_average_fraction=moving_average_fraction, eps=eps))

    def head(self, tap: str) -> ProbeHead:
        return self._modules[f"{tap}_head"]  # type: ignore[return-value]

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{tap: logits (N, num_classes)} from {tap: (N, C, s, s)}."""
        return {tap: self.head(tap)(features[tap]) for tap in self.taps}


def probe_loss(logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"loss": sum over taps, "loss_<tap>": each}: SoftmaxWithLoss per head, averaged over the batch."""
    out = {f"loss_{tap}": F.cross_entropy(z.float(), labels) for tap, z in logits.items()}
    out["loss"] = torch.stack(list(out.values())).sum()
    return out
