"""Caffe Python layers through `caffe_import.register_python`: the contract its docstring states.

Any `nn.Module` works (no weights expected unless it declares `caffe_blobs`); it is built on the CPU so constants
made in `__init__` survive; top shapes come from `caffe_top_shapes` if defined, else from a meta-device run, else
from one run on zero-filled bottoms. A module that declares `caffe_blobs` gets them from the caffemodel by layer
name, from `caffe_fillers` without one, and `save_caffemodel` writes them. Outputs are compared with float64 numpy
(rtol 1e-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_import
from caffe_import import CaffeImportError
from caffe_import.layers import registry
from caffe_import.proto import caffe_pb2

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
layer { name: "user" type: "Python" bottom: "data" top: "out"
        python_param { module: "tools.layers" layer: "UserLayer" param_str: "3" } }
"""
KEY = "tools.layers.UserLayer"


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_PYTHON_LAYERS", dict(registry._PYTHON_LAYERS))


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(4).normal(size=(2, 3, 4))


def load(**kwargs) -> caffe_import.CaffeNet:
    return caffe_import.load(caffe_import.read_prototxt_string(NET), **kwargs)


def run(net: caffe_import.CaffeNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(data=torch.from_numpy(x.astype(np.float32)))["out"].double().numpy()


def test_a_plain_module_with_its_own_constants_works(x: np.ndarray) -> None:
    """No caffe_blobs, a CPU constant buffer used in the arithmetic (so it cannot run on meta tensors; the zero-run
    gives the shapes), numpy inside forward: loads with or without a caffemodel, keeps its constant."""

    class AddOffsets(torch.nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale
            self.register_buffer("offsets", torch.arange(4, dtype=torch.float32) * 10)

        def forward(self, data: torch.Tensor) -> torch.Tensor:
            rounded = torch.from_numpy(np.round(data.numpy(), 3))
            return rounded * self.scale + self.offsets

    @caffe_import.register_python(KEY)
    def convert(layer: caffe_import.Layer) -> torch.nn.Module:
        return AddOffsets(float(layer.param.python_param.param_str))

    expected = np.round(x.astype(np.float32), 3) * 3 + np.arange(4) * 10
    net = load()
    assert net.user.caffe_blobs == () and net.blob_shapes["out"] == (2, 3, 4)
    np.testing.assert_array_equal(net.user.offsets.numpy(), np.arange(4) * 10.0)
    np.testing.assert_allclose(run(net, x), expected, rtol=1e-6)
    with_weights = load(caffemodel=caffe_pb2.NetParameter(name="empty"), strict=True)
    assert with_weights.weight_report["filled"] == [] and with_weights.weight_report["loaded"] == {}
    np.testing.assert_allclose(run(with_weights, x), expected, rtol=1e-6)


def test_a_module_declaring_caffe_blobs_loads_them_by_layer_name(tmp_path: Path, x: np.ndarray) -> None:
    class ChannelScale(torch.nn.Module):
        """y = x * w[c] over axis 1; one blob of shape (C,) as the Python layer's self.blobs[0]."""

        caffe_blobs = ("weight",)

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(channels))
            self.caffe_fillers = (caffe_pb2.FillerParameter(type="constant", value=2.0),)

        def forward(self, data: torch.Tensor) -> torch.Tensor:
            return data * self.weight[:, None]

    @caffe_import.register_python(KEY)
    def convert(layer: caffe_import.Layer) -> torch.nn.Module:
        return ChannelScale(layer.in_shapes[0][1])

    np.testing.assert_allclose(run(load(), x), 2.0 * x.astype(np.float32), rtol=1e-6)   # the filler
    w = np.array([0.5, -1.5, 3.0])
    model = caffe_pb2.NetParameter(name="m")
    stored = model.layer.add(name="user", type="Python").blobs.add()
    stored.shape.dim.append(3)
    stored.data.extend(w.tolist())
    net = load(caffemodel=model)
    assert net.weight_report["loaded"] == {"user": 1}
    np.testing.assert_allclose(run(net, x), x.astype(np.float32) * w[:, None], rtol=1e-6)
    path = caffe_import.save_caffemodel(net, tmp_path / "python.caffemodel")
    again = load(caffemodel=path)
    assert torch.equal(again.user.weight, net.user.weight)
    with pytest.raises(CaffeImportError, match=r"no weights for layer\(s\) user"):
        load(caffemodel=caffe_pb2.NetParameter(name="empty"))


def test_the_shape_hook_is_used_when_the_module_cannot_run_at_load_time(x: np.ndarray) -> None:
    class PositiveRows(torch.nn.Module):
        """Refuses all-zero input (as a layer needing real data might); its top shape comes from the hook."""

        def forward(self, data: torch.Tensor) -> torch.Tensor:
            if not bool((data != 0).any()):
                raise ValueError("needs real data")
            return data.flatten(1)[:, :5]

        def caffe_top_shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...]]:
            return ((shape[0], 5),)

    @caffe_import.register_python(KEY)
    def convert(layer: caffe_import.Layer) -> torch.nn.Module:
        return PositiveRows()

    net = load()
    assert net.blob_shapes["out"] == (2, 5)
    np.testing.assert_allclose(run(net, x), x.astype(np.float32).reshape(2, -1)[:, :5], rtol=1e-6)

    del PositiveRows.caffe_top_shapes
    with pytest.raises(CaffeImportError, match=r"layer 'user' \(Python\): cannot run on bottoms of shape "
                                               r"\[\(2, 3, 4\)\] \(on meta tensors nor on zeros\): needs real data\. "
                                               r"Define caffe_top_shapes"):
        load()
    PositiveRows.caffe_top_shapes = lambda self, shape: [(2, -5)]
    with pytest.raises(CaffeImportError, match=r"caffe_top_shapes returned \[\(2, -5\)\]; return one shape"):
        load()


def test_registration_and_converter_results_are_checked() -> None:
    with pytest.raises(ValueError, match="register_python key 'UserLayer' must be 'module.Layer'"):
        caffe_import.register_python("UserLayer")
    caffe_import.register_python(KEY)(lambda layer: "not a module")
    with pytest.raises(CaffeImportError, match=r"layer 'user' \(Python\): its converter returned a str, not a "
                                               r"torch.nn.Module"):
        load()
    with pytest.raises(RuntimeError, match="already registered; register each module.Layer key once"):
        caffe_import.register_python(KEY)(lambda layer: torch.nn.Identity())
