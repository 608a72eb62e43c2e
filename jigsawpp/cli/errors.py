"""How the command line reports a user's mistake: one ``Error:`` line, exit status 1, never a traceback.

Every command runs inside `JigsawppGroup.invoke`, which translates, in one place:

* the project's errors (all subclasses of ValueError: `caffe_import.CaffeImportError`, `jigsawpp.release`'s
  ReleaseError, `jigsawpp.safezip.ArchiveError`, `jigsawpp.data.ImageReadError`, ...) and any ValueError, KeyError
  (with a sentence), ImportError (a missing optional package) or FloatingPointError (a training that diverged)
  raised by the project's own code, whose messages are sentences naming the file, layer or field;
* OSError (a read-only or full disk, a path under a file, a missing file): the path and what to do;

into `click.ClickException`, with the library's keyword names replaced by the flags of the command that ran
(``outputs=[...]`` -> ``--output BLOB``). Exceptions raised by other libraries' code for reasons of their own
(TypeError, RuntimeError, a numpy ValueError, ...) are bugs of ours, not the user's: they keep their traceback so
that they get reported. ``JIGSAWPP_TRACEBACK=1`` shows the traceback of every error.

Warnings are printed as one plain ``Warning: ...`` line on stderr (Python's default format echoes a source line).

Nothing written: every command's ``--out`` runs under `jigsawpp.cli.common.tidy_on_failure`, so a folder that a
failing command created for it (and left without a file) is removed again; commands added by any module get this
when they first run.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

__all__ = ["JigsawppGroup", "TRACEBACK_ENV", "flag_names", "user_message", "warnings_as_lines"]

TRACEBACK_ENV = "JIGSAWPP_TRACEBACK"
_OUR_PACKAGES = ("caffe_import", "jigsawpp", "eval", "prototxt")
_OUR_ROOTS = tuple(str(Path(__file__).resolve().parents[2] / name) + os.sep for name in _OUR_PACKAGES)

# errno -> what the user can do about it
_OS_ADVICE = {
    errno.EACCES: "check the permissions of that path, or choose another location",
    errno.EPERM: "check the permissions of that path, or choose another location",
    errno.EROFS: "choose another location",
    errno.ENOSPC: "the disk is full; free some space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another location",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another location",
    errno.EEXIST: "a file or folder is in the way; choose another location",
    errno.EISDIR: "it is a folder; give a file",
}


def _raised_by_us(exc: BaseException) -> bool:
    """True when the innermost frame of `exc`'s traceback is in the project's own packages."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_OUR_ROOTS)


def _is_ours(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".", 1)[0]
    return module in _OUR_PACKAGES or _raised_by_us(exc)


def _is_sentence(exc: KeyError) -> bool:
    """A KeyError raised with a message (``KeyError("no variant 'x'; available: ...")``), not a bare missing key."""
    return len(exc.args) == 1 and isinstance(exc.args[0], str) and " " in exc.args[0].strip()


# The staging names of atomic writes (jigsawpp.io.atomic_path: ``.NAME.<pid>.<hex>.tmp``; jigsawpp.outputs:
# ``.NAME.partial-<pid>``): a failure to create one is reported under the name the user asked for.
_STAGING_NAME = re.compile(r"^\.(?P<name>.+?)(?:\.\d+\.[0-9a-f]+\.tmp|\.partial-\d+)$")


def _user_path(filename: object) -> object:
    """`filename` with a staging name of our atomic writes replaced by the output it stands for."""
    if not isinstance(filename, (str, os.PathLike)):
        return filename
    path = Path(os.fspath(filename))
    match = _STAGING_NAME.match(path.name)
    return str(path.with_name(match.group("name"))) if match else filename


def _os_message(exc: OSError) -> str:
    if exc.errno is None or not exc.strerror:
        return str(exc)  # our own OSError("could not write ...") is a sentence already
    where = _user_path(exc.filename) if exc.filename is not None else None
    if where is not None and exc.filename2 is not None and _user_path(exc.filename2) != where:
        where = f"{where} -> {_user_path(exc.filename2)}"
    advice = _OS_ADVICE.get(exc.errno)
    if exc.errno == errno.EEXIST and exc.filename is not None and Path(exc.filename).is_file():
        advice = "it is a file, where a folder is needed; choose another location"
    text = f"{where}: {exc.strerror.lower()}" if where is not None else exc.strerror
    return f"{text}; {advice}." if advice else f"{text}."


def flag_names(command: click.Command) -> dict[str, click.Parameter]:
    """{python name of the parameter: parameter} for the options of `command`."""
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


_BOTH_SPELLINGS = re.compile(r"\(([^()]*?) here; ([^()]*?) on the command line\)")
_KEYWORD = re.compile(r"(?<![\w.-])([a-z_][a-z0-9_]*)=(\[\.\.\.\]|\[[^\]]*\]|True|False|None|'[^']*'|\"[^\"]*\"|"
                      r"-?[\w.]+|(?=[\s,;)]))")


def _flag_text(param: click.Option, value: str) -> str:
    flag = max(param.opts, key=len)
    if param.is_flag:
        return flag if value != "False" or not param.secondary_opts else max(param.secondary_opts, key=len)
    metavar = param.metavar or param.name.upper()  # type: ignore[union-attr]
    if value.startswith("[") and value != "[...]":
        items = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        if items:
            return " ".join(f"{flag} {item}" for item in items)
    if value in ("", "[...]", "None") or value.startswith("["):
        return f"{flag} {metavar}"
    return f"{flag} {value.strip(chr(39) + chr(34))}"


_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Warning): ")


def _worker_message(text: str) -> str:
    """torch's DataLoader re-raises a worker's exception with the worker's whole traceback as its message ("Caught
    ImageReadError in DataLoader worker process 1. Original Traceback ..."): keep only the original message, the
    text after ``module.ErrorType: `` on the traceback's last lines."""
    if not _WORKER_PREFIX.match(text):
        return text
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[i]):
            return " ".join([_EXCEPTION_LINE.sub("", lines[i]), *lines[i + 1:]])
    return lines[-1]


def user_message(exc: BaseException, command: click.Command | None = None) -> str:
    """The one line shown for `exc`, with the library's keyword arguments spelled as `command`'s flags."""
    if isinstance(exc, OSError):
        message = _os_message(exc)
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]  # str(KeyError) would quote the sentence
    else:
        message = _worker_message(str(exc)) or type(exc).__name__
    message = " ".join(message.split())  # one line, whatever the library wrapped
    if command is None:
        return message
    message = _BOTH_SPELLINGS.sub(r"(\2)", message)
    params = flag_names(command)

    def spell(match: re.Match[str]) -> str:
        param = params.get(match.group(1))
        return _flag_text(param, match.group(2)) if isinstance(param, click.Option) else match.group(0)

    return _KEYWORD.sub(spell, message)


def _leaf_command(exc: BaseException) -> click.Command | None:
    """The command that was running when `exc` was raised (the deepest click context on its traceback)."""
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in (frame.f_locals.get("ctx"), frame.f_locals.get("self")):
            if isinstance(value, click.Context) and not isinstance(value.command, click.Group):
                found = value.command
    return found


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block, every warning shown is one ``Warning: <message>`` line on stderr."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings API)
        click.echo(f"Warning: {' '.join(str(message).split())}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


OUTPUT_FLAGS = ("--out",)  # the project's flag for what a command writes


def _guard_outputs(command: click.Command) -> None:
    """Wrap `command`'s callback (once) so that a failure removes the folders it created for its `OUTPUT_FLAGS`."""
    names = [p.name for p in command.params if isinstance(p, click.Option) and set(p.opts) & set(OUTPUT_FLAGS)]
    callback = command.callback
    if not names or callback is None or getattr(callback, "_outputs_guarded", False):
        return
    from jigsawpp.cli.common import tidy_on_failure

    @functools.wraps(callback)
    def guarded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (any command's signature)
        outputs = [kwargs[n] for n in names if kwargs.get(n) is not None]
        try:
            with tidy_on_failure(*outputs):
                return callback(*args, **kwargs)
        except KeyboardInterrupt:
            for line in resume_hints(outputs):
                click.echo(line, err=True)
            raise

    guarded._outputs_guarded = True  # type: ignore[attr-defined]
    command.callback = guarded


def resume_hints(outputs: list) -> list[str]:
    """For an interrupted command: one line per output folder holding a checkpoint, saying which iteration the same
    command resumes from."""
    import json

    lines = []
    for out in outputs:
        if (Path(out) / "reproduce.json").is_file():  # eval.reproduce.plan.PLAN_FILE: a run of several jobs
            lines.append(f"Interrupted: re-run the same command to resume the reproduce run in {out} (finished jobs "
                         "are kept, the interrupted one continues from its last checkpoint).")
            continue
        pointer = Path(out) / "checkpoints" / "latest.json"  # jigsawpp.engine.checkpoint's layout
        try:
            iteration = json.loads(pointer.read_text(encoding="utf-8"))["iteration"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        lines.append(f"Interrupted: {out} keeps the checkpoint of iteration {iteration}; re-run the same command to "
                     "resume from it.")
    return lines


def _guard_tree(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _guard_tree(command)
        else:
            _guard_outputs(command)


class JigsawppGroup(click.Group):
    """The top-level group: runs every (sub)command with `warnings_as_lines`, translates user errors, and removes
    what a failing command created for its ``--out``."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 (click's signature)
        _guard_tree(self)
        with warnings_as_lines():
            try:
                return super().invoke(ctx)
            except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except (OSError, ValueError, KeyError, ImportError, FloatingPointError) as exc:
                if os.environ.get(TRACEBACK_ENV) or not (isinstance(exc, OSError) or _is_ours(exc)):
                    raise
                if isinstance(exc, KeyError) and not _is_sentence(exc):
                    raise
                raise click.ClickException(user_message(exc, _leaf_command(exc))) from None
