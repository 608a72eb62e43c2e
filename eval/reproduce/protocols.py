"""The registered jobs: the paper's Table 3 (PASCAL VOC detection single- and multi-scale, classification,
segmentation), Tables 4 and 5 (linear probes on ImageNet and Places205) and Table 6 (the nonlinear classifier, one
job per frozen layer). Each entry drives a protocol's resumable library function (`eval.detection.pipeline.
run_detection`, `eval.classification.pipeline.run_classification`, `eval.segmentation.pipeline.run_segmentation`,
`eval.probes.linear.run_linear`, `eval.probes.nonlinear.run_nonlinear`) with its paper preset; nothing here changes
a protocol's defaults except the ``tiny`` scale, whose cuts are listed in `TINY`.

A further protocol is one `register_job(Job(...))` call (and a `TINY` entry): its datasets, paper table and
columns, a ``build`` returning ``{"protocol", "config"}`` (plus ``"run"`` arguments that are not protocol settings),
a ``run`` calling its library function with ``ctx.out_dir``, an estimate from `eval.reproduce.estimates`, the batch
it splits over processes, its figures. The report needs nothing more: its cells come from `eval.verify`, and it
draws the paper-vs-measured bars of every table a job fills.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.reproduce.estimates import (
    classification_estimate,
    detection_estimate,
    linear_estimate,
    nonlinear_estimate,
    segmentation_estimate,
)
from eval.reproduce.jobs import Datasets, Job, JobContext, dataset_count, register_job
from jigsawpp.paper import TABLE6

__all__ = ["DETECTION_PRESETS", "PROBE_WORKERS", "TINY", "detection_preset", "fc_layers_missing"]

# Each detection job's preset, by the names the protocol has used: the first one `eval.detection.config.PROTOCOLS`
# knows is taken (the paper's multi-scale train and test, and its single-scale column; 150K iterations, lr / 10
# every 50K, both).
DETECTION_PRESETS: dict[str, tuple[str, ...]] = {"det_ss": ("noroozi18-ss", "single_scale"),
                                                 "det_ms": ("noroozi18-ms", "multiscale")}

# ``--scale tiny``: what a smoke test on a CPU cuts, per job (recorded in every stamp; verify lists each cut). One
# iteration each, except FCN's two with a checkpoint after the first (a run killed there resumes from it).
TINY: dict[str, dict[str, Any]] = {
    "det_ss": dict(train_scales=[96], train_max_size=160, test_scales=[96], test_max_size=160, rois_per_batch=32,
                   max_iters=1, snapshot_iters=1),
    "det_ms": dict(train_scales=[64, 96], train_max_size=160, test_scales=[64, 96], test_max_size=160,
                   rois_per_batch=32, max_iters=1, snapshot_iters=1),
    "cls": dict(batch_size=2, max_iters=1, snapshot_iters=1, test_crops=1, display=1),
    "seg": dict(iter_size=1, max_iters=2, snapshot_iters=1, display=1, num_overlays=2),
    **{f"linear_{d}": dict(batch_size=4, test_batch_size=10, max_iter=1, snapshot_iters=1, display=1)
       for d in ("imagenet", "places205")},
    **{f"nonlinear_{layer}": dict(batch_size=4, test_batch_size=10, max_iter=1, snapshot_iters=1, display=1,
                                  fc_units=64, test_crops="center") for layer in TABLE6.columns},
}
# image-decoding worker processes of the probe jobs: the defaults of `jigsawpp eval linear|nonlinear`; none at tiny
PROBE_WORKERS = {"linear": 4, "nonlinear": 8}


def _cut(name: str, scale: str) -> dict[str, Any]:
    return dict(TINY[name]) if scale == "tiny" else {}


def detection_preset(job_name: str) -> str:
    """The preset name `eval.detection.config` uses for `job_name`'s protocol."""
    from eval.detection.config import PROTOCOLS

    for name in DETECTION_PRESETS[job_name]:
        if name in PROTOCOLS:
            return name
    raise KeyError(f"eval.detection.config has none of the presets {DETECTION_PRESETS[job_name]} for {job_name}.")


def _detection_builder(job_name: str):
    def build(scale: str, overrides: Mapping[str, Any], datasets: Datasets) -> dict[str, Any]:
        from eval.detection.config import protocol

        preset = detection_preset(job_name)
        given = {"proposals": "selective_search_mat"} if datasets.ss_mat is not None else {}
        cfg = protocol(preset)  # the preset's values, then the cuts and overrides on top (all strict)
        cfg = cfg.replace(**{**given, **_cut(job_name, scale), **overrides})
        return {"protocol": preset, "config": cfg.to_dict()}

    return build


def _run_detection(ctx: JobContext) -> None:
    from eval.detection.config import FastRCNNConfig
    from eval.detection.pipeline import run_detection

    cfg = FastRCNNConfig.from_dict(ctx.settings["config"])
    run_detection(ctx.model_dir, ctx.datasets.voc07, ctx.out_dir, cfg, protocol_name=ctx.settings["protocol"],
                  device=ctx.device, mat_dir=ctx.datasets.ss_mat, cache_dir=ctx.cache_dir / "proposals",
                  resume=True, progress=ctx.progress)


def _voc07_test_count(datasets: Datasets) -> int | None:
    root = datasets.voc07
    return dataset_count(root, "ImageSets/Main/test.txt", "VOC2007/ImageSets/Main/test.txt")


_DETECTION_PER_CLASS = (("ap_11point", "AP 11-pt", "percent"), ("ap_area", "AP area", "percent"),
                        ("n_pos", "objects", "count"))
for _name, _title, _column in (("det_ss", "Fast R-CNN detection, single scale (VOC2007 test)", "detection_ss"),
                               ("det_ms", "Fast R-CNN detection, multi-scale (VOC2007 test)", "detection_ms")):
    register_job(Job(
        name=_name, group="det", title=_title, needs=("voc07",), table="table3", columns=(_column,),
        build=_detection_builder(_name), run=_run_detection,
        estimate=lambda s, d: detection_estimate(s["config"], test_images=_voc07_test_count(d)),
        batch_split=lambda s: s["config"]["ims_per_batch"], headline="map_11point",
        per_class=_DETECTION_PER_CLASS, figures=("pr_curves.png", "detections/*.jpg")))


def _build_classification(scale: str, overrides: Mapping[str, Any], datasets: Datasets) -> dict[str, Any]:
    from eval.classification.config import VOCClassificationConfig

    cfg = VOCClassificationConfig().replace(**{**_cut("cls", scale), **overrides})
    return {"protocol": "voc07_classification", "config": cfg.to_dict()}


def _run_classification(ctx: JobContext) -> None:
    from eval.classification.config import VOCClassificationConfig
    from eval.classification.pipeline import run_classification

    cfg = VOCClassificationConfig.from_dict(ctx.settings["config"])
    run_classification(ctx.model_dir, ctx.datasets.voc07, ctx.out_dir, cfg, device=ctx.device, resume=True,
                       progress=ctx.progress)


register_job(Job(
    name="cls", group="cls", title="VOC2007 classification, all layers fine-tuned (test, 10 crops)",
    needs=("voc07",), table="table3", columns=("classification",), build=_build_classification,
    run=_run_classification,
    estimate=lambda s, d: classification_estimate(s["config"], test_images=_voc07_test_count(d)),
    batch_split=lambda s: s["config"]["batch_size"], headline="map_sklearn",
    per_class=(("ap_sklearn", "AP sklearn", "percent"), ("ap_11point", "AP 11-pt", "percent"),
               ("n_pos", "positives", "count")),
    figures=("pr_curves.png",)))


def _build_segmentation(scale: str, overrides: Mapping[str, Any], datasets: Datasets) -> dict[str, Any]:
    from eval.segmentation.config import fcn_protocol

    cfg = fcn_protocol("fcn", **{**_cut("seg", scale), **overrides})
    return {"protocol": "fcn", "config": cfg.to_dict()}


def _run_segmentation(ctx: JobContext) -> None:
    from eval.segmentation.config import FCNConfig
    from eval.segmentation.pipeline import run_segmentation

    cfg = FCNConfig.from_dict(ctx.settings["config"])
    run_segmentation(ctx.model_dir, ctx.out_dir, cfg, voc_root=ctx.datasets.voc12, sbd_root=ctx.datasets.sbd,
                     device=ctx.device, resume=True, progress=ctx.progress)


def _seg11valid_count(datasets: Datasets) -> int | None:
    return dataset_count(datasets.voc12, "ImageSets/Segmentation/seg11valid.txt")


register_job(Job(
    name="seg", group="seg", title="FCN-AlexNet segmentation, SBD train / seg11valid (mean IU)",
    needs=("voc12", "sbd"), table="table3", columns=("segmentation",), build=_build_segmentation,
    run=_run_segmentation,
    estimate=lambda s, d: segmentation_estimate(s["config"], val_images=_seg11valid_count(d)),
    batch_split=lambda s: s["config"]["iter_size"], headline="mean_iu",
    per_class=(("iu", "IU", "percent"), ("accuracy", "accuracy", "percent"), ("gt_pixels", "pixels", "count")),
    figures=("iu.png", "overlays/*.jpg")))


# ---- Tables 4 and 5: linear probes; Table 6: the nonlinear classifier ------------------------------------------------
def _probe_builder(name: str, kind: str, dataset: str, **fixed: Any):
    def build(scale: str, overrides: Mapping[str, Any], datasets: Datasets) -> dict[str, Any]:
        from eval.probes.config import LinearProbeConfig, NonlinearConfig

        base = LinearProbeConfig() if kind == "linear" else NonlinearConfig()
        changed = {**_cut(name, scale), **overrides}
        clash = sorted(k for k in fixed if k in changed and changed[k] != fixed[k])
        if clash:
            raise ValueError(f"{clash} is what job {name} evaluates; choose the job instead (--only).")
        cfg = base.replace(**{**changed, **fixed})
        return {"protocol": f"{kind}_{dataset}", "config": cfg.to_dict(),
                "run": {"dataset": dataset, "workers": 0 if scale == "tiny" else PROBE_WORKERS[kind]}}

    return build


def _run_probe(ctx: JobContext) -> None:
    run = ctx.settings["run"]
    root = ctx.datasets.imagenet if run["dataset"] == "imagenet" else ctx.datasets.places
    args = dict(dataset=run["dataset"], device=ctx.device, workers=run["workers"], resume=True, progress=ctx.progress)
    if ctx.settings["protocol"].startswith("linear"):
        from eval.probes.config import LinearProbeConfig
        from eval.probes.linear import run_linear

        run_linear(ctx.model_dir, root, ctx.out_dir, LinearProbeConfig.from_dict(ctx.settings["config"]), **args)
    else:
        from eval.probes.config import NonlinearConfig
        from eval.probes.nonlinear import run_nonlinear

        run_nonlinear(ctx.model_dir, root, ctx.out_dir, NonlinearConfig.from_dict(ctx.settings["config"]), **args)


def _val_count(dataset: str, datasets: Datasets) -> int | None:
    if dataset == "imagenet":
        return dataset_count(datasets.imagenet, "val.txt")
    return dataset_count(datasets.places, "trainvalsplit_places205/val_places205.csv")


def fc_layers_missing(model_dir: Path) -> str | None:
    """Why Table 6's fc6/fc7 columns cannot be run on this model (its transfer network has no fc6/fc7), or None."""
    from jigsawpp.convert import model_manifest_path

    manifest = json.loads(model_manifest_path(model_dir).read_text(encoding="utf-8"))
    if "variants" in manifest:
        entry = manifest["variants"].get(manifest.get("transfer_variant"), {})
        has_fc = (entry.get("alexnet_config") or {}).get("fc6") is not None
    else:
        from caffe_import.parse import read_prototxt
        from jigsawpp.models import alexnet_config_from_prototxt

        deploy = Path(model_dir) / "deploy.prototxt"
        if not deploy.is_file():
            return None  # the protocol itself says what the folder lacks
        try:
            config = alexnet_config_from_prototxt(read_prototxt(deploy, warn=False), source=str(deploy))
        except ValueError as exc:
            return str(exc)
        has_fc = config.fc6 is not None
    return None if has_fc else "the model has no fc6/fc7 to keep frozen (its transfer network ends at conv5)"


for _dataset, _table, _option in (("imagenet", "table4", "ImageNet"), ("places205", "table5", "Places205")):
    register_job(Job(
        name=f"linear_{_dataset}", group="linear",
        title=f"Linear classifiers on frozen conv1..conv5, {_option} (top-1, val)",
        needs=("imagenet",) if _dataset == "imagenet" else ("places",), table=_table,
        columns=("conv1", "conv2", "conv3", "conv4", "conv5"), build=_probe_builder(f"linear_{_dataset}", "linear",
                                                                                     _dataset),
        run=_run_probe,
        estimate=lambda s, d, _d=_dataset: linear_estimate(s["config"], dataset=_d, val_images=_val_count(_d, d)),
        batch_split=lambda s: s["config"]["batch_size"], headline=None,
        figures=("layer_accuracy.png", "learning_curve.png")))

for _layer in TABLE6.columns:
    register_job(Job(
        name=f"nonlinear_{_layer}", group="nonlinear",
        title=f"Nonlinear classifier, layers up to {_layer} frozen, ImageNet (top-1, val, 10 crops)",
        needs=("imagenet",), table="table6", columns=(_layer,),
        build=_probe_builder(f"nonlinear_{_layer}", "nonlinear", "imagenet", freeze_upto=_layer), run=_run_probe,
        estimate=lambda s, d: nonlinear_estimate(s["config"], val_images=_val_count("imagenet", d)),
        batch_split=lambda s: s["config"]["batch_size"], headline=None, figures=("learning_curve.png",),
        available=fc_layers_missing if _layer in ("fc6", "fc7") else None))
