"""What a ``jigsawpp reproduce`` run will do, and the record of it that makes re-running resume exactly.

`make_plan` resolves, for the model and the datasets given, every registered job the datasets allow (the others are
skipped with the reason), its settings (paper preset, scale, strict ``--set`` overrides), its process count and its
expected GPU-hours. `write_plan` stores it as ``RUN/reproduce.json`` beside a copy of the model's manifest
(``RUN/model/manifest.json``, so the report finds the paper row from the run folder alone). Writing into an existing
run checks that it is the same model, and that a job already started keeps its settings (only `RESUMABLE_KEYS` may
change, e.g. more iterations) and its process count; jobs not planned before are added.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.reproduce.jobs import JOBS, SCALES, Datasets, Estimate, Job, select_jobs

__all__ = ["PLAN_FILE", "RESUMABLE_KEYS", "Plan", "PlannedJob", "SkippedJob", "make_plan", "parse_overrides",
           "read_plan_record", "settings_digest", "write_plan"]

PLAN_FILE = "reproduce.json"
PLAN_VERSION = 1
MODEL_COPY = Path("model") / "manifest.json"
# settings a started job may change when its command is re-run: the engine resumes from the newest checkpoint with
# them (more iterations, another checkpoint period or log interval, autocast); any other change starts a new protocol
RESUMABLE_KEYS = frozenset({"max_iters", "snapshot_iters", "display", "amp"})


@dataclass(frozen=True)
class PlannedJob:
    name: str
    settings: dict[str, Any]
    processes: int  # GPUs (torchrun processes) the job runs on under --gpus; 1 otherwise
    estimate: Estimate

    @property
    def job(self) -> Job:
        return JOBS[self.name]


@dataclass(frozen=True)
class SkippedJob:
    name: str
    title: str
    reason: str


@dataclass(frozen=True)
class Plan:
    model_dir: Path
    manifest: Path  # the model's manifest.json (`jigsawpp.convert.model_manifest_path`)
    model_sha256: str  # of that file
    method: str | None  # the paper row (jigsawpp.paper) the model is, None when unknown
    datasets: Datasets
    scale: str
    overrides: dict[str, dict[str, Any]]
    jobs: tuple[PlannedJob, ...]
    skipped: tuple[SkippedJob, ...]

    @property
    def gpu_hours(self) -> float:
        return sum(p.estimate.gpu_hours for p in self.jobs)


def settings_digest(settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a job's settings (the status file records what a job completed with)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``JOB.KEY=VALUE`` strings (JOB a job or group name, VALUE JSON or a bare string) -> {JOB: {KEY: value}}.

    Raises:
        ValueError: an item without ``.`` or ``=``.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        job, dot, key = target.partition(".")
        if not eq or not dot or not job.strip() or not key.strip():
            raise ValueError(f"--set {item!r}: expected JOB.KEY=VALUE, e.g. det_ms.max_iters=1000 or cls.amp=\"bf16\".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(job.strip(), {})[key.strip()] = value
    return out


def _processes(job: Job, settings: Mapping[str, Any], gpus_per_job: int) -> int:
    """The largest count <= gpus_per_job that divides the batch the protocol splits over processes."""
    batch = max(1, int(job.batch_split(settings)))
    return max(n for n in range(1, max(1, gpus_per_job) + 1) if batch % n == 0)


def _manifest(model_dir: Path) -> tuple[Path, bytes, dict[str, Any]]:
    """The converted model's manifest.json (a release root's for one of its variant folders), raw and parsed."""
    from jigsawpp.convert import model_manifest_path

    path = model_manifest_path(model_dir)
    raw = path.read_bytes()
    try:
        return path, raw, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not JSON; convert the model again with `jigsawpp convert`.") from None


def make_plan(model_dir: str | os.PathLike[str], datasets: Datasets, *, only: Sequence[str] | None = None,
              scale: str = "paper", overrides: Mapping[str, Mapping[str, Any]] | None = None, gpus_per_job: int = 1,
              method: str | None = None) -> Plan:
    """Resolve every job `only` selects (all by default) for this model and these datasets.

    Raises:
        FileNotFoundError, ValueError: no usable manifest in `model_dir`; a `method` that is no row of the paper.
        KeyError: an unknown job/group in `only` or `overrides`, or an override key its protocol does not have
            (the message names the job and the key).
    """
    from eval.verify import known_methods, paper_method_of

    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}.")
    if method is not None and method not in known_methods():
        raise ValueError(f"--method {method!r} is not a row of the paper's tables; known rows: "
                         f"{', '.join(known_methods())}.")
    model = Path(model_dir)
    manifest_path, _, _ = _manifest(model)
    from jigsawpp.convert import manifest_sha256

    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    groups = {j.group for j in JOBS.values()}
    unknown = sorted(k for k in overrides if k not in JOBS and k not in groups)
    if unknown:
        raise KeyError(f"--set: unknown job(s) {unknown}; jobs: {', '.join(JOBS)}; groups: "
                       f"{', '.join(sorted(groups))}.")
    planned, skipped = [], []
    for job in select_jobs(only):
        missing = job.missing(datasets)
        if missing:
            skipped.append(SkippedJob(job.name, job.title, f"needs {' and '.join(missing)}"))
            continue
        reason = job.available(model) if job.available is not None else None
        if reason is not None:
            skipped.append(SkippedJob(job.name, job.title, reason))
            continue
        mine = {**overrides.get(job.group, {}), **(overrides.get(job.name, {}) if job.name != job.group else {})}
        try:
            settings = job.build(scale, mine, datasets)
        except (KeyError, TypeError, ValueError) as exc:
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise KeyError(f"{job.name}: {text}") from None
        planned.append(PlannedJob(job.name, settings, _processes(job, settings, gpus_per_job),
                                  job.estimate(settings, datasets)))
    return Plan(model_dir=model, manifest=manifest_path, model_sha256=manifest_sha256(manifest_path),
                method=method or paper_method_of(model), datasets=datasets, scale=scale, overrides=overrides,
                jobs=tuple(planned), skipped=tuple(skipped))


def read_plan_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN/reproduce.json`` as a dict.

    Raises:
        FileNotFoundError: `run_dir` is not a reproduce run.
    """
    path = Path(run_dir) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {run_dir} is not a `jigsawpp reproduce --out` folder.")
    return json.loads(path.read_text(encoding="utf-8"))


def _started(run_dir: Path, name: str) -> bool:
    status = run_dir / "status" / f"{name}.json"
    folder = run_dir / name
    return status.is_file() or (folder.is_dir() and any(folder.iterdir()))


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old["config"]) | set(new["config"]))
    changed = [k for k in keys if old["config"].get(k) != new["config"].get(k)]
    if old.get("protocol") != new.get("protocol"):
        changed.insert(0, "protocol")
    return changed


def _merge_jobs(run_dir: Path, old: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    jobs = dict(old.get("jobs", {}))
    for p in plan.jobs:
        before = jobs.get(p.name)
        if before is not None and _started(run_dir, p.name):
            changed = _changed_keys(before["settings"], p.settings)
            fixed = [k for k in changed if k not in RESUMABLE_KEYS]
            if fixed:
                shown = ", ".join(f"{k} {before['settings']['config'].get(k, before['settings'].get(k))!r} -> "
                                  f"{p.settings['config'].get(k, p.settings.get(k))!r}" for k in fixed)
                raise ValueError(f"{run_dir / p.name} was started with other settings ({shown}); re-run with the "
                                 "options it was started with, or choose another --out.")
            if before["processes"] != p.processes:
                raise ValueError(f"{run_dir / p.name} was started on {before['processes']} process(es), this command "
                                 f"gives {p.processes}; a run resumes only on as many (--gpus-per-job).")
        jobs[p.name] = {"settings": p.settings, "processes": p.processes, "estimate": vars(p.estimate)}
    return jobs


def write_plan(run_dir: str | os.PathLike[str], plan: Plan) -> Path:
    """Store `plan` in ``RUN/reproduce.json`` (merged with an earlier one) and copy the model's manifest.

    Raises:
        ValueError: RUN holds a run of another model, or a started job whose settings or process count differ.
    """
    from jigsawpp.io import write_bytes_atomic, write_json_atomic

    run = Path(run_dir)
    old: dict[str, Any] = read_plan_record(run) if (run / PLAN_FILE).is_file() else {}
    if old and old.get("model", {}).get("manifest_sha256") != plan.model_sha256:
        raise ValueError(f"{run} holds a run of another model ({old.get('model', {}).get('dir')}, manifest sha256 "
                         f"{str(old.get('model', {}).get('manifest_sha256'))[:12]}...); choose another --out.")
    if old and old.get("scale") != plan.scale:
        raise ValueError(f"{run} was started with --scale {old.get('scale')}; this command gives --scale "
                         f"{plan.scale}. Re-run with --scale {old.get('scale')} or choose another --out.")
    datasets = {k: v for k, v in (old.get("datasets") or {}).items() if v is not None}
    datasets.update({k: v for k, v in plan.datasets.to_dict().items() if v is not None})
    record = {
        "version": PLAN_VERSION,
        "model": {"dir": str(plan.model_dir.absolute()), "manifest_sha256": plan.model_sha256,
                  "paper_method": plan.method or (old.get("model") or {}).get("paper_method")},
        "scale": plan.scale,
        "datasets": {k: datasets.get(k) for k in Datasets().to_dict()},
        "overrides": {**(old.get("overrides") or {}), **plan.overrides},
        "jobs": _merge_jobs(run, old, plan),
        "skipped": {s.name: s.reason for s in plan.skipped if s.name not in (old.get("jobs") or {})},
    }
    record["skipped"] = {k: v for k, v in record["skipped"].items() if k not in record["jobs"]}
    write_bytes_atomic(run / MODEL_COPY, plan.manifest.read_bytes())  # the same bytes as the model's manifest
    return write_json_atomic(run / PLAN_FILE, record)
