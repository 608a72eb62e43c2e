"""Helpers shared by the commands: leaving nothing behind when a command fails, the output-folder checks of
`jigsawpp.outputs` applied before any work starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OVERWRITE_HELP", "RUN_CONFIG", "StepProgress", "parse_device", "parse_sets", "recorded_protocol",
           "refuse_foreign_output", "tidy_on_failure"]

OVERWRITE_HELP = "Replace an existing non-empty output (without this flag it is refused before any work starts)."


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (None when `path` exists)."""
    missing = None
    for candidate in (path, *path.absolute().parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing = candidate
    return missing


def _holds_no_file(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if files:
            return False
    return True


@contextlib.contextmanager
def tidy_on_failure(*paths: str | os.PathLike[str]) -> Iterator[None]:
    """Remove, when the block raises, the folders it created for `paths` (and their new parents) if they hold no
    file, so that a refused command leaves nothing behind while a long run that failed late keeps what it wrote
    (checkpoints to resume from)."""
    created = [m for m in (_first_missing(Path(p)) for p in paths) if m is not None]
    try:
        yield
    except BaseException:
        for folder in created:
            if folder.is_dir() and not folder.is_symlink() and _holds_no_file(folder):
                shutil.rmtree(folder, ignore_errors=True)
        raise


RUN_CONFIG = "config.json"  # written by each evaluation at the start of its run: {"config": ..., "provenance": ...}


def recorded_protocol(out: Path) -> str | None:
    """The ``provenance.protocol`` that an evaluation recorded in ``out/config.json`` (None when there is none)."""
    try:
        data = json.loads((out / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    provenance = data.get("provenance") if isinstance(data, dict) else None
    protocol = provenance.get("protocol") if isinstance(provenance, dict) else None
    return protocol if isinstance(protocol, str) else None


def refuse_foreign_output(out: Path, *, command: str, protocol: str, overwrite: bool) -> None:
    """Refuse, before any work, a non-empty `out` that is not an earlier run of `command` (whose config.json records
    `protocol`): a resumable command writes into its own earlier folder only, never into a dataset or another
    command's results, unless ``--overwrite`` empties it.

    Raises:
        jigsawpp.outputs.OutputDirError: `out` is such a folder and `overwrite` is False.
    """
    from jigsawpp.outputs import OutputDirError

    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    found = recorded_protocol(out)
    if found == protocol:
        return
    if not (out / RUN_CONFIG).is_file():
        why = f"no {RUN_CONFIG}"
    else:
        why = f"its {RUN_CONFIG} is from {found!r}" if found else f"its {RUN_CONFIG} is not an evaluation's"
    raise OutputDirError(f"--out: {out} is not empty and is not an `{command}` output folder ({why}); choose another "
                         "folder or pass --overwrite to replace its content.")


class StepProgress:
    """A progress callback (`jigsawpp.demo.run_demo`'s `progress`) driving a tqdm bar over named steps: a line is
    a step starting (the bar counts the steps finished and is labelled with the running one), a line starting with
    two spaces a sub-step (shown after the bar)."""

    def __init__(self, bar, total: int, *, label: str = "demo") -> None:  # bar: tqdm.tqdm
        self.bar, self.total, self.label, self.started = bar, total, label, 0

    def __call__(self, message: str) -> None:
        if message.startswith("  "):
            self.bar.set_postfix_str(message.strip()[:60])
            return
        if self.started:
            self.bar.update(1)  # the previous step is done
        self.started += 1
        self.bar.set_description(f"{self.label} {self.started}/{self.total}: {message}")
        self.bar.set_postfix_str("")


def parse_device(value: str | None, *, flag: str = "--device"):
    """`value` as a torch.device (None stays None); a string torch does not accept, or a CUDA device this machine does
    not have, is a usage error naming `flag`."""
    if value is None:
        return None
    import click
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise click.BadParameter(f"{value!r} is not a torch device ({' '.join(str(exc).split())}); use e.g. cpu, "
                                 "cuda or cuda:1.", param_hint=flag) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{value!r}: CUDA is not available on this machine; use --device cpu.",
                                     param_hint=flag)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                     f"numbered from 0.", param_hint=flag)
    return device


def start_device(value: str | None, *, flag: str = "--device"):
    """The torch.device this process runs on: `value` checked as `parse_device` does (a usage error naming `flag`),
    the process group joined under torchrun, then `jigsawpp.engine.distributed.resolve_device` (this rank's GPU)."""
    parse_device(value, flag=flag)
    from jigsawpp.engine.distributed import init_distributed, resolve_device

    init_distributed()
    return resolve_device(value)


def parse_sets(values: tuple[str, ...], *, flag: str = "--set") -> dict[str, object]:
    """``KEY=VALUE`` options as a dict: VALUE parsed as JSON (numbers, lists, true/false, null), else kept as the bare
    string (``proposals=opencv_quality``). An item without ``=`` is a usage error naming `flag`."""
    import click

    out: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=flag)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
