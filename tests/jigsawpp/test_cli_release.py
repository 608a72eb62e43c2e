"""`jigsawpp info`, `jigsawpp convert RELEASE.zip` and `jigsawpp export` through click (conv-only stand-in zip)."""

from __future__ import annotations

import zipfile

import pytest
from click.testing import CliRunner

from jigsawpp.cli import main
from jigsawpp.fixtures import make_release_zip


@pytest.fixture()
def release_zip(tmp_path, conv_caffemodel):
    return make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout="split", label_format="tsv",
                            caffemodel=conv_caffemodel)["path"]


def test_info_explains_what_it_found(release_zip):
    result = CliRunner().invoke(main, ["info", str(release_zip)])
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in ("release: jigsawpp_acc = CC+Jigsaw++", "deploy candidates (best first):",
                     "1. release/prototxt/deploy.prototxt [fits]", "solver", "tab-separated",
                     "transfer_conv1s4 (FOR TRANSFER, conv1 stride 4)", "convertible:"):
        assert expected in text, expected


def test_convert_release_then_export(tmp_path, release_zip):
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(main, ["convert", str(release_zip), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "transfer_conv1s4 [for transfer]" in result.output and "pseudo_labels/train.npz" in result.output
    assert (out / "transfer_conv1s4" / "model.onnx").is_file()
    result = runner.invoke(main, ["export", "--model", str(out), "--out", str(tmp_path / "again.onnx")])
    assert result.exit_code == 0, result.output
    assert "second input 259x259" in result.output and "provider:" in result.output
    result = runner.invoke(main, ["convert", str(release_zip), "--out", str(out)])
    assert result.exit_code == 1 and "pass --overwrite" in result.output and "Traceback" not in result.output


def test_convert_argument_rules(tmp_path, release_zip):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "give a RELEASE.zip, or both --prototxt and --caffemodel" in result.output
    result = runner.invoke(main, ["convert", str(release_zip), "--prototxt", str(release_zip), "--out", "o"])
    assert result.exit_code == 2 and "not both" in result.output


def test_unsafe_zip_is_a_clean_error(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../../escape.prototxt", "x")
    result = CliRunner().invoke(main, ["convert", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "member '../../escape.prototxt' escapes the archive folder" in result.output
    assert not (tmp_path / "out").exists()
