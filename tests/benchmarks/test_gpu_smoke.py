"""benchmarks/gpu_smoke.py runs here at toy sizes on the CPU, so the script a GPU machine runs cannot rot."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import gpu_smoke


@pytest.mark.slow
def test_smoke_runs_every_cpu_step_and_skips_cuda_only_ones(tmp_path, capsys):
    path = tmp_path / "smoke.json"
    assert gpu_smoke.main(["--device", "cpu", "--tiny", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == [name for name, _ in gpu_smoke.STEPS]
    cuda_only = {"onnx-cuda", "ddp-2-gpus"}
    for name, row in rows.items():
        assert row["status"] == ("skip" if name in cuda_only else "pass"), row
    assert "needs 2 GPUs" in rows["ddp-2-gpus"]["figures"]
    for net in ("caffenet-forward", "vgg16-forward"):
        data = rows[net]["data"]
        assert data["fp32"]["images_per_s"] > 0 and data["max_rel_err_vs_cpu_fp32"] == 0.0
        assert data["gflop_per_image"] == pytest.approx({"caffenet-forward": 1.45, "vgg16-forward": 31.0}[net],
                                                        rel=0.05)
    train = rows["fast-rcnn-train"]["data"]
    assert set(train) == {"fp32", "bf16"} and all(math.isfinite(v["last_loss"]) for v in train.values())
    assert rows["fast-rcnn-test-multiscale"]["data"]["seconds_per_image"] > 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("jigsawpp GPU smoke on CPU") and "| caffenet-forward" in table


def test_a_failing_step_is_reported_without_hiding_the_others(monkeypatch, tmp_path):
    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(ctx):
        return "ok", {"value": 1}

    def lacking(ctx):
        raise gpu_smoke.Skip("needs a thing")

    monkeypatch.setattr(gpu_smoke, "STEPS", [("broken", broken), ("fine", fine), ("lacking", lacking)])
    path = tmp_path / "smoke.json"
    assert gpu_smoke.main(["--device", "cpu", "--tiny", "--json", str(path)]) == 1
    rows = json.loads(path.read_text())["rows"]
    assert [(r["name"], r["status"]) for r in rows] == [("broken", "fail"), ("fine", "pass"), ("lacking", "skip")]
    assert rows[0]["figures"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert gpu_smoke.main(["--device", "cpu", "--only", "nope"]) == 2
