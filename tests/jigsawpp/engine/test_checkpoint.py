"""Checkpoints: round trip, RNG restore, atomicity when a save dies half-way, pruning, resume checks; the
environment stamp; the training-curve plot."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from jigsawpp.engine import checkpoint as ckpt
from jigsawpp.engine.checkpoint import check_resumable, latest_checkpoint, load_checkpoint, save_checkpoint
from jigsawpp.engine.distributed import all_reduce_mean, is_main, resolve_device, world

CPU = torch.device("cpu")


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_round_trip_restores_tensors_state_and_every_rng(tmp_path):
    tensors = {"model": {"w": torch.arange(6.0).reshape(2, 3), "tied": torch.ones(2)}, "solver": {"w": torch.ones(3)}}
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = save_checkpoint(tmp_path, iteration=7, tensors=tensors, state={"config": {"a": 1}, "source": {"cur": 4}},
                           device=CPU)
    expected = _draws()
    _draws()  # move every generator on
    loaded = load_checkpoint(path, device=CPU)
    assert _draws() == expected
    assert loaded.iteration == 7 and loaded.state == {"iteration": 7, "world_size": 1, "config": {"a": 1},
                                                      "source": {"cur": 4}}
    assert set(loaded.tensors) == {"model", "solver"}
    assert torch.equal(loaded.tensors["model"]["w"], tensors["model"]["w"])
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "rng_rank0.safetensors",
                                                      "solver.safetensors", "state.json"]
    assert latest_checkpoint(tmp_path) == path and path.name == "iter_0000007"
    assert all(b"pickle" not in p.read_bytes()[:64] for p in path.glob("*.safetensors"))


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, iteration=2, tensors={"model": {"w": torch.zeros(2)}}, state={}, device=CPU)
    import jigsawpp.io

    real = jigsawpp.io.save_state_dict_file
    calls = []

    def dies_on_second(state, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed while writing model.safetensors
        return real(state, path, metadata)

    monkeypatch.setattr(jigsawpp.io, "save_state_dict_file", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, iteration=4, tensors={"model": {"w": torch.ones(2)}}, state={}, device=CPU)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good and not (tmp_path / "checkpoints" / "iter_0000004").exists()
    assert torch.equal(load_checkpoint(good, device=CPU).tensors["model"]["w"], torch.zeros(2))
    # the next save clears the partial folder; only the newest `keep` survive
    for it in (4, 6, 8):
        save_checkpoint(tmp_path, iteration=it, tensors={"model": {"w": torch.ones(2)}}, state={}, device=CPU, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_0000006", "iter_0000008", "latest.json"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text()) == {"checkpoint": "iter_0000008",
                                                                                  "iteration": 8}


def test_check_resumable_names_what_changed(tmp_path):
    state = {"config": {"lr": 0.01, "scales": [600], "max_iters": 10}, "fingerprint": "abc", "world_size": 2}
    same = {"lr": 0.01, "scales": (600,), "max_iters": 20}  # tuples compare as their JSON lists
    check_resumable(state, config=same, fingerprint="abc", world_size=2, runtime_keys={"max_iters"}, path=tmp_path)
    with pytest.raises(ValueError, match=r"different config \(lr: 0.01 -> 0.1\)"):
        check_resumable(state, config={**same, "lr": 0.1}, fingerprint="abc", world_size=2,
                        runtime_keys={"max_iters"}, path=tmp_path)
    with pytest.raises(ValueError, match=r"max_iters: 10 -> 20"):
        check_resumable(state, config=same, fingerprint="abc", world_size=2, runtime_keys=set(), path=tmp_path)
    with pytest.raises(ValueError, match="different data"):
        check_resumable(state, config=same, fingerprint="xyz", world_size=2, runtime_keys={"max_iters"},
                        path=tmp_path)
    with pytest.raises(ValueError, match="made with 2 processes, this run has 1"):
        check_resumable(state, config=same, fingerprint="abc", world_size=1, runtime_keys={"max_iters"},
                        path=tmp_path)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.read_checkpoint_state(tmp_path)


def test_single_process_helpers():
    assert world() == (0, 1) and is_main()
    assert all_reduce_mean([1.5, 2.0], CPU) == [1.5, 2.0]
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device(None) == CPU
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")


def test_environment_stamp():
    import cv2
    import torchvision

    from jigsawpp.engine.stamp import environment_stamp

    stamp = environment_stamp(CPU)
    assert stamp["torch"] == torch.__version__ and stamp["torchvision"] == torchvision.__version__
    assert stamp["opencv"] == cv2.__version__ and stamp["numpy"] == np.__version__
    assert stamp["world_size"] == 1 and stamp["device"] == "cpu" and "gpu" not in stamp
    assert stamp["deterministic"]["cudnn.benchmark"] is torch.backends.cudnn.benchmark
    assert "IGNORE_ORIENTATION" in stamp["image_reading"]["decoder"]
    json.dumps(stamp)


def test_training_curves_plot(tmp_path):
    from jigsawpp.engine.plots import plot_training_curves

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"iteration": i, "loss": 3.0 / i, "loss_cls": 2.0 / i, "lr": 0.01})
                           + "\n" for i in range(1, 30)))
    png = plot_training_curves(log, tmp_path / "curves.png", keys=("loss", "loss_cls"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"no \['accuracy'\] entries; it logs \['loss', 'loss_cls', 'lr'\]"):
        plot_training_curves(log, tmp_path / "x.png", keys=("accuracy",))
