"""The registry of evaluations `jigsawpp reproduce` can run: one `Job` per protocol and paper cell(s).

A job says which datasets it needs, how its protocol config is built (the paper's preset, the ``tiny`` smoke-test
scale, the user's strict ``--set`` overrides), how it is run (resumably, in its own sub-folder of the run), where its
``scores.json`` is and which table/column of the paper it fills, how many GPU-hours it is expected to take and how
that estimate was made, and what the report shows of it (per-class fields, figures). Adding a protocol is one
`register_job` call (see `eval.reproduce.protocols`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

__all__ = ["DATASET_OPTIONS", "JOBS", "SCALES", "Datasets", "Estimate", "Job", "JobContext", "dataset_count",
           "register_job", "select_jobs"]

Scale = Literal["paper", "tiny"]
# "paper": every setting as the paper ran it. "tiny": iteration counts, batch and image sizes cut so that the whole
# pipeline runs in seconds on a CPU (a smoke test; every cut is in the protocols' stamps, which verify flags).
SCALES: tuple[str, ...] = ("paper", "tiny")

# the command-line option naming each dataset (messages say which option is missing)
DATASET_OPTIONS: dict[str, str] = {"voc07": "--voc", "voc12": "--voc12", "sbd": "--sbd", "imagenet": "--imagenet",
                                   "places": "--places", "ss_mat": "--ss-mat"}


@dataclass(frozen=True)
class Datasets:
    """Dataset folders given to ``jigsawpp reproduce`` (None: not given)."""

    voc07: Path | None = None     # VOCdevkit or VOCdevkit/VOC2007: detection and classification
    voc12: Path | None = None     # VOC2012 (or VOC2011) with ImageSets/Segmentation: FCN's test set seg11valid
    sbd: Path | None = None       # SBD's "dataset" folder: FCN's training set
    imagenet: Path | None = None  # ImageNet train/ and val/: linear probes (Table 4), nonlinear classifier (Table 6)
    places: Path | None = None    # Places205: linear probes (Table 5)
    ss_mat: Path | None = None    # fast-rcnn's selective-search .mat files: the paper's detection proposals

    def given(self) -> frozenset[str]:
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def to_dict(self) -> dict[str, str | None]:
        return {f.name: (None if (v := getattr(self, f.name)) is None else str(Path(v).absolute()))
                for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Datasets:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown dataset key(s) {unknown}; known: {sorted(known)}.")
        return cls(**{k: None if v is None else Path(v) for k, v in values.items()})


@dataclass(frozen=True)
class Estimate:
    """Expected time of one job on a reference GPU, and how the figure was obtained (sources and arithmetic)."""

    gpu_hours: float
    reference: str  # the GPU the published figures were measured on
    how: str


@dataclass(frozen=True)
class JobContext:
    """What a job's `run` gets: the model, its own output folder, its settings (from the plan), the datasets, the
    device of this process, and a cache folder shared by the run's jobs (e.g. detection proposals)."""

    model_dir: Path
    out_dir: Path
    settings: Mapping[str, Any]
    datasets: Datasets
    device: Any  # torch.device
    progress: bool
    cache_dir: Path


@dataclass(frozen=True)
class Job:
    """One evaluation of the paper.

    Attributes:
        name: sub-folder of the run and the ``--only``/``--set`` key, e.g. ``det_ms``.
        group: family also accepted by ``--only``/``--set`` (``det``, ``cls``, ``seg``, ``linear``, ``nonlinear``).
        title: one line for plans and reports.
        needs: `Datasets` fields that must be given for the job to run.
        table, columns: the paper cells its result fills (`jigsawpp.paper` names).
        build: ``(scale, overrides, datasets) -> settings``: a JSON-ready dict holding the resolved protocol config
            (strict: an unknown override key raises KeyError naming it).
        run: ``(JobContext) -> None``: trains and tests, resuming from the job folder's checkpoints; writes
            ``scores.json`` there (rank 0).
        estimate: ``(settings, datasets) -> Estimate``.
        batch_split: ``settings -> n``: the protocol splits its batch of n over processes, so a job may run on any
            number of GPUs dividing n (1: a single process).
        headline: the ``scores.json`` key of the number the paper reports, a fraction in [0, 1] (None for a job
            whose several numbers only `eval.verify` reads, e.g. one top-1 per layer); shown when verify cannot
            read the result.
        per_class: (``per_class`` field in scores.json, column title, ``"percent"`` for a fraction shown x 100 or
            ``"count"``) for the report's per-class table.
        figures: glob patterns, relative to the job folder, of the figures the report shows (at most
            `max_images` files per pattern).
        available: ``model_dir -> reason or None``: why this model cannot be evaluated by the job (e.g. a column
            that needs fc layers the model lacks); None: it can. The job is then skipped with the reason.
    """

    name: str
    group: str
    title: str
    needs: tuple[str, ...]
    table: str
    columns: tuple[str, ...]
    build: Callable[[str, Mapping[str, Any], Datasets], dict[str, Any]]
    run: Callable[[JobContext], None]
    estimate: Callable[[Mapping[str, Any], Datasets], Estimate]
    batch_split: Callable[[Mapping[str, Any]], int]
    headline: str | None
    per_class: tuple[tuple[str, str, str], ...] = ()
    figures: tuple[str, ...] = ()
    max_images: int = 4
    scores: str = "scores.json"
    available: Callable[[Path], str | None] | None = None

    def missing(self, datasets: Datasets) -> tuple[str, ...]:
        """The options (``--voc`` ...) this job needs that were not given."""
        return tuple(DATASET_OPTIONS[n] for n in self.needs if n not in datasets.given())


JOBS: dict[str, Job] = {}


def register_job(job: Job) -> Job:
    """Add `job` to `JOBS` (in registration order, which is the order jobs run in without ``--gpus``).

    Raises:
        ValueError: a job of that name exists, or the name is also a group name, or a dataset name is unknown.
    """
    if job.name in JOBS:
        raise ValueError(f"a reproduce job named {job.name!r} is registered already.")
    if job.name in {j.group for j in JOBS.values()} or job.group in JOBS:
        raise ValueError(f"job {job.name!r} / group {job.group!r}: job and group names must differ.")
    unknown = [n for n in job.needs if n not in DATASET_OPTIONS]
    if unknown:
        raise ValueError(f"job {job.name!r} needs unknown datasets {unknown}; known: {sorted(DATASET_OPTIONS)}.")
    JOBS[job.name] = job
    return job


def select_jobs(only: Sequence[str] | None) -> list[Job]:
    """The registered jobs named by `only` (job or group names; all when None), in registration order.

    Raises:
        KeyError: a name that is neither a job nor a group (the message lists both).
    """
    if not only:
        return list(JOBS.values())
    groups = {j.group for j in JOBS.values()}
    unknown = [n for n in only if n not in JOBS and n not in groups]
    if unknown:
        raise KeyError(f"--only: unknown job(s) {unknown}; jobs: {', '.join(JOBS)}; groups: "
                       f"{', '.join(sorted(groups))}.")
    wanted = set(only)
    return [j for j in JOBS.values() if j.name in wanted or j.group in wanted]


def dataset_count(path: str | os.PathLike[str] | None, *candidates: str) -> int | None:
    """Lines of the first existing list file ``path/candidate`` (the image count of a split), else None."""
    if path is None:
        return None
    for rel in candidates:
        file = Path(path) / rel
        if file.is_file():
            with open(file, encoding="utf-8", errors="replace") as handle:
                return sum(1 for line in handle if line.strip())
    return None
