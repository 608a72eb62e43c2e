"""Conversion and forward speed of caffe_import, measured side by side in one run.

1. A VGG16-size caffemodel (~550 MB, seeded weights) is generated once. Then, each in a fresh subprocess so that
   peak memory (VmHWM) is per method: a bare protobuf parse of the file (`NetParameter.ParseFromString`),
   our full `caffe_import.load` (parse + upgrade + graph + weight binding), and OpenCV 4.x `readNetFromCaffe`.
   Ratios are ours / bare parse and ours / OpenCV. Ours can beat the bare parse: `caffe_import.wire` reads the
   weight payloads straight into their arrays and lets protobuf parse only the few KB around them.
2. Forward time of the converted CaffeNet against a hand-written `nn.Sequential` of the same layers with the
   same weights (aim: <= 1.05x), batch 8 at 227x227, median of repeated runs, both on the same threads.

Usage: python benchmarks/convert_speed.py [--workdir DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child
    of this (by then ~1.6 GB) benchmark process would report at least its parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(method: str, prototxt_path: str, caffemodel: str) -> dict:
    """Runs inside a subprocess: time one way of loading the model (imports and a small warm-up load done before the
    clock starts), report seconds and peak RSS."""
    import cv2

    import caffe_import
    from caffe_import.proto import caffe_pb2

    def bare_parse() -> None:
        caffe_pb2.NetParameter().ParseFromString(Path(caffemodel).read_bytes())

    # One small load first, so torch's one-time lazy initialisation is not charged to the file being measured.
    import prototxt

    caffe_import.load(prototxt.path("alexnet/deploy_conv1s2.prototxt"))

    loaders = {
        "protobuf": bare_parse,
        "caffe_import": lambda: caffe_import.load(prototxt_path, caffemodel),
        "opencv": lambda: cv2.dnn.readNetFromCaffe(prototxt_path, caffemodel),
        "baseline": lambda: None,  # the imports and the warm-up alone
    }
    start = time.perf_counter()
    loaders[method]()
    seconds = time.perf_counter() - start
    peak_mb = _peak_rss_mb()
    return {"method": method, "seconds": seconds, "peak_rss_mb": peak_mb}


def _run_sub(method: str, prototxt_path: Path, caffemodel: Path) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.convert_speed import _measure; "
            f"print(json.dumps(_measure({method!r}, {str(prototxt_path)!r}, {str(caffemodel)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def conversion(workdir: Path, repeats: int) -> None:
    import prototxt
    from jigsawpp.fixtures import seeded_caffemodel

    deploy = prototxt.path("vgg16/deploy.prototxt")
    caffemodel = workdir / "vgg16_seeded.caffemodel"
    if not caffemodel.exists():
        start = time.perf_counter()
        seeded_caffemodel(deploy, caffemodel, seed=0)
        print(f"generated {caffemodel.name}: {caffemodel.stat().st_size / 1e6:.0f} MB in "
              f"{time.perf_counter() - start:.1f} s (our writer)")
    results: dict[str, list[dict]] = {m: [] for m in ("protobuf", "caffe_import", "opencv")}
    for _ in range(repeats):
        for method in results:
            results[method].append(_run_sub(method, deploy, caffemodel))
    base = _run_sub("baseline", deploy, caffemodel)["peak_rss_mb"]
    best = {m: min(r["seconds"] for r in rs) for m, rs in results.items()}
    peak = {m: max(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}
    size_mb = caffemodel.stat().st_size / 1e6
    print(f"\nVGG16 caffemodel, {size_mb:.0f} MB (best of {repeats}; peak RSS per fresh process, of which the "
          f"imports and warm-up alone take {base:.0f} MB)")
    print(f"  {'method':<40}{'seconds':>9}{'peak RSS MB':>13}{'above imports':>15}{'ratio':>9}")
    rows = [("bare protobuf ParseFromString", "protobuf"), ("caffe_import.load (parse+convert+bind)", "caffe_import"),
            ("OpenCV 4.x readNetFromCaffe", "opencv")]
    for label, m in rows:
        print(f"  {label:<40}{best[m]:9.2f}{peak[m]:13.0f}{peak[m] - base:15.0f}{best[m] / best['caffe_import']:9.2f}")
    print(f"  caffe_import / bare parse = {best['caffe_import'] / best['protobuf']:.2f}x,  "
          f"caffe_import / OpenCV = {best['caffe_import'] / best['opencv']:.2f}x")


def forward(repeats: int) -> None:
    import torch
    from torch import nn

    import caffe_import
    import prototxt
    from jigsawpp.fixtures import randomize_weights

    net = randomize_weights(caffe_import.load(prototxt.path("caffenet/deploy.prototxt")), seed=0)

    def conv(name: str, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Conv2d:
        src = net.module_of(name)
        w = src.weight
        m = nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2:], stride=stride, padding=pad, groups=groups)
        m.weight.data.copy_(w)
        m.bias.data.copy_(src.bias)
        return m

    def fc(name: str) -> nn.Linear:
        src = net.module_of(name)
        m = nn.Linear(src.weight.shape[1], src.weight.shape[0])
        m.weight.data.copy_(src.weight)
        m.bias.data.copy_(src.bias)
        return m

    def lrn() -> nn.Module:
        return nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)

    def pool() -> nn.Module:
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    hand = nn.Sequential(
        conv("conv1", 4), nn.ReLU(True), pool(), lrn(),
        conv("conv2", pad=2, groups=2), nn.ReLU(True), pool(), lrn(),
        conv("conv3", pad=1), nn.ReLU(True), conv("conv4", pad=1, groups=2), nn.ReLU(True),
        conv("conv5", pad=1, groups=2), nn.ReLU(True), pool(), nn.Flatten(1),
        fc("fc6"), nn.ReLU(True), nn.Dropout(0.5), fc("fc7"), nn.ReLU(True), nn.Dropout(0.5), fc("fc8"), nn.Softmax(1),
    ).eval()
    x = torch.randn(8, 3, 227, 227)
    with torch.inference_mode():
        diff = (hand(x) - net(data=x)["prob"]).abs().max().item()
        times: dict[str, list[float]] = {"converted": [], "hand": []}
        for _ in range(2):
            net(data=x), hand(x)
        for _ in range(repeats):
            for label, fn in (("converted", lambda: net(data=x)), ("hand", lambda: hand(x))):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
    conv_t, hand_t = statistics.median(times["converted"]), statistics.median(times["hand"])
    print(f"\nCaffeNet forward, batch 8 at 227x227, {torch.get_num_threads()} threads, median of {repeats} "
          f"(outputs agree to {diff:.1e})")
    print(f"  converted CaffeNet {conv_t * 1000:8.1f} ms")
    print(f"  nn.Sequential      {hand_t * 1000:8.1f} ms")
    print(f"  ratio converted / hand-written = {conv_t / hand_t:.3f}x (aim <= 1.05x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to keep the generated caffemodel")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-conversion", action="store_true")
    args = parser.parse_args()
    if not args.skip_conversion:
        if args.workdir is None:
            with tempfile.TemporaryDirectory() as tmp:
                conversion(Path(tmp), args.repeats)
        else:
            args.workdir.mkdir(parents=True, exist_ok=True)
            conversion(args.workdir, args.repeats)
    forward(max(10, args.repeats * 5))


if __name__ == "__main__":
    main()
