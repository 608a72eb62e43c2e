"""Figures of the probe results: top-1 per layer beside the paper's row (matplotlib Agg, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["plot_layer_accuracy"]


def plot_layer_accuracy(measured: Mapping[str, float], png: str | os.PathLike[str], *,
                        paper: Mapping[str, float | None] | None = None, paper_label: str = "paper",
                        title: str = "top-1 accuracy per layer", measured_label: str = "measured") -> Path:
    """Grouped bars, one group per layer: measured top-1 (%) and, where given, the paper's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jigsawpp.engine.plots import save_figure

    layers = list(measured)
    x = np.arange(len(layers))
    paper_values = [None if paper is None else paper.get(layer) for layer in layers]
    has_paper = any(v is not None for v in paper_values)
    width = 0.38 if has_paper else 0.6
    fig, ax = plt.subplots(figsize=(1.3 * len(layers) + 2.5, 3.6))
    bars = ax.bar(x - (width / 2 if has_paper else 0), [measured[k] for k in layers], width, label=measured_label,
                  color="#3b75af")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    if has_paper:
        values = [np.nan if v is None else v for v in paper_values]
        pbars = ax.bar(x + width / 2, values, width, label=paper_label, color="#f0a04b")
        ax.bar_label(pbars, labels=["" if v is None else f"{v:.1f}" for v in paper_values], fontsize=8)
    ax.set_xticks(x, layers)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max([100.0 if max(measured.values(), default=0) > 60 else 60.0]))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, png, dpi=110)
