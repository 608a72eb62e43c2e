"""Jigsaw++ pretext speed: the puzzle loader against JPEG decoding alone on the same files, and training iterations.

1. decode: `jigsawpp.data.read_image_bgr` on every file by `--workers` DataLoader processes (the physical floor of
   any loader that starts from JPEG files);
2. loader: the training pipeline on the same files and workers (decode, resize to 256, crop 255, then the batched
   tile work of `make_puzzles` on `--device`): puzzles/s, and its ratio to (1) (1.0 = the loader costs nothing beyond
   decoding);
3. train: the full-size AlexNet CFN (fc8 1000) on `--device`: forward, backward and the Caffe SGD step on a batch of
   `--batch` puzzles, in fp32 and, with `--amp bf16`, in bf16 autocast: iterations/s, and the time 350,000
   iterations of 256 puzzles would take at that rate (compute only), beside the time the measured loader needs to
   feed them (data only); a run takes about the larger of the two.

Files: the JPEG photographs installed packages ship (`jigsawpp.pretext.sample_run.packaged_photos`), cycled to
`--images`, or the images of `--data`. Prints one table, naming the CPU and the device.

Usage: python benchmarks/pretext_speed.py [--device cuda] [--workers 8] [--images 400] [--batch 64] [--amp bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import sync  # noqa: E402

MAX_ITER, BATCH = 350_000, 256   # solver_cfn_jps.prototxt max_iter, train_val_cfn_jps++.prototxt batch_size


class _DecodeOnly:
    """Dataset: decode the file, return its size (nothing else is done or transferred)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        from jigsawpp.data import read_image_bgr

        image = read_image_bgr(self.paths[i])
        return torch.tensor(image.shape[:2])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"




def _files(args) -> list[str]:
    from jigsawpp.pretext.data import list_images
    from jigsawpp.pretext.sample_run import packaged_photos

    if args.data:
        paths = list_images(args.data)
    else:
        paths = [str(p) for p in packaged_photos() if p.suffix.lower() in (".jpg", ".jpeg")]
    if not paths:
        raise SystemExit("pretext_speed: no JPEG files found; pass --data DIR.")
    return [paths[i % len(paths)] for i in range(args.images)]


def bench_decode(paths: list[str], workers: int) -> float:
    import torch

    loader = torch.utils.data.DataLoader(_DecodeOnly(paths), batch_size=16, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(paths) / (time.perf_counter() - start)


def bench_loader(paths: list[str], workers: int, device, batch: int) -> float:
    import numpy as np
    import torch

    from jigsawpp.permutations import generate_permutations
    from jigsawpp.pretext.data import crop_dataset
    from jigsawpp.puzzle import PuzzleConfig, make_puzzles

    config = PuzzleConfig()
    perms = torch.from_numpy(generate_permutations(1000)).to(device)
    loader = torch.utils.data.DataLoader(crop_dataset(paths, config, train=True, seed=0), batch_size=batch,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    count = 0
    start = time.perf_counter()
    for crops, _labels, _index in loader:
        puzzles = make_puzzles(crops.to(device, non_blocking=True), perms, generator=generator, config=config)
        count += puzzles.labels.shape[0]
    sync(device)
    assert np.isfinite(float(puzzles.tiles.sum()))
    return count / (time.perf_counter() - start)


def bench_train(device, batch: int, iters: int, amp: str) -> float:
    import torch
    import torch.nn.functional as F

    from jigsawpp.engine.solver import CaffeSGD, param_specs
    from jigsawpp.pretext.networks import CFNConfig, ContextFreeNetwork

    torch.manual_seed(0)
    model = ContextFreeNetwork(CFNConfig(num_classes=1000)).to(device).train()
    optimizer = CaffeSGD(param_specs(model), momentum=0.9, weight_decay=5e-4)
    tiles = torch.rand(batch, 9, 3, 64, 64, device=device) * 255
    labels = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(tiles).float(), labels)
        loss.backward()
        optimizer.step(0.01)

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader processes")
    parser.add_argument("--images", type=int, default=200, help="files read by steps 1 and 2")
    parser.add_argument("--batch", type=int, default=0, help="training batch (default: 256 on CUDA, 8 on CPU)")
    parser.add_argument("--iters", type=int, default=0, help="timed training iterations (default: 20 CUDA, 2 CPU)")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="also time bf16 autocast")
    parser.add_argument("--data", default=None, help="image folder or list to read instead of the packaged photos")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 8)
    iters = args.iters or (20 if cuda else 2)
    paths = _files(args)
    gpu = torch.cuda.get_device_name(device) if cuda else "none"
    print(f"CPU: {_cpu_name()}; torch threads {torch.get_num_threads()}; device {device} (GPU: {gpu}); "
          f"{len(paths)} files ({len(set(paths))} distinct); {args.workers} workers", flush=True)
    decode = bench_decode(paths, args.workers)
    print(f"decode only:  {decode:8.1f} images/s", flush=True)
    loader = bench_loader(paths, args.workers, device, 64)
    print(f"puzzle loader: {loader:8.1f} puzzles/s = {loader / decode:.2f} x decode", flush=True)
    rows = []
    for mode in ("off", "bf16") if args.amp == "bf16" else ("off",):
        rate = bench_train(device, batch, iters, mode)
        compute_h = MAX_ITER * (BATCH / batch) / rate / 3600
        data_h = MAX_ITER * BATCH / loader / 3600
        rows.append(f"train {('fp32' if mode == 'off' else 'bf16'):4}:  {rate:8.3f} it/s at batch {batch} "
                    f"({rate * batch:.0f} puzzles/s); 350K x 256: compute {compute_h:.1f} h, data {data_h:.1f} h "
                    f"-> about {max(compute_h, data_h):.1f} h on this machine")
        print(rows[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
