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
    import torch

    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def _timed(ctx: Context, fn: Callable[[], object], *, warmup: int, reps: int) -> float:
    """Median seconds of `fn` after `warmup` calls."""
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(ctx)
        start = time.perf_counter()
        fn()
        _sync(ctx)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
