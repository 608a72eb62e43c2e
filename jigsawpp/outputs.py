"""One output-folder policy for every command.

- An existing non-empty folder is never written into unless the user says so: ``--overwrite`` replaces it, and
  commands that resume (training) accept their own earlier folder (``resume=True``).
- A path under an existing *file* is refused before any work starts.
- Commands that produce a finished folder in one go build it as a sibling ``.NAME.partial-<pid>`` and rename it into
  place at the end (`staged_output`), so a killed run never leaves a half-written NAME; the partial folders of
  killed runs (their process is gone) are removed the next time that output is prepared.
- Everything is created with the user's umask (no ``mkdtemp``/``mkstemp`` 0700/0600 modes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputDirError", "check_output_dir", "clean_stale_partials", "partial_path", "prepare_output_dir",
           "process_alive", "staged_output"]


class OutputDirError(FileExistsError):
    """An output path that cannot be used as it is (the message names it and what to do)."""


def partial_path(path: Path, pid: int | None = None) -> Path:
    """The staging sibling of `path` used by process `pid` (default: this one)."""
    return path.parent / f".{path.name}.partial-{os.getpid() if pid is None else pid}"


def process_alive(pid: object) -> bool:
    """Whether `pid` (an int; anything else is no process) names a running process, this one or another user's."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_partials(path: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.NAME.partial-<pid>`` siblings of `path` whose process no longer runs; returns what was removed."""
    path = Path(path)
    prefix = f".{path.name}.partial-"
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        suffix = entry.name[len(prefix):]
        if suffix.isdigit() and process_alive(int(suffix)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _refuse_file_ancestors(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{what}: {path} is a file, not a folder; choose another output folder.")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputDirError(f"{what}: {path} would be inside {parent}, which is a file; choose another "
                                     "output folder.")
            break


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


# What a resumable command writes into its folder before its first iteration (its run record, its checkpoints, the
# pretext run's permutation set): a non-empty folder without any of them is someone else's (a dataset, photos,
# notes) and is never written into.
RUN_MARKERS = ("config.json", "provenance.json", "stamp.json", "scores.json", "reproduce.json", "checkpoints",
               "permutations.bin")


def prepare_output_dir(path: str | os.PathLike[str], *, overwrite: bool, what: str, resume: bool = False,
                       markers: tuple[str, ...] = RUN_MARKERS) -> Path:
    """Make `path` ready to be written in place and return it (created with its parents).

    Args:
        overwrite: an existing non-empty folder is emptied (the user asked to start over).
        what: what the folder is for, e.g. "detection output" (used in messages).
        resume: accept an existing non-empty folder as it is (a resumable command continuing its own run), if
            it holds one of `markers` (default `RUN_MARKERS`). `overwrite` wins over `resume`.
    Raises:
        OutputDirError: `path` is a file, lies under a file, or is a non-empty folder without `overwrite`, and
            without `resume` or any of `markers`.
    """
    path = Path(path)
    _refuse_file_ancestors(path, what)
    clean_stale_partials(path)
    if _non_empty(path):
        if overwrite:
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        elif not resume:
            raise OutputDirError(f"{what}: {path} exists and is not empty; choose another folder or pass "
                                 "--overwrite to replace it.")
        elif not any((path / name).exists() for name in markers):
            raise OutputDirError(f"{what}: {path} is not empty and holds no earlier run to resume (none of "
                                 f"{', '.join(markers)}); choose another folder or pass --overwrite to replace "
                                 "its content.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _move_into_place(staging: Path, path: Path) -> None:
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool, what: str = "output") -> Path:
    """Refuse, before any work, what `staged_output` would refuse: `path` under a file, or a non-empty folder
    without `overwrite`. Writes nothing.

    Raises:
        OutputDirError: as `prepare_output_dir`.
    """
    path = Path(path)
    _refuse_file_ancestors(path, what)
    if _non_empty(path) and not overwrite:
        raise OutputDirError(f"{what}: {path} exists and is not empty; choose another folder or pass --overwrite "
                             "to replace it.")
    return path


@contextlib.contextmanager
def staged_output(path: str | os.PathLike[str], *, overwrite: bool, what: str = "output") -> Iterator[Path]:
    """Build an output folder atomically: yields an empty ``.NAME.partial-<pid>`` sibling of `path`, renamed to
    `path` when the block succeeds (replacing it if `overwrite`) and removed when it raises.

    Raises:
        OutputDirError: as `prepare_output_dir`, checked before the block runs.
    """
    path = check_output_dir(path, overwrite=overwrite, what=what)
    clean_stale_partials(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_path(path)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
