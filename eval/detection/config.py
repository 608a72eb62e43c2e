"""Fast R-CNN settings: one frozen dataclass whose defaults are the original's, every key commented with its source.

Sources, abbreviated in the comments:
  [cfg]      rbgirshick/fast-rcnn@b612190 ``lib/fast_rcnn/config.py`` (the defaults of every experiment)
  [ms]       ``experiments/cfgs/multiscale.yml`` (multi-scale training and testing)
  [solver]   ``models/CaffeNet/solver.prototxt``; [net] ``models/CaffeNet/train.prototxt``
  [mb]       ``lib/roi_data_layer/minibatch.py``; [roidb] ``lib/roi_data_layer/roidb.py``
  [test]     ``lib/fast_rcnn/test.py``
  [voc]      ``lib/datasets/pascal_voc.py``; [train_net] ``tools/train_net.py``
  [paper]    Noroozi et al., CVPR 2018, and the Jigsaw++ project page: 150K iterations, lr / 10 every 50K
  [color]    richzhang/colorization ``README.md@dae5a65``: multi-scale training, single-scale testing, 150K / 50K
  [rcnn]     rbgirshick/rcnn ``selective_search/selective_search_boxes.m`` (how Fast R-CNN's proposals were made)
  [pyfrcnn]  rbgirshick/py-faster-rcnn ``lib/fast_rcnn/config.py`` (a later variant, only where named)

Overrides are strict (`FastRCNNConfig.from_dict`, `replace`; `eval.config_fields`): an unknown key is an error naming
it, as in ``_merge_a_into_b`` of [cfg]; values are type-checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eval.config_fields import check_types, config_from_dict, config_to_dict
from jigsawpp.constants import FAST_RCNN_PIXEL_MEANS_BGR

__all__ = ["PROTOCOLS", "FastRCNNConfig", "protocol"]

ProposalMethod = Literal["selective_search_mat", "opencv_fast", "opencv_quality"]
BBoxNormalization = Literal["empirical", "precomputed"]


@dataclass(frozen=True)
class FastRCNNConfig:
    """Every setting of training and testing. Defaults: the paper protocol, single scale (see `PROTOCOLS`)."""

    # ---- images -------------------------------------------------------------------------------------------------
    train_scales: tuple[int, ...] = (600,)  # shorter side in pixels; one picked at random per image [cfg][mb]
    train_max_size: int = 1000  # cap on the longer side after scaling [cfg]
    test_scales: tuple[int, ...] = (600,)  # several = an image pyramid, ROI -> level closest to 224^2 [cfg][test]
    test_max_size: int = 1000  # [cfg]
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
    # "precomputed" (default; the protocol this project specifies): targets minus `bbox_means`, divided by
    # `bbox_stds` ([pyfrcnn] BBOX_NORMALIZE_MEANS/STDS). "empirical": per-class mean and std measured over the
    # training ROIs, as fast-rcnn@b612190 itself did ([roidb] add_bbox_regression_targets). Either way the saved
    # detector predicts raw deltas, as fast-rcnn's snapshot un-normalises bbox_pred [train].
    bbox_normalization: BBoxNormalization = "precomputed"
    bbox_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # [pyfrcnn] BBOX_NORMALIZE_MEANS
    bbox_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)  # [pyfrcnn] BBOX_NORMALIZE_STDS
    box_eps: float = 1e-14  # widths are x2 - x1 + EPS in target encoding and decoding [cfg] EPS, [roidb][test]
    rng_seed: int = 3  # numpy seed of the ROI sampler, and of torch here [cfg] RNG_SEED, [train_net]

    # ---- solver (Caffe SGD) -------------------------------------------------------------------------------------
    base_lr: float = 0.001  # [solver]
    lr_gamma: float = 0.1  # "step" policy: lr = base_lr * gamma ^ floor(iter / stepsize) [solver]
    lr_stepsize: int = 50_000  # [paper] (fast-rcnn's solver: 30000)
    max_iters: int = 150_000  # [paper] (fast-rcnn's train_net default: 40000)
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
    # "selective_search_mat": the released selective-search .mat files fast-rcnn loads [voc]; "opencv_fast" /
    # "opencv_quality": computed with OpenCV's ximgproc (its "fast" mode is Fast R-CNN's choice [rcnn]).
    proposals: ProposalMethod = "opencv_fast"
    proposal_min_size: int = 20  # drop proposals narrower or shorter than this (minBoxWidth) [rcnn]

    # ---- initialisation -----------------------------------------------------------------------------------------
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


# Named protocols: the paper's and the variants other self-supervised papers used.
_MULTISCALE = dict(train_scales=(480, 576, 688, 864, 1200), train_max_size=2000)  # [ms]
_MULTISCALE_TEST = dict(test_scales=(480, 576, 688, 864, 1200), test_max_size=2000)  # [ms]
PROTOCOLS: dict[str, dict[str, Any]] = {
    # the paper's schedule [paper] at fast-rcnn's default single scale 600 / 1000 [cfg]
    "single_scale": {},
    # the paper's schedule, multi-scale training and testing [paper][ms]
    "multiscale": {**_MULTISCALE, **_MULTISCALE_TEST},
    # multi-scale training, single-scale testing at 600 / 1000 [color]
    "ms_train_ss_test": {**_MULTISCALE},
    # fast-rcnn's own CaffeNet recipe: 40000 iterations, lr / 10 at 30000 [solver][train_net]
    "fast_rcnn_default": dict(max_iters=40_000, lr_stepsize=30_000),
}


def protocol(name: str, **overrides: Any) -> FastRCNNConfig:
    """The config of a named protocol (`PROTOCOLS`), with strict overrides."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown Fast R-CNN protocol {name!r}; choose one of {sorted(PROTOCOLS)}.")
    return FastRCNNConfig().replace(**PROTOCOLS[name], **overrides)

