"""End-to-end Fast R-CNN evaluation: proposals -> roidb -> training -> testing -> scores, curves, pictures.

`run_detection` is what ``jigsawpp eval detection --model DIR --voc PATH`` runs; `evaluate_caffe_detector` the
``--caffe-test`` variant (a trained Caffe Fast R-CNN, no training); `score_results_dir` what
``jigsawpp eval score-detections`` runs. Every function returns a dataclass; only the CLI prints.

Output folder::

    config.json                    resolved FastRCNNConfig + provenance stamp
    train_log.jsonl, checkpoints/  training (see eval.detection.train)
    detector.safetensors           trained weights, bbox_pred un-normalised (what testing uses)
    detector.caffemodel            the same as a Caffe model, for fast-rcnn's own tools/test_net.py
    results/comp4_det_test_<class>.txt   devkit results files (fast-rcnn's format)
    results/provenance.json        the stamp, beside the files it describes
    scores.json                    per-class AP and mAP (11-point and area) + the stamp
    pr_curves.png, detections/<image_id>.jpg
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.constants import SCORES_FILENAME
from eval.detection.config import FastRCNNConfig
from eval.detection.model import FastRCNN, build_detector, conv_weights_from_model_dir, load_caffe_detector
from eval.detection.provenance import provenance_stamp
from eval.detection.roidb import DETECTION_CLASSES, test_roidb, training_roidb
from eval.detection.sampling import read_image
from eval.detection.test import detect_set, draw_detections, write_results
from eval.detection.train import TrainResult, latest_checkpoint, train_detector, unnormalized_state_dict
from eval.detection.validate import SplitCheck
from eval.voc import VOCDataset

__all__ = [
    "DetectionRun",
    "evaluate_caffe_detector",
    "evaluate_detector",
    "load_proposals",
    "resolve_voc_root",
    "run_detection",
    "score_results_dir",
]

PROVENANCE_FILENAME = "provenance.json"


@dataclass(frozen=True)
class DetectionRun:
    """What a detection evaluation produced."""

    out_dir: Path
    ap: Any  # eval.metrics.DetectionAP
    stamp: dict
    scores_path: Path
    results_dir: Path
    pr_curves: Path | None
    images: tuple[Path, ...]
    train: TrainResult | None
    test_seconds: float


def resolve_voc_root(path: str | os.PathLike[str], year: str = "2007") -> Path:
    """Accept ``VOCdevkit`` or ``VOCdevkit/VOC2007``; return the folder holding ``Annotations``."""
    p = Path(path)
    if (p / "Annotations").is_dir():
        return p
    if (p / f"VOC{year}" / "Annotations").is_dir():
        return p / f"VOC{year}"
    raise FileNotFoundError(f"{p} is neither a VOCdevkit folder (with VOC{year}/) nor a VOC{year} folder "
                            "(with Annotations/, ImageSets/Main/, JPEGImages/).")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jigsawpp/proposals`` (``~/.cache/...``): shared by every VOC folder, keyed by content."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jigsawpp" / "proposals"


def load_proposals(dataset: VOCDataset, cfg: FastRCNNConfig, *, check: SplitCheck | None = None,
                   mat_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   workers: int | None = None, progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Proposals for every image of `dataset`, checked to lie inside their images, and their description.

    ``cfg.proposals == "selective_search_mat"`` reads ``<mat_dir>/voc_<year>_<split>.mat`` (fast-rcnn's names); the
    other methods compute selective search (cached by image content and settings, `eval.detection.proposals`).
    `check` is the split's `check_split` result (computed here when not given).
    """
    from eval.detection.proposals import compute_proposals, load_selective_search_mat, proposal_cache_files
    from eval.detection.validate import check_proposals, check_split

    check = check if check is not None else check_split(dataset)
    if cfg.proposals == "selective_search_mat":
        if mat_dir is None:
            raise ValueError("proposals = selective_search_mat needs the folder of fast-rcnn's selective-search "
                             ".mat files (--ss-mat DIR).")
        from jigsawpp.io import sha256_file

        year = dataset.root.name.replace("VOC", "") or "2007"
        path = Path(mat_dir) / f"voc_{year}_{dataset.split}.mat"
        boxes = load_selective_search_mat(path, dataset.image_ids)
        check_proposals(boxes, check.sizes, source=str(path))
        counts = [b.shape[0] for b in boxes.values()]
        return boxes, {"method": cfg.proposals, "file": path.name, "sha256": sha256_file(path),
                       "order": "(y1, x1, y2, x2) 1-based -> 0-based",
                       "mean_per_image": float(np.mean(counts)) if counts else 0.0}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = {i: dataset.image_path(i) for i in dataset.image_ids}
    rank, world = _world()
    if world > 1 and rank != 0:
        # rank 0 computes; the others wait for its cache files rather than in a collective, whose timeout (NCCL:
        # 10 minutes) a full VOC split of selective search would exceed
        files = proposal_cache_files(paths, cache, method=cfg.proposals, min_size=cfg.proposal_min_size,
                                     image_hashes=check.image_sha256)
        missing = [f for f in files.values() if not f.is_file()]
        while missing:
            time.sleep(5.0)
            missing = [f for f in missing if not f.is_file()]
    boxes = compute_proposals(paths, cache, method=cfg.proposals, min_size=cfg.proposal_min_size,
                              workers=workers, progress=progress, image_hashes=check.image_sha256)
    check_proposals(boxes, check.sizes, source=f"proposal cache {cache}")
    counts = [b.shape[0] for b in boxes.values()]
    implementation = ("R-CNN selective_search_boxes.m fast mode from cv2.ximgproc pieces "
                      "(eval.detection.selective_search)" if cfg.proposals == "rcnn_fast" else
                      "cv2.ximgproc.segmentation SelectiveSearchSegmentation (Uijlings et al. 2013)")
    return boxes, {"method": cfg.proposals, "min_size": cfg.proposal_min_size,
                   "mean_per_image": float(np.mean(counts)) if counts else 0.0, "implementation": implementation}


def _split_record(check: SplitCheck) -> dict[str, Any]:
    return {"split": check.split, "images": len(check.image_ids), "digest": check.digest(),
            "exif_rotated": list(check.rotated)}


def _say_renamed(*checks: SplitCheck) -> dict[str, list[str]]:
    """Warn once about class names the normalisation changed; returns them for the stamp."""
    from eval.detection.validate import ClassNameWarning, renamed_summary

    renamed: dict[tuple[str, str], list[str]] = {}
    for check in checks:
        for key, files in check.renamed.items():
            renamed.setdefault(key, []).extend(f for f in files if f not in renamed.get(key, []))
    line = renamed_summary(renamed)
    if line and _world()[0] == 0:
        warnings.warn(ClassNameWarning(line), stacklevel=2)
    return {f"{raw!r} -> {name!r}": files for (raw, name), files in sorted(renamed.items())}


def _write_json(path: Path, data: dict) -> Path:
    from jigsawpp.io import write_json_atomic

    return write_json_atomic(path, data)


def _world() -> tuple[int, int]:
    from jigsawpp.engine.distributed import world

    return world()


def _stamp(cfg: FastRCNNConfig, *, run_device: torch.device, **args: Any) -> dict:
    """The protocol's provenance stamp plus the software and hardware it ran on (`environment_stamp`)."""
    from jigsawpp.engine.stamp import environment_stamp

    return {**provenance_stamp(cfg, **args), "environment": environment_stamp(run_device)}


def write_detection_scores(ap: Any, out_dir: Path, *, split: str, stamp: dict | None) -> Path:
    """``scores.json``: eval.metrics' summary with the Fast R-CNN stamp under ``provenance.fast_rcnn``."""
    from eval.metrics import scores_summary

    summary = scores_summary(ap, split=split)
    summary["provenance"]["fast_rcnn"] = stamp if stamp is not None else {
        "key": "unknown protocol: results files scored without a provenance.json beside them"}
    return _write_json(out_dir / SCORES_FILENAME, summary)


def evaluate_detector(model: FastRCNN, voc_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      cfg: FastRCNNConfig, *, stamp: dict, split: str = "test",
                      proposals: dict[str, np.ndarray] | None = None, check: SplitCheck | None = None,
                      device: str | torch.device = "cpu", num_images_to_draw: int = 8, progress: bool = True,
                      **proposal_args: Any) -> DetectionRun:
    """Test a detector (bbox_pred un-normalised) on a VOC split and write results, scores, curves and pictures.

    `check` (the split's `check_split`) and `proposals` are computed here when not given.
    """
    from eval.detection.validate import check_split
    from eval.metrics import plot_pr_curves, score_detections

    out = Path(out_dir)
    rank, _ = _world()
    dataset = VOCDataset(resolve_voc_root(voc_root), split)
    if check is None:
        check = check_split(dataset, progress=progress and rank == 0)
    if proposals is None:
        proposals, described = load_proposals(dataset, cfg, check=check, progress=progress and rank == 0,
                                              **proposal_args)
        stamp = {**stamp, "proposals": {**stamp.get("proposals", {}), **described}}
    entries = test_roidb(dataset, proposals, sizes=check.sizes)
    start = time.perf_counter()
    all_boxes = detect_set(model, entries, cfg, device=device, progress=progress)
    seconds = time.perf_counter() - start
    results_dir = out / "results"
    if rank != 0:
        return DetectionRun(out, None, stamp, out / SCORES_FILENAME, results_dir, None, (), None, seconds)
    write_results(all_boxes, dataset.image_ids, results_dir, split=split)
    _write_json(results_dir / PROVENANCE_FILENAME, stamp)
    ap = score_detections(dataset.root, split, results_dir, class_names=DETECTION_CLASSES[1:])
    scores_path = write_detection_scores(ap, out, split=split, stamp=stamp)
    curves = plot_pr_curves(ap, out / "pr_curves.png",
                            title=f"VOC{dataset.root.name[-4:]} {split}: mAP {ap.map_11point:.3f} (11-point) — "
                                  f"{stamp.get('key', '')}"[:150])
    images = []
    for i, image_id in enumerate(dataset.image_ids[:num_images_to_draw]):
        dets = {DETECTION_CLASSES[j]: all_boxes[j][i] for j in range(1, len(all_boxes))}
        images.append(draw_detections(read_image(entries[i]), dets, out / "detections" / f"{image_id}.jpg"))
    return DetectionRun(out, ap, stamp, scores_path, results_dir, curves, tuple(images), None, seconds)


def _protocol_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def run_detection(
    model_dir: str | os.PathLike[str],
    voc_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: FastRCNNConfig,
    *,
    protocol_name: str | None = None,
    train_split: str = "trainval",
    test_split: str = "test",
    device: str | torch.device = "cpu",
    mat_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    resume: bool = True,
    progress: bool = True,
    num_images_to_draw: int = 8,
) -> DetectionRun:
    """Fine-tune Fast R-CNN from the transferred layers of a converted model and evaluate it (the paper's detection).

    Everything is read and checked before the first iteration: both splits' lists, annotations, images and
    proposals (`eval.detection.validate`), and the model's layers.
    """
    from eval.detection.validate import check_split

    out = Path(out_dir)
    device = torch.device(device)
    rank, world = _world()
    show = progress and rank == 0
    voc = resolve_voc_root(voc_root)
    weights = conv_weights_from_model_dir(model_dir, layers=cfg.transfer)
    train_set, test_set = VOCDataset(voc, train_split), VOCDataset(voc, test_split)
    train_check = check_split(train_set, progress=show)
    test_check = train_check if test_split == train_split else check_split(test_set, progress=show)
    renamed = _say_renamed(train_check, test_check)
    proposal_args = {"mat_dir": mat_dir, "cache_dir": cache_dir, "workers": workers}
    train_props, described = load_proposals(train_set, cfg, check=train_check, progress=show, **proposal_args)
    test_props, test_described = (train_props, described) if test_split == train_split else load_proposals(
        test_set, cfg, check=test_check, progress=show, **proposal_args)
    entries, stats = training_roidb(train_set, train_props, cfg, sizes=train_check.sizes)
    model = build_detector(weights, seed=cfg.rng_seed)
    if cfg.rescale and not (resume and latest_checkpoint(out) is not None):  # a resumed run loads rescaled weights
        from eval.detection.rescale import rescale_conv_layers

        rescale_conv_layers(model, entries, cfg, device=device)
    proposals = {**described, "test": test_described}
    data = {"train": _split_record(train_check), "test": _split_record(test_check),
            "class_names_normalised": renamed}
    stamp_args = dict(mode="train+test", proposals=proposals, init=weights.record(), device=_protocol_device(device),
                      world_size=world, protocol_name=protocol_name, data=data,
                      model=weights.model)
    if rank == 0 and not (resume and latest_checkpoint(out) is not None):  # a resume keeps the run's record
        _write_json(out / "config.json", {"config": cfg.to_dict(),
                                          "provenance": _stamp(cfg, run_device=device, iterations=None, **stamp_args)})
    fingerprint_data = {"images": train_check.digest(), "proposals": described,
                        "init": {"transfer": cfg.transfer, "weights_sha256": weights.weights_sha256}}
    trained = train_detector(model, entries, stats, cfg, out_dir=out, device=device, resume=resume,
                             progress=progress, data=fingerprint_data)
    model.load_state_dict(unnormalized_state_dict(model, stats))
    stamp = _stamp(cfg, run_device=device, iterations=trained.iterations, **stamp_args)
    if rank == 0:
        import caffe_import
        from jigsawpp.io import save_state_dict_file

        save_state_dict_file(model.state_dict(), out / "detector.safetensors",
                             metadata={"content": "Fast R-CNN CaffeNet, bbox_pred un-normalised",
                                       "provenance": json.dumps(stamp)})
        caffe_import.save_caffemodel(model.net, out / "detector.caffemodel")
        _write_json(out / "config.json", {"config": cfg.to_dict(), "provenance": stamp})
    run = evaluate_detector(model, voc, out, cfg, stamp=stamp, split=test_split, proposals=test_props,
                            check=test_check, device=device, num_images_to_draw=num_images_to_draw,
                            progress=progress)
    return DetectionRun(**{**run.__dict__, "train": trained})


def evaluate_caffe_detector(prototxt_path: str | os.PathLike[str], caffemodel: str | os.PathLike[str],
                            voc_root: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: FastRCNNConfig,
                            *, protocol_name: str | None = None, split: str = "test",
                            device: str | torch.device = "cpu", progress: bool = True, num_images_to_draw: int = 8,
                            **proposal_args: Any) -> DetectionRun:
    """Evaluate a trained Caffe Fast R-CNN as it is (e.g. fast-rcnn's CaffeNet with its test.prototxt)."""
    from eval.detection.validate import check_split
    from jigsawpp.io import sha256_file

    device = torch.device(device)
    dataset = VOCDataset(resolve_voc_root(voc_root), split)
    check = check_split(dataset, progress=progress and _world()[0] == 0)
    renamed = _say_renamed(check)
    model = load_caffe_detector(prototxt_path, caffemodel)
    init = {"caffemodel": Path(caffemodel).name, "sha256": sha256_file(caffemodel),
            "prototxt": Path(prototxt_path).name}
    stamp = _stamp(cfg, run_device=device, mode="test-only", proposals={"method": cfg.proposals},
                   iterations=None, init=init, device=_protocol_device(device), world_size=_world()[1],
                   protocol_name=protocol_name,
                   data={"test": _split_record(check), "class_names_normalised": renamed})
    if _world()[0] == 0:
        _write_json(Path(out_dir) / "config.json", {"config": cfg.to_dict(), "provenance": stamp})
    return evaluate_detector(model, voc_root, out_dir, cfg, stamp=stamp, split=split, check=check, device=device,
                             progress=progress, num_images_to_draw=num_images_to_draw, **proposal_args)


def score_results_dir(voc_root: str | os.PathLike[str], split: str,
                      results_dir: str | os.PathLike[str]) -> tuple[Any, Path]:
    """Score devkit results files; writes ``<results_dir>/scores.json`` with the stamp found beside the files.

    Class names in the annotations are normalised as for training (`eval.voc`); a `ClassNameWarning` says which.
    """
    from eval.detection.validate import ClassNameWarning, renamed_summary
    from eval.metrics import score_detections

    results = Path(results_dir)
    root = resolve_voc_root(voc_root)
    line = renamed_summary(VOCDataset(root, split).renamed_objects())
    if line:
        warnings.warn(ClassNameWarning(line), stacklevel=2)
    ap = score_detections(root, split, results, class_names=DETECTION_CLASSES[1:])
    stamp_path = results / PROVENANCE_FILENAME
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    return ap, write_detection_scores(ap, results, split=split, stamp=stamp)
