"""Linear probes end to end on real photos: every layer learns, a second run reuses the cache without a trunk
forward, the head agrees with scikit-learn's logistic regression, training on images resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.probes.config import LinearProbeConfig
from eval.probes.linear import run_linear
from jigsawpp.models import CaffeAlexNet

CHANCE = 10.0  # ten classes


@pytest.mark.slow
def test_every_layer_learns_and_outputs_are_written(cached_run):
    result, cfg, _ = cached_run
    assert result.iterations == cfg.max_iter
    assert {k: v["images_extracted"] for k, v in result.extraction.items()} == {"train_v1_s0": 100, "val_center": 50}
    for tap, acc in result.accuracy.items():
        assert acc.count == 50 and acc.top1 >= 3 * CHANCE, (tap, acc)
    scores = json.loads(result.scores_path.read_text())
    assert scores["kind"] == "linear_probe" and set(scores["top1"]) == set(cfg.taps)
    assert scores["provenance"]["taps"]["conv2"]["dims"] == 9216
    for name in ("layer_accuracy.png", "learning_curve.png", "heads.safetensors", "config.json"):
        assert (result.out_dir / name).stat().st_size > 0


def test_second_run_reuses_the_cache_without_trunk_forward(cached_run, probe_data, caffenet_dir, tmp_path,
                                                           monkeypatch):
    _, cfg, cache = cached_run
    calls = []
    original = CaffeAlexNet.blobs
    monkeypatch.setattr(CaffeAlexNet, "blobs", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    other = cfg.replace(base_lr=0.003, max_iter=10)
    result = run_linear(caffenet_dir, probe_data.root, tmp_path / "out", other, dataset="folder", cache_dir=cache,
                        workers=0, progress=False)
    assert calls == [] and result.trunk_images == 0
    assert all(rec["reused"] and rec["images_extracted"] == 0 for rec in result.extraction.values())
    assert result.iterations == 10


def test_heads_agree_with_sklearn_logistic_regression(cached_run):
    """Independent fit on the same cached features: scikit-learn's multinomial LogisticRegression (lbfgs) on
    per-channel standardised features (what the BatchNorm does with its stored statistics)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from eval.probes.cache import open_cache_split

    result, _, cache = cached_run
    manifest = json.loads((cache / "manifest.json").read_text())
    splits = {}
    for name in ("train_v1_s0", "val_center"):
        entry = manifest["splits"][name]
        splits[name] = open_cache_split(cache, name, key=entry["key"], shapes=entry["shapes"], count=entry["count"],
                                        views=entry["views"], chunk_size=entry["chunk_size"], create=False)
    train, val = splits["train_v1_s0"], splits["val_center"]
    margins = {}
    for tap in result.accuracy:
        x_train = np.asarray(train.features(tap))[:, 0].astype(np.float64)
        x_val = np.asarray(val.features(tap))[:, 0].astype(np.float64)
        mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
        std = np.sqrt(x_train.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
        with threadpool_limits(1):  # scipy's BLAS is loaded by the import above, after the fixture's limit
            fit = LogisticRegression(C=1.0, max_iter=3000).fit(((x_train - mean) / std).reshape(len(x_train), -1),
                                                                np.asarray(train.labels()))
        ref = 100.0 * np.mean(fit.predict(((x_val - mean) / std).reshape(len(x_val), -1)) == np.asarray(val.labels()))
        margins[tap] = result.accuracy[tap].top1 - ref
        assert ref >= 3 * CHANCE
    # 50 validation images: one image is 2 points. Stated margin: 12 points (6 images) on every layer, 6 on average.
    assert all(abs(m) <= 12 for m in margins.values()), margins
    assert abs(np.mean(list(margins.values()))) <= 6, margins


def test_release_model_on_images_resumes_exactly(release_dir, probe_data, tmp_path):
    """No cache: every batch goes through the trunk. Interrupted after 3 iterations and resumed, the heads equal an
    uninterrupted run's. Small geometry (72-pixel images, 67 crops) keeps it cheap; the taps keep their sizes."""
    from jigsawpp.io import load_state_dict_file

    cfg = LinearProbeConfig(image_size=72, crop_size=67, max_iter=6, batch_size=10, snapshot_iters=3, display=3,
                            lr_policy="fixed", stepvalues=(), taps=("conv1", "conv5"))
    whole = run_linear(release_dir, probe_data.root, tmp_path / "whole", cfg, dataset="folder", workers=0,
                       progress=False)
    assert whole.trunk_images == 6 * 10 + 50
    part = run_linear(release_dir, probe_data.root, tmp_path / "part", cfg, dataset="folder", workers=0,
                      progress=False, stop_after=3)
    assert part.iterations == 3 and part.scores_path is None
    resumed = run_linear(release_dir, probe_data.root, tmp_path / "part", cfg, dataset="folder", workers=0,
                         progress=False)
    assert resumed.iterations == 6
    a, b = (load_state_dict_file(r.out_dir / "heads.safetensors") for r in (whole, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    scores = json.loads(whole.scores_path.read_text())
    assert scores["provenance"]["model"]["paper_method"] == "CC+Jigsaw++"
    assert whole.accuracy == resumed.accuracy
