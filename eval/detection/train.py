"""Fast R-CNN training on the shared loop (`jigsawpp.engine.loop.train_loop`): Caffe SGD, periodic checkpoints
with exact resume, several GPUs, progress with ETA.

Reproduces rbgirshick/fast-rcnn@b612190 ``lib/fast_rcnn/train.py`` (``SolverWrapper``): regression targets are
normalised before training and the saved detector has bbox_pred un-normalised (``snapshot``), so testing needs no
statistics. One SGD step = one mini-batch of ``ims_per_batch`` images x ``rois_per_image`` ROIs; the data layer's
randomness (image order, ROI sampling) is the `RoiSampler`, drawn on the training thread, while a background thread
reads and scales the next mini-batch's images.

Several GPUs (``torch.distributed`` initialised, e.g. by ``torchrun``): the original trains on one GPU, so we keep
its mini-batch and split its *images* over the ranks (2 images -> 2 ranks of 1). Every rank draws the same sampler
sequence; each loads its share; DistributedDataParallel averages the gradients, which equals the one-GPU gradient
because both losses are means over equally many ROIs per image. (The one-GPU blob zero-pads both images to a common
size; a rank holding one image has no padding, which changes conv activations near the padded border.)

Checkpoints (``<out>/checkpoints/iter_<7-digit iteration>/``, every ``snapshot_iters`` and at the end; layout in
`jigsawpp.engine.checkpoint`) hold the weights, Caffe's momentum histories, every rank's RNG states, the sampler
state and the config. Nothing is pickled. Resuming restores all of it, so a killed run continues with the same
mini-batches, dropout masks and updates it would have had: bit for bit on the CPU (tested), and on a GPU as far as
its kernels are deterministic (cuDNN's are not by default).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from eval.detection.config import FastRCNNConfig
from eval.detection.model import FastRCNN, fast_rcnn_loss
from eval.detection.roidb import BBoxStats, RoidbEntry
from eval.detection.sampling import Minibatch, MinibatchPlan, RoiSampler, load_minibatch
from jigsawpp.engine.checkpoint import CHECKPOINT_DIR, latest_checkpoint
from jigsawpp.engine.distributed import world
from jigsawpp.engine.loop import NonFiniteLossError, PrefetchSource, TrainResult, train_loop
from jigsawpp.engine.solver import CaffeSGD, LRPolicy

__all__ = [
    "CHECKPOINT_DIR",
    "RoiBatchSource",
    "TrainResult",
    "latest_checkpoint",
    "roidb_fingerprint",
    "train_detector",
    "unnormalized_state_dict",
]

DISPLAY = 20  # iterations between log lines (solver.prototxt ``display: 20``)
DIVERGENCE_HINT = ("For Fast R-CNN: the annotations were checked before training (boxes inside their image, not "
                   "inverted), so look at the learning rate (the protocol's base_lr is 0.001; lower it with --set "
                   "base_lr=...), at --amp, and at the scale of the transferred weights (--rescale applies "
                   "Kraehenbuehl et al.'s rescaling).")
KEEP_CHECKPOINTS = 2
# settings that may change between the launches of one run
RUNTIME_KEYS = frozenset({"max_iters", "snapshot_iters", "amp"})


def roidb_fingerprint(entries: Sequence[RoidbEntry], *, data: Mapping | None = None) -> str:
    """A hash of the training data: per entry (in order) its image id, flip, size, every box (ground truth and
    proposals, float64) and class; plus `data`, JSON describing the rest (e.g. the image files' sha256, the proposal
    settings). An edited annotation, another proposal set or an edited image changes it, so a checkpoint made on
    other data is refused instead of resumed."""
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.image_id}|{int(e.flipped)}|{e.width}x{e.height}|{e.num_gt};".encode())
        digest.update(np.ascontiguousarray(e.boxes, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(e.gt_classes, dtype=np.int64).tobytes())
    if data is not None:
        digest.update(json.dumps(data, sort_keys=True).encode())
    return digest.hexdigest()


def unnormalized_state_dict(model: FastRCNN, stats: BBoxStats) -> dict[str, torch.Tensor]:
    """The state dict with bbox_pred mapped back to raw deltas, ``W * std`` and ``b * std + mean`` per output
    (fast-rcnn ``SolverWrapper.snapshot``)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layer = model.layer("bbox_pred")
    prefix = f"net.{model.net.layer_attr['bbox_pred']}"
    stds = torch.as_tensor(stats.stds.ravel(), dtype=layer.weight.dtype, device=layer.weight.device)
    means = torch.as_tensor(stats.means.ravel(), dtype=layer.weight.dtype, device=layer.weight.device)
    state[f"{prefix}.weight"] = layer.weight.detach() * stds[:, None]
    state[f"{prefix}.bias"] = layer.bias.detach() * stds + means
    return state


class RoiBatchSource:
    """The data layer as a `jigsawpp.engine.sources.PlannedSource`: `plan` draws the next mini-batch's images, scales
    and ROIs (``RoIDataLayer._get_next_minibatch_inds`` + ``get_minibatch``'s sampling), `load` reads and scales the
    images at positions `images` of the plan (this rank's share)."""

    def __init__(self, entries: Sequence[RoidbEntry], cfg: FastRCNNConfig, *, images: Sequence[int]) -> None:
        self.entries = entries
        self.cfg = cfg
        self.images = list(images)
        self.sampler = RoiSampler(entries, cfg)

    def plan(self) -> MinibatchPlan:
        return self.sampler.next_plan()

    def load(self, plan: MinibatchPlan) -> Minibatch:
        return load_minibatch(plan, self.entries, self.cfg, images=self.images)

    def next_batch(self) -> Minibatch:
        return self.load(self.plan())

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def _fast_rcnn_losses(net: torch.nn.Module, batch: Minibatch) -> dict[str, torch.Tensor]:
    parts = fast_rcnn_loss(net(batch.data, batch.rois), batch.labels, batch.bbox_targets, batch.bbox_weights)
    return {"loss": parts.total, "loss_cls": parts.cls, "loss_bbox": parts.bbox}


def train_detector(
    model: FastRCNN,
    entries: Sequence[RoidbEntry],
    stats: BBoxStats,
    cfg: FastRCNNConfig,
    *,
    out_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    data: Mapping | None = None,
) -> TrainResult:
    """Train `model` in place for ``cfg.max_iters`` SGD steps (resuming from the newest checkpoint in `out_dir`).

    Args:
        model: the detector; its bbox_pred is trained on targets normalised by `stats`.
        entries: the training roidb (with targets), `stats` the statistics used to normalise them.
        stop_after: stop after this many steps of *this call* (used to test resuming after an interruption).
        on_log: called with each log record (also appended to ``<out>/train_log.jsonl`` by rank 0).
        data: what else the training data depends on, hashed into the resume fingerprint (`roidb_fingerprint`).
    Returns:
        `TrainResult`; the final weights are in the last checkpoint and in `model` (normalised bbox_pred).
    Raises:
        jigsawpp.engine.loop.NonFiniteLossError: the loss diverged (the message says at which iteration and what to
            check for Fast R-CNN).
        ValueError: the checkpoint in `out_dir` was made with another config, roidb or number of processes.
    """
    device = torch.device(device)
    rank, size = world()
    if cfg.ims_per_batch % size:
        raise ValueError(f"{size} processes cannot share mini-batches of {cfg.ims_per_batch} images; use a number "
                         "of GPUs that divides ims_per_batch (the protocol's batch is 2 images).")
    share = cfg.ims_per_batch // size
    model.to(device)
    optimizer = CaffeSGD(model.param_specs(freeze_conv1=cfg.freeze_conv1), momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    source = PrefetchSource(RoiBatchSource(entries, cfg, images=range(rank * share, (rank + 1) * share)))
    lr = LRPolicy("step", cfg.base_lr, gamma=cfg.lr_gamma, stepsize=cfg.lr_stepsize)  # solver.prototxt lr_policy
    try:
        return train_loop(
            model=model, optimizer=optimizer, lr=lr, source=source, loss_fn=_fast_rcnn_losses, out_dir=out_dir,
            max_iters=cfg.max_iters, snapshot_iters=cfg.snapshot_iters, config=cfg.to_dict(),
            fingerprint=roidb_fingerprint(entries, data=data), device=device,
            amp="bf16" if cfg.amp and device.type == "cuda" else "off", resume=resume, progress=progress,
            desc="Fast R-CNN training", display=DISPLAY, stop_after=stop_after, on_log=on_log, seed=cfg.rng_seed,
            extra_state={"bbox_means": stats.means.tolist(), "bbox_stds": stats.stds.tolist()},
            runtime_keys=RUNTIME_KEYS, keep=KEEP_CHECKPOINTS)
    except NonFiniteLossError as exc:
        exc.args = (f"{exc} {DIVERGENCE_HINT}",)
        raise
