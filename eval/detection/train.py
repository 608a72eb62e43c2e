"""Fast R-CNN training loop: Caffe SGD, periodic checkpoints with exact resume, several GPUs, progress with ETA.

Reproduces rbgirshick/fast-rcnn@b612190 ``lib/fast_rcnn/train.py`` (``SolverWrapper``): regression targets are
normalised before training and the saved detector has bbox_pred un-normalised (``snapshot``), so testing needs no
statistics. One SGD step = one mini-batch of ``ims_per_batch`` images x ``rois_per_image`` ROIs.

Several GPUs (``torch.distributed`` initialised, e.g. by ``torchrun``): the original trains on one GPU, so we keep
its mini-batch and split its *images* over the ranks (2 images -> 2 ranks of 1). Every rank draws the same sampler
sequence; each loads its share; DistributedDataParallel averages the gradients, which equals the one-GPU gradient
because both losses are means over equally many ROIs per image. (The one-GPU blob zero-pads both images to a common
size; a rank holding one image has no padding, which changes conv activations near the padded border.)

Checkpoints (``<out>/checkpoints/iter_<7-digit iteration>/``, every ``snapshot_iters`` and at the end;
``latest.json`` names the newest) hold the weights (safetensors), Caffe's momentum histories and the torch RNG
states (safetensors), and JSON with the iteration, the sampler state and the config. Nothing is pickled. Resuming
restores all of it, so a killed run continues with the same mini-batches, dropout masks and updates it would have
had: bit for bit on the CPU (tested), and on a GPU as far as its kernels are deterministic (cuDNN's are not by
default).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.detection.config import FastRCNNConfig
from eval.detection.model import FastRCNN, fast_rcnn_loss
from eval.detection.roidb import BBoxStats, RoidbEntry
from eval.detection.sampling import MinibatchPlan, RoiSampler, load_minibatch
from eval.detection.solver import CaffeSGD, step_lr

__all__ = [
    "CHECKPOINT_DIR",
    "TrainResult",
    "latest_checkpoint",
    "roidb_fingerprint",
    "train_detector",
    "unnormalized_state_dict",
]

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
DISPLAY = 20  # iterations between log lines (solver.prototxt ``display: 20``)
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class TrainResult:
    iterations: int
    seconds: float
    resumed_from: int  # 0 for a fresh run
    checkpoint: Path
    log: Path


def roidb_fingerprint(entries: Sequence[RoidbEntry]) -> str:
    """A hash of what the sampler's state depends on: entry order, image ids, flips and box counts."""
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.image_id}|{int(e.flipped)}|{e.boxes.shape[0]}|{e.num_gt};".encode())
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


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["checkpoint"]
    return path if path.is_dir() else None


def _rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(device)
    return out


def _save_checkpoint(out_dir: Path, *, iteration: int, model: FastRCNN, optimizer: CaffeSGD, sampler_state: dict,
                     cfg: FastRCNNConfig, stats: BBoxStats, fingerprint: str, device: torch.device) -> Path:
    from jigsawpp.io import save_state_dict_file, write_json_atomic

    rank, world = _dist()
    root = out_dir / CHECKPOINT_DIR
    name = f"iter_{iteration:07d}"
    staging = root / f".{name}.partial"
    if rank == 0:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    _barrier()
    save_state_dict_file(_rng_tensors(device), staging / f"rng_rank{rank}.safetensors")
    if rank == 0:
        save_state_dict_file(model.state_dict(), staging / "model.safetensors",
                             metadata={"content": "training weights (bbox_pred normalised)"})
        save_state_dict_file(optimizer.histories(), staging / "solver.safetensors",
                             metadata={"content": "Caffe SGD momentum histories by blob"})
        write_json_atomic(staging / "state.json", {
            "iteration": iteration,
            "world_size": world,
            "sampler": sampler_state,
            "config": cfg.to_dict(),
            "bbox_means": stats.means.tolist(),
            "bbox_stds": stats.stds.tolist(),
            "roidb_fingerprint": fingerprint,
        })
    _barrier()
    final = root / name
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        write_json_atomic(root / LATEST, {"checkpoint": name, "iteration": iteration})
        kept = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
        for old in kept[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


_RUNTIME_KEYS = {"max_iters", "snapshot_iters", "amp"}


def _load_checkpoint(path: Path, *, model: FastRCNN, optimizer: CaffeSGD, sampler: RoiSampler,
                     cfg: FastRCNNConfig, fingerprint: str, device: torch.device) -> int:
    from jigsawpp.io import load_state_dict_file

    rank, world = _dist()
    state = json.loads((path / "state.json").read_text())
    saved = state["config"]
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in _RUNTIME_KEYS and saved.get(k) != v)
    if changed:
        raise ValueError(f"checkpoint {path} was made with a different config ({', '.join(changed)}); resume with "
                         "the same settings or start a new output folder.")
    if state["roidb_fingerprint"] != fingerprint:
        raise ValueError(f"checkpoint {path} was made on a different roidb (images, flips or proposals changed).")
    if state["world_size"] != world:
        raise ValueError(f"checkpoint {path} was made with {state['world_size']} processes, this run has {world}; "
                         "an exact resume needs the same number.")
    model.load_state_dict(load_state_dict_file(path / "model.safetensors"))
    optimizer.load_histories(load_state_dict_file(path / "solver.safetensors"))
    sampler.load_state_dict(state["sampler"])
    rng = load_state_dict_file(path / f"rng_rank{rank}.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in rng:
        torch.cuda.set_rng_state(rng["torch_cuda"], device)
    return int(state["iteration"])


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
) -> TrainResult:
    """Train `model` in place for ``cfg.max_iters`` SGD steps (resuming from the newest checkpoint in `out_dir`).

    Args:
        model: the detector; its bbox_pred is trained on targets normalised by `stats`.
        entries: the training roidb (with targets), `stats` the statistics used to normalise them.
        stop_after: stop after this many steps of *this call* (used to test resuming after an interruption).
        on_log: called with each log record (also appended to ``<out>/train_log.jsonl`` by rank 0).
    Returns:
        `TrainResult`; the final weights are in the last checkpoint and in `model` (normalised bbox_pred).
    """
    out = Path(out_dir)
    device = torch.device(device)
    rank, world = _dist()
    if cfg.ims_per_batch % world:
        raise ValueError(f"{world} processes cannot share mini-batches of {cfg.ims_per_batch} images; use a number "
                         "of GPUs that divides ims_per_batch (the protocol's batch is 2 images).")
    share = cfg.ims_per_batch // world
    mine = list(range(rank * share, (rank + 1) * share))

    model.to(device)
    specs = model.param_specs(freeze_conv1=cfg.freeze_conv1)
    for spec in specs:
        spec.parameter.requires_grad_(spec.lr_mult != 0.0)
    optimizer = CaffeSGD(specs, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = RoiSampler(entries, cfg)
    fingerprint = roidb_fingerprint(entries)

    start = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        start = _load_checkpoint(checkpoint, model=model, optimizer=optimizer, sampler=sampler, cfg=cfg,
                                 fingerprint=fingerprint, device=device)
    else:
        torch.manual_seed(cfg.rng_seed + rank)  # dropout masks; the sampler has its own numpy seed

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    log_path = out / "train_log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    last = start
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_iters, initial=start, desc="Fast R-CNN training", unit="it", dynamic_ncols=True,
               disable=not progress or rank != 0)
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minibatch")

    def plan_next() -> tuple[dict, MinibatchPlan, Future]:
        state_before = sampler.state_dict()
        plan = sampler.next_plan()
        return state_before, plan, loader.submit(load_minibatch, plan, entries, cfg, images=mine)

    end = cfg.max_iters if stop_after is None else min(cfg.max_iters, start + stop_after)
    pending = plan_next() if start < end else None
    window: list[tuple[float, float, float]] = []
    try:
        for iteration in range(start, end):
            assert pending is not None
            _, _, future = pending
            batch = future.result().to(device)
            # Prefetch the next step's images while this one computes; remember the sampler state *before* it
            # so a checkpoint after this step resumes by drawing it again.
            pending = plan_next() if iteration + 1 < end else None
            rate = step_lr(iteration, base_lr=cfg.base_lr, gamma=cfg.lr_gamma, stepsize=cfg.lr_stepsize)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                output = net(batch.data, batch.rois)
            loss = fast_rcnn_loss(output, batch.labels, batch.bbox_targets, batch.bbox_weights)
            loss.total.backward()
            optimizer.step(rate)
            last = iteration + 1
            window.append((loss.total.item(), loss.cls.item(), loss.bbox.item()))
            bar.update()
            if last % DISPLAY == 0 or last == end:
                mean = np.mean(window, axis=0)
                window.clear()
                if world > 1:  # each rank saw its share of the mini-batch: average the shares for the log
                    shared = torch.tensor(mean, dtype=torch.float64, device=device)
                    torch.distributed.all_reduce(shared)
                    mean = (shared / world).cpu().numpy()
                record = {"iteration": last, "loss": float(mean[0]), "loss_cls": float(mean[1]),
                          "loss_bbox": float(mean[2]), "lr": rate,
                          "seconds_per_iter": (time.perf_counter() - t0) / (last - start)}
                bar.set_postfix(loss=f"{mean[0]:.3f}", lr=f"{rate:g}")
                if rank == 0:
                    with log_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                if on_log is not None:
                    on_log(record)
            if last % cfg.snapshot_iters == 0 or last == end:
                sampler_state = pending[0] if pending is not None else sampler.state_dict()
                checkpoint = _save_checkpoint(out, iteration=last, model=model, optimizer=optimizer,
                                              sampler_state=sampler_state, cfg=cfg, stats=stats,
                                              fingerprint=fingerprint, device=device)
    finally:
        bar.close()
        loader.shutdown(wait=True, cancel_futures=True)
    if checkpoint is None:  # nothing to do (already at max_iters with no checkpoint: max_iters == 0)
        checkpoint = _save_checkpoint(out, iteration=last, model=model, optimizer=optimizer,
                                      sampler_state=sampler.state_dict(), cfg=cfg, stats=stats,
                                      fingerprint=fingerprint, device=device)
    model.eval()
    return TrainResult(iterations=last, seconds=time.perf_counter() - t0, resumed_from=start,
                       checkpoint=checkpoint, log=log_path)

