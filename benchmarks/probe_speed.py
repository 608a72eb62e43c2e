"""Probe speed, measured side by side: feature extraction against a plain torchvision AlexNet, head training, and
the image pipeline that has to feed them.

* extraction: images/s of the probes' feature taps (frozen CaffeAlexNet conv1..conv5 with Caffe's LRN and groups,
  plus the five bilinear resizes, one forward) against ``torchvision.models.alexnet()`` (all layers, random
  weights) on the same device, batch and precision. The ratio should be >= 0.9: the taps add no cost beyond the
  network itself.
* head training: SGD iterations/s of the five linear heads (BatchNorm + 9600/9216 x 1000 InnerProduct each,
  Caffe's solver) on cached features, and the number of samples/s that means.
* decoding: images/s of the training pipeline (JPEG read, decode, 256x256 warp, random 227 crop, mirror, mean) with
  N DataLoader workers on ImageNet-sized JPEGs, and, on CUDA, torchvision's GPU JPEG decoder. Extraction at X
  images/s needs a pipeline of at least X images/s, or the GPU waits.

Usage: python benchmarks/probe_speed.py [--device cuda] [--batch 256] [--amp bf16] [--workers 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_seconds  # noqa: E402


def _autocast(device, amp: str):
    from eval.probes.extract import autocast_context

    return autocast_context(device, amp)


def extraction_rate(device, *, batch: int = 256, amps: tuple[str, ...] = ("off",), reps: int = 10,
                    size: int = 227) -> dict:
    """{amp: {"taps_images_per_s", "torchvision_images_per_s", "ratio"}} for one batch of random images."""
    import torch
    import torchvision

    from eval.probes.taps import ProbeTaps
    from jigsawpp.models import AlexNetConfig, CaffeAlexNet

    torch.manual_seed(0)
    trunk = CaffeAlexNet(AlexNetConfig(fc6=None, fc7=None, num_classes=None)).eval()
    taps = ProbeTaps(trunk, input_size=size).to(device)
    plain = torchvision.models.alexnet().eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device) * 50
    out = {}
    for amp in amps:
        def run(module, amp=amp):
            with torch.no_grad(), _autocast(device, amp):
                return module(x)

        warmup = 1 if reps <= 2 else 3
        t_taps = median_seconds(device, lambda: run(taps), warmup=warmup, reps=reps)
        t_plain = median_seconds(device, lambda: run(plain), warmup=warmup, reps=reps)
        out[amp] = {"batch": batch, "taps_images_per_s": batch / t_taps, "torchvision_images_per_s": batch / t_plain,
                    "ratio": t_plain / t_taps}
    return out


def head_training_rate(device, *, batch: int = 64, amp: str = "off", iters: int = 20, classes: int = 1000) -> dict:
    """SGD iterations/s of the five heads on random cached-feature batches (Caffe's SGD, lr 0.01)."""
    import torch

    from eval.probes.heads import MultiHeadProbe, probe_loss
    from jigsawpp.engine.solver import CaffeSGD, param_specs

    shapes = {"conv1": (96, 10, 10), "conv2": (256, 6, 6), "conv3": (384, 5, 5), "conv4": (384, 5, 5),
              "conv5": (256, 6, 6)}
    heads = MultiHeadProbe(shapes, classes).to(device).train()
    optimizer = CaffeSGD(param_specs(heads), momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = {t: torch.rand((batch, *s), generator=g).to(device) * 5 for t, s in shapes.items()}
    labels = torch.randint(0, classes, (batch,), generator=g).to(device)

    def one_step():
        with _autocast(device, amp):
            losses = probe_loss(heads(feats), labels)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step(0.01)
        return losses["loss"]

    seconds = median_seconds(device, one_step, warmup=2 if iters > 2 else 1, reps=iters)
    return {"batch": batch, "amp": amp, "iters_per_s": 1 / seconds, "samples_per_s": batch / seconds,
            "last_loss": float(one_step().detach())}


def _jpegs(folder: Path, count: int) -> list:
    """`count` ImageNet-sized JPEGs (500x375, quality 90) cut from matplotlib's sample photo at shifted offsets."""
    import cv2
    import numpy as np

    from jigsawpp.data import LabeledImage
    from jigsawpp.images import demo_photo_path

    photo = cv2.imread(str(demo_photo_path()))
    big = cv2.resize(photo, (700, 525), interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        y, x = int(rng.integers(0, 150)), int(rng.integers(0, 200))
        path = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(path), big[y:y + 375, x:x + 500], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(LabeledImage(str(path), i % 10))
    return out


def decode_rate(*, workers: int = 4, images: int = 256, batch: int = 64) -> dict:
    """Images/s of the probes' training pipeline through a DataLoader with `workers` processes."""
    from torch.utils.data import DataLoader

    from eval.probes.data import TrainViews
    from jigsawpp.constants import IMAGENET_MEAN_BGR
    from jigsawpp.data import ImageDataset

    with tempfile.TemporaryDirectory() as tmp:
        samples = _jpegs(Path(tmp), images)
        dataset = ImageDataset(samples, TrainViews(mean_bgr=IMAGENET_MEAN_BGR, image_size=256, crop_size=227,
                                                   mirror=True))
        loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
        start = time.perf_counter()
        n = sum(int(x.shape[0]) for x, _, _ in loader)
        seconds = time.perf_counter() - start
    return {"workers": workers, "images": n, "images_per_s": n / seconds}


def gpu_decode_rate(device, *, images: int = 256) -> dict:
    """Images/s of torchvision.io.decode_jpeg on `device` (batched) for the same JPEGs, decode only."""
    import torch
    from torchvision.io import decode_jpeg

    with tempfile.TemporaryDirectory() as tmp:
        samples = _jpegs(Path(tmp), images)
        data = [torch.frombuffer(bytearray(Path(s.path).read_bytes()), dtype=torch.uint8) for s in samples]
    seconds = median_seconds(device, lambda: decode_jpeg(data, device=device), warmup=1, reps=3)
    return {"images": images, "images_per_s": images / seconds}


def photo_folder(root: Path, *, per_class: int = 8, size: int = 256) -> Path:
    """A two-class ImageFolder (train/ and val/) cut from matplotlib's sample photo: class "upright" crops and
    class "flipped" (the same crops upside down), `size` x `size` JPEGs. A real photo, learnable, no download."""
    import cv2
    import numpy as np

    from jigsawpp.images import demo_photo_path

    photo = cv2.imread(str(demo_photo_path()))
    rng = np.random.default_rng(0)
    h, w = photo.shape[:2]
    side = min(h, w) * 3 // 4
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for name in ("upright", "flipped"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(root / split / "upright" / f"{i:03d}.jpg"), crop)
            cv2.imwrite(str(root / split / "flipped" / f"{i:03d}.jpg"), crop[::-1])
    return root


def probe_model(root: Path, *, seed: int = 0) -> Path:
    """The bundled CaffeNet conv layers with seeded weights, converted as `jigsawpp convert --prototxt` does."""
    import warnings

    import prototxt
    from jigsawpp.convert import convert_caffe
    from jigsawpp.fixtures import seeded_caffemodel

    definition = prototxt.path("alexnet/conv_conv1s4.prototxt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded_caffemodel(definition, root / "w.caffemodel", seed=seed)
        return convert_caffe(definition, root / "w.caffemodel", root / "model").out_dir


def time_linear_run(device, root: Path, *, amp: str = "off", iters: int = 50, batch: int = 64,
                    image_size: int = 256, crop: int = 227, per_class: int = 64, workers: int = 4) -> dict:
    """`run_linear` end to end with a feature cache on `device`: extraction images/s, training s/iteration, and
    the top-1 per tap on the photo folder (two classes, so chance is 50%)."""
    from eval.probes.config import LinearProbeConfig
    from eval.probes.linear import run_linear

    data = photo_folder(root / "data", per_class=per_class, size=image_size)
    model = probe_model(root)
    cfg = LinearProbeConfig(image_size=image_size, crop_size=crop, batch_size=batch, max_iter=iters, amp=amp,
                            lr_policy="fixed", stepvalues=(), base_lr=0.001, snapshot_iters=iters, display=iters)
    result = run_linear(model, data, root / "out", cfg, dataset="folder", cache_dir=root / "cache", device=device,
                        workers=workers, progress=False)
    extracted = sum(r["images_extracted"] for r in result.extraction.values())
    extract_s = sum(r["seconds"] for r in result.extraction.values())
    log = [json.loads(line) for line in (root / "out" / "train_log.jsonl").read_text().splitlines()]
    return {"amp": amp, "extraction_images_per_s": extracted / extract_s, "images": extracted,
            "train_seconds_per_iter": log[-1]["seconds_per_iter"], "batch": batch, "iterations": result.iterations,
            "top1": {t: a.top1 for t, a in result.accuracy.items()}}


def time_nonlinear(device, root: Path, *, amp: str = "off", iters: int = 10, batch: int = 64, image_size: int = 256,
                   crop: int = 227, fc_units: int = 4096, per_class: int = 64, workers: int = 4) -> dict:
    """`run_nonlinear` (conv3 frozen) for a few iterations on `device`: training s/iteration and images/s."""
    from eval.probes.config import NonlinearConfig
    from eval.probes.nonlinear import run_nonlinear

    data = root / "data" if (root / "data").is_dir() else photo_folder(root / "data", per_class=per_class,
                                                                        size=image_size)
    model = root / "model" if (root / "model").is_dir() else probe_model(root)
    cfg = NonlinearConfig(freeze_upto="conv3", image_size=image_size, crop_size=crop, fc_units=fc_units,
                          batch_size=batch, max_iter=iters, amp=amp, snapshot_iters=iters, display=iters)
    out = root / f"nonlinear_{amp}"
    result = run_nonlinear(model, data, out, cfg, dataset="folder", device=device, workers=workers, progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    seconds = log[-1]["seconds_per_iter"]
    return {"amp": amp, "train_seconds_per_iter": seconds, "images_per_s": batch / seconds,
            "last_loss": log[-1]["loss"], "top1_10crop": result.accuracy.top1 if result.accuracy else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch", type=int, default=None, help="extraction batch (default 256 on CUDA, 32 on CPU)")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers for the decoding figure")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 32)
    reps = args.reps or (10 if cuda else 3)
    report = {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "torch_threads": torch.get_num_threads()}
    report["extraction"] = extraction_rate(device, batch=batch, amps=(args.amp,), reps=reps)[args.amp]
    report["head_training"] = head_training_rate(device, amp=args.amp, iters=reps * 2)
    report["decoding"] = decode_rate(workers=args.workers, images=128 if not cuda else 512)
    if cuda:
        report["gpu_decoding"] = gpu_decode_rate(device, images=512)
    e, h, d = report["extraction"], report["head_training"], report["decoding"]
    print(f"device {report['device']}, batch {batch}, amp {args.amp}")
    print(f"  extraction: taps {e['taps_images_per_s']:.0f} img/s, torchvision AlexNet "
          f"{e['torchvision_images_per_s']:.0f} img/s, ratio {e['ratio']:.2f} (>= 0.9 expected)")
    print(f"  head training: {h['iters_per_s']:.1f} it/s at batch {h['batch']} ({h['samples_per_s']:.0f} samples/s)")
    print(f"  decoding (CPU, {d['workers']} workers): {d['images_per_s']:.0f} img/s")
    if cuda:
        print(f"  decoding (GPU decode_jpeg, decode only): {report['gpu_decoding']['images_per_s']:.0f} img/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
