"""The plan of `jigsawpp reproduce` without running a protocol: which jobs the datasets allow, their settings and
strict overrides, the GPU-hour estimates (against the published figures, computed here by hand), the --dry-run
output, and the rules that make re-running a run folder safe."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eval.reproduce import Datasets, make_plan, write_plan
from jigsawpp.cli import main

# Published K40 figures (eval.reproduce.estimates cites them) and the arithmetic, written out independently here.
FRCNN_ITER = 1.2 * 3600 / 40000  # Fast R-CNN Table 4: CaffeNet, 1.2 h for 40000 iterations
VOC_MS_PIXELS = sum(s * s for s in (480, 576, 688, 864, 1200)) / 5 / 600**2  # no max-size cap binds on 500x375
FCN_FORWARD = 0.050 * (700 * 575) / (700 * 700)  # FCN Table 1: 50 ms at 500x500 (+ pad 100), for 500x375
EXPECTED_HOURS = {
    "det_ss": (150_000 * FRCNN_ITER + 4952 * 0.10) / 3600,
    "det_ms": (150_000 * FRCNN_ITER * VOC_MS_PIXELS + 4952 * 0.39) / 3600,
    "cls": (80_000 * 16 * 0.004 + 4952 * 10 * 0.001) / 3600,  # Caffe: CaffeNet 4 ms/image learning, 1 ms inference
    "seg": (100_000 * 20 * FCN_FORWARD * 3 + 736 * FCN_FORWARD) / 3600,
    "linear_imagenet": (140_000 * 64 * 0.001 + 50_000 * 0.001) / 3600,  # frozen trunk: inference only
    "linear_places205": (140_000 * 64 * 0.001 + 20_500 * 0.001) / 3600,
    **{f"nonlinear_{layer}": (350_000 * 256 * 0.004 + 50_000 * 10 * 0.001) / 3600
       for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")},
}
TABLE3_JOBS = ["det_ss", "det_ms", "cls", "seg"]


def _manifest(fc6: int | None) -> dict:
    """A release conversion's manifest as far as planning reads it: the paper row, the transfer variant's layers."""
    config = {"fc6": fc6, "fc7": fc6, "num_classes": 2000 if fc6 else None}
    return {"paper": {"method": "CC+Jigsaw++"}, "transfer_variant": "transfer_conv1s4",
            "variants": {"transfer_conv1s4": {"alexnet_config": config}}}


@pytest.fixture()
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(_manifest(4096)))
    return folder


@pytest.fixture()
def datasets(tmp_path):
    roots = {name: tmp_path / name for name in ("voc07", "voc12", "sbd", "imagenet", "places")}
    for path in roots.values():
        path.mkdir()
    return Datasets(**roots)


def test_plan_follows_the_datasets_and_the_paper(model, datasets):
    plan = make_plan(model, datasets)
    assert [p.name for p in plan.jobs] == list(EXPECTED_HOURS) and plan.method == "CC+Jigsaw++"
    det_ms = plan.jobs[1].settings
    assert det_ms["protocol"] in ("noroozi18-ms", "multiscale")
    assert det_ms["config"]["max_iters"] == 150_000 and det_ms["config"]["lr_stepsize"] == 50_000
    assert det_ms["config"]["test_scales"] == [480, 576, 688, 864, 1200] and det_ms["config"]["test_max_size"] == 2000
    assert plan.jobs[0].settings["config"]["test_scales"] == [600]
    cls, seg = plan.jobs[2].settings["config"], plan.jobs[3].settings["config"]
    assert cls["max_iters"] == 80_000 and cls["variant"] == "all" and cls["test_crops"] == 10
    assert seg["iter_size"] == 20 and seg["val_data"] == "seg11valid" and seg["max_iters"] == 100_000
    by = {p.name: p.settings for p in plan.jobs}
    assert by["linear_places205"]["run"]["dataset"] == "places205" and by["linear_imagenet"]["config"]["max_iter"] == \
        140_000
    assert [by[f"nonlinear_{x}"]["config"]["freeze_upto"] for x in ("conv1", "fc7")] == ["conv1", "fc7"]
    assert by["nonlinear_conv3"]["config"]["test_crops"] == "ten" and by["nonlinear_conv3"]["run"]["workers"] == 8
    for p in plan.jobs:
        assert p.estimate.gpu_hours == pytest.approx(EXPECTED_HOURS[p.name], rel=1e-9), p.name
        assert "K40" in p.estimate.reference and p.estimate.how
    assert plan.gpu_hours == pytest.approx(sum(EXPECTED_HOURS.values()), rel=1e-9)
    # without the segmentation data that job is skipped with the option it needs
    only_voc = make_plan(model, Datasets(voc07=datasets.voc07))
    assert [p.name for p in only_voc.jobs] == ["det_ss", "det_ms", "cls"]
    skipped = {s.name: s.reason for s in only_voc.skipped}
    assert skipped["seg"] == "needs --voc12 and --sbd" and skipped["linear_places205"] == "needs --places"
    assert skipped["nonlinear_conv2"] == "needs --imagenet" and len(skipped) == 1 + 2 + 7
    # a model whose transfer network ends at conv5 has no Table 6 fc6/fc7 columns
    (model / "manifest.json").write_text(json.dumps(_manifest(None)))
    conv_only = make_plan(model, datasets, only=["nonlinear"])
    assert [p.name for p in conv_only.jobs] == [f"nonlinear_conv{k}" for k in range(1, 6)]
    assert {s.name: s.reason.split(" (")[0] for s in conv_only.skipped} == {
        "nonlinear_fc6": "the model has no fc6/fc7 to keep frozen", "nonlinear_fc7": "the model has no fc6/fc7 to keep "
                                                                                     "frozen"}
    with_mat = make_plan(model, Datasets(voc07=datasets.voc07, ss_mat=datasets.sbd), only=["det"])
    assert [p.settings["config"]["proposals"] for p in with_mat.jobs] == ["selective_search_mat"] * 2


def test_scale_overrides_and_processes(model, datasets):
    tiny = make_plan(model, datasets, scale="tiny", only=["cls", "det_ss"])
    assert [p.name for p in tiny.jobs] == ["det_ss", "cls"]
    assert tiny.jobs[1].settings["config"]["batch_size"] == 2 and tiny.jobs[0].settings["config"]["max_iters"] == 1
    assert tiny.jobs[1].estimate.gpu_hours == pytest.approx((1 * 2 * 0.004 + 4952 * 1 * 0.001) / 3600, rel=1e-9)
    # with the dataset's own list, its image count
    (datasets.voc07 / "ImageSets" / "Main").mkdir(parents=True)
    (datasets.voc07 / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n\nc\n")
    cls = make_plan(model, datasets, scale="tiny", only=["cls"]).jobs[0]
    assert cls.estimate.gpu_hours == pytest.approx((1 * 2 * 0.004 + 3 * 1 * 0.001) / 3600, rel=1e-9)
    plan = make_plan(model, datasets, overrides={"det": {"amp": True}, "det_ms": {"max_iters": 10}, "seg":
                                                 {"iter_size": 5}}, gpus_per_job=4, only=["det", "cls", "seg"])
    by = {p.name: p for p in plan.jobs}
    assert by["det_ss"].settings["config"]["amp"] and by["det_ms"].settings["config"]["max_iters"] == 10
    assert by["det_ms"].settings["config"]["amp"] and by["det_ss"].settings["config"]["max_iters"] == 150_000
    # processes: the largest count <= 4 dividing the batch each protocol splits (2 images, 16 images, 5 passes)
    assert {n: p.processes for n, p in by.items()} == {"det_ss": 2, "det_ms": 2, "cls": 4, "seg": 1}
    with pytest.raises(KeyError, match="cls: .*batch_sise"):
        make_plan(model, datasets, overrides={"cls": {"batch_sise": 4}})
    with pytest.raises(KeyError, match="unknown job.*'detection'"):
        make_plan(model, datasets, overrides={"detection": {"amp": True}})
    with pytest.raises(KeyError, match="--only: unknown job.*'segm'"):
        make_plan(model, datasets, only=["segm"])
    with pytest.raises(KeyError, match=r"nonlinear_conv1: \[.freeze_upto.\] is what job nonlinear_conv1 evaluates"):
        make_plan(model, datasets, overrides={"nonlinear": {"freeze_upto": "conv4"}})
    with pytest.raises(ValueError, match=r"--method 'Jigsaw\+' is not a row"):
        make_plan(model, datasets, method="Jigsaw+")
    assert make_plan(model, datasets, method="Jigsaw++", only=["cls"]).method == "Jigsaw++"


def test_dry_run_prints_the_plan(model, datasets, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["reproduce", "--model", str(model), "--voc", str(datasets.voc07), "--out",
                               str(tmp_path / "run"), "--dry-run"])
    assert res.exit_code == 0, res.output
    for name in ("det_ss", "det_ms", "cls"):
        line = next(x for x in res.output.splitlines() if x.strip().startswith(name + " "))
        assert f"{EXPECTED_HOURS[name]:9.2f}" in line
    total = sum(EXPECTED_HOURS[n] for n in ("det_ss", "det_ms", "cls"))
    assert "not run: linear_imagenet" in res.output and "needs --imagenet" in res.output
    assert f"{total:9.2f}" in next(x for x in res.output.splitlines() if x.strip().startswith("total"))
    assert "not run: seg" in res.output and "needs --voc12 and --sbd" in res.output
    assert "Fast R-CNN Table 4" in res.output and "K40" in res.output
    assert not (tmp_path / "run").exists()  # nothing written
    res = runner.invoke(main, ["reproduce", "--model", str(model), "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "nothing to run" in res.output
    res = runner.invoke(main, ["reproduce", "--model", str(model), "--voc", str(datasets.voc07), "--out",
                               str(tmp_path / "run"), "--set", "cls.batch_size"])
    assert res.exit_code != 0 and "JOB.KEY=VALUE" in res.output and "Traceback" not in res.output


def test_gpus_need_cuda(model, datasets, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = CliRunner().invoke(main, ["reproduce", "--model", str(model), "--voc", str(datasets.voc07), "--out",
                                    str(tmp_path / "run"), "--gpus", "0,1"])
    assert res.exit_code != 0 and "no CUDA device" in res.output and not (tmp_path / "run").exists()


def _start(run, name):
    (run / "status").mkdir(parents=True, exist_ok=True)
    (run / "status" / f"{name}.json").write_text(json.dumps({"state": "running", "attempts": 1}))


def test_rewriting_a_run_keeps_started_jobs_settings(model, datasets, tmp_path):
    run = tmp_path / "run"
    write_plan(run, make_plan(model, datasets, only=["cls"], scale="tiny"))
    record = json.loads((run / "reproduce.json").read_text())
    assert record["model"]["paper_method"] == "CC+Jigsaw++" and list(record["jobs"]) == ["cls"]
    assert (run / "model" / "manifest.json").read_bytes() == (model / "manifest.json").read_bytes()
    # not started yet: anything may change
    write_plan(run, make_plan(model, datasets, only=["cls"], scale="tiny", overrides={"cls": {"base_lr": 0.01}}))
    _start(run, "cls")
    with pytest.raises(ValueError, match=r"cls was started with other settings \(base_lr 0.01 -> 0.001\)"):
        write_plan(run, make_plan(model, datasets, only=["cls"], scale="tiny"))
    # more iterations resume from the last checkpoint; new jobs join the run
    write_plan(run, make_plan(model, datasets, only=["cls", "seg"], scale="tiny",
                              overrides={"cls": {"base_lr": 0.01, "max_iters": 5}}))
    record = json.loads((run / "reproduce.json").read_text())
    assert record["jobs"]["cls"]["settings"]["config"]["max_iters"] == 5 and set(record["jobs"]) == {"cls", "seg"}
    with pytest.raises(ValueError, match="--scale tiny"):
        write_plan(run, make_plan(model, datasets, only=["cls"], overrides={"cls": {"base_lr": 0.01}}))
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": "Jigsaw++"}}))
    with pytest.raises(ValueError, match="another model"):
        write_plan(run, make_plan(model, datasets, only=["cls"], scale="tiny"))


def test_datasets_are_checked_before_any_job_runs(conv_model_dir, tmp_path):
    """A folder that is no ImageNet layout: refused up front in one Error line naming the option once, with no job
    run (it used to fail when each probe job started, possibly after hours of the others)."""
    imagenet = tmp_path / "imagenet" / "train" / "cat"
    imagenet.mkdir(parents=True)
    (imagenet / "a.png").write_bytes(b"")
    result = CliRunner().invoke(main, ["reproduce", "--model", str(conv_model_dir), "--method", "CC+Jigsaw++",
                                       "--imagenet", str(tmp_path / "imagenet"), "--scale", "tiny", "--only",
                                       "linear_imagenet,nonlinear_conv5", "--out", str(tmp_path / "run"),
                                       "--device", "cpu", "--quiet"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: the datasets cannot be used (checked before any job "
                                                     f"runs): --imagenet {tmp_path / 'imagenet'}: not an ImageNet "
                                                     "layout"), result.output
    assert errors[0].count("not an ImageNet layout") == 1 and not (tmp_path / "run").exists()
