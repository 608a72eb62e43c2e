"""The whole transfer chain on real labelled images (scikit-learn's digits as a 227-px ImageFolder, conftest.py):
a teacher trained briefly on the true labels gives pseudo-labels that agree with those labels far better (NMI and
ARI from scikit-learn) than a random network's; `jigsawpp transfer run` then trains the CC AlexNet, which learns
the clusters well above chance, packs a release zip that `jigsawpp convert` reads, and skips every finished stage
when run again. The feature-regression baseline trains and packs its conv layers."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import caffe_import
from jigsawpp.cli import main
from jigsawpp.data import ImageDataset, caffe_transform
from jigsawpp.engine.checkpoint import latest_checkpoint, load_checkpoint
from jigsawpp.models import from_release
from jigsawpp.release import convert_release
from jigsawpp.transfer.features import FeatureConfig, ModelFeatures, extract_features
from jigsawpp.transfer.kmeans import KMeansConfig, cluster, load_centroids
from jigsawpp.transfer.labels import label_features
from jigsawpp.transfer.regression import train_regression
from jigsawpp.transfer.store import images_from_data, open_features
from jigsawpp.transfer.teacher import load_teacher
from jigsawpp.transfer.train import CCConfig

SIDE = 67  # the teacher's input: 227-px images warped to 76 and centre-cropped (conv4 3 x 3), cheap on a CPU
CC_SETTINGS = {"crop": 51, "resize": 59, "fc": 256, "init": "msra", "base_lr": 0.002, "batch_size": 16,
               "snapshot": 75, "test_batch": 50, "display": 15, "progress": False}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, digits_folder, tiny_prototxt, thread_limit):
    """(prototxt, {"random": caffemodel, "trained": caffemodel}): the same seeded net, untrained and after 100 Adam
    steps on the digit labels (a linear head on its max-pooled conv4, discarded)."""
    folder = tmp_path_factory.mktemp("teachers")
    proto = folder / "deploy.prototxt"
    proto.write_text(tiny_prototxt.read_text().replace("dim: 227 dim: 227", f"dim: {SIDE} dim: {SIDE}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = caffe_import.load(proto, seed=0)
    caffe_import.save_caffemodel(net, folder / "random.caffemodel")
    images = images_from_data(digits_folder)
    data = ImageDataset(images.samples(), caffe_transform(mean_bgr=(104, 117, 123), resize=(76, 76), crop=SIDE))
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor(images.labels)
    net.train()
    with thread_limit():
        loss = _train_teacher(net, x, y)
    assert float(loss) < 0.5
    net.eval()
    caffe_import.save_caffemodel(net, folder / "trained.caffemodel")
    return proto, {"random": folder / "random.caffemodel", "trained": folder / "trained.caffemodel"}


def _train_teacher(net, x, y):
    head, pool = torch.nn.Linear(32 * 9, 10), torch.nn.AdaptiveMaxPool2d(3)
    optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=0.003)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        batch = torch.randint(0, len(x), (32,), generator=generator)
        conv4 = net(data=x[batch], outputs=["conv4"])["conv4"]
        loss = F.cross_entropy(head(pool(conv4).flatten(1) / 10), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.detach()


def test_trained_teacher_clusters_beat_a_random_network(tmp_path, digits_folder, teachers):
    proto, weights = teachers
    images = images_from_data(digits_folder)
    config = FeatureConfig(resize=76, pool_grid=3, workers=0, batch_size=100)
    scores = {}
    for name, caffemodel in weights.items():
        features = ModelFeatures(load_teacher(proto, caffemodel=caffemodel), config)
        extract_features(features, images, tmp_path / name, config=config, progress=False)
        store = open_features(tmp_path / name)
        cluster(store, tmp_path / f"{name}_c", config=KMeansConfig(k=10, niter=20, verbose=False))
        labels = label_features(store, load_centroids(tmp_path / f"{name}_c"), tmp_path / f"{name}_l",
                                montage=False).labels
        scores[name] = (normalized_mutual_info_score(images.labels, labels), adjusted_rand_score(images.labels, labels))
    (nmi_random, ari_random), (nmi_trained, ari_trained) = scores["random"], scores["trained"]
    assert nmi_trained >= nmi_random + 0.15 and ari_trained >= ari_random + 0.2, scores
    assert nmi_trained > 0.8, scores


@pytest.mark.slow
def test_transfer_run_learns_the_clusters_packs_a_release_and_skips_done_stages(tmp_path, digits_folder, teachers):
    proto, weights = teachers
    val_list = tmp_path / "val.txt"
    images = images_from_data(digits_folder)
    val_list.write_text("".join(f"{n} {y}\n" for n, y in zip(images.names[::5], images.labels[::5])))
    out = tmp_path / "run"
    args = ["transfer", "run", "--teacher", str(proto), "--caffemodel", str(weights["trained"]), "--data",
            str(digits_folder), "--val-list", str(val_list), "--out", str(out), "--k", "10", "--name", "cc_digits",
            "--feature-set", "resize=76", "--feature-set", "pool_grid=3", "--kmeans-set", "verbose=false",
            "--iters", "150", "--workers", "0", "--device", "cpu"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in CC_SETTINGS.items() if k != "batch_size"]
    args += ["--batch-size", str(CC_SETTINGS["batch_size"])]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    tests = json.loads((out / "cc" / "tests.json").read_text())
    assert [t["iteration"] for t in tests] == [75, 150]
    assert tests[-1]["images"] == 60 and tests[-1]["top1"] >= 0.4, tests  # 10 clusters: chance is about 0.1
    log = [json.loads(line) for line in (out / "cc" / "train_log.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in log[-3:]]) < np.mean([r["loss"] for r in log[:3]]) - 0.3
    assert (out / "cc" / "curves.png").is_file() and (out / "labels" / "train_montage.png").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == 6, again.output  # features x2, k-means, labels x2, training
    changed = CliRunner().invoke(main, [a if a != "10" else "12" for a in args])
    assert changed.exit_code == 1 and "k: 10 in the folder, 12 now" in changed.output
    assert "Traceback" not in changed.output
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "cc" / "cc_digits.zip").stat().st_mode & 0o777 == 0o666 & ~umask  # the user's umask, not 0600
    manifest = convert_release(out / "cc" / "cc_digits.zip", tmp_path / "converted", onnx=False)
    assert manifest["pseudo_labels"]["train"]["count"] == 300 and manifest["pseudo_labels"]["val"]["count"] == 60
    converted = from_release(tmp_path / "converted").state_dict()
    trained = load_checkpoint(latest_checkpoint(out / "cc"), device="cpu").tensors["model"]
    assert converted.keys() == trained.keys() and converted["fc8.weight"].shape == (10, 256)
    for key, value in trained.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0)


def test_feature_regression_baseline_trains_and_packs_conv_layers(tmp_path, digits_folder, teachers):
    proto, weights = teachers
    images = images_from_data(digits_folder)
    teacher = load_teacher(proto, caffemodel=weights["trained"], blob="conv5")
    config = CCConfig(**{**CC_SETTINGS, "batch_size": 8, "snapshot": 30, "display": 10}, max_iter=30, workers=0)
    result = train_regression(teacher, images, tmp_path / "reg", config=config, grid=2, calibration=2, name="reg",
                              device="cpu")
    log = [json.loads(line) for line in (tmp_path / "reg" / "train_log.jsonl").read_text().splitlines()]
    assert result.iterations == 30 and log[-1]["loss"] < log[0]["loss"]
    assert set(log[0]) >= {"loss_conv4", "loss_conv5"}
    manifest = convert_release(result.release_zip, tmp_path / "converted", onnx=False)
    assert manifest["variants"]["transfer_conv1s4"]["alexnet_config"]["fc6"] is None
    with pytest.raises(ValueError, match="grid 0: the pooled target grid must be at least 1"):
        train_regression(teacher, images, tmp_path / "reg0", config=config, grid=0, device="cpu")
    ignored = CliRunner().invoke(main, ["transfer", "regress", str(proto), "--caffemodel", str(weights["trained"]),
                                        "--blob", "conv9", "--data", str(digits_folder), "--out", str(tmp_path / "r")])
    assert ignored.exit_code == 2 and "--blob does not apply to `transfer regress`" in ignored.output
    assert not (tmp_path / "r").exists()
