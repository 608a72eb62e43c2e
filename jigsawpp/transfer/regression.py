"""The "[37]" baseline of Table 3: knowledge transfer by feature regression instead of cluster classification.

Paper §5: "Knowledge distillation where we train a student network to regress conv4-5 layers of the teacher
network"; Table 3 row "[37]+vgg-Jigsaw++" (teacher: the Jigsaw++ VGG16). Nothing else is published. Our choices,
recorded in the output's config.json:
- student: the stride-4 CaffeNet conv layers (conv1-conv5, what is transferred), fillers and solver as the CC
  training (`jigsawpp.transfer.train.CCConfig`, BVLC CaffeNet recipe), same images and augmentation;
- targets: the teacher's conv4 and conv5 (conv4_3 and conv5_3 for VGG16) on the same crop, each max-pooled to the
  paper's feature grid (5 x 5 for an AlexNet teacher, 4 x 4 for VGG16; adaptive max pooling), divided by their
  root-mean-square over the first `calibration` batches so both layers weigh alike;
- prediction: the student's conv4 / conv5, max-pooled to the same grid, through a 1 x 1 convolution to the teacher's
  channels (dropped after training; FitNets-style regressors);
- loss: the sum over the two layers of Caffe's EuclideanLoss, 1 / (2 N) sum ||prediction - target||^2, divided by
  the number of values per image (a per-element mean, so its scale does not depend on the grid).

Output: as the CC training (config.json, train_log.jsonl, curves.png, checkpoints/, stamp.json) with NAME.zip holding
the student's conv layers and a conv-only deploy (`jigsawpp convert` reads it; no pseudo-labels).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from jigsawpp.transfer.teacher import Teacher
from jigsawpp.transfer.train import BVLC_NET, BVLC_SOLVER, CCConfig

STUDENT_BLOBS = ("conv4", "conv5")


def teacher_blob_pair(teacher_blobs: list[str]) -> tuple[str, str]:
    for pair in (("conv4", "conv5"), ("conv4_3", "conv5_3")):
        if all(b in teacher_blobs for b in pair):
            return pair
    raise ValueError(f"the teacher has no conv4/conv5 (or conv4_3/conv5_3) blobs; it has {teacher_blobs}.")


class Regressor(nn.Module):
    """Student conv layers plus one 1 x 1 regressor per tapped layer; forward returns the pooled predictions."""

    def __init__(self, student: nn.Module, channels: dict[str, int], grid: int) -> None:
        super().__init__()
        self.student = student
        self.pool = nn.AdaptiveMaxPool2d(grid)
        student_channels = {"conv4": 384, "conv5": 256}
        self.regress = nn.ModuleDict({blob: nn.Conv2d(student_channels[blob], channels[target], 1)
                                      for blob, target in zip(STUDENT_BLOBS, channels)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        blobs = self.student.blobs(x, STUDENT_BLOBS)
        return {blob: self.regress[blob](self.pool(blobs[blob])) for blob in STUDENT_BLOBS}


@dataclass(frozen=True)
class RegressionResult:
    out: Path
    release_zip: Path
    iterations: int
    seconds: float


def train_regression(teacher: Teacher, images, out: str | os.PathLike[str], *,
                     config: CCConfig | None = None, grid: int | None = None, calibration: int = 10,
                     name: str = "regression_alexnet", device: torch.device | str | None = None,
                     overwrite: bool = False) -> RegressionResult:
    """Train the student AlexNet to regress the teacher's pooled conv4/conv5 on `images` (a
    `jigsawpp.transfer.store.ImageList`) and write DIR (see the module docstring). Load the teacher with its conv5
    as `blob` (`load_teacher(..., blob="conv5")`) so that both layers are available. Re-running resumes."""
    from jigsawpp.data import ImageDataset, caffe_transform
    from jigsawpp.engine.distributed import barrier, is_main, resolve_device, world
    from jigsawpp.engine.loop import DatasetSource, train_loop
    from jigsawpp.engine.plots import plot_training_curves
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs
    from jigsawpp.engine.stamp import environment_stamp
    from jigsawpp.io import write_json_atomic
    from jigsawpp.models import AlexNetConfig, CaffeAlexNet
    from jigsawpp.outputs import prepare_output_dir
    from jigsawpp.transfer.network import caffenet_init_, solver_multipliers
    from jigsawpp.transfer.release_out import write_release_zip

    config = config or CCConfig()
    start = time.perf_counter()
    out = Path(out)
    device = resolve_device(str(device) if device else None)
    rank, size = world()
    if is_main():
        prepare_output_dir(out, overwrite=overwrite, what="feature-regression training", resume=True)
    barrier()
    pair = teacher_blob_pair(list(teacher.blob_names))
    shapes = {blob: teacher.blob_shape_of(blob, config.crop) for blob in pair}
    if grid is not None and grid < 1:
        raise ValueError(f"grid {grid}: the pooled target grid must be at least 1 (the paper's: 5 for an AlexNet "
                         "teacher, 4 for VGG16).")
    grid = grid or (4 if shapes[pair[0]][0] == 512 else 5)
    student = CaffeAlexNet(AlexNetConfig(input_size=config.crop, fc6=None, fc7=None, num_classes=None))
    generator = torch.Generator().manual_seed(config.seed)
    caffenet_init_(student, generator=generator, init=config.init)
    model = Regressor(student, {blob: shapes[blob][0] for blob in pair}, grid)
    with torch.no_grad():  # regressors: CaffeNet's gaussian 0.01, bias 0 (no published choice)
        for conv in model.regress.values():
            conv.weight.copy_(torch.empty_like(conv.weight).normal_(0.0, 0.01, generator=generator))
            conv.bias.zero_()
    model.to(device)
    teacher.tap.to(device).eval()
    transform = caffe_transform(mean_bgr=teacher.mean_bgr, resize=(config.resize, config.resize), crop=config.crop,
                                train=True, mirror=config.mirror)
    dataset = ImageDataset(images.samples(), transform, seed=config.seed)
    source = DatasetSource(dataset, batch_size=config.batch_size // size, seed=config.seed, workers=config.workers,
                           pin_memory=device.type == "cuda")
    pool = nn.AdaptiveMaxPool2d(grid)
    scales = _calibrate(teacher, pair, dataset, pool, batches=calibration, batch_size=config.test_batch,
                        device=device)

    def loss_fn(net: nn.Module, batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            targets = teacher.blobs(batch.images, pair)
        predictions = net(batch.images)
        terms = {}
        for blob, target_blob in zip(STUDENT_BLOBS, pair):
            target = pool(targets[target_blob].float()) / scales[target_blob]
            diff = predictions[blob].float() - target
            terms[f"loss_{blob}"] = (diff * diff).sum() / (2 * diff.shape[0] * diff[0].numel())
        return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}

    optimizer = CaffeSGD(param_specs(model, multipliers=_prefixed(solver_multipliers(config.init))),
                         momentum=config.momentum, weight_decay=config.weight_decay)
    lr = LRPolicy("step", config.base_lr, gamma=config.gamma, stepsize=config.stepsize)
    fingerprint = hashlib.sha256(repr((images.sha256(), teacher.identity)).encode()).hexdigest()
    record = {"config": asdict(config), "teacher": teacher.identity, "targets": list(pair), "grid": grid,
              "target_rms": scales, "calibration_batches": calibration, "solver": BVLC_SOLVER, "net": BVLC_NET,
              "loss": "sum over conv4, conv5 of EuclideanLoss / values per image", "images": len(images)}
    from jigsawpp.engine.checkpoint import latest_checkpoint

    if is_main() and latest_checkpoint(out) is None:  # a resume keeps the record of the run it continues
        write_json_atomic(out / "config.json", record)
    result = train_loop(model=model, optimizer=optimizer, lr=lr, source=source, loss_fn=loss_fn, out_dir=out,
                        max_iters=config.max_iter, snapshot_iters=config.snapshot, config=asdict(config) | {
                            "grid": grid, "targets": list(pair)}, fingerprint=fingerprint, device=device,
                        amp=config.amp, progress=config.progress, desc="feature regression",
                        display=config.display, seed=config.seed, runtime_keys=set(config.RUNTIME))
    zip_path = out / f"{name}.zip"
    if is_main():
        plot_training_curves(out / "train_log.jsonl", out / "curves.png", keys=("loss_conv4", "loss_conv5"),
                             title="feature regression ([37] baseline)")
        write_release_zip(zip_path, model=student.cpu(), name=name, labels={},
                          description=f"feature regression of {teacher.description} ([37] baseline)\n"
                                      f"solver: {BVLC_SOLVER}\n")
        write_json_atomic(out / "stamp.json", {**record, "environment": environment_stamp(device),
                                               "iterations": result.iterations, "release_zip": zip_path.name})
    barrier()
    return RegressionResult(out, zip_path, result.iterations, time.perf_counter() - start)


def _prefixed(multipliers: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    return {f"student.{name}": value for name, value in multipliers.items()}


@torch.no_grad()
def _calibrate(teacher: Teacher, pair, dataset, pool, *, batches: int, batch_size: int, device) -> dict[str, float]:
    """Root-mean-square of each pooled target over the first `batches` batches (centre crops, fixed order)."""
    total = {blob: 0.0 for blob in pair}
    count = 0
    eval_view = torch.utils.data.Subset(dataset, range(min(len(dataset), batches * batch_size)))
    for images, _, _ in torch.utils.data.DataLoader(eval_view, batch_size=batch_size):
        blobs = teacher.blobs(images.to(device), pair)
        for blob in pair:
            total[blob] += float(pool(blobs[blob].float()).pow(2).mean()) * len(images)
        count += len(images)
    scales = {blob: (total[blob] / count) ** 0.5 for blob in pair}
    zero = [b for b, v in scales.items() if v == 0]
    if zero:
        raise ValueError(f"the teacher's {zero} are zero on the calibration images; is the teacher trained?")
    return scales
