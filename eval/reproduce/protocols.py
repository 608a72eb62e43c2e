"""The registered jobs: PASCAL VOC detection (single- and multi-scale), classification and segmentation, the paper's
Table 3. Each entry drives a protocol's library function (`eval.detection.pipeline.run_detection`,
`eval.classification.pipeline.run_classification`, `eval.segmentation.pipeline.run_segmentation`) with its paper
preset; nothing here changes a protocol's defaults except the ``tiny`` scale, whose cuts are listed in `TINY`.

Registration point for further protocols: one `register_job(Job(...))` call (and a `TINY` entry). The linear probes
(Tables 4 and 5) and the nonlinear classifier (Table 6) register here once `eval.probes` is part of the package, e.g.::

    register_job(Job(
        name="linear_imagenet", group="linear", title="Linear classifiers on frozen conv1..conv5 (ImageNet val)",
        needs=("imagenet",), table="table4", columns=("conv1", "conv2", "conv3", "conv4", "conv5"),
        build=...,  # {"protocol": "linear", "config": LinearProbeConfig with the cuts and overrides, .to_dict()}
        run=...,    # run_linear(ctx.model_dir, ctx.datasets.imagenet, ctx.out_dir, cfg, dataset="imagenet",
                    #            cache_dir=ctx.cache_dir / "features", device=ctx.device, progress=ctx.progress)
        estimate=..., batch_split=lambda s: s["config"]["batch_size"], headline=None,  # verify reads each layer
        figures=("layer_accuracy.png", "learning_curve.png")))

with ``linear_places`` (``needs=("places",)``, Table 5, ``dataset="places205"``) and one ``nonlinear_<layer>`` job
per frozen layer of Table 6 (``run_nonlinear`` with ``NonlinearConfig(freeze_upto=<layer>)``, column ``<layer>``);
their estimates from `eval.reproduce.estimates`' Caffe figures (a frozen trunk's forward 1 ms per image, learning
4 ms). The report needs nothing more: its cells come from `eval.verify`, its bars per column are drawn for every
table a job fills.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eval.reproduce.estimates import classification_estimate, detection_estimate, segmentation_estimate
from eval.reproduce.jobs import Datasets, Job, JobContext, dataset_count, register_job

__all__ = ["DETECTION_PRESETS", "TINY", "detection_preset"]

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
}


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
