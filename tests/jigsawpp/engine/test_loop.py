"""train_loop: a killed run resumes bit for bit, a NaN loss stops at its iteration, iter_size follows Caffe's
normalisation, AMP runs; PrefetchSource keeps the source state exact."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jigsawpp.engine.checkpoint import latest_checkpoint
from jigsawpp.engine.loop import NonFiniteLossError, PrefetchSource, train_loop
from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("tiny_training", HERE / "tiny_training.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (test extra)")
    root = tmp_path_factory.mktemp("photos")
    folder = Path(skimage_data.__file__).parent
    for cls, names in {"animal": ["chelsea.png", "astronaut.png"], "thing": ["coffee.png", "rocket.jpg",
                                                                             "camera.png"]}.items():
        (root / cls).mkdir()
        for name in names:
            shutil.copy(folder / name, root / cls / name)
    return root


def test_killed_run_resumes_bit_for_bit(photos, tmp_path):
    straight, result = tiny.train(photos, tmp_path / "straight")
    assert result.iterations == 6 and result.resumed_from == 0
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, str(HERE / "tiny_training.py"), str(photos), str(out), "4"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert latest_checkpoint(out).name == "iter_0000003"
    resumed, again = tiny.train(photos, out)
    assert again.resumed_from == 3 and again.iterations == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5, 6]  # the killed run's iteration 4 was dropped
    reference = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in reference]
    assert {"loss", "accuracy", "lr", "seconds_per_iter"} <= set(log[0]) and log[2]["lr"] == 0.005
    with pytest.raises(ValueError, match=r"base_lr: 0.01 -> 0.02"):  # another config: refused, nothing touched
        train_loop(model=tiny.TinyNet(2), optimizer=CaffeSGD(param_specs(tiny.TinyNet(2)), momentum=0.9,
                                                             weight_decay=0), lr=LRPolicy("fixed", 0.02),
                   source=_ListSource([]), loss_fn=tiny.classification_loss, out_dir=out, max_iters=6,
                   snapshot_iters=3, config={**tiny.CONFIG, "base_lr": 0.02}, fingerprint="five photos",
                   device="cpu", progress=False)
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 6


class _Batch:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def to(self, device):
        return _Batch(self.x.to(device), self.y.to(device))


class _ListSource:
    """Batches from a list; state = the index of the next one."""

    def __init__(self, batches):
        self.batches, self.i, self.draws = batches, 0, 0

    def next_batch(self):
        self.i, self.draws = self.i + 1, self.draws + 1
        return self.batches[(self.i - 1) % len(self.batches)]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def _linear_setup(clip=None):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(5, 3))
    return model, CaffeSGD(param_specs(model), momentum=0.9, weight_decay=0.01, clip_gradients=clip)


def _mean_ce(net, batch):
    return {"loss": F.cross_entropy(net(batch.x), batch.y)}


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_nan_loss_stops_at_its_iteration(tmp_path):
    x, y = _data(12)
    x[8] = float("nan")  # the fifth batch of 2
    batches = [_Batch(x[i:i + 2], y[i:i + 2]) for i in range(0, 12, 2)]
    model, optimizer = _linear_setup()
    with pytest.raises(NonFiniteLossError, match=r"iteration 4 \(0-based; learning rate 0.1\): loss=nan.*learning "
                                                 r"rate.*boxes and labels.*checkpoint \(iteration 3\) is intact"):
        train_loop(model=model, optimizer=optimizer, lr=LRPolicy("fixed", 0.1), source=_ListSource(batches),
                   loss_fn=_mean_ce, out_dir=tmp_path, max_iters=6, snapshot_iters=3, config={}, fingerprint="x",
                   device="cpu", progress=False)
    assert torch.isfinite(model.fc.weight).all()  # the bad iteration's update was not applied
    assert latest_checkpoint(tmp_path).name == "iter_0000003"


def test_a_resumed_run_says_where_it_resumes(tmp_path, capsys):
    x, y = _data(8)
    batches = [_Batch(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]
    args = dict(lr=LRPolicy("fixed", 0.1), loss_fn=_mean_ce, out_dir=tmp_path, snapshot_iters=2, config={},
                fingerprint="x", device="cpu", desc="toy")
    model, optimizer = _linear_setup()
    train_loop(model=model, optimizer=optimizer, source=_ListSource(batches), max_iters=2, progress=False, **args)
    capsys.readouterr()
    model, optimizer = _linear_setup()
    train_loop(model=model, optimizer=optimizer, source=_ListSource(batches), max_iters=4, progress=True, **args)
    out = capsys.readouterr()
    assert "toy: resuming from iteration 2 (" in out.out + out.err and "iter_0000002" in out.out + out.err
    model, optimizer = _linear_setup()
    train_loop(model=model, optimizer=optimizer, source=_ListSource(batches), max_iters=4, progress=True, **args)
    out = capsys.readouterr()
    assert "toy: resuming from iteration 4" in out.out + out.err and "already finished" in out.out + out.err


def test_iter_size_two_equals_one_double_batch(tmp_path):
    x, y = _data(24)
    small = [_Batch(x[i:i + 2], y[i:i + 2]) for i in range(0, 24, 2)]
    large = [_Batch(x[i:i + 4], y[i:i + 4]) for i in range(0, 24, 4)]
    runs = {}
    for name, batches, iter_size in (("small", small, 2), ("large", large, 1)):
        model, optimizer = _linear_setup()
        logs = []
        train_loop(model=model, optimizer=optimizer, lr=LRPolicy("fixed", 0.5), source=_ListSource(batches),
                   loss_fn=_mean_ce, out_dir=tmp_path / name, max_iters=6, snapshot_iters=6, config={},
                   fingerprint="x", device="cpu", progress=False, iter_size=iter_size, display=1, on_log=logs.append)
        runs[name] = (model.fc.weight.detach().clone(), [r["loss"] for r in logs])
    torch.testing.assert_close(runs["small"][0], runs["large"][0], rtol=1e-6, atol=1e-7)
    assert runs["small"][1] == pytest.approx(runs["large"][1], rel=1e-6)


def test_amp_runs_and_fp16_scaler_state_is_checkpointed(tmp_path):
    x, y = _data(8)
    batches = [_Batch(x[i:i + 4], y[i:i + 4]) for i in range(0, 8, 4)]
    for amp in ("bf16", "fp16"):
        model, optimizer = _linear_setup()
        result = train_loop(model=model, optimizer=optimizer, lr=LRPolicy("fixed", 0.1), source=_ListSource(batches),
                            loss_fn=_mean_ce, out_dir=tmp_path / amp, max_iters=2, snapshot_iters=2, config={},
                            fingerprint="x", device="cpu", progress=False, amp=amp)
        state = json.loads((result.checkpoint / "state.json").read_text())
        assert state["amp"] == amp and ("scaler" in state) == (amp == "fp16")
        assert torch.isfinite(model.fc.weight).all()


def test_prefetch_keeps_the_state_before_the_next_batch():
    class Planned(_ListSource):
        def plan(self):
            self.i += 1
            return self.i - 1

        def load(self, plan):
            return self.batches[plan]

    for kind in (_ListSource, Planned):
        inner = kind(list(range(20)))
        source = PrefetchSource(inner, workers=3)
        assert [source.next_batch() for _ in range(4)] == [0, 1, 2, 3]
        assert source.state_dict() == {"i": 4} and inner.i > 4  # drawn ahead, reported exactly
        source.load_state_dict({"i": 10})
        assert source.next_batch() == 10 and source.state_dict() == {"i": 11}
        source.close()
