"""`jigsawpp eval linear|nonlinear` as users see them: usage errors in one line, a run that reuses the feature
cache and prints the table, and `jigsawpp verify` on its output."""

from __future__ import annotations

import json

from click.testing import CliRunner

from jigsawpp.cli import main


def test_usage_and_layout_errors(tmp_path, caffenet_dir):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "linear", "--help"])
    assert res.exit_code == 0 and "--cache" in res.output and "--resize" in res.output
    res = runner.invoke(main, ["eval", "nonlinear", "--help"])
    assert res.exit_code == 0 and "--freeze-upto" in res.output
    base = ["eval", "linear", "--model", str(caffenet_dir), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    res = runner.invoke(main, [*base, "--set", "lr=0.1"])
    assert res.exit_code == 2 and "unknown key(s) ['lr']" in res.output
    res = runner.invoke(main, [*base, "--taps", "conv5,fc7", "--dataset", "folder", "--quiet"])
    assert res.exit_code == 1 and "unknown probe tap(s) ['fc7']" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, [*base, "--dataset", "folder", "--quiet"])
    assert res.exit_code == 1 and "expected an ImageFolder layout" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()  # nothing left on disk
    res = runner.invoke(main, ["eval", "nonlinear", "--model", str(caffenet_dir), "--data", str(tmp_path), "--out",
                               str(tmp_path / "n"), "--freeze-upto", "fc6", "--dataset", "folder", "--quiet"])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_linear_from_the_cache_then_verify(cached_run, probe_data, caffenet_dir, tmp_path):
    _, cfg, cache = cached_run
    sets = [f"--set={k}={json.dumps(v)}" for k, v in cfg.to_dict().items()
            if k in ("batch_size", "base_lr", "lr_policy", "stepvalues", "weight_decay")]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["eval", "linear", "--model", str(caffenet_dir), "--data", str(probe_data.root),
                                    "--dataset", "folder", "--out", str(out), "--cache", str(cache), "--iters", "4",
                                    "--workers", "0", "--device", "cpu", "--quiet", *sets])
    assert res.exit_code == 0, res.output
    assert "cache train_v1_s0: reused" in res.output and "conv5" in res.output
    res = CliRunner().invoke(main, ["verify", "--model", str(caffenet_dir), "--results", str(out), "--method",
                                    "CC+Jigsaw++"])
    assert res.exit_code == 0, res.output
    assert "solver schedule chosen" in res.output and "max_iter 4 (protocol default: 140000)" in res.output
