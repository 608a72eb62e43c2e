"""Probe rows of `jigsawpp verify`: the right paper table and cell, and every protocol deviation listed."""

from __future__ import annotations

import json

import pytest

from eval.probes.config import LinearProbeConfig, NonlinearConfig
from eval.verify import VerifyError, verify
from jigsawpp.convert import model_record


def _model(tmp_path, method="CC+Jigsaw++", name="model"):
    model = tmp_path / name
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": method}}))
    return model


def _result(tmp_path, name, data):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "scores.json").write_text(json.dumps(data))
    return folder


def test_linear_rows_beside_tables_4_and_5(tmp_path):
    model = _model(tmp_path)
    stamp = {"key": "linear/bilinear", "config": LinearProbeConfig().to_dict(), "cache": None,
             "model": model_record(model)}
    imagenet = _result(tmp_path, "in", {"kind": "linear_probe", "dataset": "imagenet",
                                        "top1": {"conv1": 18.0, "conv5": 33.0}, "provenance": stamp})
    places = _result(tmp_path, "pl", {"kind": "linear_probe", "dataset": "places205", "top1": {"conv3": 36.0},
                                      "provenance": stamp})
    method, rows = verify(model, [imagenet, places])
    assert method == "CC+Jigsaw++"
    assert [(r.table, r.column, r.paper) for r in rows] == [("table4", "conv1", 18.9), ("table4", "conv5", 32.2),
                                                            ("table5", "conv3", 36.2)]
    assert rows[1].difference == 33.0 - 32.2
    devs = rows[0].deviations
    assert len(devs) == 2 and devs[0].startswith("solver schedule chosen") and "Resize sampling grid" in devs[1]
    other = _model(tmp_path, name="other")  # results of another model are refused
    (other / "manifest.json").write_text(json.dumps({"paper": {"method": "Jigsaw++"}}))
    with pytest.raises(VerifyError, match="not from --model"):
        verify(other, [imagenet])


def test_linear_deviations_are_listed(tmp_path):
    config = LinearProbeConfig(max_iter=500, resize="avgpool", amp="bf16").to_dict()
    result = _result(tmp_path, "r", {"kind": "linear_probe", "dataset": "folder", "top1": {"conv2": 50.0},
                                     "provenance": {"config": config, "cache": {"train_views": 2}}})
    _, rows = verify(_model(tmp_path), [result])
    text = " | ".join(rows[0].deviations)
    assert "does not record which model" in text  # this stamp has no model record
    assert rows[0].paper is None and rows[0].table == "-"
    for part in ("dataset 'folder'", "average pooling", "max_iter 500 (protocol default: 140000)",
                 "2 fixed random crop+mirror", "bf16 autocast"):
        assert part in text, part


def test_nonlinear_row_is_marked_unverified(tmp_path):
    config = NonlinearConfig(freeze_upto="conv3", max_iter=1000).to_dict()
    model = _model(tmp_path, "Jigsaw++")
    result = _result(tmp_path, "nl", {"kind": "nonlinear_classifier", "dataset": "imagenet", "top1": {"conv3": 50.0},
                                      "provenance": {"config": config, "model": model_record(model)}})
    _, rows = verify(model, [result])
    assert (rows[0].table, rows[0].column, rows[0].paper) == ("table6", "conv3", 50.3)
    assert rows[0].deviations[0].startswith("unverified protocol")
    assert any("max_iter 1000 (protocol default: 350000)" in d for d in rows[0].deviations)
