"""The frozen paper tables and the release page table agree with each other (a transcription check)."""

from __future__ import annotations

import pytest

from jigsawpp import paper


@pytest.mark.parametrize("name", sorted(paper.RELEASES))
def test_release_rows_match_table3_multiscale_detection(name):
    model = paper.RELEASES[name]
    row = paper.TABLE3.row(model.paper_method)
    assert row is not None, model.paper_method
    assert row["detection_ms"] == model.detection_map


def test_exactly_one_release_without_cluster_classification():
    assert [m.file for m in paper.RELEASES.values() if not m.cluster_classification] == ["jigsawpp"]


def test_paper_numbers_collects_every_table():
    numbers = paper.paper_numbers("CC+vgg-Jigsaw++")
    assert set(numbers) == {"table3", "table4", "table5", "table6"}
    assert numbers["table3"]["classification"] == 72.5
    assert numbers["table6"]["fc7"] == 27.9
    assert paper.paper_numbers("CC+Context-ColorDrop") == {"table3": {
        "classification": 67.9, "detection_ss": 52.8, "detection_ms": 53.4, "segmentation": None}}


def test_table_rows_have_one_value_per_column():
    for table in paper.TABLES.values():
        for row in table.rows:
            assert len(row.values) == len(table.columns), (table.name, row.method)
