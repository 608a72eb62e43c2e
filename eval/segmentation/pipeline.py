"""End-to-end FCN-AlexNet segmentation: fine-tune on SBD train (or VOC train), test on seg11valid (or VOC val).

`run_segmentation` is what ``jigsawpp eval segmentation --model DIR --voc PATH [--sbd PATH]`` runs;
`evaluate_caffe_segmenter` the ``--caffe-test`` variant (a given Caffe FCN, no training). Training uses the shared
engine (`jigsawpp.engine`): Caffe's SGD with lr/decay multipliers, ``iter_size`` accumulation, the fixed policy,
checkpoints with exact resume, torchrun, AMP.

Loss (``SoftmaxWithLoss`` with ``normalize: true``, ``ignore_label: 255``, voc-fcn-alexnet/net.py)::

    L = sum over pixels with label != 255 of -log softmax(score)[label]  /  max(1, number of such pixels)

per image (batch 1); Caffe's solver sums the gradients of ``iter_size`` = 20 images and divides by 20. Under
torchrun with W processes each accumulates 20 / W images and DDP averages over the processes: the same mean over 20.

Output folder: ``config.json``, ``train_log.jsonl``, ``checkpoints/``, ``training_curves.png``,
``fcn.safetensors`` (Caffe layer names of the bundled FCN-AlexNet deploy), and `eval.segmentation.evaluate`'s files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.segmentation.config import FCNConfig
from eval.segmentation.data import (
    FCNTrainSource,
    SegSplit,
    sbd_split,
    seg11valid_split,
    split_fingerprint,
    voc_segmentation_split,
)
from eval.segmentation.evaluate import SegmentationRun, evaluate_segmenter, load_caffe_segmenter
from eval.segmentation.labels import VOID_LABEL
from eval.segmentation.model import FCNAlexNet, build_fcn, fcn_param_specs
from eval.segmentation.provenance import caffe_test_stamp, segmentation_stamp
from jigsawpp.transfer_weights import TRANSFER_CONV_LAYERS as CONV_LAYERS
from jigsawpp.transfer_weights import transfer_weights

__all__ = ["evaluate_caffe_segmenter", "resolve_segmentation_root", "run_segmentation", "segmentation_loss",
           "split_for"]

RESCALE_BATCHES, RESCALE_BATCH_SIZE = 10, 16  # magic_init -nit / -bs defaults (as eval.detection.config)
# batches decoded ahead by threads (OpenCV and numpy release the GIL): one ~84 images/s on a CPU core
LOADER_THREADS = max(1, min(8, (os.cpu_count() or 2) - 1))


def segmentation_loss(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """SoftmaxWithLoss, normalize true, ignore 255: (N, C, H, W) scores, (N, H, W) labels -> mean over valid pixels
    (Caffe divides by max(1, valid count), so an all-void image gives 0, not NaN)."""
    valid = label != VOID_LABEL
    losses = F.cross_entropy(score.float(), torch.where(valid, label, torch.zeros_like(label)), reduction="none")
    return (losses * valid).sum() / valid.sum().clamp_min(1)


def resolve_segmentation_root(path: str | os.PathLike[str]) -> Path:
    """A ``VOC20XX`` folder with ``ImageSets/Segmentation``, or a ``VOCdevkit`` holding exactly one."""
    p = Path(path)
    if (p / "ImageSets" / "Segmentation").is_dir():
        return p
    found = sorted(c for c in p.glob("VOC20*") if (c / "ImageSets" / "Segmentation").is_dir())
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{p} holds several VOC years with segmentation sets ({', '.join(c.name for c in found)}); "
                         "pass the one to use (e.g. VOCdevkit/VOC2012, or VOC2011 for seg11valid).")
    raise FileNotFoundError(f"{p} is neither a VOC20XX folder with ImageSets/Segmentation/ nor a VOCdevkit holding "
                            "one.")


def split_for(which: str, voc: Path | None, sbd: Path | None) -> SegSplit:
    """``sbd_train``, ``voc_train``, ``seg11valid`` or ``voc_val`` from the given folders."""
    if which == "sbd_train":
        if sbd is None:
            raise ValueError("train_data sbd_train needs --sbd (SBD's 'dataset' folder); or train on VOC with "
                             "--train-data voc_train.")
        return sbd_split(sbd, "train")
    if voc is None:
        raise ValueError(f"{which} needs --voc (a VOC20XX folder with ImageSets/Segmentation/).")
    if which == "seg11valid":
        return seg11valid_split(voc, sbd)
    return voc_segmentation_split(voc, which.split("_", 1)[1])


def _rescale(model: FCNAlexNet, split: SegSplit, cfg: FCNConfig, device: torch.device) -> dict[str, float]:
    from eval.detection.rescale import image_batches, rescale_layers
    from jigsawpp.data import read_image_bgr

    model.to(device).eval()
    batches = image_batches(lambda k: read_image_bgr(split.samples[k].image_path), len(split.samples),
                            mean_bgr=cfg.mean_bgr, batches=RESCALE_BATCHES, batch_size=RESCALE_BATCH_SIZE,
                            rng=np.random.RandomState(cfg.data_seed))
    report = rescale_layers({n: getattr(model, n) for n in CONV_LAYERS}, lambda x: model.features(x, "conv5"),
                            batches, seed=cfg.data_seed, device=device)
    return report.scales


def run_segmentation(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: FCNConfig, *,
                     voc_root: str | os.PathLike[str] | None, sbd_root: str | os.PathLike[str] | None = None,
                     device: str | torch.device = "cpu", resume: bool = True, progress: bool = True) -> SegmentationRun:
    """Fine-tune FCN-AlexNet from a converted model and evaluate it (the paper's segmentation column).

    Raises:
        FileNotFoundError, KeyError, ValueError: missing or malformed folders and files (named), an ``iter_size``
            the number of processes does not divide.
    """
    from jigsawpp.engine.distributed import world
    from jigsawpp.engine.loop import PrefetchSource, train_loop
    from jigsawpp.engine.plots import plot_training_curves
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy
    from jigsawpp.io import save_state_dict_file, write_json_atomic

    out = Path(out_dir)
    device = torch.device(device)
    rank, size = world()
    if cfg.iter_size % size:
        raise ValueError(f"iter_size {cfg.iter_size} is not divisible by the {size} processes; FCN's 20 images per "
                         "update are split evenly over them (use 1, 2, 4, 5, 10 or 20 processes).")
    voc = resolve_segmentation_root(voc_root) if voc_root is not None else None
    sbd = Path(sbd_root) if sbd_root is not None else None
    train = split_for(cfg.train_data, voc, sbd)
    val = split_for(cfg.val_data, voc, sbd)
    weights = transfer_weights(model_dir, layers=cfg.transfer)
    model = build_fcn(weights, seed=cfg.init_seed)
    rescaled = _rescale(model, train, cfg, device) if cfg.rescale else None
    optimizer = CaffeSGD(fcn_param_specs(model), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    source = FCNTrainSource(train, mean_bgr=cfg.mean_bgr, seed=cfg.data_seed, rank=rank)
    stamp_args = dict(weights=weights, device=device, train=train.source, val=val.source, rescaled=rescaled)
    from jigsawpp.engine.checkpoint import latest_checkpoint

    if rank == 0 and not (resume and latest_checkpoint(out) is not None):  # a resume keeps the run's record
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", {"config": cfg.to_dict(),
                                                "provenance": segmentation_stamp(cfg, iterations=None, **stamp_args)})
    trained = train_loop(
        model=model, optimizer=optimizer, lr=LRPolicy("fixed", cfg.base_lr),
        source=PrefetchSource(source, workers=LOADER_THREADS),
        loss_fn=lambda net, batch: {"loss": segmentation_loss(net(batch.data), batch.label)},
        out_dir=out, max_iters=cfg.max_iters, snapshot_iters=cfg.snapshot_iters, config=cfg.to_dict(),
        fingerprint=split_fingerprint(train), device=device, iter_size=cfg.iter_size // size, amp=cfg.amp,
        resume=resume, progress=progress, desc="FCN-AlexNet", display=cfg.display, seed=cfg.data_seed)
    stamp = segmentation_stamp(cfg, iterations=trained.iterations, **stamp_args)
    if rank == 0:
        if trained.log.is_file() and trained.log.stat().st_size:
            plot_training_curves(trained.log, out / "training_curves.png", title="FCN-AlexNet: loss")
        save_state_dict_file(model.state_dict(), out / "fcn.safetensors",
                             metadata={"content": "FCN-AlexNet, Caffe layer names of prototxt/fcn_alexnet",
                                       "key": stamp["key"]})
        write_json_atomic(out / "config.json", {"config": cfg.to_dict(), "provenance": stamp})
    run = evaluate_segmenter(model, val, out, mean_bgr=cfg.mean_bgr, stamp=stamp, device=device, amp=cfg.amp,
                             num_overlays=cfg.num_overlays, progress=progress)
    return SegmentationRun(**{**run.__dict__, "train": trained})


def evaluate_caffe_segmenter(prototxt_path: str | os.PathLike[str], caffemodel: str | os.PathLike[str],
                             out_dir: str | os.PathLike[str], *, split: SegSplit,
                             mean_bgr: tuple[float, float, float], score_blob: str = "score",
                             device: str | torch.device = "cpu", amp: str = "off", num_overlays: int = 8,
                             progress: bool = True) -> SegmentationRun:
    """Evaluate a trained Caffe FCN as it is (``--caffe-test``): e.g. FCN's ``fcn-alexnet-pascal.caffemodel`` with
    its ``deploy.prototxt``, which FCN reports at 48.0 mean IU on seg11valid."""
    from jigsawpp.io import sha256_file

    model = load_caffe_segmenter(prototxt_path, caffemodel, score_blob=score_blob)
    stamp: dict[str, Any] = caffe_test_stamp(prototxt=Path(prototxt_path).name, caffemodel=Path(caffemodel).name,
                                             sha256=sha256_file(caffemodel), device=device, val=split.source,
                                             mean_bgr=mean_bgr, score_blob=score_blob, amp=amp)
    return evaluate_segmenter(model, split, out_dir, mean_bgr=mean_bgr, stamp=stamp, device=device, amp=amp,
                              num_overlays=num_overlays, progress=progress)
