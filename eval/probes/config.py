"""Settings of the linear probes (Tables 4, 5) and the nonlinear classifier (Table 6): frozen dataclasses whose
defaults are the protocol's, each commented with its source.

Sources, abbreviated in the comments:
  [zhang]    richzhang/colorization ``feature_learning_tests/linear/train_val.prototxt@4617507`` (the paper's Table 4
             caption: "We use the publicly available code and configuration of [39]")
  [zhang-rm] richzhang/colorization ``README.md@dae5a65``: the linear test trains for ~140k iterations
  [vissl]    facebookresearch/vissl ``configs/config/benchmark/linear_image_classification/imagenet1k/
             eval_alexnet_8gpu_transfer_in1k_linear.yaml@1ed167f`` (Goyal et al. 2019, AlexNet linear benchmark)
  [dc]       facebookresearch/deepcluster ``eval_linear.py@1b56bec``
  [caffe]    BVLC caffe: ``examples/imagenet/create_imagenet.sh`` (images stored resized to 256x256),
             ``models/bvlc_reference_caffenet/train_val.prototxt`` (crop 227, mirror, fillers), ``caffe.proto``
  [cfn-rec]  MehdiNoroozi/JigsawPuzzleSolver ``solver_cfn_rec.prototxt`` / ``train_val_cfn_rec.prototxt@8041c58`` (the
             2016 "CFN for recognition" run the 2018 paper's Table 6 follows: "as in [21]")
  [paper]    Noroozi et al., CVPR 2018, Tables 4-6 and their captions
  [kriz]     Krizhevsky et al., NIPS 2012, Sec. 4.1: test prediction = softmax averaged over 10 patches

The reference linear solver file was never published ([zhang] has no ``solver.prototxt``); the schedule defaults
below are a choice, marked CHOICE, recorded in every result's stamp and listed by ``jigsawpp verify``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eval.probes.taps import CONV_TAPS
from jigsawpp.config_fields import check_types, config_from_dict, config_to_dict

__all__ = ["FREEZE_POINTS", "LinearProbeConfig", "NonlinearConfig"]

# Layers the nonlinear classifier can freeze up to (Table 6 columns).
FREEZE_POINTS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class _Strict:
    """Strict construction from mappings (`jigsawpp.config_fields`): unknown keys and wrong types are errors naming
    them; JSON lists and ints become the tuples and floats the fields want."""

    def __post_init__(self) -> None:
        check_types(self)
        self._validate()

    def _validate(self) -> None:
        return None

    def replace(self, **overrides: Any):
        """A copy with `overrides` applied; unknown keys raise KeyError naming them."""
        return config_from_dict(type(self), {**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        return config_from_dict(cls, values)


@dataclass(frozen=True)
class LinearProbeConfig(_Strict):
    """Linear classifiers on frozen conv1..conv5 (Tables 4, 5), trained together in one pass."""

    # ---- features -----------------------------------------------------------------------------------------------
    taps: tuple[str, ...] = CONV_TAPS  # Tables 4/5 columns [paper]; pool1/pool2/pool5 also defined [zhang]
    resize: Literal["bilinear", "avgpool"] = "bilinear"  # Resize layers [zhang]; "avgpool": VISSL's variant [vissl]
    # Sampling grid of the Resize layer. Its source was not found: CHOICE (half-pixel centres, OpenCV INTER_LINEAR).
    align_corners: bool = False
    # ---- images -------------------------------------------------------------------------------------------------
    image_size: int = 256  # images are stored resized (warped) to 256x256 before cropping [caffe][zhang]
    crop_size: int = 227  # transform_param crop_size, TRAIN and TEST [zhang]
    mirror: bool = True  # TRAIN mirror: 1; TEST mirror: 0 [zhang]
    test_crops: Literal["center", "ten"] = "center"  # TEST: one centre crop [zhang]; "ten": 4 corners + centre, x2
    # ---- head ---------------------------------------------------------------------------------------------------
    bn_moving_average_fraction: float = 0.999  # batch_norm_param {} -> caffe.proto default [zhang][caffe]
    bn_eps: float = 1e-5  # caffe.proto BatchNormParameter default [caffe]
    # ---- solver (not published: CHOICE) ----------------------------------------------------------------------------
    batch_size: int = 64  # TRAIN batch_size [zhang] (per iteration, over all GPUs)
    test_batch_size: int = 25  # TEST batch_size [zhang]; no effect on the numbers (BN uses stored statistics)
    max_iter: int = 140_000  # "~140k iterations" [zhang-rm]
    base_lr: float = 0.01  # CHOICE: base_value 0.01 [vissl], --lr 0.01 [dc]
    lr_policy: Literal["multistep", "step", "fixed"] = "multistep"  # CHOICE: multistep x0.1 [vissl]
    # CHOICE: [vissl] divides by 10 after epochs 8, 16 and 24 of 28 (2/7, 4/7, 6/7 of training) -> 40k/80k/120k.
    stepvalues: tuple[int, ...] = (40_000, 80_000, 120_000)
    stepsize: int = 0  # for lr_policy "step"
    gamma: float = 0.1  # [vissl] (values 0.01, 0.001, ...)
    momentum: float = 0.9  # CHOICE: [vissl][dc]
    weight_decay: float = 5e-4  # CHOICE: [vissl]; the InnerProducts have decay_mult 1 [zhang]
    # ---- run ----------------------------------------------------------------------------------------------------
    snapshot_iters: int = 10_000  # checkpoint period (resume granularity)
    display: int = 20  # iterations averaged per log line
    seed: int = 0
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast of the trunk forward; off is the protocol
    cache_train_views: int = 1  # with --cache: fixed random crop+mirror views stored per training image

    def _validate(self) -> None:
        problems = []
        if self.crop_size > self.image_size:
            problems.append(f"crop_size {self.crop_size} > image_size {self.image_size}")
        if min(self.batch_size, self.test_batch_size, self.max_iter, self.snapshot_iters, self.display,
               self.cache_train_views) < 1:
            problems.append("batch sizes, max_iter, snapshot_iters, display and cache_train_views must be >= 1")
        if self.lr_policy == "step" and self.stepsize < 1:
            problems.append("lr_policy 'step' needs stepsize >= 1")
        if list(self.stepvalues) != sorted(self.stepvalues):
            problems.append(f"stepvalues {self.stepvalues} must increase")
        if problems:
            raise ValueError("LinearProbeConfig: " + "; ".join(problems) + ".")

    @property
    def schedule_is_reference(self) -> bool:
        """False: the reference solver is unknown, so no schedule can be the reference's."""
        return False


@dataclass(frozen=True)
class NonlinearConfig(_Strict):
    """Noroozi & Favaro's nonlinear classifier (Table 6): AlexNet with conv1..`freeze_upto` frozen at the model's
    weights, every later layer up to a fresh 1000-way fc8 re-initialised and trained on ImageNet."""

    freeze_upto: Literal["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"] = "conv5"  # Table 6 column
    # ---- images -------------------------------------------------------------------------------------------------
    image_size: int = 256  # LMDB "imagenet_res_256_256" [cfn-rec]; 256x256 [caffe]
    crop_size: int = 227  # AlexNet's input [caffe] (the CFN's 225/255 crops are for its 9 tiles [cfn-rec])
    mirror: bool = True  # CHOICE: CaffeNet's TRAIN mirror [caffe] ([cfn-rec] tiles are not mirrored)
    test_crops: Literal["center", "ten"] = "ten"  # "10 croppings per image" [paper Table 6]; softmax mean [kriz]
    # ---- re-initialised layers (gaussian std, constant bias) --------------------------------------------------------
    # CaffeNet fillers [caffe], identical in [cfn-rec]: conv 0.01 with biases conv1 0, conv2 1, conv3 0, conv4 1,
    # conv5 1; fc6/fc7 0.005 with bias 1; fc8 0.01 with bias 0.
    conv_std: float = 0.01
    fc_std: float = 0.005
    fc8_std: float = 0.01
    fc_units: int = 4096  # num_output of fresh fc6/fc7 [caffe]; a frozen fc6/fc7 keeps the model's width
    dropout: float = 0.5  # drop6/drop7 [caffe]
    # ---- solver [cfn-rec] -----------------------------------------------------------------------------------------
    batch_size: int = 256  # TRAIN batch_size [cfn-rec] (per iteration, over all GPUs)
    test_batch_size: int = 50  # TEST batch_size [cfn-rec]
    base_lr: float = 0.01
    lr_policy: Literal["step", "multistep", "fixed"] = "step"
    stepsize: int = 100_000
    stepvalues: tuple[int, ...] = ()
    gamma: float = 0.1
    max_iter: int = 350_000
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # ---- run ----------------------------------------------------------------------------------------------------
    snapshot_iters: int = 5_000  # snapshot: 5000 [cfn-rec]
    display: int = 20
    seed: int = 0
    amp: Literal["off", "bf16", "fp16"] = "off"

    def _validate(self) -> None:
        problems = []
        if self.crop_size > self.image_size:
            problems.append(f"crop_size {self.crop_size} > image_size {self.image_size}")
        if min(self.batch_size, self.test_batch_size, self.max_iter, self.snapshot_iters, self.display,
               self.fc_units) < 1:
            problems.append("batch sizes, max_iter, snapshot_iters, display and fc_units must be >= 1")
        if self.lr_policy == "step" and self.stepsize < 1:
            problems.append("lr_policy 'step' needs stepsize >= 1")
        if problems:
            raise ValueError("NonlinearConfig: " + "; ".join(problems) + ".")

    @property
    def frozen_layers(self) -> tuple[str, ...]:
        return FREEZE_POINTS[:FREEZE_POINTS.index(self.freeze_upto) + 1]
