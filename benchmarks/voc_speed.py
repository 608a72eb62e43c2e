"""VOC classification and FCN segmentation speed: images/s of each protocol's training step and of its testing,
beside a plain torchvision AlexNet forward/backward on the same device (the ratio says what the protocol's own
choices cost: Caffe's layout, the 10 test crops, FCN's pad 100 and full-size images).

Workloads, as the protocols run them (weights seeded, which does not change the arithmetic):
  * reference: torchvision AlexNet, batch 16 at 224 x 224, forward + backward + SGD step; and forward only;
  * classification train: `VOCClassifier` ("all" variant), batch 16 at 227, sigmoid loss, `CaffeSGD` with
    gradient clipping (one update per batch);
  * classification test: 10 random crops per image through the same net (images/s = crops/s / 10);
  * classification data: JPEG decode + random scale/crop/mirror warp of a 500 x 375 photo, per CPU thread;
  * FCN train: `FCNAlexNet` on one 500 x 375 image per pass (VOC's typical size), softmax loss, an update every
    ``iter_size`` = 20 passes (images/s counts passes);
  * FCN test: one forward per 500 x 375 image and the argmax.

Usage: python benchmarks/voc_speed.py [--device cuda] [--iters 10] [--amp bf16] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_seconds  # noqa: E402

PHOTO_SIZE = (500, 375)  # (W, H) of a typical VOC image


def _autocast(device, amp: str):
    import contextlib

    import torch

    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def photo_bgr(size: tuple[int, int] = PHOTO_SIZE):
    """A real photo (matplotlib's sample) resized to ``size`` (W, H), BGR uint8."""
    import cv2

    from jigsawpp.data import read_image_bgr
    from jigsawpp.images import demo_photo_path

    return cv2.resize(read_image_bgr(demo_photo_path()), size, interpolation=cv2.INTER_AREA)


def seeded_transfer_weights(seed: int = 0):
    """conv1..conv5 with He-scaled seeded values in CaffeNet's shapes, as `jigsawpp.transfer_weights` loads them."""
    import math

    import torch

    from jigsawpp.transfer_weights import TransferWeights

    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        tensors[f"{name}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        tensors[f"{name}.bias"] = torch.zeros(shape[0])
    return TransferWeights(tensors=tensors, source="seeded He weights")


def time_reference(device, *, batch: int, size: int, iters: int, warmup: int, amp: str = "off") -> dict[str, float]:
    """torchvision AlexNet: images/s of forward + backward + SGD step, and of forward alone."""
    import torch
    import torchvision

    model = torchvision.models.alexnet(num_classes=1000).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device) * 50
    y = torch.randint(0, 1000, (batch,), device=device)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.inference_mode(), _autocast(device, amp):
            model(x)

    model.train()
    train_s = median_seconds(device, train, warmup=warmup, reps=iters)
    model.eval()
    test_s = median_seconds(device, forward, warmup=warmup, reps=iters)
    return {"train_images_per_s": batch / train_s, "test_images_per_s": batch / test_s}


def time_classification(device, *, batch: int, crops: int, iters: int, warmup: int,
                        amp: str = "off") -> dict[str, float]:
    """VOC07 classifier: images/s of a training step (batch at 227) and of testing (``crops`` crops per image)."""
    import numpy as np
    import torch

    from eval.classification.config import VOCClassificationConfig
    from eval.classification.data import draw_affine, warp_crop
    from eval.classification.model import VARIANTS, build_classifier, classifier_param_specs
    from eval.classification.pipeline import sigmoid_cross_entropy
    from jigsawpp.engine.solver import CaffeSGD

    cfg = VOCClassificationConfig()
    model = build_classifier(seeded_transfer_weights(), VARIANTS["all"]).to(device)
    optimizer = CaffeSGD(classifier_param_specs(model, VARIANTS["all"]), momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay, clip_gradients=cfg.clip_gradients)
    image = photo_bgr()
    rng = np.random.default_rng(0)

    def crop_batch(n: int) -> torch.Tensor:
        out = [warp_crop(image, draw_affine(rng, width=image.shape[1], height=image.shape[0], crop=cfg.crop,
                                            min_scale=cfg.min_scale, max_scale=cfg.max_scale, mirror=True),
                         crop=cfg.crop, mean_bgr=cfg.mean_bgr) for _ in range(n)]
        return torch.from_numpy(np.stack(out))

    x = crop_batch(batch).to(device)
    targets = torch.from_numpy(rng.choice([0.0, 1.0, 255.0], size=(batch, 20), p=[0.8, 0.15, 0.05])).float()
    targets = targets.to(device)
    losses = []

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss = sigmoid_cross_entropy(model(x), targets)
        loss.backward()
        optimizer.step(cfg.base_lr)
        losses.append(float(loss.detach()))

    test_x = crop_batch(crops).to(device)

    def test() -> None:
        with torch.inference_mode(), _autocast(device, amp):
            model(test_x).double().sum(0).cpu()

    model.train()
    train_s = median_seconds(device, train, warmup=warmup, reps=iters)
    model.eval()
    test_s = median_seconds(device, test, warmup=warmup, reps=iters)
    data_s = median_seconds(device, lambda: crop_batch(1), warmup=1, reps=max(iters, 5))
    return {"train_images_per_s": batch / train_s, "test_images_per_s": 1.0 / test_s,
            "data_images_per_s_per_thread": 1.0 / data_s, "last_loss": losses[-1]}


def time_fcn(device, *, size: tuple[int, int], iters: int, warmup: int, iter_size: int = 20,
             amp: str = "off") -> dict[str, float]:
    """FCN-AlexNet: images/s of training passes (an update every ``iter_size``) and of testing, at ``size`` (W, H)."""
    import numpy as np
    import torch

    from eval.segmentation.config import FCNConfig
    from eval.segmentation.model import build_fcn, fcn_param_specs
    from eval.segmentation.pipeline import segmentation_loss
    from jigsawpp.engine.solver import CaffeSGD

    cfg = FCNConfig()
    model = build_fcn(seeded_transfer_weights()).to(device)
    optimizer = CaffeSGD(fcn_param_specs(model), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    image = photo_bgr(size).astype(np.float32) - np.asarray(cfg.mean_bgr, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
    label = torch.zeros(1, size[1], size[0], dtype=torch.int64)
    label[0, size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 15
    label[0, :4] = 255
    label = label.to(device)
    passes = [0]
    losses = []

    def train_pass() -> None:
        with _autocast(device, amp):
            loss = segmentation_loss(model(x), label)
        loss.backward()
        losses.append(float(loss.detach()))
        passes[0] += 1
        if passes[0] % iter_size == 0:
            optimizer.step(cfg.base_lr, iter_size=iter_size)
            optimizer.zero_grad(set_to_none=True)

    def test() -> None:
        with torch.inference_mode(), _autocast(device, amp):
            model(x)[0].float().argmax(0).cpu()

    model.train()
    train_s = median_seconds(device, train_pass, warmup=warmup, reps=iters)
    model.eval()
    test_s = median_seconds(device, test, warmup=warmup, reps=iters)
    return {"train_images_per_s": 1.0 / train_s, "test_images_per_s": 1.0 / test_s, "last_loss": losses[-1]}


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--iters", type=int, default=10, help="timed repetitions per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="autocast for every workload")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (batch 2, FCN 96 x 72): a quick CPU check")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch, crops, fcn_size = (2, 2, (96, 72)) if args.tiny else (16, 10, PHOTO_SIZE)
    iters, warmup = (1, 0) if args.tiny else (args.iters, args.warmup)
    ref = time_reference(device, batch=batch, size=224, iters=iters, warmup=warmup, amp=args.amp)
    cls = time_classification(device, batch=batch, crops=crops, iters=iters, warmup=warmup, amp=args.amp)
    fcn = time_fcn(device, size=fcn_size, iters=iters, warmup=warmup, amp=args.amp)
    rows = [
        ("torchvision AlexNet fwd+bwd (reference)", f"batch {batch} @ 224", ref["train_images_per_s"], 1.0),
        ("torchvision AlexNet forward", f"batch {batch} @ 224", ref["test_images_per_s"],
         ref["test_images_per_s"] / ref["train_images_per_s"]),
        ("classification train step", f"batch {batch} @ 227, clip 10", cls["train_images_per_s"],
         cls["train_images_per_s"] / ref["train_images_per_s"]),
        ("classification test", f"{crops} crops / image", cls["test_images_per_s"],
         cls["test_images_per_s"] / ref["train_images_per_s"]),
        ("classification data (1 CPU thread)", "decode + warp", cls["data_images_per_s_per_thread"],
         cls["data_images_per_s_per_thread"] / ref["train_images_per_s"]),
        ("FCN train pass", f"{fcn_size[0]}x{fcn_size[1]}, update / 20", fcn["train_images_per_s"],
         fcn["train_images_per_s"] / ref["train_images_per_s"]),
        ("FCN test", f"{fcn_size[0]}x{fcn_size[1]}", fcn["test_images_per_s"],
         fcn["test_images_per_s"] / ref["train_images_per_s"]),
    ]
    print(f"VOC protocol speed on {device_name(device)} (amp {args.amp}, median of {iters})")
    print(f"{'workload':<42} {'shape':<26} {'images/s':>10} {'vs ref':>8}")
    for name, shape, rate, ratio in rows:
        print(f"{name:<42} {shape:<26} {rate:10.1f} {ratio:8.2f}")
    print("\nFull-scale estimates at these rates: classification 80,000 x 16 images, FCN 100,000 x 20 passes:")
    print(f"  classification training {80_000 * 16 / cls['train_images_per_s'] / 3600:.1f} h, "
          f"FCN training {100_000 * 20 / fcn['train_images_per_s'] / 3600:.1f} h "
          "(data loading must keep up; see the data row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
