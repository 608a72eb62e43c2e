"""Provenance stamps of probe results: what was measured, on what, and with which protocol choices.

`jigsawpp verify` (`eval.probes.verify_rows`) reads these stamps to list every deviation from the paper's protocol.
"""

from __future__ import annotations

from typing import Any

from eval.probes.config import LinearProbeConfig, NonlinearConfig

__all__ = ["LINEAR_CHOICES", "NONLINEAR_CHOICES", "STAMP_VERSION", "linear_stamp", "nonlinear_stamp"]

STAMP_VERSION = 1

LINEAR_CHOICES = (
    "solver schedule: not published by the reference (no linear/solver.prototxt in richzhang/colorization); lr 0.01, "
    "momentum 0.9 and weight decay 5e-4 follow VISSL's AlexNet linear benchmark (eval_alexnet_8gpu_transfer_in1k_"
    "linear.yaml) and DeepCluster's eval_linear.py; 140k iterations follow the colorization README; the steps "
    "(x0.1 at 40k/80k/120k) put VISSL's epoch milestones 8/16/24 of 28 on 140k iterations",
    "Resize sampling grid: half-pixel bilinear without antialiasing unless align_corners is set (the Caffe fork's "
    "Resize source was not found)",
    "images warped to 256x256 before cropping (the Caffe LMDB convention of create_imagenet.sh)",
    "mean: the model's own preprocessing (Zhang et al.'s net took Lab input, ours take BGR minus the mean)",
    "multi-GPU: the global batch is split over processes; each computes BatchNorm statistics on its share and the "
    "stored statistics are rank 0's (as Caffe's multi-GPU solver keeps the root net's)",
)
NONLINEAR_CHOICES = (
    "architecture: the model's AlexNet (CaffeNet layout) with fc6/fc7 4096 and a fresh 1000-way fc8; no reference "
    "code exists for this AlexNet version (the 2016 code trains the 9-tile CFN)",
    "solver: MehdiNoroozi/JigsawPuzzleSolver solver_cfn_rec.prototxt (lr 0.01, x0.1 every 100K, 350K iterations, "
    "momentum 0.9, weight decay 5e-4) with batch 256 from train_val_cfn_rec.prototxt",
    "fresh layers: CaffeNet fillers (gaussian 0.01 / 0.005 for fc6, fc7; biases 0 or 1 as in train_val.prototxt)",
    "frozen layers: lr_mult 0 only, so dropout after a frozen fc6/fc7 stays active during training (Caffe TRAIN)",
    "augmentation: 256x256 images, random 227 crops and mirrors (CaffeNet's TRAIN transform)",
    "test: softmax averaged over 10 crops (4 corners + centre of the 256x256 image, and mirrors); centre-crop "
    "accuracy reported beside it",
)


def _common(device: Any, *, world_size: int, batch_size: int, base_lr: float, iterations: int) -> dict[str, Any]:
    from jigsawpp import __version__
    from jigsawpp.data import IMAGE_READING
    from jigsawpp.engine.stamp import environment_stamp

    return {
        "stamp_version": STAMP_VERSION,
        "tool": f"jigsawpp {__version__}",
        "training": {"iterations": iterations, "world_size": world_size, "effective_batch": batch_size,
                     "per_process_batch": batch_size // world_size, "base_lr": base_lr,
                     "lr_scaling": "none: the effective batch is the protocol's at any world size"},
        "image_reading": IMAGE_READING,
        "environment": environment_stamp(device),
    }


def linear_stamp(config: LinearProbeConfig, *, dataset: str, counts: dict[str, int], model: dict[str, Any],
                 taps: dict[str, Any], cache: dict[str, Any] | None, device: Any, world_size: int,
                 iterations: int) -> dict[str, Any]:
    """The stamp of one linear-probe run."""
    stamp = {
        "kind": "linear_probe",
        "protocol": "linear classifiers on frozen layers (richzhang/colorization feature_learning_tests/linear/"
                    "train_val.prototxt@4617507)" + (" with VISSL's average pooling" if config.resize == "avgpool"
                                                     else ""),
        "key": f"linear/{config.resize}/{config.test_crops}/{dataset}",
        "dataset": dataset,
        "counts": counts,
        "model": model,
        "taps": taps,
        "config": config.to_dict(),
        "choices": list(LINEAR_CHOICES),
        "cache": cache,
    }
    stamp.update(_common(device, world_size=world_size, batch_size=config.batch_size, base_lr=config.base_lr,
                         iterations=iterations))
    return stamp


def nonlinear_stamp(config: NonlinearConfig, *, dataset: str, counts: dict[str, int], model: dict[str, Any],
                    trained_layers: tuple[str, ...], device: Any, world_size: int, iterations: int) -> dict[str, Any]:
    """The stamp of one nonlinear-classifier run."""
    stamp = {
        "kind": "nonlinear_classifier",
        "protocol": "Noroozi & Favaro nonlinear classifier (AlexNet, layers up to the column frozen), unverified: "
                    "no reference code",
        "key": f"nonlinear/{config.freeze_upto}/{config.test_crops}/{dataset}",
        "dataset": dataset,
        "counts": counts,
        "model": model,
        "frozen_layers": list(config.frozen_layers),
        "trained_layers": list(trained_layers),
        "config": config.to_dict(),
        "choices": list(NONLINEAR_CHOICES),
    }
    stamp.update(_common(device, world_size=world_size, batch_size=config.batch_size, base_lr=config.base_lr,
                         iterations=iterations))
    return stamp
