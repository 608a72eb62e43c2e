"""The output-folder policy: refusals name the folder and the flag, partial folders of killed runs go away,
staged folders appear only when complete, and files get the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from jigsawpp.io import save_state_dict_file, write_json_atomic
from jigsawpp.outputs import OutputDirError, partial_path, prepare_output_dir, staged_output


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_prepare_refuses_non_empty_unless_overwrite_or_resume(tmp_path):
    out = tmp_path / "run"
    assert prepare_output_dir(out, overwrite=False, what="probe output") == out and out.is_dir()
    prepare_output_dir(out, overwrite=False, what="probe output")  # empty: fine
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(OutputDirError, match=r"probe output: .*run exists and is not empty.*--overwrite"):
        prepare_output_dir(out, overwrite=False, what="probe output")
    # a resumable command continues only a folder that holds an earlier run (its run record or checkpoints)
    with pytest.raises(OutputDirError, match=r"probe output: .*run is not empty and holds no earlier run to resume "
                                             r"\(none of config.json, .*checkpoints.*--overwrite"):
        prepare_output_dir(out, overwrite=False, what="probe output", resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written beside the user's file
    for marker in ("config.json", "checkpoints", "permutations.bin"):
        run = tmp_path / f"run_{marker}"
        run.mkdir()
        (run / marker).mkdir() if marker == "checkpoints" else (run / marker).write_text("{}")
        (run / "train_log.jsonl").write_text("")
        prepare_output_dir(run, overwrite=False, what="probe output", resume=True)
        assert (run / "train_log.jsonl").is_file()
    prepare_output_dir(out, overwrite=True, what="probe output", resume=True)
    assert out.is_dir() and not any(out.iterdir())


def test_prepare_refuses_files(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputDirError, match="a_file is a file"):
        prepare_output_dir(tmp_path / "a_file", overwrite=True, what="out")
    with pytest.raises(OutputDirError, match="inside .*a_file, which is a file"):
        prepare_output_dir(tmp_path / "a_file" / "sub" / "out", overwrite=True, what="out")


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "release"
    dead = partial_path(out, _dead_pid())
    live = partial_path(out, os.getppid())
    for folder in (dead, live):
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"...")
    prepare_output_dir(out, overwrite=False, what="out")
    assert not dead.exists() and live.is_dir()


def test_staged_output_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "converted"
    with pytest.raises(RuntimeError, match="boom"), staged_output(out, overwrite=False) as staging:
        (staging / "a.txt").write_text("1")
        raise RuntimeError("boom")
    assert not out.exists() and not staging.exists()
    with staged_output(out, overwrite=False) as staging:
        assert staging.name == f".converted.partial-{os.getpid()}" and not out.exists()
        (staging / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1" and not staging.exists()
    with pytest.raises(OutputDirError, match="--overwrite"), staged_output(out, overwrite=False):
        pass
    with staged_output(out, overwrite=True) as staging:
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]  # no staging or old copies left


def test_outputs_get_the_users_umask(tmp_path):
    import torch

    previous = os.umask(0o027)
    try:
        with staged_output(tmp_path / "out", overwrite=False) as staging:
            write_json_atomic(staging / "manifest.json", {"a": 1})
            save_state_dict_file({"w": torch.zeros(2)}, staging / "model.safetensors")
        made = prepare_output_dir(tmp_path / "train", overwrite=False, what="out")
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == 0o750 and mode(made) == 0o750
    assert mode(tmp_path / "out" / "manifest.json") == 0o640
    assert mode(tmp_path / "out" / "model.safetensors") == 0o640
