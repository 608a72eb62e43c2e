"""`jigsawpp eval nonlinear`: the nonlinear classifier of Table 6 (Noroozi & Favaro 2016 protocol, AlexNet).

conv1..`freeze_upto` keep the model's weights (lr_mult 0), every later layer up to a fresh 1000-way fc8 is
re-initialised (`eval.probes.nonlinear_model`) and trained on ImageNet with the 2016 CFN recognition solver; the
test averages the softmax over 10 crops. No reference code exists for this protocol: every choice is listed in the
result's stamp (`eval.probes.provenance.NONLINEAR_CHOICES`) and `jigsawpp verify` marks the row unverified.

Output folder: ``scores.json`` (10-crop and centre-crop top-1/top-5, provenance stamp), ``config.json``,
``model.safetensors`` (the trained classifier, Caffe layer names), ``train_log.jsonl``, ``learning_curve.png``,
``checkpoints/`` (resume).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eval.probes.config import NonlinearConfig
from eval.probes.metrics import Accuracy

__all__ = ["NonlinearResult", "run_nonlinear"]


@dataclass(frozen=True)
class NonlinearResult:
    out_dir: Path
    accuracy: Accuracy | None          # with config.test_crops (10 crops by default)
    center: Accuracy | None            # the centre crop alone (None when testing on the centre crop only)
    iterations: int
    scores_path: Path | None           # written by rank 0 only
    seconds: float


def _loss(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    logits = model(batch.images)
    loss = F.cross_entropy(logits.float(), batch.labels)
    return {"loss": loss, "acc": (logits.detach().argmax(1) == batch.labels).float().mean() * 100}


def run_nonlinear(model_dir: str | os.PathLike[str], data_root: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], config: NonlinearConfig | None = None, *,
                  dataset: str = "imagenet", device: torch.device | None = None, workers: int = 4,
                  resume: bool = True, overwrite: bool = False, progress: bool = True,
                  stop_after: int | None = None) -> NonlinearResult:
    """Train and test the classifier; see the module docstring. Resumes from `out_dir`'s checkpoints unless
    `resume` is False."""
    from eval.probes import data as pdata
    from eval.probes.evaluate import evaluate_images
    from eval.probes.nonlinear_model import build_nonlinear_net
    from eval.probes.trunk import load_trunk
    from jigsawpp.engine.distributed import barrier, world
    from jigsawpp.engine.loop import DatasetSource, train_loop
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs
    from jigsawpp.outputs import prepare_output_dir

    start = time.perf_counter()
    cfg = config or NonlinearConfig()
    rank, world_size = world()
    device = device or torch.device("cpu")
    trunk = load_trunk(model_dir)
    train, val = pdata.dataset_splits(data_root, dataset)  # type: ignore[arg-type]
    num_classes = len(train.classes)
    net = build_nonlinear_net(trunk.model, cfg, num_classes=num_classes).to(device)
    batch = pdata.per_process_batch(cfg.batch_size, world_size)
    out = Path(out_dir)
    if rank == 0:
        prepare_output_dir(out, overwrite=overwrite, what="nonlinear classifier output", resume=resume)
    barrier()
    images = pdata.train_dataset(train, mean_bgr=trunk.mean_bgr, image_size=cfg.image_size, crop_size=cfg.crop_size,
                                 mirror=cfg.mirror, seed=cfg.seed)
    source = DatasetSource(images, batch_size=batch, seed=cfg.seed, workers=workers,
                           pin_memory=device.type == "cuda")
    optimizer = CaffeSGD(param_specs(net.net, frozen=cfg.frozen_layers), momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    lr = LRPolicy(cfg.lr_policy, cfg.base_lr, gamma=cfg.gamma, stepsize=cfg.stepsize, stepvalues=cfg.stepvalues,
                  max_iter=cfg.max_iter)
    protocol = {k: v for k, v in cfg.to_dict().items() if k not in ("snapshot_iters", "display")}
    protocol["dataset"] = dataset
    fingerprint = pdata.samples_fingerprint(train.samples, data_root) + ":" + trunk.weights_sha256
    result = train_loop(model=net, optimizer=optimizer, lr=lr, source=source, loss_fn=_loss, out_dir=out,
                        max_iters=cfg.max_iter, snapshot_iters=cfg.snapshot_iters, config=protocol,
                        fingerprint=fingerprint, device=device, amp=cfg.amp, resume=resume, progress=progress,
                        desc=f"nonlinear ({cfg.freeze_upto} frozen)", display=cfg.display, stop_after=stop_after,
                        seed=cfg.seed)
    if result.iterations < cfg.max_iter:
        return NonlinearResult(out, None, None, result.iterations, None, time.perf_counter() - start)
    net.eval()
    test = pdata.test_dataset(val, mean_bgr=trunk.mean_bgr, image_size=cfg.image_size, crop_size=cfg.crop_size,
                              crops=cfg.test_crops)
    ten = cfg.test_crops == "ten"
    accuracy, _ = evaluate_images(lambda x: {"fc8": net(x)}, ["fc8"], test, batch_size=cfg.test_batch_size,
                                  workers=workers, device=device, amp=cfg.amp, rank=rank, world=world_size,
                                  progress=progress, extra_view=4 if ten else None)  # ten_crops' view 4: centre
    main, center = accuracy["fc8"], accuracy.get("fc8@view4")
    scores_path = None
    if rank == 0:
        from eval.probes.linear import model_stamp
        from eval.probes.outputs import write_scores
        from eval.probes.provenance import nonlinear_stamp
        from jigsawpp.engine.plots import plot_training_curves
        from jigsawpp.io import save_state_dict_file, write_json_atomic

        stamp = nonlinear_stamp(cfg, dataset=dataset, counts={"train": len(train.samples), "val": len(val.samples),
                                                              "classes": num_classes},
                                model=model_stamp(model_dir, trunk),
                                trained_layers=net.trained_layers, device=device, world_size=world_size,
                                iterations=result.iterations)
        data = {"kind": "nonlinear_classifier", "dataset": dataset, "test_crops": cfg.test_crops,
                "top1": {cfg.freeze_upto: main.top1}, "top5": {cfg.freeze_upto: main.top5}, "count": main.count,
                "provenance": stamp}
        if center is not None:
            data["center_crop"] = {"top1": {cfg.freeze_upto: center.top1}, "top5": {cfg.freeze_upto: center.top5}}
        scores_path = write_scores(out, data)
        write_json_atomic(out / "config.json", cfg.to_dict())
        save_state_dict_file({k: v.detach().cpu() for k, v in net.net.state_dict().items()},
                             out / "model.safetensors", metadata={"format": "CaffeAlexNet, Caffe layer names"})
        if (out / "train_log.jsonl").is_file():
            plot_training_curves(out / "train_log.jsonl", out / "learning_curve.png", keys=("loss", "acc"),
                                 title=f"nonlinear classifier ({cfg.freeze_upto} frozen)")
    barrier()
    return NonlinearResult(out, main, center, result.iterations, scores_path, time.perf_counter() - start)
