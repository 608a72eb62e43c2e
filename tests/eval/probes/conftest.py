"""Shared probe fixtures: a small real image set (Fashion-MNIST photos, or scikit-learn's digits) upscaled to 227
pixels in the ImageFolder layout, seeded models in both `jigsawpp convert` folder kinds, and one cached linear-probe
run that several tests read. Written once per session; nothing is committed."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import prototxt
from eval.probes.config import LinearProbeConfig

# A short schedule at the protocol's geometry (256x256 images, 227 crops, Zhang's resize sizes). The weight decay
# makes the heads minimise the same objective as scikit-learn's LogisticRegression(C=1) on the 100 training images
# (Caffe: mean loss + wd/2 |w|^2; scikit-learn: C sum loss + 1/2 |w|^2, so wd = 1 / (C n)), the oracle test.
SMALL_RUN = dict(max_iter=120, batch_size=20, base_lr=0.002, lr_policy="fixed", stepvalues=(), weight_decay=0.01,
                 snapshot_iters=60, display=10)


@contextlib.contextmanager
def one_thread():
    """These tensors are small: on the shared 2-core test machine a second thread only adds contention (measured:
    the same fits run 10-40x slower with two threads while other suites run)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def probe_data(tmp_path_factory):
    from eval.probes.sample_data import make_sample_folder

    root = tmp_path_factory.mktemp("probe_data")
    with one_thread():
        return make_sample_folder(root, train_per_class=10, val_per_class=5, size=227)


@pytest.fixture(scope="session")
def caffenet_dir(tmp_path_factory):
    """The bundled CaffeNet's conv layers (alexnet/conv_conv1s4.prototxt) with seeded weights, converted."""
    from jigsawpp.convert import convert_caffe
    from jigsawpp.fixtures import seeded_caffemodel

    base = tmp_path_factory.mktemp("caffenet")
    definition = prototxt.path("alexnet/conv_conv1s4.prototxt")
    with warnings.catch_warnings(), one_thread():
        warnings.simplefilter("ignore")
        seeded_caffemodel(definition, base / "w.caffemodel", seed=0)
        return convert_caffe(definition, base / "w.caffemodel", base / "converted").out_dir


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory):
    """A release-shaped zip (conv layers, seeded; named like the CC+Jigsaw++ release) converted as `jigsawpp
    convert RELEASE.zip` does, without the ONNX export."""
    from jigsawpp.fixtures import make_release_zip, write_release_caffemodel
    from jigsawpp.release import convert_release

    base = tmp_path_factory.mktemp("release")
    with warnings.catch_warnings(), one_thread():
        warnings.simplefilter("ignore")
        weights = write_release_caffemodel("conv", base / "w.caffemodel", seed=3)
        made = make_release_zip(base / "jigsawpp_acc.zip", "conv", caffemodel=weights, release="jigsawpp_acc")
        convert_release(made["path"], base / "converted", onnx=False)
    return base / "converted"


@pytest.fixture(scope="session")
def cached_run(tmp_path_factory, probe_data, caffenet_dir):
    """One linear-probe run with a feature cache: (result, config, cache folder)."""
    from eval.probes.linear import run_linear

    base = tmp_path_factory.mktemp("cached_run")
    cfg = LinearProbeConfig(**SMALL_RUN)
    with one_thread():
        result = run_linear(caffenet_dir, probe_data.root, base / "out", cfg, dataset="folder",
                            cache_dir=base / "cache", workers=0, progress=False)
    return result, cfg, base / "cache"
