"""Fast R-CNN settings: one frozen dataclass whose defaults are the original's, every key commented with its source.

Sources, abbreviated in the comments:
  [cfg]      rbgirshick/fast-rcnn@b612190 ``lib/fast_rcnn/config.py`` (the defaults of every experiment)
  [ms]       ``experiments/cfgs/multiscale.yml`` (multi-scale training and testing)
  [solver]   ``models/CaffeNet/solver.prototxt``; [net] ``models/CaffeNet/train.prototxt``
  [mb]       ``lib/roi_data_layer/minibatch.py``; [roidb] ``lib/roi_data_layer/roidb.py``
  [test]     ``lib/fast_rcnn/test.py``
  [voc]      ``lib/datasets/pascal_voc.py``; [train_net] ``tools/train_net.py``
  [color]    richzhang/colorization ``README.md@dae5a65``: multi-scale training, single-scale testing, 150K / 50K
  [release]  the Jigsaw++ release page (Noroozi et al. 2018): "multiscale train/test fine-tuning using Fast-rcnn
             framework for 150K iterations, initial learning rate of 0.001 and dropping learning rate by 0.1 at every
             50K iterations. The maximum image size of train and test is set to 2000"; only the convolutional layers
             are used for transfer
  [rcnn]     rbgirshick/rcnn ``selective_search/selective_search_boxes.m`` (how Fast R-CNN's proposals were made)
  [pyfrcnn]  rbgirshick/py-faster-rcnn ``lib/fast_rcnn/config.py`` (a later variant, only where named)

Overrides are strict (`FastRCNNConfig.from_dict`, `replace`; `jigsawpp.config_fields`): an unknown key is an error
naming it, as in ``_merge_a_into_b`` of [cfg]; values are type-checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jigsawpp.config_fields import check_types, config_from_dict, config_to_dict
from jigsawpp.constants import FAST_RCNN_PIXEL_MEANS_BGR

__all__ = ["DEFAULT_PROTOCOL", "PAPER_PROTOCOLS", "PROTOCOLS", "PROTOCOL_ALIASES", "FastRCNNConfig",
           "canonical_protocol", "preset_overrides", "protocol"]

ProposalMethod = Literal["selective_search_mat", "rcnn_fast", "opencv_fast", "opencv_quality"]
BBoxNormalization = Literal["empirical", "precomputed"]
TransferLayers = Literal["conv", "conv+fc"]


@dataclass(frozen=True)
class FastRCNNConfig:
    """Every setting of training and testing. Defaults: the paper's protocol, ``noroozi18-ms`` (see `PROTOCOLS`)."""

    # ---- images -------------------------------------------------------------------------------------------------
    # shorter side in pixels, one picked at random per image [mb]; the paper's multi-scale set [release][ms]
    # (fast-rcnn's default: (600,) [cfg])
    train_scales: tuple[int, ...] = (480, 576, 688, 864, 1200)
    train_max_size: int = 2000  # cap on the longer side after scaling [release][ms] (fast-rcnn's default 1000 [cfg])
    # several = an image pyramid, each ROI at the level closest to 224^2 [test]; the paper tests multi-scale [release]
    test_scales: tuple[int, ...] = (480, 576, 688, 864, 1200)
    test_max_size: int = 2000  # [release][ms]
    pyramid_target_area: int = 224 * 224  # the area each ROI is mapped closest to in a pyramid [test]
    pixel_means_bgr: tuple[float, float, float] = FAST_RCNN_PIXEL_MEANS_BGR  # subtracted from 0..255 BGR [cfg]
    use_flipped: bool = True  # add horizontally flipped copies of every training image [cfg]
    # fast-rcnn loads every object of the XML, difficult included, as training ground truth [voc]; py-faster-rcnn
    # later dropped them (``use_diff`` False). Evaluation always treats difficult objects as the devkit does.
    train_use_difficult: bool = True

    # ---- mini-batches -------------------------------------------------------------------------------------------
    ims_per_batch: int = 2  # images per SGD step [cfg]
    rois_per_batch: int = 128  # ROIs per SGD step, split evenly over the images [cfg]
    fg_fraction: float = 0.25  # foreground share of each image's ROIs, round(0.25 * 64) = 16 [cfg][mb]
    fg_thresh: float = 0.5  # foreground: max IoU with a ground-truth box >= 0.5 [cfg]
    bg_thresh_hi: float = 0.5  # background: max IoU in [bg_thresh_lo, bg_thresh_hi) [cfg]
    bg_thresh_lo: float = 0.1  # [cfg]
    bbox_thresh: float = 0.5  # ROIs with IoU >= this get regression targets [cfg][roidb]
    # "empirical" (fast-rcnn@b612190, [roidb] add_bbox_regression_targets): per-class mean and std of the targets
    # measured over the training ROIs. "precomputed": targets minus `bbox_means`, divided by `bbox_stds`, the fixed
    # values of the later py-faster-rcnn ([pyfrcnn] BBOX_NORMALIZE_MEANS/STDS). Either way the saved detector
    # predicts raw deltas, as fast-rcnn's snapshot un-normalises bbox_pred [train].
    bbox_normalization: BBoxNormalization = "empirical"
    bbox_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # [pyfrcnn] BBOX_NORMALIZE_MEANS
    bbox_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)  # [pyfrcnn] BBOX_NORMALIZE_STDS
    box_eps: float = 1e-14  # widths are x2 - x1 + EPS in target encoding and decoding [cfg] EPS, [roidb][test]
    rng_seed: int = 3  # numpy seed of the ROI sampler, and of torch here [cfg] RNG_SEED, [train_net]

    # ---- solver (Caffe SGD) -------------------------------------------------------------------------------------
    base_lr: float = 0.001  # [solver]
    lr_gamma: float = 0.1  # "step" policy: lr = base_lr * gamma ^ floor(iter / stepsize) [solver]
    lr_stepsize: int = 50_000  # [release] (fast-rcnn's solver: 30000)
    max_iters: int = 150_000  # [release] (fast-rcnn's train_net default: 40000)
    momentum: float = 0.9  # [solver]
    weight_decay: float = 0.0005  # [solver]; biases have decay_mult 0 and lr_mult 2 [net]
    # conv1 has lr_mult 0 in [net] (frozen for ImageNet weights). Whether to keep it frozen for self-supervised
    # weights is the user's choice, recorded in the provenance stamp.
    freeze_conv1: bool = True
    snapshot_iters: int = 10_000  # checkpoint period [cfg] SNAPSHOT_ITERS

    # ---- testing ------------------------------------------------------------------------------------------------
    test_nms: float = 0.3  # per-class NMS, suppress IoU >= 0.3 (cython nms) [cfg][test]
    test_bbox_reg: bool = True  # apply the regression deltas [cfg]
    max_per_image: int = 100  # per class and image, before NMS [test]
    max_per_set_factor: int = 40  # per class, keep about 40 * N_images detections over the set [test]
    dedup_boxes: float = 1.0 / 16.0  # ROIs equal after rounding ROI * 1/16 are computed once [cfg][test]

    # ---- proposals ----------------------------------------------------------------------------------------------
    # "selective_search_mat": the released selective-search .mat files fast-rcnn loads [voc] (what the paper used;
    # --ss-mat). Without them "rcnn_fast" (default) computes R-CNN's fast mode [rcnn] from OpenCV's pieces
    # (eval.detection.selective_search lists what still differs); "opencv_fast" / "opencv_quality" are OpenCV's own
    # modes (other segmentation parameters).
    proposals: ProposalMethod = "rcnn_fast"
    proposal_min_size: int = 20  # drop proposals narrower or shorter than this (minBoxWidth) [rcnn]

    # ---- initialisation -----------------------------------------------------------------------------------------
    # which layers of the converted model initialise the detector (jigsawpp.transfer_weights.transfer_weights): "conv" =
    # conv1..conv5, fc6/fc7 from the prototxt's fillers [release]; "conv+fc" also takes fc6/fc7 from the model
    transfer: TransferLayers = "conv"
    # Krähenbühl et al. (ICLR 2016) between-layer rescaling of the transferred conv layers (philkr/magic_init ``-cs``)
    rescale: bool = False
    rescale_batches: int = 10  # magic_init ``-nit`` default
    rescale_batch_size: int = 16  # magic_init ``-bs`` default

    # ---- runtime (no effect on results except as noted) ---------------------------------------------------------
    amp: bool = False  # bfloat16 autocast of the conv trunk; changes results slightly, recorded in the stamp

    # ------------------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        check_types(self)
        problems = []
        if not self.train_scales or not self.test_scales:
            problems.append("train_scales and test_scales must not be empty")
        if self.rois_per_batch % self.ims_per_batch:
            problems.append(f"ims_per_batch ({self.ims_per_batch}) must divide rois_per_batch ({self.rois_per_batch})")
        if not 0.0 <= self.fg_fraction <= 1.0:
            problems.append(f"fg_fraction = {self.fg_fraction} must lie in [0, 1]")
        if not self.bg_thresh_lo <= self.bg_thresh_hi:
            problems.append(f"bg_thresh_lo ({self.bg_thresh_lo}) must not exceed bg_thresh_hi ({self.bg_thresh_hi})")
        if self.max_iters < 0 or self.lr_stepsize <= 0 or self.snapshot_iters <= 0:
            problems.append("max_iters must be >= 0, lr_stepsize and snapshot_iters > 0")
        if problems:
            raise ValueError("FastRCNNConfig: " + "; ".join(problems) + ".")

    @property
    def rois_per_image(self) -> int:
        return self.rois_per_batch // self.ims_per_batch

    @property
    def fg_rois_per_image(self) -> int:
        # np.round in [mb]: round half to even, as Python's round does
        return int(round(self.fg_fraction * self.rois_per_image))

    @property
    def frozen_layers(self) -> tuple[str, ...]:
        return ("conv1",) if self.freeze_conv1 else ()

    def replace(self, **overrides: Any) -> FastRCNNConfig:
        """A copy with `overrides` applied; unknown keys raise naming them."""
        return FastRCNNConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FastRCNNConfig:
        return config_from_dict(cls, values)


# Named protocols (presets): the paper's and the variants other papers used. Each entry lists what differs from
# the dataclass defaults, which are the paper's multi-scale protocol.
_SINGLE_SCALE = dict(train_scales=(600,), train_max_size=1000, test_scales=(600,), test_max_size=1000)  # [cfg]
DEFAULT_PROTOCOL = "noroozi18-ms"
PROTOCOLS: dict[str, dict[str, Any]] = {
    # the paper: multi-scale training and testing, max size 2000, 150K iterations, lr / 10 every 50K [release]
    "noroozi18-ms": {},
    # the paper's schedule at fast-rcnn's single scale 600 / 1000 (the SS column of Table 3) [release][cfg]
    "noroozi18-ss": {**_SINGLE_SCALE},
    # fast-rcnn's own CaffeNet recipe: single scale, 40000 iterations, lr / 10 at 30000 [cfg][solver][train_net]
    "fast-rcnn-ss": {**_SINGLE_SCALE, "max_iters": 40_000, "lr_stepsize": 30_000},
    # multi-scale training, single-scale testing at 600 / 1000, the colorization papers' variant [color]
    "ms-train-ss-test": {"test_scales": (600,), "test_max_size": 1000},
}
# the names earlier versions used, still accepted
PROTOCOL_ALIASES = {"multiscale": "noroozi18-ms", "single_scale": "noroozi18-ss", "fast_rcnn_default": "fast-rcnn-ss",
                    "ms_train_ss_test": "ms-train-ss-test"}
# the protocol of each detection column of the paper's Table 3, proposals included
PAPER_PROTOCOLS = {"detection_ms": ("noroozi18-ms", {"proposals": "selective_search_mat"}),
                   "detection_ss": ("noroozi18-ss", {"proposals": "selective_search_mat"})}


def canonical_protocol(name: str) -> str:
    """The preset name for `name` (a preset or an old alias); KeyError listing the presets otherwise."""
    name = PROTOCOL_ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise KeyError(f"unknown Fast R-CNN protocol {name!r}; choose one of {', '.join(PROTOCOLS)}.")
    return name


def protocol(name: str = DEFAULT_PROTOCOL, **overrides: Any) -> FastRCNNConfig:
    """The config of a named protocol (`PROTOCOLS`, or an old name in `PROTOCOL_ALIASES`), with strict overrides."""
    return FastRCNNConfig().replace(**{**PROTOCOLS[canonical_protocol(name)], **overrides})


def preset_overrides(cfg: FastRCNNConfig, name: str) -> dict[str, Any]:
    """The keys of `cfg` that differ from preset `name`, with cfg's values (JSON-ready)."""
    preset = protocol(name).to_dict()
    return {k: v for k, v in cfg.to_dict().items() if preset[k] != v}
