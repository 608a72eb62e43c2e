"""VOC07 classification fine-tuning settings: one frozen dataclass whose defaults are Krähenbühl et al.'s.

Sources, abbreviated in the comments:
  [train]   philkr/voc-classification@c209779 ``src/train_cls.py`` (argparse defaults and the Solver(...) call)
  [solver]  ``src/solver.py`` (SGD momentum default)
  [data]    ``src/data.py``;  [params] ``experiments/ALL_PARAMS``
  [xform]   philkr's Caffe "future" branch ``transformation_layer.cpp`` (see `eval.classification.data`)
  [color]   richzhang/colorization ``README.md@dae5a65``: "the value of interest is the 10-crops on the test set"
  [ours]    a choice of this implementation where the reference is silent (recorded in every stamp)

Overrides are strict (`jigsawpp.config_fields`): an unknown key is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jigsawpp.config_fields import check_types, config_from_dict, config_to_dict
from jigsawpp.constants import IMAGENET_MEAN_BGR

__all__ = ["VOCClassificationConfig"]


@dataclass(frozen=True)
class VOCClassificationConfig:
    """Every setting of training and testing; defaults are the protocol behind the paper's Table 3 column."""

    # ---- network ------------------------------------------------------------------------------------------------
    variant: Literal["all", "fc678", "fc8", "pool5"] = "all"  # [params]; Table 3 fine-tunes every layer
    transfer: Literal["conv", "conv+fc"] = "conv"  # jigsawpp.transfer_weights: the paper transfers the conv layers
    rescale: bool = False  # Kraehenbuehl et al.'s data-dependent rescaling of conv1..conv5 first (--rescale)
    init_seed: int = 0  # [ours] seeds the fresh layers' N(0, 0.01) draws

    # ---- solver ---------------------------------------------------------------------------------------------------
    base_lr: float = 0.001  # -lr [train]
    batch_size: int = 16  # -bs [train]; under torchrun split over the processes (world size must divide it)
    max_iters: int = 80_000  # -nit [train]
    momentum: float = 0.9  # SGD default [solver]
    weight_decay: float = 1e-6  # Solver(..., weight_decay=1e-6) [train]
    clip_gradients: float = 10.0  # clip_gradients=10 (global L2 norm, Caffe) [train]
    lr_gamma: float = 0.5  # lr_policy "step", gamma=0.5 [train]
    lr_stepsize: int = 10_000  # stepsize=10000 [train]

    # ---- data -----------------------------------------------------------------------------------------------------
    train_split: str = "trainval"  # the *_trainval.txt image sets [data]
    test_split: str = "test"  # the *_test.txt image sets [data]
    crop: int = 227  # crop_size = the deploy input [train]
    min_scale: float = 0.5  # --min-scale [train]
    max_scale: float = 2.0  # --max-scale [train]
    mirror: bool = True  # mirror=True [train]
    mean_bgr: tuple[float, float, float] = IMAGENET_MEAN_BGR  # mean_value [104, 117, 123] unless --no-mean [train]
    test_crops: int = 10  # N_CROP in [1, 10]: 10 random crops per test image, scores summed [train][color]
    data_seed: int = 0  # [ours] the image order and the crops (the reference's Python shuffle is unseeded)

    # ---- runtime --------------------------------------------------------------------------------------------------
    snapshot_iters: int = 10_000  # [ours] checkpoint interval (the reference snapshots every 60 s)
    display: int = 20  # [ours] log interval (iterations)
    amp: Literal["off", "bf16", "fp16"] = "off"  # [ours] autocast on CUDA; fp32 for fidelity, recorded

    def __post_init__(self) -> None:
        check_types(self)
        problems = []
        if self.batch_size < 1 or self.max_iters < 0 or self.lr_stepsize <= 0 or self.snapshot_iters <= 0:
            problems.append("batch_size and lr_stepsize, snapshot_iters must be positive, max_iters >= 0")
        if not 0 < self.min_scale <= self.max_scale:
            problems.append(f"need 0 < min_scale ({self.min_scale}) <= max_scale ({self.max_scale})")
        if self.test_crops < 1 or self.crop < 1:
            problems.append("test_crops and crop must be positive")
        if problems:
            raise ValueError("VOCClassificationConfig: " + "; ".join(problems) + ".")

    def replace(self, **overrides: Any) -> VOCClassificationConfig:
        """A copy with ``overrides`` applied; unknown keys raise naming them."""
        return VOCClassificationConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VOCClassificationConfig:
        return config_from_dict(cls, values)
