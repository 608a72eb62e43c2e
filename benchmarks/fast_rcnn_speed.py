"""Fast R-CNN (CaffeNet) speed: seconds per training iteration and per test image, single- and multi-scale,
printed beside the figures Girshick published for the same network on an NVIDIA K40.

Published (Girshick, "Fast R-CNN", ICCV 2015; "S" = CaffeNet, proposal time excluded, K40):
  * Table 4: test 0.10 s/image at one scale (0.06 with truncated SVD, not used here); training 1.2 hours in all,
    which over fast-rcnn's default 40000 iterations (tools/train_net.py) is 0.108 s/iteration (our division);
  * Table 7: test 0.39 s/image with the five-scale pyramid.
Those figures were not re-checked against the paper's text when this script was written: treat them as the
paper's as best recalled, and the per-iteration one as derived.

Workload, as fast-rcnn's: a 500x375 photo (VOC's typical size; matplotlib's sample photo resized), 2000 proposals
(selective search gives about that many), mini-batches of 2 images x 64 ROIs, the full test post-processing
(per-class top 100, NMS 0.3). Weights are seeded, not trained, which does not change the arithmetic.

Usage: python benchmarks/fast_rcnn_speed.py [--device cuda] [--iters 20] [--images 10] [--amp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import sync  # noqa: E402

PUBLISHED_K40 = {  # seconds; see the module docstring
    ("train", "single"): 1.2 * 3600 / 40_000,
    ("test", "single"): 0.10,
    ("test", "multi"): 0.39,
}




def _photo(tmp: Path) -> Path:
    import cv2

    from jigsawpp.images import demo_photo_path

    image = cv2.resize(cv2.imread(str(demo_photo_path())), (500, 375), interpolation=cv2.INTER_AREA)
    path = tmp / "photo.jpg"
    cv2.imwrite(str(path), image)
    return path


def _roidb(path: Path, cfg, seed: int = 0):
    import numpy as np

    from eval.detection.roidb import add_bbox_regression_targets, build_entry, flipped_entry

    rng = np.random.RandomState(seed)
    corners = rng.uniform(0, 1, size=(2000, 4)) * [500, 375, 500, 375]
    proposals = np.round(np.concatenate([corners[:, :2].clip(max=corners[:, 2:]), np.maximum(corners[:, :2],
                                                                                             corners[:, 2:])], 1))
    gt = np.array([[50, 40, 200, 300], [220, 100, 480, 360], [10, 10, 120, 90]], float)
    entry = build_entry(image_id="photo", image_path=str(path), width=500, height=375, gt_boxes=gt,
                        gt_classes=np.array([15, 12, 5]), proposals=proposals)
    entries, stats = add_bbox_regression_targets([entry, flipped_entry(entry)], cfg)
    return entries, stats, proposals


def _model(seed: int = 0):
    import math

    import torch

    from eval.detection.model import CONV_LAYERS, ConvWeights, build_detector

    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in CONV_LAYERS:
        shape = shapes[layer]
        fan_in = math.prod(shape[1:])
        tensors[f"{layer}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        tensors[f"{layer}.bias"] = torch.zeros(shape[0])
    return build_detector(ConvWeights(tensors=tensors, choice="conv", source="seeded He weights"), seed=seed)


def time_training(cfg, entries, device, iters: int, *, precision: str | None = None,
                  warmup: int = 3) -> tuple[float, float]:
    """(median seconds per SGD step, last loss). Data loading is included, as fast-rcnn's step includes its Python
    data layer. `precision`: "fp32", "bf16" or "fp16" autocast (fp16 with loss scaling); default from ``cfg.amp``."""
    import torch

    from eval.detection.model import fast_rcnn_loss
    from eval.detection.sampling import RoiSampler, load_minibatch
    from eval.detection.solver import CaffeSGD

    precision = precision or ("bf16" if cfg.amp else "fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = _model().to(device).train()
    specs = model.param_specs(freeze_conv1=cfg.freeze_conv1)
    for s in specs:
        s.parameter.requires_grad_(s.lr_mult != 0)
    optimizer = CaffeSGD(specs, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sampler = RoiSampler(entries, cfg)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    times, loss_value = [], float("nan")
    for step in range(iters + warmup):
        sync(device)
        start = time.perf_counter()
        batch = load_minibatch(sampler.next_plan(), entries, cfg).to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(batch.data, batch.rois)
        loss = fast_rcnn_loss(out, batch.labels, batch.bbox_targets, batch.bbox_weights).total
        scaler.scale(loss).backward()
        scaler.step(optimizer, cfg.base_lr)
        scaler.update()
        sync(device)
        loss_value = loss.item()
        if step >= warmup:  # warm-up: allocator, cuDNN autotuning
            times.append(time.perf_counter() - start)
    return statistics.median(times), loss_value


def time_testing(cfg, path: Path, proposals, device, images: int, *, warmup: int = 2) -> float:
    """Median seconds per image: read, pyramid, forward, decode, per-class top 100 and NMS 0.3."""
    import torch

    from eval.detection.boxes import nms
    from eval.detection.roidb import build_entry
    from eval.detection.test import image_candidates

    model = _model().to(device).eval()
    entry = build_entry(image_id="photo", image_path=str(path), width=500, height=375, gt_boxes=[],
                        gt_classes=[], proposals=proposals)
    times = []
    for k in range(images + warmup):
        sync(device)
        start = time.perf_counter()
        for dets in image_candidates(model, entry, cfg, device=device)[1:]:
            t = torch.from_numpy(dets)
            nms(t[:, :4], t[:, 4], cfg.test_nms)
        sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    import tempfile

    import torch

    from eval.detection.config import protocol

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20, help="timed training iterations per setting")
    parser.add_argument("--images", type=int, default=10, help="timed test images per setting")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _photo(Path(tmp))
        for scale, proto in (("single", "noroozi18-ss"), ("multi", "noroozi18-ms")):
            cfg = protocol(proto, amp=args.amp)
            entries, _, proposals = _roidb(path, cfg)
            train, _ = time_training(cfg, entries, device, args.iters)
            test = time_testing(cfg, path, proposals, device, args.images)
            rows.append((scale, cfg, train, test))
    print(f"Fast R-CNN CaffeNet speed on {name}{' with bfloat16 autocast' if args.amp else ''} "
          f"(median; published: NVIDIA K40, Caffe)")
    print(f"{'setting':<52} {'measured s':>10} {'K40 s':>8} {'K40 / ours':>10}")
    for scale, cfg, train, test in rows:
        label_train = f"train s/iter, {scale} scale ({'+'.join(map(str, cfg.train_scales))})"
        label_test = f"test s/image, {scale} scale ({'+'.join(map(str, cfg.test_scales))})"
        for label, what, value in ((label_train, "train", train), (label_test, "test", test)):
            ref = PUBLISHED_K40.get((what, scale))
            ref_text = f"{ref:8.3f}" if ref else f"{'-':>8}"
            ratio = f"{ref / value:10.2f}" if ref else f"{'-':>10}"
            print(f"{label:<52} {value:10.3f} {ref_text} {ratio}")
    print("K40 train figure derived: 1.2 h (Table 4) / 40000 iterations; test figures: Tables 4 and 7.")


if __name__ == "__main__":
    main()
