"""Measured numbers beside the paper's (``jigsawpp verify``): which Table 3 cell a result belongs to, and how its
protocol differs from the paper's.

The model folder's manifest names the paper row (``jigsawpp convert RELEASE.zip`` writes ``paper.method``); each
result folder's ``scores.json`` carries a provenance stamp (`eval.detection.provenance`) that decides the column:
a test-time image pyramid is the paper's multi-scale ("MS") detection column, a single test scale its "SS" column.
Deviations from the paper's protocol (Fast R-CNN at 150K iterations, lr / 10 every 50K, the released selective-search
proposals, 11-point VOC07 AP) are listed with every row so that no number is compared silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAPER_DETECTION_PROTOCOL", "VerifyRow", "paper_method_of", "verify"]

# What the paper's detection numbers were produced with (reference_protocols §2b; jigsawpp.paper docstring).
PAPER_DETECTION_PROTOCOL = {"iterations": 150_000, "lr_stepsize": 50_000, "base_lr": 0.001,
                            "proposals": "selective_search_mat"}


@dataclass(frozen=True)
class VerifyRow:
    table: str
    column: str
    measured: float | None
    paper: float | None
    protocol: str
    deviations: tuple[str, ...]
    source: str

    @property
    def difference(self) -> float | None:
        if self.measured is None or self.paper is None:
            return None
        return self.measured - self.paper


def paper_method_of(model_dir: str | os.PathLike[str]) -> str | None:
    """The paper row of a converted model, from its manifest (None when the manifest does not say)."""
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; --model must be a folder written by `jigsawpp convert`.")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    paper = manifest.get("paper") or {}
    release = manifest.get("release") or {}
    return paper.get("method") or release.get("paper_method")


def _detection_row(scores_path: Path, paper_row: dict | None) -> VerifyRow:
    data = json.loads(scores_path.read_text(encoding="utf-8"))
    stamp = (data.get("provenance") or {}).get("fast_rcnn") or {}
    measured = data.get("map_11point")
    measured = None if measured is None else 100.0 * measured  # the paper reports percentages
    column = "detection_ms" if stamp.get("test_pyramid") else "detection_ss"
    from eval.detection.provenance import deviations as detection_deviations

    deviations = detection_deviations(stamp)  # from the stamp's preset and from the paper's protocol
    paper = None if paper_row is None else paper_row.get(column)
    return VerifyRow(table="table3", column=column, measured=measured, paper=paper,
                     protocol=stamp.get("key", "unknown"), deviations=tuple(deviations), source=str(scores_path))


def verify(model_dir: str | os.PathLike[str], results: Sequence[str | os.PathLike[str]], *,
           method: str | None = None) -> tuple[str | None, list[VerifyRow]]:
    """(paper method, one row per result folder or scores.json) for a converted model."""
    from jigsawpp.paper import paper_numbers

    method = method or paper_method_of(model_dir)
    table3 = paper_numbers(method).get("table3") if method else None
    rows = []
    for item in results:
        path = Path(item)
        scores = path if path.is_file() else path / "scores.json"
        if not scores.is_file():
            raise FileNotFoundError(f"{scores} does not exist; pass the --out folder of `jigsawpp eval detection` "
                                    "or a scores.json written by `jigsawpp eval score-detections`.")
        rows.append(_detection_row(scores, table3))
    return method, rows
