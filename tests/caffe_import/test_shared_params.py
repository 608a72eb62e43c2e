"""Shared parameters (`param { name }`) as BVLC Caffe runs them (`src/caffe/net.cpp` at c9f71bd).

`Net::AppendParam`: the first layer declaring a name owns the blob, later layers share its data (`ShareWeights`);
STRICT sharing (the default) needs equal shapes, PERMISSIVE only equal counts, the sharer then seeing the owner's
memory in its own shape. `Net::CopyTrainedLayersFrom` copies caffemodel layers in file order into the net's
blobs, so a shared blob holds the copy of whichever sharing layer comes last in the file, and a sharer absent from
the caffemodel simply uses it. `Net::ToProto` writes the blob under every layer. Caffemodels here are hand-built
NetParameter messages; outputs are checked against float64 numpy (rtol 1e-6) and, after `save_caffemodel`,
against OpenCV 4.x `cv2.dnn.readNetFromCaffe`, which knows nothing of sharing and reads each layer's own blobs.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_import
from caffe_import import CaffeImportError, CaffeImportWarning
from caffe_import.proto import caffe_pb2

FILL_A = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 }'
FILL_B = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.25 }'
INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'


def ip_net(spec_a: str, spec_b: str) -> str:
    """ip_a and ip_b, both InnerProduct 6 -> 4 on `data`, with the given param entries."""
    return INPUT + (
        f'layer {{ name: "ip_a" type: "InnerProduct" bottom: "data" top: "out_a" {spec_a} '
        f'inner_product_param {{ num_output: 4 {FILL_A} }} }}\n'
        f'layer {{ name: "ip_b" type: "InnerProduct" bottom: "data" top: "out_b" {spec_b} '
        f'inner_product_param {{ num_output: 4 {FILL_B} }} }}\n')


BOTH_SHARED = ip_net('param { name: "w" } param { name: "b" }', 'param { name: "w" } param { name: "b" }')


def blob(values: np.ndarray) -> caffe_pb2.BlobProto:
    out = caffe_pb2.BlobProto()
    out.shape.dim.extend(values.shape)
    out.data.extend(values.astype(np.float32).ravel().tolist())
    return out


def caffemodel(*layers: tuple[str, list[np.ndarray]]) -> caffe_pb2.NetParameter:
    model = caffe_pb2.NetParameter(name="shared")
    for name, blobs in layers:
        model.layer.add(name=name, type="InnerProduct").blobs.extend(blob(b) for b in blobs)
    return model


def f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float64)


def ip_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Caffe InnerProduct in float64 on the float32-rounded blobs: y = x W^T + b."""
    return f32(x) @ f32(w).T + (f32(np.asarray(b)) if np.ndim(b) else b)


def run(net: caffe_import.CaffeNet, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(**{k: torch.from_numpy(v.astype(np.float32)) for k, v in inputs.items()})
    return {k: v.double().numpy() for k, v in out.items()}


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.mark.parametrize("stored_by", [["ip_a"], ["ip_b"], ["ip_a", "ip_b"], ["ip_b", "ip_a"]])
def test_a_shared_param_stored_by_any_sharing_layer_serves_all(stored_by: list[str],
                                                               rng: np.random.Generator) -> None:
    """Owner only, non-owner only, both with identical values (either file order): no error, no warning."""
    w, b, x = rng.normal(size=(4, 6)), rng.normal(size=4), rng.normal(size=(2, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaffeImportWarning)
        net = caffe_import.load(caffe_import.read_prototxt_string(BOTH_SHARED),
                                caffemodel(*[(name, [w, b]) for name in stored_by]))
    assert net.ip_a.weight is net.ip_b.weight and net.ip_a.bias is net.ip_b.bias
    out = run(net, data=x)
    close(out["out_a"], ip_reference(x, w, b))
    close(out["out_b"], ip_reference(x, w, b))
    report = net.weight_report
    assert report["shared"]["w"] == {"layers": ["ip_a", "ip_b"], "stored_by": stored_by, "value_from": stored_by[-1]}
    assert report["loaded"] == {name: 2 for name in stored_by}
    assert report["shared_only"] == [name for name in ("ip_a", "ip_b") if name not in stored_by]
    assert report["filled"] == [] and report["shared_mismatch"] == {}


@pytest.mark.parametrize("order", [("ip_a", "ip_b"), ("ip_b", "ip_a")])
def test_differing_copies_the_one_last_in_the_caffemodel_wins(order: tuple[str, str],
                                                              rng: np.random.Generator) -> None:
    """Caffe writes each copy into the one shared blob in caffemodel order: the last one written stays, whichever
    layer owns the param and whatever the prototxt order."""
    values = {name: (rng.normal(size=(4, 6)), rng.normal(size=4)) for name in ("ip_a", "ip_b")}
    x = rng.normal(size=(2, 6))
    with pytest.warns(CaffeImportWarning, match=rf"the copy of '{order[1]}' \(last in the file\) is used"):
        net = caffe_import.load(caffe_import.read_prototxt_string(BOTH_SHARED),
                                caffemodel(*[(name, list(values[name])) for name in order]))
    w, b = values[order[1]]
    out = run(net, data=x)
    close(out["out_a"], ip_reference(x, w, b))
    close(out["out_b"], ip_reference(x, w, b))
    report = net.weight_report
    assert report["shared"]["w"]["stored_by"] == list(order) and report["shared"]["w"]["value_from"] == order[1]
    expected = float(np.max(np.abs(f32(values["ip_a"][0]) - f32(values["ip_b"][0]))))
    assert report["shared_mismatch"]["w"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shared, own", [("weight", "bias"), ("bias", "weight")])
def test_fillers_never_overwrite_a_loaded_shared_param(shared: str, own: str, rng: np.random.Generator) -> None:
    """Only ip_a is in the caffemodel; ip_b shares one blob with it and owns the other. The unshared blob is
    missing (an error naming it); with allow_missing it alone gets ip_b's filler, the shared one stays ip_a's."""
    specs = 'param { name: "w" } param { }' if shared == "weight" else 'param { } param { name: "b" }'
    text = ip_net(specs, specs)
    w, b, x = rng.normal(size=(4, 6)), rng.normal(size=4), rng.normal(size=(2, 6))
    model = caffemodel(("ip_a", [w, b]))
    with pytest.raises(CaffeImportError, match=rf"no weights for layer\(s\) ip_b \({own}\) \(matched by layer name"):
        caffe_import.load(caffe_import.read_prototxt_string(text), model)
    with pytest.warns(CaffeImportWarning, match=rf"blob\(s\) ip_b.{own} are not in the caffemodel"):
        net = caffe_import.load(caffe_import.read_prototxt_string(text), model, allow_missing=True)
    assert getattr(net.ip_a, shared) is getattr(net.ip_b, shared)
    assert getattr(net.ip_a, own) is not getattr(net.ip_b, own)
    out = run(net, data=x)
    close(out["out_a"], ip_reference(x, w, b))
    if shared == "weight":
        close(out["out_b"], ip_reference(x, w, 0.25))           # ip_b's own bias filler: constant 0.25
    else:
        w_b = net.ip_b.weight.detach().double().numpy()         # ip_b's own gaussian filler
        assert not np.allclose(w_b, f32(w))
        close(out["out_b"], ip_reference(x, w_b, b))
    report = net.weight_report
    assert report["filled"] == [f"ip_b.{own}"] and report["loaded"] == {"ip_a": 2} and report["shared_only"] == []
    assert list(report["shared"].values()) == [{"layers": ["ip_a", "ip_b"], "stored_by": ["ip_a"],
                                                "value_from": "ip_a"}]


def test_without_a_caffemodel_a_shared_param_keeps_its_owners_filler() -> None:
    """Caffe fills every layer at SetUp, then ShareWeights points the sharers at the owner's blob."""
    net = caffe_import.load(caffe_import.read_prototxt_string(BOTH_SHARED))
    assert net.ip_b.bias is net.ip_a.bias
    np.testing.assert_array_equal(net.ip_b.bias.detach().numpy(), np.full(4, 0.5, np.float32))  # ip_a's 0.5, not 0.25


# -- STRICT vs PERMISSIVE shapes ---------------------------------------------------------------------------------

TWO_INPUTS = ('layer { name: "data" type: "Input" top: "data" top: "data2" '
              'input_param { shape { dim: 2 dim: 6 } shape { dim: 2 dim: 8 } } }\n')


def mixed_net(spec_a: str, spec_b: str, n_b: int = 3) -> str:
    """ip_a: 6 -> 4 (weight (4, 6), 24 values); ip_b: 8 -> n_b without bias (weight (n_b, 8))."""
    return TWO_INPUTS + (
        f'layer {{ name: "ip_a" type: "InnerProduct" bottom: "data" top: "out_a" {spec_a} '
        f'inner_product_param {{ num_output: 4 {FILL_A} }} }}\n'
        f'layer {{ name: "ip_b" type: "InnerProduct" bottom: "data2" top: "out_b" {spec_b} '
        f'inner_product_param {{ num_output: {n_b} bias_term: false {FILL_B} }} }}\n')


PERMISSIVE = mixed_net('param { name: "w" } param { }', 'param { name: "w" share_mode: PERMISSIVE }')


def test_strict_sharing_needs_equal_shapes_permissive_equal_counts() -> None:
    strict = mixed_net('param { name: "w" share_mode: PERMISSIVE } param { }', 'param { name: "w" }')
    # The sharer's own share_mode decides (Net::AppendParam reads the sharing layer's ParamSpec), not the owner's.
    with pytest.raises(CaffeImportError, match=r"layer 'ip_b' shares param 'w' with layer 'ip_a', but its blob 0 has "
                                               r"shape \(3, 8\) and the owner's \(4, 6\) \(STRICT sharing"):
        caffe_import.load(caffe_import.read_prototxt_string(strict))
    counts = mixed_net('param { name: "w" } param { }', 'param { name: "w" share_mode: PERMISSIVE }', n_b=2)
    with pytest.raises(CaffeImportError, match=r"layer 'ip_b' shares param 'w' with layer 'ip_a', but its blob 0 has "
                                               r"16 values \(2, 8\) and the owner's 24 \(4, 6\)"):
        caffe_import.load(caffe_import.read_prototxt_string(counts))
    too_many = INPUT + ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" param { } param { } '
                        'param { name: "extra" } inner_product_param { num_output: 2 } }')
    with pytest.raises(CaffeImportError, match=r"layer 'ip' \(InnerProduct\) names param 2 'extra' but the layer has "
                                               r"only 2 blob\(s\)"):
        caffe_import.load(caffe_import.read_prototxt_string(too_many))


@pytest.mark.parametrize("stored_by", ["ip_a", "ip_b"])
def test_permissive_sharer_sees_the_owners_memory_in_its_own_shape(stored_by: str,
                                                                   rng: np.random.Generator) -> None:
    """Blob::ShareData keeps the sharer's shape over the owner's memory: ip_b's (3, 8) weight is ip_a's (4, 6)
    weight reshaped in C order, whichever of the two layers stored it (in its own shape)."""
    w = rng.normal(size=24)
    b_a = rng.normal(size=4)
    layers = [("ip_a", [w.reshape(4, 6), b_a])] if stored_by == "ip_a" else [("ip_b", [w.reshape(3, 8)])]
    bias_missing = stored_by == "ip_b"   # then nothing stores ip_a's own bias: its filler (0.5) is used
    with pytest.warns(CaffeImportWarning, match="ip_a.bias") if bias_missing else contextlib.nullcontext():
        net = caffe_import.load(caffe_import.read_prototxt_string(PERMISSIVE), caffemodel(*layers),
                                allow_missing=bias_missing)
    assert tuple(net.ip_b.weight.shape) == (3, 8) and tuple(net.ip_a.weight.shape) == (4, 6)
    x, x2 = rng.normal(size=(2, 6)), rng.normal(size=(2, 8))
    out = run(net, data=x, data2=x2)
    close(out["out_b"], f32(x2) @ f32(w.reshape(3, 8)).T)
    expected_bias = 0.5 if bias_missing else b_a
    close(out["out_a"], ip_reference(x, w.reshape(4, 6), expected_bias))
    assert len(list(net.parameters())) == 2                     # one shared weight + ip_a's bias
    # The view follows the owner: a later in-place update of the owner shows in the sharer, and gradients add up.
    with torch.no_grad():
        net.ip_a.weight.mul_(2.0)
    close(net.ip_b.weight.detach().double().numpy(), 2 * f32(w.reshape(3, 8)))
    y = net(data=torch.ones(1, 6), data2=torch.ones(1, 8))
    (y["out_a"].sum() + y["out_b"].sum()).backward()
    expected_grad = np.ones((4, 6)) + np.ones((3, 8)).reshape(4, 6)
    np.testing.assert_array_equal(net.ip_a.weight.grad.numpy(), expected_grad)


def test_save_caffemodel_writes_every_sharer_and_reloads_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    """Loaded from a caffemodel that stores the shared weight once (under the owner), written back with the blob
    under every sharing layer in its own shape (Net::ToProto): caffe_import reloads it exactly, and OpenCV, which
    ignores `param { name }` and needs each layer's blobs, computes the same outputs."""
    w, b_a = rng.normal(size=(4, 6)), rng.normal(size=4)
    net = caffe_import.load(caffe_import.read_prototxt_string(PERMISSIVE), caffemodel(("ip_a", [w, b_a])))
    assert net.weight_report["shared_only"] == ["ip_b"]
    path = caffe_import.save_caffemodel(net, tmp_path / "shared.caffemodel")
    written = {layer.name: layer for layer in caffe_import.read_caffemodel(path).layer}
    assert [tuple(b.shape.dim) for b in written["ip_a"].blobs] == [(4, 6), (4,)]
    assert [tuple(b.shape.dim) for b in written["ip_b"].blobs] == [(3, 8)]
    np.testing.assert_array_equal(np.array(written["ip_b"].blobs[0].data), f32(w).ravel())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaffeImportWarning)   # both copies identical: no mismatch warning
        again = caffe_import.load(caffe_import.read_prototxt_string(PERMISSIVE), path)
    assert again.weight_report["shared"]["w"]["stored_by"] == ["ip_a", "ip_b"]
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    x, x2 = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    ours = run(again, data=x, data2=x2)

    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no readNetFromCaffe (removed in OpenCV 5)")
    prototxt = tmp_path / "shared.prototxt"
    prototxt.write_text(PERMISSIVE)
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(path))
    cv_net.setInput(x, "data")
    cv_net.setInput(x2, "data2")
    theirs = dict(zip(["out_a", "out_b"], cv_net.forward(["ip_a", "ip_b"])))  # OpenCV names outputs by layer
    for name in ("out_a", "out_b"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5)
