"""`jigsawpp eval linear`: linear classifiers on the frozen conv1..conv5 of a model (Tables 4 and 5).

One trunk forward feeds every head, and the heads train together (the sum of their softmax losses), as in
richzhang/colorization ``feature_learning_tests/linear/train_val.prototxt@4617507``; see `eval.probes.config` for
every setting and its source. With a feature cache (`cache_dir`), each image's views are extracted once
(`eval.probes.extract`) and training reads them from disk, so several settings reuse one extraction; the price is
that training sees `cache_train_views` fixed random crops per image instead of a new one each epoch (recorded).

Output folder: ``scores.json`` (top-1/top-5 per tap, provenance stamp), ``config.json``, ``heads.safetensors``
(the BatchNorm blobs and InnerProduct weights, Caffe-named), ``train_log.jsonl``, ``learning_curve.png``,
``layer_accuracy.png`` (beside the paper's row when the model names one), ``checkpoints/`` (resume).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eval.probes.config import LinearProbeConfig
from eval.probes.heads import MultiHeadProbe, probe_loss
from eval.probes.metrics import Accuracy
from eval.probes.taps import ProbeTaps
from eval.probes.trunk import Trunk, load_trunk
from jigsawpp.models import CaffeAlexNet

__all__ = ["LinearProbeModel", "LinearResult", "conv_trunk", "model_stamp", "run_linear"]

PAPER_TABLE = {"imagenet": "table4", "places205": "table5"}


@dataclass(frozen=True)
class LinearResult:
    out_dir: Path
    accuracy: dict[str, Accuracy]      # per tap, on the validation split
    iterations: int
    trunk_images: int                  # image views this process forwarded through the trunk (train + test)
    extraction: dict[str, Any] | None  # per cached split: images extracted now, whether it was reused
    scores_path: Path | None           # written by rank 0 only
    seconds: float


class LinearProbeModel(nn.Module):
    """Frozen taps + heads: images (N, 3, 227, 227) -> {tap: logits}. Counts the images sent through the trunk."""

    def __init__(self, taps: ProbeTaps, heads: MultiHeadProbe) -> None:
        super().__init__()
        self.taps, self.heads = taps, heads
        self.trunk_images = 0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.trunk_images += int(images.shape[0])
        return self.heads(self.taps(images))


def conv_trunk(model: CaffeAlexNet) -> CaffeAlexNet:
    """conv1..conv5 of `model` as a headless CaffeAlexNet (checkpoints and memory do not carry fc layers)."""
    headless = CaffeAlexNet(replace(model.config, fc6=None, fc7=None, num_classes=None))
    headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc")}, strict=True)
    return headless.eval()


def _batch_accuracy(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"acc_{tap}": (z.detach().argmax(1) == labels).float().mean() * 100 for tap, z in logits.items()}


def _loss(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """Images (N, 3, 227, 227) or flat cached rows (N, D) in `batch.images` -> summed head losses + accuracies."""
    logits = model(batch.images)
    return {**probe_loss(logits, batch.labels), **_batch_accuracy(logits, batch.labels)}


def model_stamp(model_dir: str | os.PathLike[str], trunk: Trunk) -> dict[str, Any]:
    """The stamp's "model" entry: `jigsawpp.convert.model_record` (checked by `jigsawpp verify`) and the weights."""
    from jigsawpp.convert import model_record

    return {**model_record(model_dir), "source": trunk.source, "weights_sha256": trunk.weights_sha256,
            "mean_bgr": list(trunk.mean_bgr), "paper_method": trunk.paper_method,
            "conv1_stride": trunk.model.config.conv1_stride}


def run_linear(model_dir: str | os.PathLike[str], data_root: str | os.PathLike[str],
               out_dir: str | os.PathLike[str], config: LinearProbeConfig | None = None, *,
               dataset: str = "imagenet", cache_dir: str | os.PathLike[str] | None = None,
               device: torch.device | None = None, workers: int = 4, resume: bool = True, overwrite: bool = False,
               progress: bool = True, stop_after: int | None = None) -> LinearResult:
    """Train and test the linear probes; see the module docstring. Resumes from `out_dir`'s checkpoints unless
    `resume` is False. Raises ValueError / FileNotFoundError (sentences) for bad inputs."""
    from eval.probes import data as pdata
    from eval.probes.cached import prepare_cache
    from eval.probes.evaluate import evaluate_cached, evaluate_images
    from eval.probes.sources import CachedFeatures, SplitFeatures
    from jigsawpp.engine.distributed import barrier, world
    from jigsawpp.engine.loop import DatasetSource, train_loop
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs
    from jigsawpp.outputs import prepare_output_dir

    start = time.perf_counter()
    cfg = config or LinearProbeConfig()
    rank, world_size = world()
    device = device or torch.device("cpu")
    trunk = load_trunk(model_dir)
    taps = ProbeTaps(conv_trunk(trunk.model), taps=cfg.taps, mode=cfg.resize, align_corners=cfg.align_corners,
                     input_size=cfg.crop_size).to(device)
    train, val = pdata.dataset_splits(data_root, dataset)  # type: ignore[arg-type]
    num_classes = len(train.classes)
    heads = MultiHeadProbe(taps.shapes, num_classes, moving_average_fraction=cfg.bn_moving_average_fraction,
                           eps=cfg.bn_eps).to(device)
    batch = pdata.per_process_batch(cfg.batch_size, world_size)
    out = Path(out_dir)
    fingerprint = pdata.samples_fingerprint(train.samples, data_root) + ":" + trunk.weights_sha256
    mean = trunk.mean_bgr
    model = LinearProbeModel(taps, heads)
    extraction = None
    if cache_dir is not None:
        caches, extraction = prepare_cache(cache_dir, taps, train, val, cfg, trunk=trunk, data_root=data_root,
                                           device=device, workers=workers, rank=rank, world=world_size,
                                           progress=progress)
        rows = CachedFeatures(caches["train"], cfg.taps, seed=cfg.seed)
        items, train_module = rows, SplitFeatures(heads, rows.layout)
    else:
        items = pdata.train_dataset(train, mean_bgr=mean, image_size=cfg.image_size, crop_size=cfg.crop_size,
                                    mirror=cfg.mirror, seed=cfg.seed)
        train_module = model
    if rank == 0:  # after the cache, so that a stale cache leaves no output folder behind
        prepare_output_dir(out, overwrite=overwrite, what="linear probe output", resume=resume)
    barrier()
    source = DatasetSource(items, batch_size=batch, seed=cfg.seed, workers=workers,
                           pin_memory=device.type == "cuda")
    optimizer = CaffeSGD(param_specs(heads), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    lr = LRPolicy(cfg.lr_policy, cfg.base_lr, gamma=cfg.gamma, stepsize=cfg.stepsize, stepvalues=cfg.stepvalues,
                  max_iter=cfg.max_iter)
    protocol = {k: v for k, v in cfg.to_dict().items() if k not in ("snapshot_iters", "display")}
    protocol.update(dataset=dataset, cached=cache_dir is not None)
    result = train_loop(model=train_module, optimizer=optimizer, lr=lr, source=source, loss_fn=_loss, out_dir=out,
                        max_iters=cfg.max_iter, snapshot_iters=cfg.snapshot_iters, config=protocol,
                        fingerprint=fingerprint, device=device, amp=cfg.amp, resume=resume, progress=progress,
                        desc="linear probes", display=cfg.display, stop_after=stop_after, seed=cfg.seed)
    if result.iterations < cfg.max_iter:  # stopped early on request: checkpoint written, no test
        return LinearResult(out, {}, result.iterations, model.trunk_images, extraction, None,
                            time.perf_counter() - start)
    heads.eval()
    if cache_dir is not None:
        accuracy = evaluate_cached(heads, caches["val"], batch_size=cfg.test_batch_size, device=device, rank=rank,
                                   world=world_size)
    else:
        test = pdata.test_dataset(val, mean_bgr=mean, image_size=cfg.image_size, crop_size=cfg.crop_size,
                                  crops=cfg.test_crops)
        accuracy, _ = evaluate_images(model, list(cfg.taps), test, batch_size=cfg.test_batch_size, workers=workers,
                                      device=device, amp=cfg.amp, rank=rank, world=world_size, progress=progress)
    scores_path = None
    if rank == 0:
        from eval.probes.outputs import write_linear_outputs
        from eval.probes.provenance import linear_stamp

        cache_record = None if cache_dir is None else {"dir": str(cache_dir), "dtype": "float16",
                                                       "train_views": cfg.cache_train_views,
                                                       "extraction": extraction}
        stamp = linear_stamp(cfg, dataset=dataset, counts={"train": len(train.samples), "val": len(val.samples),
                                                           "classes": num_classes},
                             model=model_stamp(model_dir, trunk),
                             taps={t: {"spec": taps.specs[t].describe(), "shape": list(taps.shapes[t]),
                                       "dims": taps.dims[t]} for t in cfg.taps},
                             cache=cache_record, device=device, world_size=world_size, iterations=result.iterations)
        scores_path = write_linear_outputs(out, accuracy, heads, stamp, cfg, dataset=dataset,
                                           paper_method=trunk.paper_method, table=PAPER_TABLE.get(dataset))
    barrier()
    return LinearResult(out, accuracy, result.iterations, model.trunk_images, extraction, scores_path,
                        time.perf_counter() - start)
