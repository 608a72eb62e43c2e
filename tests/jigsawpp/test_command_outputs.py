"""The output policy of convert and export: atomic, the user's umask, stale partials of killed runs removed,
one --overwrite switch; and the CLI's clean-up of folders a refused command created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import caffe_import
from jigsawpp.cli import main
from jigsawpp.cli.common import tidy_on_failure
from jigsawpp.outputs import partial_path

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
"""


@pytest.fixture()
def tiny(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(NET)
    weights = tmp_path / "tiny.caffemodel"
    caffe_import.save_caffemodel(caffe_import.load(deploy, seed=1), weights)
    return deploy, weights


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_convert_files_follow_the_umask_and_stale_partials_go(tmp_path, tiny, umask_027):
    deploy, weights = tiny
    out = tmp_path / "out"
    stale = partial_path(out, _dead_pid())
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    result = CliRunner().invoke(main, ["convert", "--prototxt", str(deploy), "--caffemodel", str(weights),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.prototxt", "out", "tiny.caffemodel"]
    for name in ("model.safetensors", "deploy.prototxt", "manifest.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    assert out.stat().st_mode & 0o777 == 0o750
    # --overwrite replaces a finished conversion, and only then
    again = CliRunner().invoke(main, ["convert", "--prototxt", str(deploy), "--caffemodel", str(weights),
                                      "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    again = CliRunner().invoke(main, ["convert", "--prototxt", str(deploy), "--caffemodel", str(weights),
                                      "--out", str(out), "--overwrite"])
    assert again.exit_code == 0, again.output


def test_export_appears_only_complete_and_checked(tmp_path, tiny, umask_027, monkeypatch):
    deploy, weights = tiny
    out = tmp_path / "sub" / "m.onnx"
    args = ["export", "--model", str(deploy), "--caffemodel", str(weights), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]
    first = out.read_bytes()
    assert CliRunner().invoke(main, args).exit_code == 1 and out.read_bytes() == first
    # a failed parity check writes nothing at --out and keeps the rejected file aside
    import caffe_import as ci

    class Failing:
        worst_rel_err = 1.0

        def passed(self) -> bool:
            return False

    monkeypatch.setattr(ci, "check_onnx", lambda *_a, **_k: Failing())
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 1 and "onnxruntime differs from PyTorch" in result.output
    assert out.read_bytes() == first and (out.parent / "m.onnx.rejected" / "m.onnx").is_file()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_tidy_on_failure_removes_only_what_it_created_and_left_empty(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), tidy_on_failure(tmp_path / "new" / "deep" / "out", kept):
        (tmp_path / "new" / "deep" / "out").mkdir(parents=True)
        raise RuntimeError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    with pytest.raises(RuntimeError), tidy_on_failure(tmp_path / "run"):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / "iter_1").write_text("resume from me")
        raise RuntimeError("late failure")
    assert (tmp_path / "run" / "checkpoints" / "iter_1").is_file()


def test_the_demo_bar_is_labelled_with_the_running_step_and_counts_finished_ones():
    import io

    from tqdm import tqdm

    from jigsawpp.cli.common import StepProgress

    with tqdm(total=3, file=io.StringIO()) as bar:
        progress = StepProgress(bar, 3)
        seen = []
        for message in ("zip", "  sub 1", "  sub 2", "convert", "detect", "  fine-tuning"):
            progress(message)
            seen.append((bar.n, bar.desc.removesuffix(": "), (bar.postfix or "").removeprefix(", ")))
    assert seen == [(0, "demo 1/3: zip", ""), (0, "demo 1/3: zip", "sub 1"), (0, "demo 1/3: zip", "sub 2"),
                    (1, "demo 2/3: convert", ""), (2, "demo 3/3: detect", ""), (2, "demo 3/3: detect", "fine-tuning")]


def test_release_conversion_follows_the_umask_and_stale_partials_go(tmp_path, conv_caffemodel, umask_027):
    """`convert RELEASE.zip` builds its folder through the same staging as every command: the user's umask (not
    mkdtemp's 0700), partial folders of killed runs removed, a non-empty --out refused before the zip is read."""
    from jigsawpp.fixtures import make_release_zip

    zipped = make_release_zip(tmp_path / "release.zip", "conv", caffemodel=conv_caffemodel, n_labels=20, seed=3)
    release = zipped["path"]
    out = tmp_path / "converted"
    stale = partial_path(out, _dead_pid())
    stale.mkdir()
    result = CliRunner().invoke(main, ["convert", str(release), "--out", str(out), "--no-onnx"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.stat().st_mode & 0o777 for p in folders} == {0o750}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}
    again = CliRunner().invoke(main, ["convert", str(release), "--out", str(out), "--no-onnx"])
    assert again.exit_code == 1 and "--overwrite" in again.output
