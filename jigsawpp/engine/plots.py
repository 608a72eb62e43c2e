"""Training curves from a ``train_log.jsonl`` (one JSON record per logged iteration), drawn with Agg."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_training_curves", "read_log", "save_figure"]


def save_figure(fig, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (a temp file beside `path`, renamed into place) with the user's umask;
    the format follows the suffix (PNG when there is none). Every plot of the project is written through this."""
    from jigsawpp.io import write_atomic

    path = Path(path)
    try:
        write_atomic(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=dpi))
    finally:
        if getattr(fig, "number", None) is not None:  # a pyplot figure: free it (Figure objects need nothing)
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path


def read_log(log_path: str | os.PathLike[str]) -> list[dict]:
    """The records of a JSONL training log, in file order.

    Raises:
        ValueError: a line that is not JSON (file:line named).
    """
    records = []
    path = Path(log_path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not a JSON record; the log is damaged.") from None
    return records


def plot_training_curves(log_path: str | os.PathLike[str], png_path: str | os.PathLike[str], *,
                         keys: Sequence[str] = ("loss",), title: str | None = None) -> Path:
    """Plot `keys` of each record against its ``iteration`` (the learning rate dashed on a right-hand log axis when
    the records have ``lr``) and save the figure atomically.

    Raises:
        ValueError: the log is empty or lacks one of `keys` (the message lists the keys it has).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path} has no records to plot.")
    available = sorted({k for r in records for k in r if k != "iteration"})
    missing = [k for k in keys if k not in available]
    if missing:
        raise ValueError(f"{log_path} has no {missing} entries; it logs {available}.")
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    for key in keys:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None, label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel(", ".join(keys))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "lr" in available and "lr" not in keys:
        lr_ax = ax.twinx()
        lr_points = [(r["iteration"], r["lr"]) for r in records if "lr" in r]
        line = lr_ax.plot([p[0] for p in lr_points], [p[1] for p in lr_points], "k--", linewidth=0.8, label="lr")
        if all(p[1] > 0 for p in lr_points):
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate")
        handles, labels = handles + line, labels + ["lr"]
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title or f"training: {Path(log_path).parent.name}")
    fig.tight_layout()
    return save_figure(fig, png_path, dpi=110)
