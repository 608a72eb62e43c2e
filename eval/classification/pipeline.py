"""End-to-end VOC07 classification: fine-tune on trainval, test on test, write results, scores, curves.

`run_classification` is what ``jigsawpp eval classification --model DIR --voc PATH`` runs; every function returns a
dataclass, only the CLI prints. Training uses the shared engine (`jigsawpp.engine`): Caffe's SGD with lr/decay
multipliers and gradient clipping, the step policy, checkpoints with exact resume, torchrun, AMP.

Loss (philkr/voc-classification ``src/python_layers.py`` ``SigmoidCrossEntropyLoss``, ignore_label 255)::

    L = (1 / N) sum_{n, c: t != 255} [ log(1 + exp(-|f|)) + (1[f > 0] - t) f ]      (N = images in the batch)

i.e. the summed binary cross-entropy with logits over the labelled entries, divided by the batch size (not by the
number of labelled entries). Under torchrun with W processes each takes batch_size / W images and DDP averages the
gradients, which is the same (1 / N) sum over the whole batch of 16.

Output folder::

    config.json                           resolved config + provenance stamp
    train_log.jsonl, checkpoints/, training_curves.png
    classifier.safetensors                the fine-tuned net (Caffe layer names, fc8_cls)
    results/comp1_cls_<split>_<class>.txt devkit results files (summed scores of the test crops)
    results/provenance.json               the stamp, beside the files it describes
    scores.json                           per-class AP and mAP: sklearn (Table 3's), 11-point and area (devkit)
    pr_curves.png
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.classification.config import VOCClassificationConfig
from eval.classification.data import ClassificationSource, draw_affine, warp_crop
from eval.classification.labels import IGNORE_LABEL, VOCClassLabels, read_class_labels, training_targets
from eval.classification.metric import ClassificationAP, VOCClassificationMetric
from eval.classification.model import VARIANTS, VOCClassifier, build_classifier, classifier_param_specs
from eval.classification.provenance import classification_stamp
from eval.segmentation.evaluate import autocast_dtype
from jigsawpp.transfer_weights import TRANSFER_CONV_LAYERS as CONV_LAYERS
from jigsawpp.transfer_weights import transfer_weights

__all__ = ["ClassificationRun", "evaluate_classifier", "run_classification", "sigmoid_cross_entropy"]

PROVENANCE_FILENAME = "provenance.json"
RESCALE_BATCHES, RESCALE_BATCH_SIZE = 10, 16  # magic_init -nit / -bs defaults (as eval.detection.config)
# batches decoded ahead by threads (OpenCV and numpy release the GIL): one ~84 images/s on a CPU core
LOADER_THREADS = max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class ClassificationRun:
    """What a classification evaluation produced (``ap`` is None on ranks other than 0)."""

    out_dir: Path
    ap: ClassificationAP | None
    stamp: dict[str, Any]
    scores_path: Path
    results_dir: Path
    curves: Path | None
    train: Any  # the engine's TrainResult
    test_seconds: float


def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """philkr's SigmoidCrossEntropyLoss: (N, C) logits, (N, C) targets in {0, 1, 255}; sum over labelled / N."""
    mask = targets != IGNORE_LABEL
    f = logits.float()
    t = torch.where(mask, targets.float(), torch.zeros_like(f))
    losses = F.binary_cross_entropy_with_logits(f, t, reduction="none")
    return (losses * mask).sum() / f.shape[0]


def _image_paths(voc: Path, labels: VOCClassLabels) -> list[Path]:
    return [voc / "JPEGImages" / f"{i}.jpg" for i in labels.image_ids]


def _fingerprint(labels: VOCClassLabels) -> str:
    digest = hashlib.sha256()
    for image_id, row in zip(labels.image_ids, labels.labels.tolist()):
        digest.update(f"{image_id} {row}\n".encode())
    return digest.hexdigest()


def _rescale(model: VOCClassifier, paths: list[Path], cfg: VOCClassificationConfig,
             device: torch.device) -> dict[str, float]:
    from eval.detection.rescale import image_batches, rescale_layers
    from jigsawpp.data import read_image_bgr

    model.to(device).eval()
    batches = image_batches(lambda k: read_image_bgr(paths[k]), len(paths), mean_bgr=cfg.mean_bgr,
                            batches=RESCALE_BATCHES, batch_size=RESCALE_BATCH_SIZE,
                            rng=np.random.RandomState(cfg.data_seed))
    report = rescale_layers({n: getattr(model, n) for n in CONV_LAYERS}, lambda x: model.features(x, "conv5"),
                            batches, seed=cfg.data_seed, device=device)
    return report.scales


@torch.inference_mode()
def evaluate_classifier(model: VOCClassifier, voc_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                        cfg: VOCClassificationConfig, *, stamp: dict[str, Any], device: str | torch.device = "cpu",
                        progress: bool = True) -> ClassificationRun:
    """Score every test image as the sum of ``cfg.test_crops`` randomly transformed crops and write the results."""
    from eval.classification.results import plot_classification_curves, write_classification_scores, write_cls_results
    from jigsawpp.data import read_image_bgr
    from jigsawpp.engine.distributed import world
    from jigsawpp.io import write_json_atomic

    out = Path(out_dir)
    voc = Path(voc_root)
    device = torch.device(device)
    rank, size = world()
    test = read_class_labels(voc, cfg.test_split)
    paths = _image_paths(voc, test)
    model.to(device).eval()
    dtype = autocast_dtype(cfg.amp)
    scores = torch.zeros(len(paths), len(test.class_names), dtype=torch.float64, device=device)
    indices = range(rank, len(paths), size)
    if progress and rank == 0:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"testing ({cfg.test_crops} crops)", unit="image")
    start = time.perf_counter()
    for j in indices:
        image = read_image_bgr(paths[j])
        crops = []
        for k in range(cfg.test_crops):  # a fixed random stream per (image, crop): any process split gives the same
            draw = draw_affine(np.random.default_rng((cfg.data_seed, 1, j, k)), width=image.shape[1],
                               height=image.shape[0], crop=cfg.crop, min_scale=cfg.min_scale,
                               max_scale=cfg.max_scale, mirror=cfg.mirror)
            crops.append(warp_crop(image, draw, crop=cfg.crop, mean_bgr=cfg.mean_bgr))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(torch.from_numpy(np.stack(crops)).to(device))
        scores[j] = logits.double().sum(0)
    seconds = time.perf_counter() - start
    if size > 1:
        torch.distributed.all_reduce(scores)
    results = out / "results"
    scores_path = out / "scores.json"
    if rank != 0:
        return ClassificationRun(out, None, stamp, scores_path, results, None, None, seconds)
    values = scores.cpu().numpy()
    write_cls_results(results, cfg.test_split, test.image_ids, values, test.class_names)
    write_json_atomic(results / PROVENANCE_FILENAME, stamp)
    metric = VOCClassificationMetric(test.image_ids, test.labels, test.class_names)
    for image_id, row in zip(test.image_ids, values):
        metric.add_scores(image_id, row)
    ap = metric.compute()
    scores_path = write_classification_scores(ap, out, split=cfg.test_split, stamp=stamp)
    curves = plot_classification_curves(ap, out / "pr_curves.png", title=(
        f"VOC {cfg.test_split}: mAP {ap.map_sklearn:.3f} (sklearn) / {ap.map_11point:.3f} (11-point)\n"
        f"{stamp.get('key', '')}"))
    return ClassificationRun(out, ap, stamp, scores_path, results, curves, None, seconds)


def run_classification(model_dir: str | os.PathLike[str], voc_root: str | os.PathLike[str],
                       out_dir: str | os.PathLike[str], cfg: VOCClassificationConfig, *,
                       device: str | torch.device = "cpu", resume: bool = True,
                       progress: bool = True) -> ClassificationRun:
    """Fine-tune the classifier from a converted model on ``cfg.train_split`` and test it on ``cfg.test_split``.

    Raises:
        FileNotFoundError, KeyError, ValueError: a missing or malformed model folder or VOC file (named), a
            variant that cannot be trained from these layers, or a batch size the process count does not divide.
    """
    from eval.detection.pipeline import resolve_voc_root
    from jigsawpp.engine.distributed import world
    from jigsawpp.engine.loop import PrefetchSource, train_loop
    from jigsawpp.engine.plots import plot_training_curves
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy
    from jigsawpp.io import save_state_dict_file, write_json_atomic

    out = Path(out_dir)
    device = torch.device(device)
    rank, size = world()
    if cfg.batch_size % size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {size} processes; the protocol's "
                         "batch is split evenly over them (use 1, 2, 4, 8 or 16 processes, or --set batch_size=...).")
    voc = resolve_voc_root(voc_root)
    weights = transfer_weights(model_dir, layers=cfg.transfer)
    variant = VARIANTS[cfg.variant]
    model = build_classifier(weights, variant, seed=cfg.init_seed)
    train = read_class_labels(voc, cfg.train_split)
    paths = _image_paths(voc, train)
    rescaled = _rescale(model, paths, cfg, device) if cfg.rescale else None
    optimizer = CaffeSGD(classifier_param_specs(model, variant), momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         clip_gradients=cfg.clip_gradients)
    policy = LRPolicy("step", cfg.base_lr, gamma=cfg.lr_gamma, stepsize=cfg.lr_stepsize)
    source = ClassificationSource(paths, training_targets(train.labels), batch_size=cfg.batch_size // size,
                                  crop=cfg.crop, min_scale=cfg.min_scale, max_scale=cfg.max_scale, mirror=cfg.mirror,
                                  mean_bgr=cfg.mean_bgr, seed=cfg.data_seed, rank=rank, world_size=size)
    stamp_args = dict(weights=weights, device=device, dataset=voc.name, rescaled=rescaled)
    from jigsawpp.engine.checkpoint import latest_checkpoint

    if rank == 0 and not (resume and latest_checkpoint(out) is not None):  # a resume keeps the run's record
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", {"config": cfg.to_dict(),
                                                "provenance": classification_stamp(cfg, iterations=None,
                                                                                   **stamp_args)})
    trained = train_loop(
        model=model, optimizer=optimizer, lr=policy, source=PrefetchSource(source, workers=LOADER_THREADS),
        loss_fn=lambda net, batch: {"loss": sigmoid_cross_entropy(net(batch.data), batch.targets)},
        out_dir=out, max_iters=cfg.max_iters, snapshot_iters=cfg.snapshot_iters, config=cfg.to_dict(),
        fingerprint=_fingerprint(train), device=device, amp=cfg.amp, resume=resume, progress=progress,
        desc=f"VOC07 classification ({cfg.variant})", display=cfg.display, seed=cfg.data_seed)
    stamp = classification_stamp(cfg, iterations=trained.iterations, **stamp_args)
    if rank == 0:
        if trained.log.is_file() and trained.log.stat().st_size:
            plot_training_curves(trained.log, out / "training_curves.png", title="VOC07 classification: loss")
        save_state_dict_file(model.state_dict(), out / "classifier.safetensors",
                             metadata={"content": f"VOC07 classifier ({cfg.variant}), Caffe layer names",
                                       "key": stamp["key"]})
        write_json_atomic(out / "config.json", {"config": cfg.to_dict(), "provenance": stamp})
    run = evaluate_classifier(model, voc, out, cfg, stamp=stamp, device=device, progress=progress)
    return ClassificationRun(**{**run.__dict__, "train": trained})
