"""A small real labelled image set for the transfer pipeline: scikit-learn's handwritten digits (1,797 real 8 x 8
scans, labels 0-9), upscaled to 227 x 227 RGB PNGs and laid out as an ImageFolder (root/<digit>/<id>.png), and a
small Caffe net with CaffeNet's conv1-conv5 geometry (conv4 is 13 x 13 at 227 px) to act as a teacher."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
import pytest

PER_CLASS = 30
SIDE = 227

# conv1..conv5 as CaffeNet (k11 s4, pool 3/2, k5 p2 g2, pool 3/2, k3 p1, k3 p1 g2, k3 p1 g2) with few channels.
TINY_TEACHER = """
name: "tiny_teacher"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 11 stride: 4 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 group: 2 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param { num_output: 32 pad: 1 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 32 pad: 1 kernel_size: 3 group: 2 weight_filler { type: "xavier" } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 16 pad: 1 kernel_size: 3 group: 2 weight_filler { type: "xavier" } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
"""


@contextlib.contextmanager
def single_thread():
    """The tensors here are tiny: one thread is as fast, and avoids OpenMP spin-waiting when the machine is busy."""
    import faiss
    import torch

    threads, omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(omp)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def thread_limit():
    """`single_thread` for fixtures of a wider scope than the autouse one."""
    return single_thread


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """root/<digit>/<index>.png: the first PER_CLASS digits of each class, 227 x 227, grey replicated to BGR."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    for label in range(10):
        (root / str(label)).mkdir()
        for index in np.flatnonzero(digits.target == label)[:PER_CLASS]:
            grey = np.round(digits.images[index] / 16.0 * 255.0).astype(np.uint8)
            big = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(root / str(label) / f"{index:04d}.png"), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    return root


@pytest.fixture(scope="session")
def tiny_prototxt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "deploy.prototxt"
    path.write_text(TINY_TEACHER, encoding="utf-8")
    return path
