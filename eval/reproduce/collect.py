"""Everything a report shows about a reproduce run, read from its folder alone.

``RUN/reproduce.json`` lists the jobs; each job folder's ``scores.json`` holds the measured numbers and the
protocol's provenance stamp; ``RUN/status/<job>.json`` the state and run time; ``RUN/model/manifest.json`` the paper
row. The comparison with the paper and every protocol deviation come from `eval.verify.verify`, run on each job's
``scores.json`` exactly as ``jigsawpp verify`` runs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.reproduce.jobs import JOBS, Job
from eval.reproduce.plan import MODEL_COPY, read_plan_record
from eval.reproduce.runner import is_complete, read_status
from eval.verify import VerifyRow
from jigsawpp.outputs import process_alive

__all__ = ["Cell", "JobResult", "RunSummary", "collect_run", "protocol_stamp"]


# One paper cell of the report: the measured number (percent) beside the paper's and how the protocol differed;
# exactly what `jigsawpp verify` prints as a row.
Cell = VerifyRow


@dataclass(frozen=True)
class JobResult:
    name: str
    job: Job | None  # None: a job this version does not register (the run was made by another version)
    folder: Path
    state: str  # done, failed, running, interrupted (its process is gone), not started
    complete: bool
    status: dict[str, Any] | None
    settings: dict[str, Any]
    scores: dict[str, Any] | None
    stamp: dict[str, Any] | None
    cells: tuple[Cell, ...]
    verify_error: str | None
    log: Path | None  # train_log.jsonl with records
    last_log: dict[str, Any] | None  # its last record (iteration, loss, lr, ...)
    figures: tuple[Path, ...]

    @property
    def title(self) -> str:
        return self.job.title if self.job is not None else self.name


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    record: dict[str, Any]
    method: str | None
    scale: str
    paper: dict[str, dict[str, float | None]]  # jigsawpp.paper.paper_numbers(method)
    jobs: tuple[JobResult, ...]
    skipped: dict[str, str]

    def cells(self, table: str) -> dict[str, Cell]:
        """{column: cell} of `table` over all jobs (a later job's cell wins a column measured twice)."""
        return {c.column: c for j in self.jobs for c in j.cells if c.table == table}


def protocol_stamp(scores: dict[str, Any]) -> dict[str, Any] | None:
    """The protocol's provenance stamp inside a ``scores.json`` (the dict carrying ``config``), None if absent."""
    provenance = scores.get("provenance")
    if not isinstance(provenance, dict):
        return None
    for candidate in (provenance, *(v for v in provenance.values() if isinstance(v, dict))):
        if "config" in candidate and isinstance(candidate["config"], dict):
            return candidate
    return None


def _verify_cells(run_dir: Path, scores_path: Path, method: str | None) -> tuple[tuple[Cell, ...], str | None]:
    """`eval.verify.verify`'s rows for one result; on any error no rows and the error's text (the report shows it:
    a result verify cannot read must not stop the report of the others)."""
    from eval.verify import verify

    try:
        _, rows = verify(run_dir / MODEL_COPY.parent, [scores_path], method=method)
    except Exception as exc:  # noqa: BLE001 - shown in the report
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return (), f"{type(exc).__name__}: {text}"
    return tuple(Cell(r.table, r.column, r.measured, r.paper, r.protocol, tuple(r.deviations), str(r.source),
                      bool(getattr(r, "comparable", True))) for r in rows), None


def _own_cells(job: Job, scores: dict[str, Any] | None, paper: dict[str, dict[str, float | None]],
               error: str | None) -> tuple[Cell, ...]:
    """The job's declared cells when verify gave none: the headline number of its scores.json (percent), the
    paper's number, and verify's error as the deviation."""
    value = (scores or {}).get(job.headline) if job.headline is not None else None
    measured = None if value is None else 100.0 * value
    deviations = (f"not verified: {error}",) if error else ()
    return tuple(Cell(job.table, c, measured, (paper.get(job.table) or {}).get(c), "", deviations, "")
                 for c in job.columns)


def _figures(folder: Path, job: Job | None) -> tuple[Path, ...]:
    if job is None:
        return ()
    found: list[Path] = []
    for pattern in job.figures:
        found += sorted(p for p in folder.glob(pattern) if p.is_file())[:job.max_images]
    return tuple(found)


def _log(folder: Path) -> Path | None:
    log = folder / "train_log.jsonl"
    return log if log.is_file() and log.stat().st_size else None


def _last_record(log: Path | None) -> dict[str, Any] | None:
    if log is None:
        return None
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def _collect_job(run_dir: Path, record: dict[str, Any], name: str, method: str | None,
                 paper: dict[str, dict[str, float | None]]) -> JobResult:
    job = JOBS.get(name)
    folder = run_dir / name
    status = read_status(run_dir, name)
    scores_path = folder / (job.scores if job is not None else "scores.json")
    scores = json.loads(scores_path.read_text(encoding="utf-8")) if scores_path.is_file() else None
    complete = job is not None and is_complete(run_dir, record, name)
    cells: tuple[Cell, ...] = ()
    error = None
    if scores is not None:
        cells, error = _verify_cells(run_dir, scores_path, method)
    if not cells and job is not None:  # no result yet, or one verify cannot read
        cells = _own_cells(job, scores, paper, error)
    state = (status or {}).get("state", "not started")
    if state == "running" and not process_alive((status or {}).get("pid")):
        state = "interrupted"  # its process was killed; the next `jigsawpp reproduce` resumes it
    log = _log(folder)
    return JobResult(name=name, job=job, folder=folder, state=state, complete=complete, status=status,
                     settings=record["jobs"][name]["settings"], scores=scores,
                     stamp=protocol_stamp(scores) if scores is not None else None, cells=cells, verify_error=error,
                     log=log, last_log=_last_record(log), figures=_figures(folder, job))


def collect_run(run_dir: str | os.PathLike[str]) -> RunSummary:
    """Read a reproduce run folder.

    Raises:
        FileNotFoundError: `run_dir` is not a reproduce run (no ``reproduce.json``).
    """
    from eval.reproduce import protocols  # noqa: F401  (registers the jobs)
    from jigsawpp.paper import paper_numbers

    run = Path(run_dir)
    record = read_plan_record(run)
    method = (record.get("model") or {}).get("paper_method")
    paper = paper_numbers(method) if method else {}
    jobs = tuple(_collect_job(run, record, name, method, paper) for name in record.get("jobs", {}))
    return RunSummary(run_dir=run, record=record, method=method, scale=record.get("scale", "paper"), paper=paper,
                      jobs=jobs, skipped=dict(record.get("skipped") or {}))
