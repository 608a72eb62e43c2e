"""`jigsawpp demo`: the README's main job, on an embedded default with no download.

It walks the path a user takes with a released model, on a caffemodel we write ourselves (the real zips cannot be
downloaded here): write a caffemodel for the bundled CaffeNet with seeded weights, convert it, run the converted
net on a real photograph, and check it against OpenCV's independent Caffe importer. Each step is timed.
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


def run_demo(out_dir: str | Path, *, seed: int = 0, progress: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo into `out_dir` and return what each step did and how long it took."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DemoReport(out_dir=out_dir)
    say = progress or (lambda _msg: None)

    def timed(name: str, fn: Callable[[], str]) -> None:
        say(name)
        start = time.perf_counter()
        detail = fn()
        report.steps.append(Step(name, time.perf_counter() - start, detail))

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
    return report
