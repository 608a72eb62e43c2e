"""Figures the report draws itself (Agg): measured beside paper per column of a table (Table 3's four cells, the probe
bars per layer of Tables 4-6), and a job's training curve from its ``train_log.jsonl``.

Drawing is the slow part of rebuilding a report, so each figure is drawn only when what it shows changed:
``figures/cache.json`` maps a figure's file name to the sha256 of its inputs (`cached`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["cached", "paper_bars", "training_curve"]

CACHE = "cache.json"


def cached(path: Path, inputs: object, draw: Callable[[Path], Path | None]) -> Path | None:
    """`path` drawn by ``draw(path)`` unless it exists and was drawn from the same `inputs` (JSON-able)."""
    from jigsawpp.io import write_json_atomic

    index_path = path.parent / CACHE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    except json.JSONDecodeError:
        index = {}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    if index.get(path.name) == digest and path.is_file():
        return path
    drawn = draw(path)
    if drawn is not None:
        index[path.name] = digest
        write_json_atomic(index_path, index)
    return drawn


def _save(fig, path: Path) -> Path:
    from jigsawpp.io import write_atomic

    return write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100, metadata={"Software": None}))


def paper_bars(columns: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
               path: str | os.PathLike[str], *, title: str, ylabel: str) -> Path:
    """Grouped bars: one group per column, one bar per (label, values) series; a missing value leaves a gap and a
    value is written above its bar."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.3 * len(columns) * max(1, len(series)) ** 0.5 + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    cmap = colormaps["tab10"]
    for k, (label, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(columns))]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(xs, heights, width=width * 0.95, color=cmap(k % 10), label=label)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max([100.0 if "%" in ylabel else 1.0] + [v for _, vs in series for v in vs if v is not None]) * 1.1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def training_curve(log: str | os.PathLike[str], path: str | os.PathLike[str], *, title: str) -> Path | None:
    """The log's ``loss`` (or its first logged quantity) against the iteration, lr dashed; None when the log holds
    nothing to plot."""
    from jigsawpp.engine.plots import plot_training_curves, read_log

    records = read_log(log)
    keys = sorted({k for r in records for k, v in r.items()
                   if isinstance(v, (int, float)) and k not in ("iteration", "lr", "seconds_per_iter")})
    if not records or not keys:
        return None
    key = "loss" if "loss" in keys else keys[0]
    return plot_training_curves(log, path, keys=(key,), title=title)
