"""FCN-AlexNet fine-tuning settings: one frozen dataclass whose defaults are FCN's ``voc-fcn-alexnet``.

Sources, abbreviated in the comments:
  [solver]  shelhamer/fcn.berkeleyvision.org@1305c73 ``voc-fcn-alexnet/solver.prototxt``
  [net]     ``voc-fcn-alexnet/net.py`` (data layer parameters, loss); [solve] ``voc-fcn-alexnet/solve.py``
  [layers]  ``voc_layers.py``;  [readme] ``README.md`` / ``data/pascal/README.md`` (SBD train, seg11valid)
  [color]   richzhang/colorization@4617507 ``feature_learning_tests/segmentation/solver0.prototxt``: 150K iterations,
            SBD train ("voc2011bh_segtrain") and seg11valid, the self-supervised papers' FCN protocol
  [ours]    a choice of this implementation where the references are silent (recorded in every stamp)

Overrides are strict (`jigsawpp.config_fields`): an unknown key is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jigsawpp.config_fields import check_types, config_from_dict, config_to_dict

__all__ = ["FCN_PROTOCOLS", "FCNConfig", "fcn_protocol"]


@dataclass(frozen=True)
class FCNConfig:
    """Every setting of FCN training and testing; defaults are FCN's AlexNet recipe (the Table 3 column)."""

    # ---- network ------------------------------------------------------------------------------------------------
    transfer: Literal["conv", "conv+fc"] = "conv"  # jigsawpp.transfer_weights: the paper transfers the conv layers
    rescale: bool = False  # Kraehenbuehl et al.'s data-dependent rescaling of conv1..conv5 first (--rescale)
    init_seed: int = 0  # [ours] seeds the fresh fc6/fc7 gaussian draws

    # ---- solver ---------------------------------------------------------------------------------------------------
    base_lr: float = 1e-4  # lr_policy "fixed", "lr for normalized softmax" [solver]
    momentum: float = 0.9  # [solver]
    weight_decay: float = 5e-4  # [solver]
    iter_size: int = 20  # batch 1 image, gradients accumulated over 20 [solver]; under torchrun split over ranks
    max_iters: int = 100_000  # max_iter [solver]; 25 x 4000 in [solve]; [color] runs 150K
    loss_normalize: bool = True  # SoftmaxWithLoss normalize: true, ignore_label 255 [net]

    # ---- data -----------------------------------------------------------------------------------------------------
    train_data: Literal["sbd_train", "voc_train"] = "sbd_train"  # SBDDSegDataLayer split train [net][readme]
    val_data: Literal["seg11valid", "voc_val"] = "seg11valid"  # VOCSegDataLayer on VOC2011 seg11valid [net]
    mean_bgr: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)  # pydata_params mean [net]
    data_seed: int = 1337  # pydata_params seed: random.seed(1337), randint per image [net][layers]

    # ---- runtime --------------------------------------------------------------------------------------------------
    snapshot_iters: int = 4000  # snapshot: 4000 [solver]
    display: int = 20  # display: 20, average_loss: 20 [solver]
    amp: Literal["off", "bf16", "fp16"] = "off"  # [ours] autocast on CUDA; fp32 for fidelity, recorded
    num_overlays: int = 8  # [ours] prediction overlays written for the first test images

    def __post_init__(self) -> None:
        check_types(self)
        if self.iter_size < 1 or self.max_iters < 0 or self.snapshot_iters <= 0 or self.base_lr < 0:
            raise ValueError("FCNConfig: iter_size and snapshot_iters must be positive, max_iters and base_lr >= 0.")

    def replace(self, **overrides: Any) -> FCNConfig:
        """A copy with ``overrides`` applied; unknown keys raise naming them."""
        return FCNConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FCNConfig:
        return config_from_dict(cls, values)


FCN_PROTOCOLS: dict[str, dict[str, Any]] = {
    "fcn": {},  # FCN's voc-fcn-alexnet recipe [solver][net]
    "colorization": {"max_iters": 150_000},  # the self-supervised papers' 150K iterations [color]
    "voc2012": {"train_data": "voc_train", "val_data": "voc_val"},  # VOC2012 train / val instead of SBD [ours]
}


def fcn_protocol(name: str, **overrides: Any) -> FCNConfig:
    """The config of a named protocol (`FCN_PROTOCOLS`), with strict overrides."""
    if name not in FCN_PROTOCOLS:
        raise KeyError(f"unknown FCN protocol {name!r}; choose one of {sorted(FCN_PROTOCOLS)}.")
    return FCNConfig().replace(**FCN_PROTOCOLS[name], **overrides)
