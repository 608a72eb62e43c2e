"""Forward time of an exported ONNX model in onnxruntime (CPU) against the PyTorch CaffeNet it came from.

Both run side by side in one process on the same number of threads (torch.set_num_threads and ORT's
intra_op_num_threads; ORT's inter-op pool is 1 thread), on the same seeded input, after one warm-up run each, in
alternation; the reported time is the median of the repeats, the ratio is ORT / torch (< 1: ORT is faster).
Nets: CaffeNet (batch 8 at 227 x 227) and VGG16 (batch 2 at 224 x 224), with seeded weights, exported by
`caffe_import.export_onnx`.

Also times a release zip converted end to end (`jigsawpp.release.convert_release`: read, find, collapse the 9
towers, two variants, safetensors, ONNX export and onnxruntime parity, pseudo-labels), on a release-shaped zip
built like the authors' `jigsawpp.zip`: the 9-tower caffemodel (~340 MB) plus ImageNet-size pseudo-label lists
(1,281,167 train and 50,000 val lines). The zip's real size is printed; the unzipped payload is ~400 MB.

Usage: python benchmarks/onnx_speed.py [--workdir DIR] [--repeats N] [--threads N] [--skip-zip]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (bundled prototxt, input shape)
NETS = [("caffenet/deploy.prototxt", (8, 3, 227, 227)), ("vgg16/deploy.prototxt", (2, 3, 224, 224))]


def _time_pair(net, session, x, repeats: int) -> tuple[float, float]:
    """(torch seconds, onnxruntime seconds) for one forward pass of the same input."""
    import torch

    tx = torch.from_numpy(x)

    def run_torch() -> None:
        with torch.inference_mode():
            net(data=tx)

    def run_ort() -> None:
        session.run(None, {"data": x})

    # Warm-up (allocators, kernel selection, first-call overhead), then alternate the two so that load from other
    # processes hits both alike.
    run_torch()
    run_ort()
    times: dict[str, list[float]] = {"torch": [], "ort": []}
    for _ in range(repeats):
        for key, fn in (("torch", run_torch), ("ort", run_ort)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return statistics.median(times["torch"]), statistics.median(times["ort"])


def forward_comparison(workdir: Path, repeats: int, threads: int) -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    import caffe_import
    import prototxt
    from jigsawpp.fixtures import randomize_weights

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    rows = []
    for name, shape in NETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = randomize_weights(caffe_import.load(prototxt.path(name)), seed=0).eval()
        path = caffe_import.export_onnx(net, workdir / (name.split("/")[0] + ".onnx"))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = (np.random.default_rng(0).standard_normal(shape) * 50).astype(np.float32)
        torch_s, ort_s = _time_pair(net, session, x, repeats)
        rows.append({"net": name, "input": shape, "torch_s": torch_s, "ort_s": ort_s, "ratio": ort_s / torch_s,
                     "provider": session.get_providers()[0]})
    return rows


def zip_conversion(workdir: Path) -> dict:
    """Build a release-shaped jigsawpp zip with ImageNet-size label lists and time `convert_release` on it."""
    import shutil

    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.release import convert_release

    zip_path = workdir / "jigsawpp.zip"
    start = time.perf_counter()
    make_release_zip(zip_path, "jigsawpp", layout="nested", label_format="txt", n_labels=1_281_167)
    built = time.perf_counter() - start
    out = workdir / "converted"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = convert_release(zip_path, out)
    seconds = time.perf_counter() - start
    payload = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"zip_mb": zip_path.stat().st_size / 1e6, "build_s": built, "convert_s": seconds,
            "variants": list(manifest["variants"]), "output_mb": payload / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where the .onnx files go (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per net and runtime (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: torch's)")
    parser.add_argument("--skip-zip", action="store_true", help="skip the end-to-end release-zip conversion")
    args = parser.parse_args()
    import torch

    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = forward_comparison(workdir, args.repeats, threads)
        zip_row = None if args.skip_zip else zip_conversion(workdir)
    print(f"threads: {threads} (torch and onnxruntime intra-op), median of {args.repeats} runs after 1 warm-up")
    for row in rows:
        batch = "x".join(str(d) for d in row["input"])
        print(f"{row['net']:<28} input {batch:<14} torch {row['torch_s'] * 1e3:8.1f} ms   "
              f"onnxruntime[{row['provider']}] {row['ort_s'] * 1e3:8.1f} ms   ort/torch {row['ratio']:.2f}x")

    if zip_row is not None:
        print(f"release zip end to end: {zip_row['zip_mb']:.0f} MB zip (built in {zip_row['build_s']:.1f} s) -> "
              f"convert_release {zip_row['convert_s']:.1f} s ({zip_row['zip_mb'] / zip_row['convert_s']:.0f} MB/s), "
              f"variants {zip_row['variants']}, {zip_row['output_mb']:.0f} MB written")


if __name__ == "__main__":
    main()
