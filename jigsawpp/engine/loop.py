"""The training loop every protocol runs: Caffe's solver step, checkpoints with exact resume, several GPUs, AMP,
progress, a JSONL log, and a loud stop on a non-finite loss.

One iteration is Caffe's ``Solver::Step`` body (BVLC ``src/caffe/solver.cpp``): clear the gradients, run
``iter_size`` forward/backward passes accumulating gradients, average their losses for display, then
``ApplyUpdate`` (`CaffeSGD.step`, which divides the accumulated gradient by iter_size) with the rate of
`LRPolicy` at the 0-based iteration. Under torchrun the model is wrapped in DistributedDataParallel (gradients
averaged over ranks; accumulation passes skip the all-reduce) and the logged losses are averaged over ranks.

Exact resume: a checkpoint every ``snapshot_iters`` iterations and at the end holds the weights, the momentum
histories, every RNG state of every rank, the GradScaler state (fp16) and the data source's state before its next
batch; a new process that calls `train_loop` with the same arguments continues with the same batches, dropout masks
and updates, bit for bit on the CPU (tested) and on a GPU as far as its kernels are deterministic. Log records after
the checkpoint a run resumes from are dropped, so the log reads as one run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from jigsawpp.engine.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    check_resumable,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from jigsawpp.engine.distributed import barrier, world
from jigsawpp.engine.solver import CaffeSGD, LRPolicy
from jigsawpp.engine.sources import Batch, BatchSource, DatasetSource, LabeledBatch, PrefetchSource

__all__ = [
    "LOG_NAME",
    "RUNTIME_KEYS",
    "Batch",
    "BatchSource",
    "DatasetSource",
    "LabeledBatch",
    "NonFiniteLossError",
    "PrefetchSource",
    "TrainResult",
    "train_loop",
]

LOG_NAME = "train_log.jsonl"
# config keys that may change between launches of one run (how long, how often to save, how fast)
RUNTIME_KEYS = frozenset({"max_iters", "max_iter", "snapshot_iters", "snapshot", "amp", "display", "workers",
                          "num_workers", "device", "progress"})
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before applying that iteration's update."""

    def __init__(self, iteration: int, losses: Mapping[str, float], *, rate: float, amp: str,
                 checkpoint: int | None, ranks: int) -> None:
        self.iteration = iteration
        self.losses = dict(losses)
        terms = ", ".join(f"{k}={v:.6g}" for k, v in self.losses.items())
        where = f" (averaged over {ranks} processes)" if ranks > 1 else ""
        amp_hint = f"; AMP {amp} can overflow: try --amp off or bf16" if amp != "off" else ""
        saved = (f"The newest checkpoint (iteration {checkpoint}) is intact." if checkpoint is not None
                 else "No checkpoint was written yet.")
        super().__init__(
            f"non-finite loss at iteration {iteration} (0-based; learning rate {rate:g}): {terms}{where}. Check the "
            f"learning rate (too high diverges), the inputs of that batch (boxes and labels within range, images "
            f"without NaN) and the initial weights{amp_hint}. {saved}")


@dataclass(frozen=True)
class TrainResult:
    iterations: int  # SGD steps completed (the iteration count of the last checkpoint)
    seconds: float  # wall time of this call
    resumed_from: int  # 0 for a fresh run
    checkpoint: Path
    log: Path


def _truncate_log(path: Path, upto: int) -> None:
    """Keep the records of iterations <= `upto` (those a resumed run does not redo)."""
    if not path.is_file():
        return
    from jigsawpp.io import write_text_atomic

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= upto:
                kept.append(line + "\n")
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    write_text_atomic(path, "".join(kept))


def _scalar_losses(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if "loss" not in losses:
        raise KeyError(f"loss_fn must return a dict with a 'loss' entry to back-propagate; it returned "
                       f"{sorted(losses)}.")
    bad = [k for k, v in losses.items() if v.numel() != 1]
    if bad:
        raise ValueError(f"loss_fn returned non-scalar terms {bad}; return one number per term.")
    return torch.stack([v.detach().float().reshape(()) for v in losses.values()])


def train_loop(
    *,
    model: nn.Module,
    optimizer: CaffeSGD,
    lr: LRPolicy,
    source: BatchSource,
    loss_fn: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
    out_dir: str | os.PathLike[str],
    max_iters: int,
    snapshot_iters: int,
    config: dict,
    fingerprint: str,
    device: torch.device | str,
    iter_size: int = 1,
    amp: Literal["off", "bf16", "fp16"] = "off",
    resume: bool = True,
    progress: bool = True,
    desc: str = "training",
    display: int = 20,
    extra_tensors: Callable[[], dict[str, dict[str, torch.Tensor]]] | None = None,
    stop_after: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    seed: int | None = None,
    extra_state: dict | None = None,
    on_resume: Callable[[Checkpoint], None] | None = None,
    runtime_keys: Collection[str] = RUNTIME_KEYS,
    keep: int = 2,
) -> TrainResult:
    """Train `model` in place for `max_iters` SGD steps, resuming from the newest checkpoint in `out_dir`.

    Args:
        optimizer: Caffe SGD over the model's parameters; `lr` gives each iteration's rate.
        source: batches (anything with ``.to(device)``) and their exact state; ``close()`` is called at the end if
            it has one.
        loss_fn: ``loss_fn(net, batch) -> {"loss": scalar, other terms...}``; `net` is `model` or its DDP wrapper.
            "loss" is back-propagated (scaled by the GradScaler for fp16); every term is logged.
        config: the run's settings, saved in every checkpoint; resuming with other values (except `runtime_keys`)
            is refused, as is resuming on data with another `fingerprint` or with another number of processes.
        iter_size: forward/backward passes per update (Caffe's iter_size; the gradient is their mean).
        amp: autocast dtype of the forward ("bf16", or "fp16" with a GradScaler), or "off".
        display: iterations per log record (averages over them); records also go to ``<out>/train_log.jsonl``
            (rank 0) and to `on_log` (every rank).
        extra_tensors: more tensor groups to save in each checkpoint; `on_resume` receives the loaded checkpoint.
        stop_after: stop after this many iterations of this call (to test interruptions).
        seed: seeds torch, numpy and Python (+ rank) on a fresh start; a resume restores the saved states instead.
        extra_state: JSON saved under "extra" in each checkpoint's state.json.
    Returns:
        `TrainResult`; `model` holds the final weights and is left in eval mode.
    Raises:
        NonFiniteLossError: the first NaN/inf loss (before its update; the last checkpoint stays intact).
        ValueError: the checkpoint does not match this run (see `check_resumable`).
    """
    if max_iters < 0 or snapshot_iters < 1 or iter_size < 1 or display < 1:
        raise ValueError(f"train_loop: need max_iters >= 0, snapshot_iters, iter_size, display >= 1; got "
                         f"{max_iters}, {snapshot_iters}, {iter_size}, {display}.")
    if amp not in ("off", *AMP_DTYPES):
        raise ValueError(f"train_loop: amp must be 'off', 'bf16' or 'fp16', got {amp!r}.")
    out = Path(out_dir)
    device = torch.device(device)
    rank, size = world()
    log_path = out / LOG_NAME
    model.to(device)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    start = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        state = read_checkpoint_state(checkpoint)
        check_resumable(state, config=config, fingerprint=fingerprint, world_size=size,
                        runtime_keys=set(runtime_keys), path=checkpoint)
        if state.get("iter_size", iter_size) != iter_size:
            raise ValueError(f"checkpoint {checkpoint} was made with iter_size {state['iter_size']}, this run has "
                             f"{iter_size}; resume with the same or start a new output folder.")
        loaded = load_checkpoint(checkpoint, device=device)
        model.load_state_dict(loaded.tensors["model"])
        optimizer.load_histories(loaded.tensors.get("solver", {}))
        source.load_state_dict(state["source"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if on_resume is not None:
            on_resume(loaded)
        start = loaded.iteration
    else:
        if rank == 0 and (out / CHECKPOINT_DIR).exists():  # starting over: older checkpoints would outrank ours
            shutil.rmtree(out / CHECKPOINT_DIR)
        if seed is not None:
            torch.manual_seed(seed + rank)
            np.random.seed(seed + rank)
            random.seed(seed + rank)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start)
    barrier()

    net: nn.Module = model
    if size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    autocast = (torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp != "off" else contextlib.nullcontext())

    def save(iteration: int) -> Path:
        tensors = {"model": model.state_dict(), "solver": optimizer.histories()}
        if extra_tensors is not None:
            tensors.update(extra_tensors())
        state = {"config": config, "fingerprint": fingerprint, "source": source.state_dict(), "iter_size": iter_size,
                 "amp": amp}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if extra_state is not None:
            state["extra"] = extra_state
        return save_checkpoint(out, iteration=iteration, tensors=tensors, state=state, device=device, keep=keep)

    from tqdm import tqdm

    bar = tqdm(total=max_iters, initial=start, desc=desc, unit="it", dynamic_ncols=True,
               disable=not progress or rank != 0)
    if progress and rank == 0 and checkpoint is not None:  # say it: a resumed run looks like a bar starting mid-way
        bar.write(f"{desc}: resuming from iteration {start} ({checkpoint})"
                  + (", already finished" if start >= max_iters else ""))
    end = max_iters if stop_after is None else min(max_iters, start + stop_after)
    t0 = time.perf_counter()
    last = start
    saved_at = start if checkpoint is not None else None
    names: list[str] = []
    window: list[list[float]] = []
    try:
        for iteration in range(start, end):
            rate = lr.rate(iteration)
            optimizer.zero_grad(set_to_none=True)
            means = None
            for micro in range(iter_size):
                batch = source.next_batch().to(device)
                accumulate = size > 1 and micro < iter_size - 1
                with net.no_sync() if accumulate else contextlib.nullcontext():  # type: ignore[operator]
                    with autocast:
                        losses = loss_fn(net, batch)
                    values = _scalar_losses(losses)
                    if size > 1:
                        torch.distributed.all_reduce(values)
                        values = values / size
                    host = values.cpu().tolist()
                    if not all(math.isfinite(v) for v in host):
                        raise NonFiniteLossError(iteration, dict(zip(losses, host)), rate=rate, amp=amp,
                                                 checkpoint=saved_at, ranks=size)
                    loss = losses["loss"]
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                names = list(losses)
                means = [v / iter_size for v in host] if means is None else [
                    m + v / iter_size for m, v in zip(means, host)]
            if scaler is not None:
                scaler.step(optimizer, rate, iter_size=iter_size)
                scaler.update()
            else:
                optimizer.step(rate, iter_size=iter_size)
            last = iteration + 1
            assert means is not None
            window.append(means)
            bar.update()
            bar.set_postfix({k: f"{v:.4g}" for k, v in zip(names, np.mean(window, axis=0))} | {"lr": f"{rate:g}"},
                            refresh=False)
            if last % display == 0 or last == end:
                mean = np.mean(window, axis=0)
                window.clear()
                record = {"iteration": last, **{k: float(v) for k, v in zip(names, mean)}, "lr": rate,
                          "seconds_per_iter": (time.perf_counter() - t0) / (last - start)}
                if scaler is not None:
                    record["loss_scale"] = float(scaler.get_scale())
                if rank == 0:
                    with log_path.open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                if on_log is not None:
                    on_log(record)
            if last % snapshot_iters == 0 or last == end:
                checkpoint, saved_at = save(last), last
    finally:
        bar.close()
        close = getattr(source, "close", None)
        if callable(close):
            close()
    if checkpoint is None:  # nothing ran and nothing was saved (max_iters == 0): save the starting point
        checkpoint = save(last)
    model.eval()
    return TrainResult(iterations=last, seconds=time.perf_counter() - t0, resumed_from=start, checkpoint=checkpoint,
                       log=log_path)
