"""Caffe's SGD solver for Fast R-CNN: the shared `jigsawpp.engine.solver` (per-blob lr/decay multipliers,
momentum with the rate inside, the "step" policy), re-exported under the detection package's name."""

from __future__ import annotations

from jigsawpp.engine.solver import CaffeSGD, LRPolicy, step_lr

__all__ = ["CaffeSGD", "LRPolicy", "step_lr"]
