"""Measured numbers beside the paper's (``jigsawpp verify``): which table cell a result belongs to, whether it is a
result of the model it is compared for, and how its protocol differs from the paper's.

A result is a ``scores.json`` (or the folder holding it). Its kind (`result_kind`: the file's ``kind``, or its
stamp's protocol name; a detection result has neither) selects a `ResultKind` in `RESULT_KINDS`: the function that
turns it into `VerifyRow` s and where its provenance stamp sits. Other protocols add rows without touching this
module's logic: they write a ``rows(scores_path, data, method) -> list[VerifyRow]`` function in their own module
and add one entry ``kind: ResultKind("package.module:function")`` to `RESULT_KINDS` (imported only when such a
result is verified).

Checks made for every result, before any number is shown:

* the model: every stamp records ``model`` (or ``init.model``) ``= jigsawpp.convert.model_record(model_dir)``, the
  sha256 of the converted model's manifest.json. A result of another model is refused; a result without the record
  is shown with a deviation saying that it cannot be checked.
* the method: ``--method`` (or the manifest's paper row) must be a row of the paper's tables (`jigsawpp.paper`).

For detection, the model folder's manifest names the paper row (``jigsawpp convert RELEASE.zip`` writes
``paper.method``); the stamp (`eval.detection.provenance`) decides the Table 3 column: a test-time image pyramid is
the multi-scale ("MS") column, a single test scale the "SS" one. Deviations from the paper's protocol (Fast R-CNN
at 150K iterations, lr / 10 every 50K, the released selective-search proposals, 11-point VOC07 AP) are listed with
every row, and a result on anything but the full VOC2007 test set is marked "not comparable to the paper" (no
difference is computed).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "PAPER_DETECTION_PROTOCOL",
    "RESULT_KINDS",
    "VOC2007_TEST_IMAGES",
    "VOC2007_TEST_POSITIVES",
    "ResultKind",
    "VerifyError",
    "VerifyRow",
    "known_methods",
    "paper_method_of",
    "result_kind",
    "verify",
]

# What the paper's detection numbers were produced with (reference_protocols §2b; jigsawpp.paper docstring).
PAPER_DETECTION_PROTOCOL = {"iterations": 150_000, "lr_stepsize": 50_000, "base_lr": 0.001,
                            "proposals": "selective_search_mat"}

# The full VOC2007 test set (VOCdevkit 2007, ImageSets/Main/test.txt): 4,952 images. Its objects without the
# difficult flag per class, which the devkit counts as positives (npos), as printed in the "gts" column of
# mmdetection's VOC2007 test evaluation (mmdet eval_map); they sum to 12,032. A scores.json records these counts
# (``per_class.<class>.n_pos``), so any subset or other set is recognised even where the image count is not recorded.
VOC2007_TEST_IMAGES = 4952
VOC2007_TEST_POSITIVES = {
    "aeroplane": 285, "bicycle": 337, "bird": 459, "boat": 263, "bottle": 469, "bus": 213, "car": 1201, "cat": 358,
    "chair": 756, "cow": 244, "diningtable": 206, "dog": 489, "horse": 348, "motorbike": 325, "person": 4528,
    "pottedplant": 480, "sheep": 242, "sofa": 239, "train": 282, "tvmonitor": 308,
}
NOT_COMPARABLE = "not comparable to the paper"


class VerifyError(ValueError):
    """Results that cannot be placed beside the paper's numbers for this model (the message says what to do)."""


@dataclass(frozen=True)
class VerifyRow:
    """One measured number beside the paper's. `comparable` is False when it was measured on other data than the
    paper's number (then no difference is computed)."""

    table: str
    column: str
    measured: float | None
    paper: float | None
    protocol: str
    deviations: tuple[str, ...]
    source: str
    comparable: bool = True

    @property
    def difference(self) -> float | None:
        if self.measured is None or self.paper is None or not self.comparable:
            return None
        return self.measured - self.paper


RowBuilder = Callable[[Path, dict, "str | None"], "list[VerifyRow]"]


@dataclass(frozen=True)
class ResultKind:
    """How to verify one kind of result.

    Attributes:
        rows: a function or ``"module:function"`` (imported when needed), called as ``rows(scores_path, data,
            method) -> list[VerifyRow]``; with `paper_table` set, as ``rows(scores_path, data, paper_row) ->
            VerifyRow | None`` with the method's row of that paper table (the convention of eval.classification
            and eval.segmentation).
        stamp_path: the keys leading to the provenance stamp inside the scores.json.
        paper_table: see `rows`.
    """

    rows: RowBuilder | str
    stamp_path: tuple[str, ...] = ("provenance",)
    paper_table: str | None = None

    def builder(self) -> RowBuilder:
        function = self.rows
        if isinstance(function, str):
            module, _, name = function.partition(":")
            function = getattr(importlib.import_module(module), name)
        if self.paper_table is None:
            return function
        table = self.paper_table

        def one_row(scores_path: Path, data: dict, method: str | None) -> list[VerifyRow]:
            from jigsawpp.paper import paper_numbers

            row = function(scores_path, data, paper_numbers(method).get(table) if method else None)
            return [] if row is None else [row]

        return one_row

    def stamp(self, data: dict) -> dict:
        node: Any = data
        for key in self.stamp_path:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}


def known_methods() -> list[str]:
    """Every row name of the paper's tables, in table order."""
    from jigsawpp.paper import TABLES

    names: dict[str, None] = {}
    for table in TABLES.values():
        names.update((row.method, None) for row in table.rows)
    return list(names)


def paper_method_of(model_dir: str | os.PathLike[str]) -> str | None:
    """The paper row of a converted model, from its manifest (None when the manifest does not say)."""
    from jigsawpp.convert import model_manifest_path

    path = model_manifest_path(model_dir)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    paper = manifest.get("paper") or {}
    release = manifest.get("release") or {}
    return paper.get("method") or release.get("paper_method")


# ---- detection (Table 3) ----------------------------------------------------------------------------------------


def _voc2007_test_check(data: dict, stamp: dict | None = None) -> str | None:
    """None when `data` (a detection scores.json) was scored on the full VOC2007 test set, else why it was not.
    The image count comes from the scores (``n_images``) or the stamp (``data.test.images``, eval.detection)."""
    split = (data.get("provenance") or {}).get("split")
    if split not in (None, "test"):
        return f"scored on split {split!r}, not the VOC2007 test set: {NOT_COMPARABLE}"
    n_images = data.get("n_images")
    if n_images is None:
        n_images = (((stamp or {}).get("data") or {}).get("test") or {}).get("images")
    if n_images is not None and n_images != VOC2007_TEST_IMAGES:
        return f"test set of {n_images} images, not the full VOC2007 test ({VOC2007_TEST_IMAGES:,}): {NOT_COMPARABLE}"
    per_class = data.get("per_class") or {}
    positives = {c: (per_class.get(c) or {}).get("n_pos") for c in VOC2007_TEST_POSITIVES}
    if any(v is None for v in positives.values()):
        return f"the scores do not say which test set they are on (no per-class n_pos): {NOT_COMPARABLE}"
    if positives != VOC2007_TEST_POSITIVES:
        total, full = sum(positives.values()), sum(VOC2007_TEST_POSITIVES.values())
        differ = [c for c in VOC2007_TEST_POSITIVES if positives[c] != VOC2007_TEST_POSITIVES[c]]
        return (f"test set with {total:,} non-difficult objects ({len(differ)} classes differ, e.g. {differ[0]} "
                f"{positives[differ[0]]} vs {VOC2007_TEST_POSITIVES[differ[0]]}), not the full VOC2007 test "
                f"({VOC2007_TEST_IMAGES:,} images, {full:,} objects): {NOT_COMPARABLE}")
    return None


def detection_rows(scores_path: Path, data: dict, method: str | None) -> list[VerifyRow]:
    """The Table 3 detection row of a Fast R-CNN result (`eval.detection.pipeline`'s scores.json)."""
    from jigsawpp.paper import paper_numbers

    stamp = (data.get("provenance") or {}).get("fast_rcnn") or {}
    measured = data.get("map_11point")
    measured = None if measured is None else 100.0 * measured  # the paper reports percentages
    column = "detection_ms" if stamp.get("test_pyramid") else "detection_ss"
    from eval.detection.provenance import deviations as detection_deviations

    deviations = detection_deviations(stamp)  # from the stamp's preset and from the paper's protocol
    test_set = _voc2007_test_check(data, stamp)
    if test_set is not None:
        deviations.insert(0, test_set)
    paper_row = paper_numbers(method).get("table3") if method else None
    return [VerifyRow(table="table3", column=column, measured=measured,
                      paper=None if paper_row is None else paper_row.get(column),
                      protocol=stamp.get("key", "unknown"), deviations=tuple(deviations), source=str(scores_path),
                      comparable=test_set is None)]


# kind of result -> how to verify it. The kind is the scores.json's "kind", else its stamp's protocol name
# (provenance.protocol.protocol), else "detection" (the first protocol, whose scores.json has neither).
RESULT_KINDS: dict[str, ResultKind] = {
    "detection": ResultKind(detection_rows, ("provenance", "fast_rcnn")),
    "voc07_classification": ResultKind("eval.classification.provenance:verify_row", ("provenance", "protocol"),
                                       paper_table="table3"),
    "fcn_segmentation": ResultKind("eval.segmentation.provenance:verify_row", ("provenance", "protocol"),
                                   paper_table="table3"),
    "linear_probe": ResultKind("eval.probes.verify_rows:probe_rows"),
    "nonlinear_classifier": ResultKind("eval.probes.verify_rows:probe_rows"),
}


def result_kind(data: dict) -> str | None:
    """The `RESULT_KINDS` key of a scores.json (None when it says nothing we recognise)."""
    if isinstance(data.get("kind"), str):
        return data["kind"]
    stamp = (data.get("provenance") or {}).get("protocol")
    if isinstance(stamp, dict) and isinstance(stamp.get("protocol"), str):
        return stamp["protocol"]
    return "detection" if "map_11point" in data else None


# ---- the core ---------------------------------------------------------------------------------------------------


def _check_method(method: str | None, model_dir: str | os.PathLike[str], *, given: bool) -> None:
    if method is None:
        return
    known = known_methods()
    if method not in known:
        where = "--method" if given else f"the manifest of {model_dir} (paper.method)"
        raise VerifyError(f"{where} names {method!r}, which is not a row of the paper's tables; known rows: "
                          f"{', '.join(known)}.")


def _model_check(stamp: dict, model_sha: str, model_dir: str | os.PathLike[str], scores: Path) -> str | None:
    """Refuse a result of another model; a deviation line when the result does not say which model it came from.
    The record (`jigsawpp.convert.model_record`) sits at the stamp's ``model`` or ``init.model``."""
    record = stamp.get("model") or (stamp.get("init") or {}).get("model") or {}
    recorded = record.get("manifest_sha256")
    if recorded is None:
        return ("the result does not record which model it came from (no model manifest sha256 in its stamp), so "
                "it cannot be checked against --model")
    if recorded != model_sha:
        raise VerifyError(
            f"{scores}: these results were computed from the model in {record.get('folder', '?')!r} (manifest sha256 "
            f"{recorded[:12]}...), not from --model {model_dir} (manifest sha256 {model_sha[:12]}...); pass the "
            "--model folder the results came from, or run the evaluation again with this model.")
    return None


def _scores_file(item: str | os.PathLike[str]) -> Path:
    path = Path(item)
    scores = path if path.is_file() else path / "scores.json"
    if not scores.is_file():
        raise FileNotFoundError(f"{scores} does not exist; pass the --out folder of a `jigsawpp eval` command or a "
                                "scores.json it wrote.")
    return scores


def _read_scores(scores: Path) -> dict:
    try:
        data = json.loads(scores.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"{scores}: not a scores.json written by `jigsawpp eval` ({exc}).") from None
    if not isinstance(data, dict):
        raise VerifyError(f"{scores}: not a scores.json written by `jigsawpp eval` (not a JSON object).")
    return data


def verify(model_dir: str | os.PathLike[str], results: Sequence[str | os.PathLike[str]], *,
           method: str | None = None) -> tuple[str | None, list[VerifyRow]]:
    """(paper method, the rows of every result folder or scores.json) for a converted model.

    Raises:
        VerifyError: an unknown method, a result of another model, or a file that is no result we know.
        FileNotFoundError: the model's manifest or a scores.json is missing.
    """
    from jigsawpp.convert import manifest_sha256, model_manifest_path

    model_sha = manifest_sha256(model_manifest_path(model_dir))
    given = method is not None
    method = method or paper_method_of(model_dir)
    _check_method(method, model_dir, given=given)
    rows: list[VerifyRow] = []
    for item in results:
        scores = _scores_file(item)
        data = _read_scores(scores)
        kind_name = result_kind(data)
        kind = RESULT_KINDS.get(kind_name) if kind_name is not None else None
        if kind is None:
            raise VerifyError(f"{scores}: result kind {kind_name!r} is not one verify knows ({', '.join(RESULT_KINDS)})"
                              "; pass a scores.json written by `jigsawpp eval`.")
        model_note = _model_check(kind.stamp(data), model_sha, model_dir, scores)
        for row in kind.builder()(scores, data, method):
            if model_note is not None:
                row = replace(row, deviations=(model_note, *row.deviations))
            rows.append(row)
    return method, rows
