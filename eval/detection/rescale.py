"""Krähenbühl et al.'s data-dependent rescaling of transferred conv layers (ICLR 2016, "Data-dependent
Initializations of Convolutional Neural Networks", Sec. 3.2 "between-layer" normalisation).

Reproduces ``calibrateGradientRatio`` of philkr/magic_init@20b87dc ``magic_init.py`` (the ``-cs`` flag, which is
what "rescaled with Krähenbühl et al." means for a pretrained model: magic_init skips its within-layer
initialisation when every layer already has weights). Applied here to conv1..conv5 (with their ReLU/pool/LRN
layers), the transferred part of the detector. For each parameter layer k, with a random normal gradient at the top::

    ratio_k  = sqrt(mean(dL/dW_k ^ 2) / mean(W_k ^ 2))
    target   = exp(mean_k log ratio_k) * output_std ^ (1 / n_layers)
    W_k, b_k *= sqrt(ratio_k / target)            (after b_k *= current |input| / initial |input|)

repeated (at most 10 times) until every ``log ratio_k / log target`` is within 1 % of 1. ``output_std`` is the mean
over channels of the std of the top blob. Inputs: ``rescale_batches`` batches of ``rescale_batch_size`` training
images resized to 227 x 227 (magic_init's ImageData ``new_width/new_height`` = the deploy input), minus the Fast
R-CNN pixel means (magic_init subtracts 104/117/123; we feed what the detector will see).

`rescale_layers` is the protocol-independent core (any layers, any top, any input batches; `image_batches` makes
them); `rescale_conv_layers` applies it to the detector. The classification and FCN protocols call the core on their
CaffeAlexNet's conv1..conv5.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eval.detection.config import FastRCNNConfig
from eval.detection.model import CONV_LAYERS, FastRCNN
from eval.detection.roidb import RoidbEntry
from eval.detection.sampling import read_image

__all__ = ["RescaleReport", "image_batches", "rescale_conv_layers", "rescale_layers"]

MAX_ROUNDS = 10  # ``for it in range(10)`` in calibrateGradientRatio
TOLERANCE = 0.01  # ``np.abs(log_ratio / np.log(target_ratio) - 1) < 0.01``
INPUT_SIZE = 227


@dataclass(frozen=True)
class RescaleReport:
    rounds: int
    scales: dict[str, float]  # product of the factors applied to each layer's weights
    ratios: dict[str, float]  # gradient/weight ratios before the last update


def image_batches(read: Callable[[int], np.ndarray], count: int, *, mean_bgr: Sequence[float], batches: int,
                  batch_size: int, rng: np.random.RandomState) -> list[torch.Tensor]:
    """``batches`` tensors (batch_size, 3, 227, 227): images ``read(k)`` (BGR uint8) for ``batches * batch_size``
    random picks among ``count``, resized to 227 x 227, minus ``mean_bgr``."""
    import cv2

    total = batches * batch_size
    picks = rng.choice(count, size=total, replace=total > count)
    means = np.asarray(mean_bgr, dtype=np.float32)
    images = []
    for k in picks.tolist():
        im = cv2.resize(read(k), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        images.append(im.astype(np.float32) - means)
    stacked = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    return list(stacked.split(batch_size))


def _batches(entries: Sequence[RoidbEntry], cfg: FastRCNNConfig, rng: np.random.RandomState) -> list[torch.Tensor]:
    originals = [e for e in entries if not e.flipped] or list(entries)
    return image_batches(lambda k: read_image(originals[k]), len(originals), mean_bgr=cfg.pixel_means_bgr,
                         batches=cfg.rescale_batches, batch_size=cfg.rescale_batch_size, rng=rng)


@torch.no_grad()
def _forward(layers: Mapping[str, nn.Module], top_of: Callable[[torch.Tensor], torch.Tensor],
             batches: list[torch.Tensor], device: torch.device) -> tuple[dict[str, float], float]:
    """Mean |input| of every layer over all batches, and the top's mean per-channel std."""
    sums = {name: 0.0 for name in layers}
    counts = {name: 0 for name in layers}
    hooks = []
    for name, layer in layers.items():
        def pre(_module, args, name=name):
            sums[name] += float(args[0].abs().sum())
            counts[name] += args[0].numel()
        hooks.append(layer.register_forward_pre_hook(pre))
    tops = []
    try:
        for batch in batches:
            tops.append(top_of(batch.to(device)).double())
    finally:
        for h in hooks:
            h.remove()
    top = torch.cat(tops).transpose(0, 1).flatten(1)  # (C, N * H * W), magic_init's flattenData
    return {n: sums[n] / counts[n] for n in layers}, float(top.std(dim=1, unbiased=False).mean())


def rescale_conv_layers(model: FastRCNN, entries: Sequence[RoidbEntry], cfg: FastRCNNConfig, *,
                        device: str | torch.device = "cpu") -> RescaleReport:
    """Rescale conv1..conv5 of `model` in place so their gradient-to-weight ratios match (see module docstring)."""
    device = torch.device(device)
    model.to(device).eval()
    batches = _batches(entries, cfg, np.random.RandomState(cfg.rng_seed))
    return rescale_layers({n: model.layer(n) for n in CONV_LAYERS},
                          lambda x: model.net(data=x, outputs=["conv5"])["conv5"], batches, seed=cfg.rng_seed,
                          device=device)


def rescale_layers(layers: Mapping[str, nn.Module], top_of: Callable[[torch.Tensor], torch.Tensor],
                   batches: list[torch.Tensor], *, seed: int, device: str | torch.device = "cpu") -> RescaleReport:
    """Rescale the ``weight``/``bias`` of `layers` (in forward order) in place so their gradient-to-weight ratios
    match; `top_of(x)` runs the net from its input to the top blob the random gradient enters at (put the model in
    eval mode and on `device` first)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    bottom_scale, output_std = _forward(layers, top_of, batches, device)
    params = {n: (layer.weight, layer.bias) for n, layer in layers.items()}
    totals = {n: 1.0 for n in layers}
    ratio: dict[str, float] = {}
    flags = [(p, p.requires_grad) for pair in params.values() for p in pair]
    rounds = 0
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for round_index in range(MAX_ROUNDS):
            rounds = round_index + 1
            for p, _ in flags:
                p.grad = None
            top = top_of(batches[-1].to(device))
            top.backward(torch.randn(top.shape, generator=generator).to(device=device, dtype=top.dtype))
            ratio = {n: float(torch.sqrt((w.grad.double() ** 2).mean() / (w.detach().double() ** 2).mean()))
                     for n, (w, _) in params.items()}
            logs = np.log(np.array(list(ratio.values())))
            target = float(np.exp(logs.mean()) * output_std ** (1.0 / len(ratio)))
            if np.all(np.abs(logs / np.log(target) - 1) < TOLERANCE):
                break
            with torch.no_grad():
                # layer by layer, as magic_init interleaves the updates with the forward pass
                for n in layers:
                    w, b = params[n]
                    current, _ = _forward(layers, top_of, batches, device)
                    b.mul_(current[n] / bottom_scale[n])
                    bottom_scale[n] = current[n]
                    factor = float(np.sqrt(ratio[n] / target))
                    w.mul_(factor)
                    b.mul_(factor)
                    totals[n] *= factor
                _, output_std = _forward(layers, top_of, batches, device)
    finally:
        for p, flag in flags:
            p.grad = None
            p.requires_grad_(flag)
    return RescaleReport(rounds=rounds, scales=totals, ratios=ratio)
