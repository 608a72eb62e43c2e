"""Forward time of an exported ONNX model in onnxruntime (CPU) against the PyTorch CaffeNet it came from.

Both run side by side in one process on the same number of threads (torch.set_num_threads and ORT's
intra_op_num_threads; ORT's inter-op pool is 1 thread), on the same seeded input, after one warm-up run each, in
alternation; the reported time is the median of the repeats, the ratio is ORT / torch (< 1: ORT is faster).
Nets: CaffeNet (batch 8 at 227 x 227) and VGG16 (batch 2 at 224 x 224), with seeded weights, exported by
`caffe_import.export_onnx`.

Also times release zips converted end to end (`jigsawpp.release.convert_release`: read, find, collapse the 9
towers, the variants, safetensors, ONNX export and onnxruntime parity, pseudo-labels), on release-shaped zips
built by `jigsawpp.fixtures.make_release_zip`: one like the authors' `jigsawpp.zip` (the 9-tower CFN caffemodel,
~340 MB) and one like a cluster-classification zip (AlexNet with fc6..fc8, ~250 MB), each with ImageNet-size
pseudo-label lists (1,281,167 train and 427,055 val lines). Each zip is converted twice: with the caffemodel
member parsed by protobuf alone (the path `parse_caffemodel` falls back to for bytes that do not walk, and the
only one before the wire path) and with the wire path (`caffe_import.wire`: float payloads lifted into arrays
before protobuf parses the rest); the ratio is protobuf-only / wire (> 1: the wire path is faster). `inspect`
is the zip pass alone (hashing, caffemodel, label lists), `convert` all of it, `caffemodel` the caffemodel
member alone (read, parse, tower check, every blob's values as arrays; MB/s of the member). Times are the
minimum over repeats, the modes alternating, so that load from other processes hits both alike; the CPU
seconds of this process (all its threads) are printed too, as a check on a shared machine.

Usage: python benchmarks/onnx_speed.py [--workdir DIR] [--repeats N] [--threads N] [--skip-zip] [--skip-forward]
"""

from __future__ import annotations

import argparse
import contextlib
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


@contextlib.contextmanager
def protobuf_only():
    """Inside: release zips parse their caffemodel with protobuf alone (the wire walk refuses every member)."""
    import jigsawpp.release_scan as scan
    from caffe_import.wire import WireError

    def refuse(*args, **kwargs):
        raise WireError("protobuf-only timing")

    original = scan.lift_blob_data
    scan.lift_blob_data = refuse
    try:
        yield
    finally:
        scan.lift_blob_data = original


def caffemodel_stage(zip_path: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds (min of `repeats`) to read the zip's caffemodel member, parse it, describe it (tower check) and
    collect every blob's float32 values, as inspect and convert do, per mode."""
    import numpy as np

    from jigsawpp.release_scan import describe_caffemodel, parse_caffemodel
    from jigsawpp.safezip import SafeZip

    best = {"protobuf": float("inf"), "wire": float("inf")}
    with SafeZip(zip_path) as archive:
        member = max(archive.members, key=lambda m: m.size)
        for _ in range(repeats):
            for mode, context in (("protobuf", protobuf_only), ("wire", contextlib.nullcontext)):
                with context():
                    start = time.perf_counter()
                    info = describe_caffemodel(member.name, *parse_caffemodel(member.name, archive.read(member.name)))
                    weights = info.weights_for(list(info.layers), collapsed=False)
                    total = 0
                    for lp in weights.net.layer:
                        for i, blob in enumerate(lp.blobs):
                            values = weights.arrays.get((lp.name, i))
                            total += (values if values is not None else np.asarray(blob.data, np.float32)).size
                    best[mode] = min(best[mode], time.perf_counter() - start)
    return {f"caffemodel_{mode}_s": s for mode, s in best.items()} | {"caffemodel_mb": member.size / 1e6}


def zip_conversion(workdir: Path, kind: str, repeats: int) -> dict:
    """Build a release-shaped zip of `kind` with ImageNet-size label lists; time inspect and convert on it (min of
    `repeats`, the two modes alternating), with protobuf alone and with the wire path."""
    import shutil

    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.release import convert_release, inspect_release

    zip_path = workdir / f"{kind}.zip"
    start = time.perf_counter()
    make_release_zip(zip_path, kind, layout="nested", label_format="txt", n_labels=1_281_167)
    row: dict = {"kind": kind, "zip_mb": zip_path.stat().st_size / 1e6, "build_s": time.perf_counter() - start}
    row.update(caffemodel_stage(zip_path))
    out = workdir / f"{kind}_converted"
    for _ in range(repeats):
        for mode, context in (("protobuf", protobuf_only), ("wire", contextlib.nullcontext)):
            with context():
                for stage in ("inspect", "convert"):
                    shutil.rmtree(out, ignore_errors=True)
                    start, cpu = time.perf_counter(), time.process_time()
                    result = inspect_release(zip_path) if stage == "inspect" else convert_release(zip_path, out)
                    for key, value in ((f"{stage}_{mode}_s", time.perf_counter() - start),
                                       (f"{stage}_{mode}_cpu_s", time.process_time() - cpu)):
                        row[key] = min(row.get(key, float("inf")), value)
    row["variants"] = list(result["variants"])   # the last conversion's manifest
    row["output_mb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    shutil.rmtree(out, ignore_errors=True)
    zip_path.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where the .onnx files go (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per net and runtime (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: torch's)")
    parser.add_argument("--skip-zip", action="store_true", help="skip the end-to-end release-zip conversions")
    parser.add_argument("--skip-forward", action="store_true", help="skip the ONNX vs PyTorch forward timing")
    parser.add_argument("--zip-repeats", type=int, default=2, help="conversions per zip and mode (min reported)")
    args = parser.parse_args()
    import torch

    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = [] if args.skip_forward else forward_comparison(workdir, args.repeats, threads)
        kinds = [] if args.skip_zip else ["jigsawpp", "cc"]
        zip_rows = [zip_conversion(workdir, kind, args.zip_repeats) for kind in kinds]
    if rows:
        print(f"threads: {threads} (torch and onnxruntime intra-op), median of {args.repeats} runs after 1 warm-up")
    for row in rows:
        batch = "x".join(str(d) for d in row["input"])
        print(f"{row['net']:<28} input {batch:<14} torch {row['torch_s'] * 1e3:8.1f} ms   "
              f"onnxruntime[{row['provider']}] {row['ort_s'] * 1e3:8.1f} ms   ort/torch {row['ratio']:.2f}x")

    for z in zip_rows:
        mb = z["zip_mb"]
        print(f"release zip {z['kind']}: {mb:.0f} MB (built in {z['build_s']:.1f} s), variants {z['variants']}, "
              f"{z['output_mb']:.0f} MB written")
        for stage in ("caffemodel", "inspect", "convert"):
            pb, wire = z[f"{stage}_protobuf_s"], z[f"{stage}_wire_s"]
            size = z["caffemodel_mb"] if stage == "caffemodel" else mb
            cpu = (f"   CPU {z[f'{stage}_protobuf_cpu_s']:.2f} s / {z[f'{stage}_wire_cpu_s']:.2f} s"
                   if f"{stage}_wire_cpu_s" in z else "")
            print(f"  {stage:<10} protobuf alone {pb:6.2f} s ({size / pb:5.0f} MB/s)   wire path {wire:6.2f} s "
                  f"({size / wire:5.0f} MB/s)   protobuf/wire {pb / wire:.2f}x{cpu}")


if __name__ == "__main__":
    main()
