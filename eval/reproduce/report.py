"""The reproduce report: ``RUN/report.md``, ``RUN/report.html`` (self-contained) and ``RUN/report.json``, built from
the run folder's files alone (`eval.reproduce.collect`), so ``jigsawpp report RUN`` rebuilds it at any time; and the
side-by-side comparison of several runs in the form of the paper's Table 3.

A run's report holds: the paper's rows for the model beside the measured numbers with their differences (with bar
charts; for Tables 4-6 the probe bars per layer), every protocol deviation ``jigsawpp verify`` finds, the state and
run time of every job, per job its per-class table, its figures (PR curves, segmentation overlays, sample detections)
and training curve, and the provenance stamps (software versions, GPU, seeds, the full stamp).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.reproduce.collect import Cell, JobResult, RunSummary, collect_run
from eval.reproduce.document import (
    Bullets,
    Code,
    Details,
    Document,
    Figure,
    Heading,
    Table,
    Text,
    to_html,
    to_markdown,
)
from eval.reproduce.figures import cached, paper_bars, training_curve

__all__ = ["ReportFiles", "comparison_document", "report_data", "run_document", "write_comparison", "write_report"]

COLUMN_TITLES = {"classification": "Class. (mAP)", "detection_ss": "Det. SS (mAP)", "detection_ms": "Det. MS (mAP)",
                 "segmentation": "Segm. (mIU)"}
ENVIRONMENT_KEYS = (("jigsawpp", "jigsawpp"), ("python", "Python"), ("torch", "torch"), ("torchvision", "torchvision"),
                    ("numpy", "numpy"), ("opencv", "OpenCV"), ("device", "device"), ("gpu", "GPU"), ("cuda", "CUDA"),
                    ("cudnn", "cuDNN"), ("world_size", "processes"))
DASH = "–"
NOT_COMPARABLE = "n/c"
# captions of the protocols' figures, by file name or folder (the relative path follows)
FIGURE_CAPTIONS = {"pr_curves.png": "precision/recall curves per class, ", "iu.png": "IU per class, ",
                   "detections": "sample detections, ", "overlays": "predicted labels over the image, ",
                   "layer_accuracy.png": "top-1 per layer beside the paper, "}


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    json: Path


def _num(value: float | None, fmt: str = ".1f") -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _difference(cell: Cell | None) -> str:
    """The measured minus the paper's number, or `NOT_COMPARABLE` when verify says the data differ."""
    if cell is not None and not cell.comparable and cell.measured is not None and cell.paper is not None:
        return NOT_COMPARABLE
    return _num(None if cell is None else cell.difference, "+.1f")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _tables(summary: RunSummary) -> list[str]:
    from jigsawpp.paper import TABLES

    used = {c.table for j in summary.jobs for c in j.cells}
    return [t for t in TABLES if t in used]


def _table_columns(summary: RunSummary, table: str) -> list[str]:
    from jigsawpp.paper import TABLES

    used = {c.column for j in summary.jobs for c in j.cells if c.table == table}
    return [c for c in TABLES[table].columns if c in used]


def _title(column: str) -> str:
    return COLUMN_TITLES.get(column, column)


def _table_name(table: str) -> str:
    """``table3`` -> ``Table 3``."""
    return f"Table {table[5:]}" if table.startswith("table") else table


def _bars(path: Path, columns: list[str], series: list, title: str) -> Path | None:
    """`paper_bars` of percentages per column, redrawn only when its numbers or title changed."""
    return cached(path, [columns, series, title],
                  lambda p: paper_bars([_title(c) for c in columns], series, p, ylabel="%", title=title))


def _paper_section(doc: Document, summary: RunSummary, figures: Path) -> None:
    from jigsawpp.paper import TABLES

    doc.add(Heading(2, "The paper's numbers beside the measured ones"))
    if summary.method is None:
        doc.add(Text("The model's manifest names no paper row (pass --method to jigsawpp reproduce); measured "
                     "numbers are shown without the paper's.", "note"))
    for table in _tables(summary):
        columns = _table_columns(summary, table)
        cells = summary.cells(table)
        paper = summary.paper.get(table) or {}
        measured = [cells[c].measured if c in cells else None for c in columns]
        paper_values = [paper.get(c) for c in columns]
        diffs = [_difference(cells.get(c)) for c in columns]
        doc.add(Heading(3, f"{_table_name(table)}: {TABLES[table].caption}"), Table(
            header=("", *(_title(c) for c in columns)),
            rows=((f"paper ({summary.method or 'unknown row'})", *(_num(v) for v in paper_values)),
                  ("measured", *(_num(v) for v in measured)), ("difference", *diffs)),
            strong_rows=frozenset({1})))
        if NOT_COMPARABLE in diffs:
            doc.add(Text(f"{NOT_COMPARABLE}: not comparable, measured on other data than the paper's number (see "
                         "the deviations).", "note"))
        series = [("paper", paper_values), ("measured", measured)]
        title = f"{_table_name(table)}: {summary.method or 'model'}, paper vs measured"
        png = _bars(figures / f"{table}_paper_vs_measured.png", columns, series, title)
        doc.add(Figure(png, f"{_table_name(table)}: the paper's row and the measured numbers"))


def _deviation_section(doc: Document, summary: RunSummary) -> None:
    doc.add(Heading(2, "Protocol deviations (jigsawpp verify)"))
    items = []
    if summary.scale == "tiny":
        items.append("run: --scale tiny, a smoke test with iterations, batches and image sizes cut; not a reproduction")
    for target, values in sorted((summary.record.get("overrides") or {}).items()):
        items.append(f"run: --set {target}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items())))
    for j in summary.jobs:
        where: dict[str, list[Cell]] = {}  # a deviation of several cells (a probe's layers) is listed once
        for c in j.cells:
            for d in c.deviations:
                where.setdefault(d, []).append(c)
        for d, cells in where.items():
            tables = sorted({_table_name(c.table) for c in cells})
            items.append(f"{j.name} ({', '.join(tables)}, {', '.join(_title(c.column) for c in cells)}): {d}")
    doc.add(Bullets(tuple(items)) if items else Text("none: every result followed the paper's protocol."))


def _jobs_section(doc: Document, summary: RunSummary) -> None:
    doc.add(Heading(2, "Jobs"))
    rows = []
    for j in summary.jobs:
        status = j.status or {}
        iterations = (j.stamp or {}).get("iterations")
        rows.append((j.name, j.state + ("" if j.complete or j.state != "done" else " (settings changed)"),
                     str(iterations) if iterations is not None else DASH, _duration(status.get("seconds")),
                     str(status.get("attempts", 0)), str(status.get("device") or DASH),
                     (j.stamp or {}).get("key", DASH)))
    doc.add(Table(("job", "state", "iterations", "run time", "attempts", "device", "protocol"), tuple(rows),
                  numeric=False))
    failed = [f"{j.name}: {(j.status or {}).get('error')}" for j in summary.jobs if j.state == "failed"]
    if failed:
        doc.add(Text("Failed jobs: " + "; ".join(failed), "warning"))
    if summary.skipped:
        doc.add(Heading(3, "Not run"), Bullets(tuple(f"{k}: {v}" for k, v in sorted(summary.skipped.items()))))


def _per_class_table(j: JobResult) -> Table | None:
    per_class = (j.scores or {}).get("per_class")
    if not isinstance(per_class, dict) or j.job is None or not j.job.per_class:
        return None
    rows = []
    for name, values in per_class.items():
        cells = []
        for key, _, kind in j.job.per_class:
            v = values.get(key) if isinstance(values, dict) else None
            cells.append(_num(None if v is None else 100.0 * v, ".1f") if kind == "percent" else
                         _num(None if v is None else int(v), "d"))
        rows.append((name, *cells))
    return Table(("class", *(title for _, title, _ in j.job.per_class)), tuple(rows), caption=f"{j.name}: per class")


def _environment(stamp: dict[str, Any] | None) -> dict[str, Any]:
    return (stamp or {}).get("environment") or {}


def _seeds(j: JobResult) -> str:
    config = (j.stamp or {}).get("config") or j.settings.get("config") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(config.items()) if "seed" in k) or DASH


def _job_section(doc: Document, j: JobResult, figures: Path) -> None:
    doc.add(Heading(2, f"{j.name}: {j.title}"))
    for c in j.cells:
        if c.measured is not None:
            protocol = f" Protocol: {c.protocol}." if c.protocol else ""
            doc.add(Text(f"{_table_name(c.table)}, {_title(c.column)}: measured {_num(c.measured)}, paper "
                         f"{_num(c.paper)}, difference {_difference(c)}.{protocol}"))
    if j.scores is None:
        doc.add(Text(f"No scores yet (state: {j.state})." + (f" Error: {(j.status or {}).get('error')}"
                                                               if j.state == "failed" else "")))
        return
    table = _per_class_table(j)
    if table is not None:
        doc.add(table)
    for path in j.figures:
        rel = path.relative_to(j.folder).as_posix()
        doc.add(Figure(path, f"{j.name}: {FIGURE_CAPTIONS.get(rel.split('/')[0], '')}{rel}"))
    if j.last_log is not None:
        values = ", ".join(f"{k} {v:.6g}" for k, v in j.last_log.items() if k != "iteration" and isinstance(v, float))
        doc.add(Text(f"Last training log record: iteration {j.last_log.get('iteration')}: {values}."))
    if j.log is not None:
        log = j.log
        png = cached(figures / f"{j.name}_training.png", [j.name, hashlib.sha256(log.read_bytes()).hexdigest()],
                     lambda p: training_curve(log, p, title=f"{j.name}: training loss"))
        if png is not None:
            doc.add(Figure(png, f"{j.name}: training curve (train_log.jsonl)"))
    if j.stamp is not None:
        doc.add(Details(f"{j.name}: provenance stamp", (Code(json.dumps(j.stamp, indent=1, sort_keys=True)),)))


def _provenance_section(doc: Document, summary: RunSummary) -> None:
    doc.add(Heading(2, "Provenance"))
    model = summary.record.get("model") or {}
    doc.add(Text(f"Model: {model.get('dir')} (manifest sha256 {model.get('manifest_sha256')}); paper row: "
                 f"{summary.method or 'unknown'}; scale: {summary.scale}."))
    datasets = summary.record.get("datasets") or {}
    doc.add(Bullets(tuple(f"{k}: {v}" for k, v in datasets.items() if v)))
    rows = []
    for j in summary.jobs:
        env = _environment(j.stamp)
        rows.append((j.name, *(str(env.get(k, DASH)) for k, _ in ENVIRONMENT_KEYS), _seeds(j)))
    doc.add(Table(("job", *(t for _, t in ENVIRONMENT_KEYS), "seeds"), tuple(rows), numeric=False))


def run_document(summary: RunSummary, figures: Path) -> Document:
    """The report of one run; figures it draws go to `figures`."""
    figures.mkdir(parents=True, exist_ok=True)
    model = Path((summary.record.get("model") or {}).get("dir", "model")).name
    doc = Document(f"jigsawpp reproduce: {summary.method or 'unknown paper row'} ({model})")
    if summary.scale == "tiny":
        doc.add(Text("Scale tiny: iterations, batches and image sizes were cut for a smoke test. These numbers test "
                     "the pipeline; they are not a reproduction of the paper.", "warning"))
    _paper_section(doc, summary, figures)
    _deviation_section(doc, summary)
    _jobs_section(doc, summary)
    for j in summary.jobs:
        _job_section(doc, j, figures)
    _provenance_section(doc, summary)
    return doc


def _cell_data(j: JobResult, c: Cell) -> dict[str, Any]:
    return {"job": j.name, "table": c.table, "column": c.column, "measured": c.measured, "paper": c.paper,
            "difference": c.difference, "comparable": c.comparable, "protocol": c.protocol,
            "deviations": list(c.deviations)}


def report_data(summary: RunSummary) -> dict[str, Any]:
    """The report's numbers in machine-readable form (``report.json``)."""
    jobs = {}
    for j in summary.jobs:
        status = j.status or {}
        headline = j.job.headline if j.job is not None else None
        jobs[j.name] = {"title": j.title, "state": j.state, "complete": j.complete,
                        "seconds": status.get("seconds"), "attempts": status.get("attempts"),
                        "interrupted": status.get("interrupted"), "error": status.get("error"),
                        "headline": {"key": headline, "value": (j.scores or {}).get(headline) if headline else None},
                        "per_class": (j.scores or {}).get("per_class"), "iterations": (j.stamp or {}).get("iterations"),
                        "protocol": (j.stamp or {}).get("key"), "last_training_record": j.last_log,
                        "environment": _environment(j.stamp)}
    return {"method": summary.method, "scale": summary.scale, "model": summary.record.get("model"),
            "cells": [_cell_data(j, c) for j in summary.jobs for c in j.cells], "jobs": jobs,
            "skipped": summary.skipped}


def _write(doc: Document, data: dict[str, Any], out: Path) -> ReportFiles:
    from jigsawpp.io import write_json_atomic, write_text_atomic

    md = write_text_atomic(out / "report.md", to_markdown(doc, out))
    page = write_text_atomic(out / "report.html", to_html(doc))
    return ReportFiles(md, page, write_json_atomic(out / "report.json", data))


def write_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> ReportFiles:
    """Build ``report.md``, ``report.html`` and ``report.json`` from the files of `run_dir`, in `out_dir` (default:
    the run folder), with the figures it draws in ``<out_dir>/figures/``."""
    summary = collect_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    return _write(run_document(summary, out / "figures"), report_data(summary), out)


def _label(summary: RunSummary) -> str:
    return summary.run_dir.resolve().name + (" (tiny)" if summary.scale == "tiny" else "")


def _measured_row(s: RunSummary, table: str) -> tuple[str, ...]:
    from jigsawpp.paper import TABLES

    cells = s.cells(table)
    return (f"{s.method or 'unknown'}: measured, {_label(s)}", "",
            *(_num(cells[c].measured) if c in cells else DASH for c in TABLES[table].columns))


def comparison_document(summaries: Sequence[RunSummary], figures: Path, base: Path) -> Document:
    """Several runs in the form of the paper's tables: every paper row, each run's measured row after its model's
    paper row (in bold; runs whose model has no row at the end)."""
    from jigsawpp.paper import TABLES

    figures.mkdir(parents=True, exist_ok=True)
    doc = Document(f"jigsawpp reproduce: {len(summaries)} runs side by side")
    if any(s.scale == "tiny" for s in summaries):
        doc.add(Text("Runs marked (tiny) were smoke tests with cut settings; their numbers are not a reproduction.",
                     "warning"))
    tables = [t for t in TABLES if any(t in _tables(s) for s in summaries)]
    for table in tables:
        spec = TABLES[table]
        rows: list[tuple[str, ...]] = []
        strong: set[int] = set()

        placed = set()
        for row in spec.rows:
            rows.append((row.method, row.ref or "", *(_num(v) for v in row.values)))
            for k, s in enumerate(summaries):
                if s.method == row.method and table in _tables(s):
                    strong.add(len(rows))
                    rows.append(_measured_row(s, table))
                    placed.add(k)
        for k, s in enumerate(summaries):
            if k not in placed and table in _tables(s):
                strong.add(len(rows))
                rows.append(_measured_row(s, table))
        doc.add(Heading(2, f"{_table_name(table)}: {spec.caption}"),
                Table(("method", "ref", *(_title(c) for c in spec.columns)), tuple(rows),
                      strong_rows=frozenset(strong)))
        columns = [c for c in spec.columns if any(c in s.cells(table) for s in summaries)]
        series = [(_label(s), [s.cells(table)[c].measured if c in s.cells(table) else None for c in columns])
                  for s in summaries]
        title = f"{_table_name(table)}: measured, run by run"
        png = _bars(figures / f"{table}_runs.png", columns, series, title)
        doc.add(Figure(png, f"{_table_name(table)}: measured numbers of every run"))
    doc.add(Heading(2, "Runs"))
    rows = []
    for s in summaries:
        deviations = sum(len(c.deviations) for j in s.jobs for c in j.cells)
        done = sum(j.complete for j in s.jobs)
        report = s.run_dir / "report.html"
        rows.append((_label(s), s.method or "unknown", f"{done}/{len(s.jobs)}", str(deviations),
                     Path(os.path.relpath(report, base)).as_posix() if report.is_file() else DASH))
    doc.add(Table(("run", "paper row", "jobs complete", "deviations", "report"), tuple(rows), numeric=False))
    return doc


def write_comparison(run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``report.json`` comparing several runs into `out_dir`."""
    summaries = [collect_run(r) for r in run_dirs]
    out = Path(out_dir)
    doc = comparison_document(summaries, out / "figures", out)
    data = {"runs": {str(s.run_dir): report_data(s) for s in summaries}}
    return _write(doc, data, out)
