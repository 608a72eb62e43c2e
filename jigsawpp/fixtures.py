"""Seeded stand-in weights for bundled nets: the demo and the tests build real caffemodels from them.

The released zips cannot be downloaded here, so every code path is exercised on caffemodels we write ourselves.
Weights are He-scaled Gaussians (std = sqrt(2 / fan_in), fan_in = count / shape[0] as Caffe's fillers compute it)
so that activations keep a sensible range through 8 layers, which makes parity checks meaningful; biases are
small constants.
"""

from __future__ import annotations

import math

import torch

import caffe_import


@torch.no_grad()
def randomize_weights(net: caffe_import.CaffeNet, *, seed: int = 0) -> caffe_import.CaffeNet:
    """Overwrite every Caffe blob of `net` with seeded values (shared params stay shared); returns `net`."""
    generator = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    for layer in net.layers_with_shapes:
        module = net.module_of(layer.name)
        for index, attr in enumerate(module.caffe_blobs):
            tensor = getattr(module, attr)
            if id(tensor) in done:
                continue
            done.add(id(tensor))
            if layer.type == "BatchNorm":
                if index == 2:
                    tensor.fill_(1.0)
                elif index == 1:
                    tensor.uniform_(0.5, 1.5, generator=generator)
                else:
                    tensor.normal_(0.0, 0.1, generator=generator)
            elif tensor.dim() >= 2:
                fan_in = tensor.numel() / tensor.shape[0]
                tensor.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            else:
                tensor.uniform_(-0.05, 0.05, generator=generator)
    return net


def seeded_caffemodel(prototxt, path, *, seed: int = 0) -> caffe_import.CaffeNet:
    """Load `prototxt` with seeded weights and write them to `path` as a caffemodel; returns the net."""
    net = randomize_weights(caffe_import.load(prototxt), seed=seed)
    caffe_import.save_caffemodel(net, path)
    return net
