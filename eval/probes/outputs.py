"""What a probe run leaves in its output folder (rank 0): scores, config, head weights, figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.probes.config import LinearProbeConfig
from eval.probes.heads import MultiHeadProbe
from eval.probes.metrics import Accuracy

__all__ = ["head_blobs", "write_linear_outputs", "write_scores"]


def head_blobs(heads: MultiHeadProbe) -> dict:
    """Caffe-named blobs of the heads: ``<tap>_norm.{mean_sum,var_sum,scale_factor}`` (BatchNorm's three blobs) and
    ``<tap>_cl.{weight,bias}`` (InnerProduct), the layer names of the reference prototxt."""
    out = {}
    for tap in heads.taps:
        head = heads.head(tap)
        for name in ("mean_sum", "var_sum", "scale_factor"):
            out[f"{tap}_norm.{name}"] = getattr(head.norm, name).detach().cpu()
        out[f"{tap}_cl.weight"] = head.cl.weight.detach().cpu()
        out[f"{tap}_cl.bias"] = head.cl.bias.detach().cpu()
    return out


def write_scores(out: Path, data: dict[str, Any]) -> Path:
    from jigsawpp.io import write_json_atomic

    return write_json_atomic(out / "scores.json", data)


def write_linear_outputs(out: Path, accuracy: Mapping[str, Accuracy], heads: MultiHeadProbe, stamp: dict[str, Any],
                         cfg: LinearProbeConfig, *, dataset: str, paper_method: str | None,
                         table: str | None) -> Path:
    """scores.json, config.json, heads.safetensors, learning_curve.png, layer_accuracy.png; returns scores.json."""
    from eval.probes.plots import plot_layer_accuracy
    from jigsawpp.engine.plots import plot_training_curves
    from jigsawpp.io import save_state_dict_file, write_json_atomic
    from jigsawpp.paper import TABLES

    top1 = {t: a.top1 for t, a in accuracy.items()}
    data = {"kind": "linear_probe", "dataset": dataset, "top1": top1,
            "top5": {t: a.top5 for t, a in accuracy.items()},
            "count": next(iter(accuracy.values())).count, "provenance": stamp}
    scores = write_scores(out, data)
    write_json_atomic(out / "config.json", cfg.to_dict())
    save_state_dict_file(head_blobs(heads), out / "heads.safetensors",
                         metadata={"format": "linear probe heads, Caffe layer names of the reference prototxt"})
    log = out / "train_log.jsonl"
    if log.is_file():
        plot_training_curves(log, out / "learning_curve.png", keys=[f"loss_{t}" for t in heads.taps],
                             title="linear probes: training loss per layer")
    paper = TABLES[table].row(paper_method) if (table and paper_method) else None
    plot_layer_accuracy(top1, out / "layer_accuracy.png", paper=paper,
                        paper_label=f"paper {table} ({paper_method})" if paper else "paper",
                        title=f"linear probes on {dataset}: top-1 per layer")
    return scores
