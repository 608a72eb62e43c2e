"""`jigsawpp convert --prototxt/--caffemodel`, the safetensors alias handling, and the demo (the README's main job)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import caffe_import
from jigsawpp.cli import main
from jigsawpp.io import load_state_dict_file, save_state_dict_file, sha256_file

SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture()
def small_model(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(SMALL_NET)
    net = caffe_import.load(deploy, seed=3)
    weights = tmp_path / "small.caffemodel"
    caffe_import.save_caffemodel(net, weights)
    return deploy, weights, net


def test_convert_writes_weights_prototxt_and_manifest(tmp_path, small_model):
    deploy, weights, net = small_model
    out = tmp_path / "converted"
    result = CliRunner().invoke(main, ["convert", "--prototxt", str(deploy), "--caffemodel", str(weights),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["deploy.prototxt", "manifest.json", "model.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["caffemodel"]["sha256"] == sha256_file(weights)
    assert manifest["inputs"]["prototxt"]["sha256"] == sha256_file(deploy)
    assert manifest["net"]["inputs"] == {"data": [2, 3, 20, 20]}
    assert manifest["net"]["outputs"] == {"prob": [2, 5]}
    assert [layer["name"] for layer in manifest["net"]["layers"]] == ["conv1", "relu1", "pool1", "fc", "prob"]
    state = load_state_dict_file(out / "model.safetensors")
    assert set(state) == {"conv1.weight", "conv1.bias", "fc.weight", "fc.bias"}
    assert torch.equal(state["fc.weight"], net.state_dict()["fc.weight"])


def test_convert_refuses_non_empty_out_and_leaves_nothing_on_failure(tmp_path, small_model):
    deploy, weights, _ = small_model
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    result = CliRunner().invoke(main, ["convert", "--prototxt", str(deploy), "--caffemodel", str(weights),
                                       "--out", str(out)])
    assert result.exit_code != 0 and "not empty" in result.output and "Traceback" not in result.output
    assert (out / "keep.txt").read_text() == "user file"
    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(b"\x08\x96\x01 not a caffemodel")
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(main, ["convert", "--prototxt", str(deploy), "--caffemodel", str(broken),
                                       "--out", str(fresh)])
    assert result.exit_code != 0
    assert not fresh.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fresh")]


def test_shared_parameters_are_stored_once_and_restored(tmp_path):
    shared = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    state = {"a.weight": shared, "b.weight": shared, "c.bias": torch.ones(2)}
    path = save_state_dict_file(state, tmp_path / "m.safetensors")
    loaded = load_state_dict_file(path)
    assert set(loaded) == set(state)
    assert torch.equal(loaded["b.weight"], shared.detach())


def test_every_command_has_help():
    import click

    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    paths = [[name] for name in main.commands]
    groups = {name: cmd for name, cmd in main.commands.items() if isinstance(cmd, click.Group)}
    paths += [[name, sub] for name, group in groups.items() for sub in group.commands]
    for path in paths:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, path


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from jigsawpp.demo import SCRATCH, DetectionSettings, FinetuneSettings, PretextSettings, demo_steps, run_demo
    from jigsawpp.safezip import SafeZip

    messages: list[str] = []
    out = tmp_path / "demo"
    scratch_at_start: dict[str, list[str]] = {}

    def progress(message: str) -> None:
        messages.append(message)
        if not message.startswith("  "):
            scratch_at_start[message] = sorted(p.name for p in (out / SCRATCH).iterdir())

    # every step, the detection one with the demo's own scaled-down Fast R-CNN for 2 iterations on one photo
    report = run_demo(out, progress=progress,
                      detection_settings=DetectionSettings(iterations=2, all_photos=False),
                      finetune_settings=FinetuneSettings(classification_iterations=2, segmentation_iterations=2,
                                                         segmentation_side=64, all_photos=False),
                      pretext_settings=PretextSettings(iterations=2, per_image=2))
    names = [step.name for step in report.steps]
    assert names == demo_steps() == [
        "build release-shaped zip", "inspect zip (jigsawpp info)", "convert zip + ONNX + ORT parity",
        "transfer model on a real photo", "write seeded caffemodel", "convert (caffe_import)",
        "load + run on a real photo", "parity vs OpenCV 4.x", "detection fine-tune (packaged VOC photos)",
        "classification fine-tune (packaged VOC photos)", "FCN segmentation fine-tune (packaged VOC masks)",
        "Jigsaw++ pretext training (packaged photos)"]
    assert [m for m in messages if not m.startswith("  ")] == names  # each label announced as its step starts
    assert report.results["onnx_rel_err_transfer_conv1s4"] < 1e-4
    assert report.results["onnx_rel_err_pretext_conv1s2"] < 1e-4
    assert report.results["photo_transfer_onnx_rel_err"] < 1e-4
    assert report.results["conv5_shape"] == [1, 256, 13, 13]
    assert report.results["opencv_rel_conv5"] < 1e-4
    converted = out / "jigsawpp_converted"
    assert {p.name for p in converted.iterdir()} >= {"manifest.json", "pretext_conv1s2", "transfer_conv1s4",
                                                      "pseudo_labels"}
    assert any(m.startswith("  ") for m in messages)  # sub-step progress from the converter
    with SafeZip(out / "jigsawpp.zip") as archive:
        assert report.results["zip_files"] == len(archive.members)
        assert f"{len(archive.members)} files" in report.steps[0].detail

    # detection: scores before and after, and one picture per image with the ground truth beside the detections
    images = (out / "sample_voc" / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    for run in ("before", "after"):
        kept = out / f"detection_{run}"
        assert {p.name for p in kept.iterdir()} == {"scores.json", "pr_curves.png", "config.json", "results",
                                                    "detections"} | ({"train_log.jsonl"} if run == "after" else set())
        assert sorted(p.stem for p in (kept / "detections").iterdir()) == sorted(images)
        assert report.results[f"detection_pictures_{run}"] == len(images)
    scores = json.loads((out / "detection_after" / "scores.json").read_text())
    assert scores["provenance"]["fast_rcnn"]["iterations"] == 2
    assert report.results["detection_map_after"] == scores["map_11point"]

    # classification and segmentation: scores before and after, read back from the files the demo keeps
    for run in ("before", "after"):
        cls = json.loads((out / f"classification_{run}" / "scores.json").read_text())
        assert report.results[f"classification_map_{run}"] == cls["map_sklearn"]
        seg = json.loads((out / f"segmentation_{run}" / "scores.json").read_text())
        assert report.results[f"segmentation_miu_{run}"] == seg["mean_iu"]
        assert (out / f"segmentation_{run}" / "iu.png").is_file()
        assert (out / f"classification_{run}" / "pr_curves.png").is_file()
    assert len(list((out / "segmentation_after" / "overlays").iterdir())) == 1

    # pretext: held-out puzzle accuracy before and after, the curve and a puzzle figure kept, the weights not
    pretext = out / "pretext"
    assert {p.name for p in pretext.iterdir()} == {"training_curve.png", "train_log.jsonl", "provenance.json",
                                                    "permutations.bin", "sample_run.json", "puzzles.png"}
    sample = json.loads((pretext / "sample_run.json").read_text())
    assert sample["iterations"] == 2 and sample["chance"] == 0.25
    assert report.results["pretext_accuracy_after"] == sample["after"]["accuracy"]
    assert f"{sample['after']['puzzles']} puzzles" in report.steps[-1].detail

    # what is left: no scratch, no weights or snapshots, under 500 MB, sizes in MB
    assert not (out / SCRATCH).exists() and report.scratch is None and report.scratch_mb > 500
    # each part's scratch (weights, snapshots) is gone before the next part starts: one part on disk at a time
    from jigsawpp.demo import CLASSIFICATION_STEP, DETECTION_STEP, PRETEXT_STEP, SEGMENTATION_STEP

    assert "caffenet_seeded.caffemodel" in scratch_at_start["parity vs OpenCV 4.x"]
    for step in (DETECTION_STEP, CLASSIFICATION_STEP, SEGMENTATION_STEP, PRETEXT_STEP):
        assert scratch_at_start[step] == [], (step, scratch_at_start[step])
    left = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert not [p for p in out.rglob("*") if p.suffix in (".caffemodel", ".pt") or p.name == "checkpoints"]
    assert left < 500e6 and report.kept_mb == pytest.approx(left / 1e6, rel=0.01)
    saved = json.loads((out / "demo_report.json").read_text())
    assert [s["name"] for s in saved["steps"]] == names and saved["kept_mb"] == pytest.approx(report.kept_mb, abs=0.1)
    assert "MiB" not in "".join(step.detail for step in report.steps)


def test_an_interrupted_demo_leaves_nothing(tmp_path):
    """The demo does not resume: Ctrl-C in the middle removes what it wrote, so the same command runs again."""
    from jigsawpp.demo import run_demo

    def interrupt(message: str) -> None:
        if message.startswith("convert zip"):
            raise KeyboardInterrupt

    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, progress=interrupt, detection=False)
    assert not out.exists()
    out.mkdir()
    (out / "old.txt").write_text("replaced")
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, progress=interrupt, detection=False, overwrite=True)
    assert out.is_dir() and not any(out.iterdir())
