"""Knowledge-transfer stages measured side by side, on the device named in the output.

    PYTHONPATH=. python benchmarks/transfer_speed.py [--device cuda] [--images 512] [--rows 50000] [--k 200]

1. Feature extraction: images/s of `jigsawpp transfer features` (random:alexnet teacher, conv4 pooled to
   5 x 5 x 384, float16 rows) over real photographs (the sample photos scikit-image, scikit-learn and matplotlib
   ship, cut into `--images` random crops and saved as JPEGs), decoding included.
2. k-means: seconds of our `cluster` (reading the folder, k-means, centroids, manifest and plot) against
   `faiss.Clustering` called directly on the same rows (the float16 file loaded as float32, same seed, iterations
   and every point), and the ratio; each in a fresh process (imports done before the clock starts) so that its
   peak resident memory (VmHWM less the resident size after the imports) is its own, shown against the feature
   file's size. Ours runs twice: rows in memory
   (the default when they fit) and streamed from the memmap (`in_memory="no"`).

The rows for k-means are `--rows` x 9,600 values drawn around `--k` random centres (a stand-in with ImageNet's row
width); the images for step 1 are real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            model = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def sample_photos(*, few: bool = False):
    """Real colour photographs shipped by the dependencies, as BGR uint8 arrays (`few`: matplotlib's only)."""
    import cv2
    import numpy as np

    from jigsawpp.images import demo_photo_path

    photos = [cv2.imread(str(demo_photo_path()))[:, :, ::-1]]
    if few:
        return [np.ascontiguousarray(p[:, :, ::-1]) for p in photos]
    try:
        from skimage import data as skdata

        photos += [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        photos += list(load_sample_images().images)
    except ImportError:
        pass
    return [np.ascontiguousarray(p[:, :, ::-1]) for p in photos]


def make_images(folder: Path, count: int, seed: int = 0, *, few: bool = False) -> None:
    """`count` random crops (at least 40% of each side) of the sample photos, 256-500 px, as JPEG class folders."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    photos = sample_photos(few=few)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        side = int(rng.integers(256, 501))
        crop = cv2.resize(photo[top:top + ch, left:left + cw], (side, int(side * ch / cw)))
        target = folder / f"photo{i % len(photos)}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])


def bench_features(work: Path, *, images: int, device: str, workers: int, batch: int) -> dict:
    from jigsawpp.transfer.features import FeatureConfig, ModelFeatures, extract_features
    from jigsawpp.transfer.store import images_from_data
    from jigsawpp.transfer.teacher import load_teacher

    make_images(work / "photos", images)
    listing = images_from_data(work / "photos")
    config = FeatureConfig(batch_size=batch, workers=workers)
    extractor = ModelFeatures(load_teacher("random:alexnet"), config)
    start = time.perf_counter()
    result = extract_features(extractor, listing, work / "features", config=config, device=device, progress=False)
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": round(seconds, 2), "images_per_second": round(images / seconds, 1),
            "row": result.shape[1], "file_mb": round((work / "features" / "features.npy").stat().st_size / 1e6, 1)}


def make_rows(folder: Path, *, rows: int, dim: int, k: int, seed: int = 0) -> Path:
    import numpy as np

    from jigsawpp.transfer.store import ImageList, write_feature_array

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, size=(k, dim)).astype(np.float32)
    data = centres[rng.integers(0, k, size=rows)] + rng.normal(0.0, 1.0, size=(rows, dim)).astype(np.float32)
    names = ImageList(folder, tuple(f"row{i:07d}" for i in range(rows)))
    write_feature_array(folder / "rows", data, names, identity={"kind": "benchmark", "rows": rows, "dim": dim})
    return folder / "rows"


def _status_mb(key: str) -> float:
    """A /proc/self/status figure in MB: VmHWM (peak resident set; ru_maxrss would include the parent's size at fork
    time) or VmRSS (now). Resident memory includes the pages of a memmapped file that were read (reclaimable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, feats: str, out: str, k: int, niter: int) -> None:
    """One k-means in this process, after its imports; prints {"seconds", "faiss_seconds", "peak_rss_mb"}."""
    import faiss
    import numpy as np

    from jigsawpp.transfer.kmeans import KMeansConfig, cluster
    from jigsawpp.transfer.store import open_features

    if mode != "faiss":
        import matplotlib.pyplot  # noqa: F401  (imports are not what is measured)
        import torch  # noqa: F401
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    if mode == "faiss":
        x = np.load(Path(feats) / "features.npy", allow_pickle=False).astype(np.float32)
        clus = faiss.Clustering(x.shape[1], k)
        clus.niter, clus.seed, clus.max_points_per_centroid = niter, 1234, -(-len(x) // k)
        clus.train(x, faiss.IndexFlatL2(x.shape[1]))
        inner = clus.iteration_stats.at(clus.iteration_stats.size() - 1).time
    else:
        cluster(open_features(feats), out, config=KMeansConfig(k=k, niter=niter, gpus=0, verbose=False,
                                                               in_memory="yes" if mode == "ours" else "no"))
        inner = json.loads((Path(out) / "manifest.json").read_text())["iterations"][-1]["seconds"]
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "faiss_seconds": inner, "peak_rss_mb": _status_mb("VmHWM") - baseline}))


def run_child(mode: str, feats: Path, out: Path, k: int, niter: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(feats), str(out), str(k), str(niter)],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=9600)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--niter", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, feats, out, k, niter = args.child
        child(mode, feats, out, int(k), int(niter))
        return 0
    report: dict = {"device": device_name(args.device)}
    print(f"device: {report['device']}")
    with tempfile.TemporaryDirectory(prefix="transfer_speed_") as tmp:
        work = Path(tmp)
        f = report["features"] = bench_features(work, images=args.images, device=args.device,
                                                workers=args.workers, batch=args.batch)
        print(f"features: {f['images']} real-photo crops -> {f['row']} values/row: {f['images_per_second']} images/s "
              f"({f['seconds']} s, decoding included)")
        feats = make_rows(work, rows=args.rows, dim=args.dim, k=args.k)
        size_mb = (feats / "features.npy").stat().st_size / 1e6
        runs = {mode: run_child(mode, feats, work / f"c_{mode}", args.k, args.niter)
                for mode in ("faiss", "ours", "ours_streamed")}
        base = runs["faiss"]["seconds"]
        report["kmeans"] = {"rows": args.rows, "dim": args.dim, "k": args.k, "niter": args.niter,
                            "feature_file_mb": round(size_mb, 1), **{
                                m: {"seconds": round(r["seconds"], 2), "ratio_to_faiss": round(r["seconds"] / base, 3),
                                    "faiss_seconds": round(r["faiss_seconds"], 2),
                                    "peak_rss_mb": round(r["peak_rss_mb"], 1)} for m, r in runs.items()}}
        print(f"k-means: {args.rows} x {args.dim} float16 rows ({size_mb:.0f} MB file), k = {args.k}, "
              f"{args.niter} iterations, faiss on the CPU")
        for mode, label in (("faiss", "faiss called directly (float32 copy)"), ("ours", "ours, rows in memory"),
                            ("ours_streamed", "ours, streamed from the memmap")):
            r = report["kmeans"][mode]
            print(f"  {label:<38} {r['seconds']:8.2f} s  x{r['ratio_to_faiss']:.3f}  (inside faiss "
                  f"{r['faiss_seconds']:.2f} s)  peak RSS {r['peak_rss_mb']:7.0f} MB "
                  f"({r['peak_rss_mb'] / size_mb:.2f} x the file)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
