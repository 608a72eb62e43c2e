"""Expected GPU-hours of each evaluation, from figures published for the same networks on an NVIDIA K40.

No GPU was available to this project when these were written, so every estimate is arithmetic on published speeds,
never a measurement; each `Estimate.how` states the figures and the arithmetic. A current GPU is several times
faster than a K40; ``benchmarks/fast_rcnn_speed.py`` and ``benchmarks/voc_speed.py`` measure yours beside the K40
figures. The published figures are recalled from the papers named and were not re-checked against their text here:

* [frcnn]  Girshick, "Fast R-CNN", ICCV 2015, model S (= CaffeNet) on VOC07: Table 4, training 1.2 hours over
  fast-rcnn's 40000 iterations (0.108 s per iteration, our division) and testing 0.10 s per image at one scale;
  Table 7, 0.39 s per image with the five-scale pyramid. Proposal time excluded.
* [caffe]  caffe.berkeleyvision.org ("Why Caffe?"): CaffeNet on one K40 takes "1 ms/image for inference and
  4 ms/image for learning".
* [fcn]    Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015, Table 1:
  FCN-AlexNet forward 50 ms for a 500 x 500 input on a Tesla K40c.
* [flops]  forward + backward of a convolutional net costs about three forwards (the backward computes gradients with
  respect to inputs and weights, each about one forward).

Image sizes: a VOC photo is typically 500 x 375. Image counts are read from the dataset's list files when given,
else the standard splits' sizes (VOC2007 test 4952; seg11valid 736; ImageNet val 50000; Places205 val 20500).
"""

from __future__ import annotations

from collections.abc import Sequence

from eval.reproduce.jobs import Estimate

__all__ = ["K40", "classification_estimate", "detection_estimate", "linear_estimate", "nonlinear_estimate",
           "pixel_ratio", "segmentation_estimate"]

K40 = "NVIDIA K40"
FRCNN_TRAIN_S_PER_ITER = 1.2 * 3600 / 40_000  # [frcnn] Table 4, S: 1.2 h / 40000 iterations
FRCNN_TEST_S_PER_IMAGE = 0.10  # [frcnn] Table 4, S, one scale (600 / 1000)
FRCNN_TEST_S_PER_IMAGE_PYRAMID = 0.39  # [frcnn] Table 7, S, five scales (480..1200 / 2000)
FRCNN_PYRAMID = ((480, 576, 688, 864, 1200), 2000)  # the pyramid of that figure (multiscale.yml)
CAFFENET_LEARN_S_PER_IMAGE = 0.004  # [caffe]
CAFFENET_INFER_S_PER_IMAGE = 0.001  # [caffe]
FCN_ALEXNET_FORWARD_S_500 = 0.050  # [fcn] 500 x 500 input (pad 100: the net sees 700 x 700)
FCN_PAD = 100  # conv1 pad of FCN-AlexNet (voc-fcn-alexnet/net.py)
TRAIN_OVER_FORWARD = 3.0  # [flops]
VOC_IMAGE = (500, 375)  # (width, height) of a typical VOC photo
VOC07_TEST_IMAGES = 4952  # VOC2007 test
SEG11VALID_IMAGES = 736  # FCN's seg11valid (Long et al. 2015, footnote 7)
VAL_IMAGES = {"imagenet": 50_000, "places205": 20_500}  # ILSVRC2012 val; Places205 val (100 per class x 205)


def pixel_ratio(scales: Sequence[int], max_size: int, *, reference: Sequence[int] = (600,),
                reference_max: int = 1000) -> float:
    """Mean pixel count of a VOC photo resized as Fast R-CNN does (shorter side to each of `scales`, the longer capped
    at `max_size`) over that at `reference`; conv time grows with the pixel count."""
    width, height = VOC_IMAGE

    def area(s: int, cap: int) -> float:
        f = min(s / min(width, height), cap / max(width, height))
        return (width * f) * (height * f)

    ours = sum(area(s, max_size) for s in scales) / len(scales)
    ref = sum(area(s, reference_max) for s in reference) / len(reference)
    return ours / ref


def _hours(seconds: float) -> float:
    return seconds / 3600.0


def detection_estimate(config: dict, *, test_images: int | None) -> Estimate:
    """Fast R-CNN training and testing: [frcnn]'s per-iteration and per-image times scaled by the pixel count."""
    n_test = test_images or VOC07_TEST_IMAGES
    train_ratio = pixel_ratio(config["train_scales"], config["train_max_size"])
    per_iter = FRCNN_TRAIN_S_PER_ITER * train_ratio
    if len(config["test_scales"]) > 1:
        test_ratio = (pixel_ratio(config["test_scales"], config["test_max_size"]) * len(config["test_scales"])
                      / (pixel_ratio(*FRCNN_PYRAMID) * len(FRCNN_PYRAMID[0])))
        per_image = FRCNN_TEST_S_PER_IMAGE_PYRAMID * test_ratio
        test_how = (f"test {n_test} images x {FRCNN_TEST_S_PER_IMAGE_PYRAMID} s (Fast R-CNN Table 7, five-scale "
                    f"pyramid) x {test_ratio:.2f} (pixels of this pyramid / that one)")
    else:
        test_ratio = pixel_ratio(config["test_scales"], config["test_max_size"])
        per_image = FRCNN_TEST_S_PER_IMAGE * test_ratio
        test_how = (f"test {n_test} images x {FRCNN_TEST_S_PER_IMAGE} s (Fast R-CNN Table 4, 600/1000) x "
                    f"{test_ratio:.2f} (pixels / 600-scale pixels)")
    seconds = config["max_iters"] * per_iter + n_test * per_image
    how = (f"train {config['max_iters']} iterations x {FRCNN_TRAIN_S_PER_ITER:.3f} s (Fast R-CNN Table 4: CaffeNet "
           f"trains 40000 iterations in 1.2 h) x {train_ratio:.2f} (mean pixels of a 500x375 photo at train scales "
           f"{list(config['train_scales'])}/{config['train_max_size']} over 600/1000); {test_how}; proposals not "
           "counted (released .mat files, or CPU selective search cached once)")
    return Estimate(_hours(seconds), K40, how)


def classification_estimate(config: dict, *, test_images: int | None) -> Estimate:
    """VOC07 classification fine-tuning: [caffe]'s 4 ms per 227-px image learning, 1 ms inference per test crop."""
    n_test = test_images or VOC07_TEST_IMAGES
    train = config["max_iters"] * config["batch_size"] * CAFFENET_LEARN_S_PER_IMAGE
    test = n_test * config["test_crops"] * CAFFENET_INFER_S_PER_IMAGE
    how = (f"train {config['max_iters']} iterations x batch {config['batch_size']} x "
           f"{CAFFENET_LEARN_S_PER_IMAGE * 1000:g} ms (Caffe's CaffeNet learning time per image on a K40; the "
           f"'{config['variant']}' variant, fewer trained layers are faster); test {n_test} images x "
           f"{config['test_crops']} crops x {CAFFENET_INFER_S_PER_IMAGE * 1000:g} ms (inference)")
    return Estimate(_hours(train + test), K40, how)


def segmentation_estimate(config: dict, *, val_images: int | None) -> Estimate:
    """FCN-AlexNet: [fcn]'s forward time scaled to a padded 500x375 photo, training at [flops] three forwards."""
    n_val = val_images or SEG11VALID_IMAGES
    width, height = VOC_IMAGE
    ratio = ((width + 2 * FCN_PAD) * (height + 2 * FCN_PAD)) / ((500 + 2 * FCN_PAD) * (500 + 2 * FCN_PAD))
    forward = FCN_ALEXNET_FORWARD_S_500 * ratio
    passes = config["max_iters"] * config["iter_size"]
    seconds = passes * forward * TRAIN_OVER_FORWARD + n_val * forward
    how = (f"train {config['max_iters']} iterations x iter_size {config['iter_size']} images x "
           f"{forward * 1000:.0f} ms (FCN Table 1: FCN-AlexNet forward 50 ms at 500x500 on a K40c, x {ratio:.2f} for "
           f"a padded 500x375 photo) x {TRAIN_OVER_FORWARD:g} (forward + backward); test {n_val} images x "
           f"{forward * 1000:.0f} ms")
    return Estimate(_hours(seconds), K40, how)


def _test_crops(config: dict) -> int:
    return 10 if config.get("test_crops") == "ten" else 1


def linear_estimate(config: dict, *, dataset: str, val_images: int | None) -> Estimate:
    """Linear probes: every training image through the frozen trunk ([caffe]'s 1 ms inference; the heads are
    linear layers of ~10K inputs, negligible), then the validation images."""
    n_val = val_images or VAL_IMAGES[dataset]
    crops = _test_crops(config)
    train = config["max_iter"] * config["batch_size"] * CAFFENET_INFER_S_PER_IMAGE
    test = n_val * crops * CAFFENET_INFER_S_PER_IMAGE
    how = (f"train {config['max_iter']} iterations x batch {config['batch_size']} x "
           f"{CAFFENET_INFER_S_PER_IMAGE * 1000:g} ms (Caffe's CaffeNet inference per image on a K40: the trunk is "
           f"frozen, the heads are negligible); test {n_val} images x {crops} crop(s) x "
           f"{CAFFENET_INFER_S_PER_IMAGE * 1000:g} ms")
    return Estimate(_hours(train + test), K40, how)


def nonlinear_estimate(config: dict, *, val_images: int | None) -> Estimate:
    """The nonlinear classifier: [caffe]'s 4 ms learning per image (an upper bound: the frozen layers need no
    weight gradients), 1 ms inference per test crop."""
    n_val = val_images or VAL_IMAGES["imagenet"]
    crops = _test_crops(config)
    train = config["max_iter"] * config["batch_size"] * CAFFENET_LEARN_S_PER_IMAGE
    test = n_val * crops * CAFFENET_INFER_S_PER_IMAGE
    how = (f"train {config['max_iter']} iterations x batch {config['batch_size']} x "
           f"{CAFFENET_LEARN_S_PER_IMAGE * 1000:g} ms (Caffe's CaffeNet learning time per image on a K40; an upper "
           f"bound, layers up to {config['freeze_upto']} are frozen); test {n_val} images x {crops} crops x "
           f"{CAFFENET_INFER_S_PER_IMAGE * 1000:g} ms")
    return Estimate(_hours(train + test), K40, how)
