"""`jigsawpp transfer run`: teacher features -> k-means -> pseudo-labels -> cluster classification, in one folder,
each stage skipped when its output is complete and was made from the same inputs and options (a changed input is
refused by the stage, naming what changed; `overwrite` redoes everything).

    OUT/features/train/, OUT/features/val/   feature folders (`jigsawpp.transfer.store`)
    OUT/centroids/                           k-means (`jigsawpp.transfer.kmeans`)
    OUT/labels/                              pseudo-labels of train and val (`jigsawpp.transfer.labels`)
    OUT/cc/                                  the CC training and OUT/cc/NAME.zip (`jigsawpp.transfer.train`)
    OUT/run.json                             what each stage did (ran or skipped) and how long it took

The teacher is anything `jigsawpp.transfer.teacher.load_teacher` takes, or "hog" for the CC+HOG baseline (bag of
words of dense HOG, `jigsawpp.transfer.hog`). Under torchrun every process extracts its share of the features and
of the training; clustering and labelling run on rank 0 while the others wait for their result on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jigsawpp.transfer.features import FeatureConfig
from jigsawpp.transfer.hog import HogConfig
from jigsawpp.transfer.kmeans import KMeansConfig
from jigsawpp.transfer.store import ImageList
from jigsawpp.transfer.train import CCConfig

HOG_TEACHER = "hog"


@dataclass(frozen=True)
class TeacherSpec:
    model: str                     # path, random:alexnet, or "hog"
    caffemodel: str | None = None
    blob: str | None = None
    variant: str = "transfer"
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    hog: HogConfig = field(default_factory=HogConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    train: CCConfig = field(default_factory=CCConfig)
    name: str = "cc_alexnet"
    montage: bool = True


@dataclass(frozen=True)
class StageReport:
    name: str
    skipped: bool
    seconds: float
    detail: str


def run_transfer(teacher: TeacherSpec, train_images: ImageList, out: str | Path, *,
                 val_images: ImageList | None = None, config: RunConfig | None = None, device: str | None = None,
                 overwrite: bool = False, say: Callable[[str], None] = lambda _m: None) -> list[StageReport]:
    """Run (or finish) the whole chain into `out`; returns one report per stage."""
    from jigsawpp.engine.distributed import barrier, is_main, resolve_device, world
    from jigsawpp.io import write_json_atomic
    from jigsawpp.transfer.features import ModelFeatures, extract_features
    from jigsawpp.transfer.hog import hog_features
    from jigsawpp.transfer.kmeans import cluster, load_centroids
    from jigsawpp.transfer.labels import label_features
    from jigsawpp.transfer.store import open_features
    from jigsawpp.transfer.teacher import load_teacher
    from jigsawpp.transfer.train import train_cc

    config = config or RunConfig()
    out = Path(out)
    rank, size = world()
    torch_device = resolve_device(device)
    reports: list[StageReport] = []
    splits = {"train": train_images, **({"val": val_images} if val_images is not None else {})}
    model = None
    if teacher.model != HOG_TEACHER:
        model = load_teacher(teacher.model, caffemodel=teacher.caffemodel, blob=teacher.blob,
                             variant=teacher.variant, seed=teacher.seed)
    for split, images in splits.items():
        say(f"features ({split})")
        start = time.perf_counter()
        folder = out / "features" / split
        if model is None:
            if size > 1:
                raise ValueError("the HOG teacher runs in one process (its work is spread over --workers); run "
                                 "`jigsawpp transfer run --teacher hog` without torchrun.")
            result = hog_features(images, folder, config=config.hog, feature_config=config.features,
                                  vocabulary_from=None if split == "train" else out / "features" / "train",
                                  overwrite=overwrite, progress=is_main())
        else:
            result = extract_features(ModelFeatures(model, config.features), images, folder,
                                      config=config.features, device=torch_device, rank=rank, world_size=size,
                                      overwrite=overwrite, progress=is_main(), barrier=barrier)
        reports.append(StageReport(f"features:{split}", result.skipped, time.perf_counter() - start,
                                   f"{result.shape[0]} x {result.shape[1]}"))
    if is_main():
        say("k-means")
        start = time.perf_counter()
        clustered = cluster(open_features(out / "features" / "train"), out / "centroids", config=config.kmeans,
                            overwrite=overwrite)
        reports.append(StageReport("kmeans", clustered.skipped, time.perf_counter() - start,
                                   f"k = {config.kmeans.k}, {clustered.points_used} points"))
        centroids = load_centroids(out / "centroids")
        for split in splits:
            say(f"labels ({split})")
            start = time.perf_counter()
            labelled = label_features(open_features(out / "features" / split), centroids, out / "labels",
                                      split=split, gpus=config.kmeans.gpus, montage=config.montage,
                                      overwrite=overwrite)
            reports.append(StageReport(f"labels:{split}", labelled.skipped, time.perf_counter() - start,
                                       f"{labelled.labels.size} images, {labelled.empty_clusters} empty clusters"))
    else:
        _wait_for_labels(out / "labels", list(splits))
    barrier()
    say("cluster classification")
    start = time.perf_counter()
    description = (f"teacher: {model.description if model is not None else 'bag of words of dense HOG'}; "
                   f"k-means k = {config.kmeans.k} on {len(train_images)} images")
    trained = train_cc(out / "labels", train_images.root, out / "cc", config=config.train, name=config.name,
                       device=str(torch_device), overwrite=overwrite, description=description)
    reports.append(StageReport("train", trained.skipped, time.perf_counter() - start,
                               f"{trained.iterations} iterations -> {trained.release_zip.name}"))
    if is_main():
        write_json_atomic(out / "run.json", {"stages": [vars(r) for r in reports], "teacher": vars(teacher)})
    return reports


def _wait_for_labels(folder: Path, splits: list[str], poll: float = 5.0) -> None:
    """Ranks other than 0 wait on disk (not in a collective, whose timeout a long k-means could exceed)."""
    import json

    manifest = folder / "manifest.json"
    while True:
        if manifest.is_file():
            try:
                done = json.loads(manifest.read_text(encoding="utf-8")).get("splits", {})
            except json.JSONDecodeError:  # being replaced right now
                done = {}
            if all(s in done for s in splits):
                return
        time.sleep(poll)
