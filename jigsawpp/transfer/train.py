"""Stage 4: cluster classification. An AlexNet (CaffeNet layout, conv1 stride 4, fc8 = k) learns to predict the
pseudo-labels; its conv layers are what the paper transfers (§3, Fig. 2d).

The paper gives no solver or data augmentation for this step. We follow the BVLC CaffeNet ImageNet recipe, the
standard way to train this network in Caffe at the time (each value cited in `CCConfig`):
`models/bvlc_reference_caffenet/solver.prototxt@9b89154` (SGD, base_lr 0.01, step x0.1 every 100,000, 450,000
iterations, momentum 0.9, weight decay 0.0005, snapshots every 10,000) and `train_val.prototxt@9b89154` (batch 256,
random 227 crops of the 256 x 256 images and mirroring, the fillers of `jigsawpp.transfer.network`, weights lr/decay
x1/x1 and biases x2/x0, SoftmaxWithLoss). Two recorded deviations: the mean is the mean pixel (104, 117, 123; the
alternative train_val.prototxt lists) instead of the ImageNet mean image, and the TEST pass (BVLC: 1000 x 50 images
every 1000 iterations) runs at every snapshot, so that no extra checkpoints are written.

Output folder DIR: config.json (resolved), train_log.jsonl + curves.png (loss and accuracy on the training
batches), tests.json (top-1/top-5 on the val pseudo-labels at each test), checkpoints/ (exact resume, also under
torchrun), stamp.json, and NAME.zip: the trained net packed like the authors' release zips
(`jigsawpp.transfer.release_out`), which `jigsawpp convert NAME.zip` converts like theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jigsawpp.config_fields import refuse_unknown
from jigsawpp.constants import IMAGENET_MEAN_BGR
from jigsawpp.label_files import PseudoLabels, load_pseudo_labels
from jigsawpp.transfer.network import caffenet_init_, cc_config, solver_multipliers

BVLC_SOLVER = "BVLC/caffe models/bvlc_reference_caffenet/solver.prototxt@9b89154"
BVLC_NET = "BVLC/caffe models/bvlc_reference_caffenet/train_val.prototxt@9b89154"


@dataclass(frozen=True)
class CCConfig:
    """Cluster-classification training; defaults are BVLC's CaffeNet ImageNet recipe (the paper gives none)."""

    base_lr: float = 0.01          # solver.prototxt base_lr
    gamma: float = 0.1             # solver.prototxt gamma (lr_policy "step")
    stepsize: int = 100000         # solver.prototxt stepsize
    max_iter: int = 450000         # solver.prototxt max_iter
    momentum: float = 0.9          # solver.prototxt momentum
    weight_decay: float = 0.0005   # solver.prototxt weight_decay
    snapshot: int = 10000          # solver.prototxt snapshot (also when the TEST pass runs, see the module doc)
    display: int = 20              # solver.prototxt display
    batch_size: int = 256          # train_val.prototxt TRAIN batch_size (all processes together)
    test_batch: int = 50           # train_val.prototxt TEST batch_size
    test_iter: int = 1000          # solver.prototxt test_iter (1000 x 50 = the 50,000 ImageNet val images)
    resize: int = 256              # images warped to 256 x 256 as the ImageNet LMDBs (create_imagenet.sh)
    crop: int = 227                # train_val.prototxt crop_size (random in TRAIN, centre in TEST)
    mirror: bool = True            # train_val.prototxt TRAIN mirror
    fc: int = 4096                 # fc6/fc7 width (CaffeNet); smaller only for quick runs
    init: str = "caffenet"         # train_val.prototxt fillers; "msra" (He) for short runs that must move quickly
    seed: int = 0                  # initialisation, crops, mirrors, order (Caffe's random_seed is unset)
    amp: str = "off"               # run-time: off | bf16 | fp16
    workers: int = 8               # run-time: image decoding processes
    progress: bool = True          # run-time

    RUNTIME = ("max_iter", "snapshot", "display", "amp", "workers", "progress", "test_iter")

    @classmethod
    def from_overrides(cls, overrides: dict[str, object]) -> CCConfig:
        refuse_unknown(cls, overrides, what="training option(s)")
        return cls(**overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CCResult:
    out: Path
    release_zip: Path
    iterations: int
    seconds: float
    tests: list[dict]              # {"iteration", "top1", "top5", "images"} per TEST pass
    k: int
    skipped: bool = False          # the folder already held this finished run


def read_labels(folder: str | os.PathLike[str]) -> tuple[dict[str, PseudoLabels], int, str]:
    """({split: labels}, k, fingerprint) from a pseudo-label folder: ours (`jigsawpp transfer label`) or the
    `pseudo_labels/` folder of a `jigsawpp convert` release (the authors' labels). k is the manifest's, else the
    largest label + 1."""
    folder = Path(folder)
    splits = {p.stem: load_pseudo_labels(p) for p in sorted(folder.glob("*.npz"))}
    if "train" not in splits:
        raise FileNotFoundError(f"{folder} has no train.npz; give the --out folder of `jigsawpp transfer label` or "
                                "the pseudo_labels/ folder of a `jigsawpp convert` output.")
    manifest = folder / "manifest.json"
    k = json.loads(manifest.read_text(encoding="utf-8")).get("k") if manifest.is_file() else None
    k = int(k or max(int(s.labels.max()) for s in splits.values()) + 1)
    digest = hashlib.sha256()
    for split, found in splits.items():
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(found.labels, dtype=np.int32).tobytes())
        for name in found.names:
            digest.update(str(name).encode("utf-8") + b"\n")
    return splits, k, digest.hexdigest()


def _samples(labels: PseudoLabels, root: Path, split: str):
    from jigsawpp.data import DatasetLayoutError, LabeledImage

    samples = [LabeledImage(str(root / str(n)), int(y)) for n, y in zip(labels.names, labels.labels)]
    if samples and not Path(samples[0].path).is_file():
        raise DatasetLayoutError(f"the first {split} image {labels.names[0]} is not under {root}; give --data as "
                                 "the folder the pseudo-label paths are relative to.")
    return samples


def _loss(net: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    logits = net(batch.images)
    loss = F.cross_entropy(logits.float(), batch.labels)  # SoftmaxWithLoss, normalised by the batch size
    accuracy = (logits.argmax(1) == batch.labels).float().mean()
    return {"loss": loss, "accuracy": accuracy.detach()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, labels: PseudoLabels, root: Path, *, config: CCConfig, device: torch.device,
             limit: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy of `model` on `labels` (centre crops, TEST phase), split over the ranks; at most
    `limit` images (Caffe's test_iter x batch)."""
    from jigsawpp.data import ImageDataset, caffe_transform
    from jigsawpp.engine.distributed import all_reduce_mean, world

    rank, size = world()
    samples = _samples(labels, root, "val")[:limit]
    transform = caffe_transform(mean_bgr=IMAGENET_MEAN_BGR, resize=(config.resize, config.resize),
                                crop=config.crop)
    dataset = torch.utils.data.Subset(ImageDataset(samples, transform), range(rank, len(samples), size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.test_batch, num_workers=config.workers)
    model.eval()
    top1 = top5 = seen = 0
    for images, targets, _ in loader:
        logits = model(images.to(device)).float().cpu()
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += int((best[:, 0] == targets).sum())
        top5 += int((best == targets[:, None]).any(1).sum())
        seen += len(targets)
    top1, top5, seen = all_reduce_mean([top1, top5, seen], device)
    return {"top1": top1 / max(seen, 1e-12), "top5": top5 / max(seen, 1e-12), "images": int(round(seen * size))}


def train_cc(labels_dir: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
             config: CCConfig | None = None, name: str = "cc_alexnet", device: torch.device | str | None = None,
             overwrite: bool = False, description: str = "",
             val_data: str | os.PathLike[str] | None = None) -> CCResult:
    """Train the CC AlexNet on `labels_dir`'s train split (images under `data`), TEST on its val split when present
    (images under `val_data`, default `data`; the authors' lists name val images relative to the val folder), and
    write the release zip (see the module docstring). Re-running the same command resumes; under torchrun each
    process takes its share of every batch of `config.batch_size`."""
    from jigsawpp.data import ImageDataset, caffe_transform
    from jigsawpp.engine.distributed import barrier, is_main, resolve_device, world
    from jigsawpp.engine.loop import DatasetSource, train_loop
    from jigsawpp.engine.plots import plot_training_curves
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs
    from jigsawpp.engine.stamp import environment_stamp
    from jigsawpp.io import write_json_atomic
    from jigsawpp.models import CaffeAlexNet
    from jigsawpp.outputs import prepare_output_dir
    from jigsawpp.transfer.release_out import write_release_zip

    config = config or CCConfig()
    start = time.perf_counter()
    out, root = Path(out), Path(data)
    val_root = Path(val_data) if val_data is not None else root
    device = resolve_device(str(device) if device else None)
    rank, size = world()
    if config.batch_size % size:
        raise ValueError(f"batch_size {config.batch_size} does not split over {size} processes; choose a multiple.")
    splits, k, fingerprint = read_labels(labels_dir)
    zip_path = out / f"{name}.zip"
    finished = _finished(out, zip_path, config, fingerprint)
    if finished is not None:
        return CCResult(out, zip_path, finished["iterations"], 0.0, finished["tests"], k, skipped=True)
    if is_main():
        prepare_output_dir(out, overwrite=overwrite, what="cluster-classification training", resume=True)
    barrier()
    model = CaffeAlexNet(cc_config(num_classes=k, input_size=config.crop, fc=config.fc))
    caffenet_init_(model, generator=torch.Generator().manual_seed(config.seed), init=config.init)
    model.to(device)
    transform = caffe_transform(mean_bgr=IMAGENET_MEAN_BGR, resize=(config.resize, config.resize),
                                crop=config.crop, train=True, mirror=config.mirror)
    dataset = ImageDataset(_samples(splits["train"], root, "train"), transform, seed=config.seed)
    source = DatasetSource(dataset, batch_size=config.batch_size // size, seed=config.seed, workers=config.workers,
                           pin_memory=device.type == "cuda")
    optimizer = CaffeSGD(param_specs(model, multipliers=solver_multipliers(config.init)), momentum=config.momentum,
                         weight_decay=config.weight_decay)
    lr = LRPolicy("step", config.base_lr, gamma=config.gamma, stepsize=config.stepsize)
    record = {"config": asdict(config), "k": k, "labels": str(labels_dir), "fingerprint": fingerprint,
              "splits": {s: v.count for s, v in splits.items()}, "solver": BVLC_SOLVER, "net": BVLC_NET,
              "architecture": asdict(model.config),
              "mean": "mean pixel BGR (104, 117, 123) instead of the ImageNet mean image (recorded deviation)",
              "test": "TEST pass at every snapshot instead of every 1000 iterations (recorded deviation)"}
    from jigsawpp.engine.checkpoint import latest_checkpoint

    if is_main() and latest_checkpoint(out) is None:  # a resume keeps the record of the run it continues
        write_json_atomic(out / "config.json", record)
    tests: list[dict] = []
    tests_path = out / "tests.json"
    if tests_path.is_file():
        tests = json.loads(tests_path.read_text(encoding="utf-8"))
    result = None
    for stop in _segments(config.snapshot, config.max_iter):
        result = train_loop(model=model, optimizer=optimizer, lr=lr, source=source, loss_fn=_loss, out_dir=out,
                            max_iters=stop, snapshot_iters=config.snapshot, config=asdict(config),
                            fingerprint=fingerprint, device=device, amp=config.amp, progress=config.progress,
                            desc="cluster classification", display=config.display, seed=config.seed,
                            runtime_keys=set(config.RUNTIME))
        if "val" in splits and not any(t["iteration"] == stop for t in tests):
            scores = evaluate(model, splits["val"], val_root, config=config, device=device,
                              limit=config.test_iter * config.test_batch)
            tests.append({"iteration": stop, **scores})
            if is_main():
                write_json_atomic(tests_path, tests)
    assert result is not None
    if is_main():
        plot_training_curves(out / "train_log.jsonl", out / "curves.png", keys=("loss", "accuracy"),
                             title=f"cluster classification, k = {k}")
        about = description or f"cluster classification of {labels_dir} (k = {k})"
        write_release_zip(zip_path, model=model.cpu(), name=name, labels=splits,
                          description=f"{about}\nsolver: {BVLC_SOLVER}\nnet: {BVLC_NET}\n")
        write_json_atomic(out / "stamp.json", {**record, "environment": environment_stamp(device),
                                               "iterations": result.iterations, "tests": tests,
                                               "release_zip": zip_path.name})
    barrier()
    return CCResult(out, zip_path, result.iterations, time.perf_counter() - start, tests, k)


def _finished(out: Path, zip_path: Path, config: CCConfig, fingerprint: str) -> dict | None:
    """The stamp of a finished run of the same labels and (non run-time) options in `out`, else None."""
    stamp = out / "stamp.json"
    if not (stamp.is_file() and zip_path.is_file()):
        return None
    found = json.loads(stamp.read_text(encoding="utf-8"))
    same = {k: v for k, v in asdict(config).items() if k not in CCConfig.RUNTIME or k == "max_iter"}
    before = {k: v for k, v in found.get("config", {}).items() if k in same}
    if found.get("fingerprint") != fingerprint or before != same or found.get("iterations") != config.max_iter:
        return None
    return found


def _segments(snapshot: int, max_iter: int) -> list[int]:
    """Iteration counts after which training pauses for a TEST pass: every snapshot, and the end."""
    stops = list(range(snapshot, max_iter, snapshot))
    return stops + [max_iter]
