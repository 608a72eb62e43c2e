"""The detector built from converted conv weights, the multi-task loss, and Caffe's SGD update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from eval.detection.model import (
    FastRCNNOutput,
    build_detector,
    conv_weights_from_model_dir,
    fast_rcnn_loss,
    load_caffe_detector,
    smooth_l1_loss,
)
from eval.detection.solver import CaffeSGD, step_lr


def _smooth_l1_reference(pred, target, weights):
    """Plain float64 loop: sum_ij smoothL1(w (p - t)) / rows, and its Caffe gradient (x or sign(x)) * w / rows."""
    rows, cols = pred.shape
    loss, grad = 0.0, np.zeros_like(pred)
    for i in range(rows):
        for j in range(cols):
            x = weights[i, j] * (pred[i, j] - target[i, j])
            loss += 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
            grad[i, j] = (x if abs(x) < 1 else np.sign(x)) * weights[i, j] / rows
    return loss / rows, grad


@pytest.mark.parametrize("seed", range(3))
def test_smooth_l1_matches_caffe_forward_and_backward(seed):
    rng = np.random.RandomState(seed)
    pred, target = rng.normal(0, 1.5, (8, 12)), rng.normal(0, 1.5, (8, 12))
    weights = (rng.uniform(size=(8, 12)) > 0.5).astype(np.float64)
    p = torch.tensor(pred, requires_grad=True)
    loss = smooth_l1_loss(p, torch.tensor(target), torch.tensor(weights))
    loss.backward()
    ref_loss, ref_grad = _smooth_l1_reference(pred, target, weights)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), ref_grad, rtol=1e-12, atol=1e-15)


def test_multitask_loss_is_mean_softmax_plus_smooth_l1():
    rng = np.random.RandomState(0)
    scores = torch.tensor(rng.normal(size=(6, 21)), dtype=torch.float32)
    labels = torch.tensor([0, 3, 0, 20, 7, 0])
    deltas = torch.tensor(rng.normal(size=(6, 84)), dtype=torch.float32)
    targets, weights = torch.zeros(6, 84), torch.zeros(6, 84)
    for r, c in enumerate(labels.tolist()):
        if c:
            targets[r, 4 * c:4 * c + 4] = torch.tensor(rng.normal(size=4), dtype=torch.float32)
            weights[r, 4 * c:4 * c + 4] = 1
    parts = fast_rcnn_loss(FastRCNNOutput(scores, deltas), labels, targets, weights)
    log_p = scores.double().log_softmax(1)
    assert parts.cls.item() == pytest.approx(float(-log_p[torch.arange(6), labels].mean()), rel=1e-6)
    ref, _ = _smooth_l1_reference(deltas.double().numpy(), targets.double().numpy(), weights.double().numpy())
    assert parts.bbox.item() == pytest.approx(ref, rel=1e-6)
    assert parts.total.item() == pytest.approx(parts.cls.item() + parts.bbox.item(), rel=1e-6)


def test_step_lr_policy():
    assert [step_lr(i, base_lr=0.001, gamma=0.1, stepsize=50_000) for i in (0, 49_999, 50_000, 100_000, 149_999)] \
        == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-5])


def test_caffe_sgd_matches_plain_loop():
    torch.manual_seed(0)
    w1, b1 = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5))
    frozen = torch.nn.Parameter(torch.randn(4))
    from eval.detection.model import ParamSpec

    specs = [ParamSpec("l.weight", "l", w1, 1.0, 1.0), ParamSpec("l.bias", "l", b1, 2.0, 0.0),
             ParamSpec("c1.weight", "c1", frozen, 0.0, 0.0)]
    opt = CaffeSGD(specs, momentum=0.9, weight_decay=0.0005)
    ref = {"w": w1.detach().double().clone(), "b": b1.detach().double().clone()}
    hist = {"w": torch.zeros_like(ref["w"]), "b": torch.zeros_like(ref["b"])}
    frozen_before = frozen.detach().clone()
    for it in range(7):
        grads = {"w": torch.randn(5, 3), "b": torch.randn(5)}
        w1.grad, b1.grad = grads["w"].clone(), grads["b"].clone()
        frozen.grad = torch.randn(4)
        rate = step_lr(it, base_lr=0.1, gamma=0.1, stepsize=3)  # the rate changes inside the run
        opt.step(rate)
        for key, lr_mult, decay_mult in (("w", 1.0, 1.0), ("b", 2.0, 0.0)):
            g = grads[key].double() + 0.0005 * decay_mult * ref[key]
            hist[key] = 0.9 * hist[key] + rate * lr_mult * g
            ref[key] = ref[key] - hist[key]
    np.testing.assert_allclose(w1.detach().double().numpy(), ref["w"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1.detach().double().numpy(), ref["b"].numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(frozen, frozen_before)
    assert set(opt.histories()) == {"l.weight", "l.bias"}


def test_detector_from_converted_conv_weights(conv_model_dir):
    conv = conv_weights_from_model_dir(conv_model_dir)
    assert conv.groups() == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    model = build_detector(conv, seed=0)
    for key, value in conv.tensors.items():
        layer, blob = key.split(".")
        assert torch.equal(getattr(model.layer(layer), blob), value)
    # fresh heads from the prototxt's fillers
    assert model.layer("fc6").weight.std().item() == pytest.approx(0.005, rel=0.02)
    assert torch.all(model.layer("fc6").bias == 1)
    assert model.layer("cls_score").weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.layer("bbox_pred").weight.std().item() == pytest.approx(0.001, rel=0.05)
    specs = {s.name: (s.lr_mult, s.decay_mult) for s in model.param_specs()}
    assert specs["conv1.weight"] == (0.0, 0.0) and specs["conv2.bias"] == (2.0, 0.0)
    assert specs["fc6.weight"] == (1.0, 1.0) and len(specs) == 18
    unfrozen = {s.name: (s.lr_mult, s.decay_mult) for s in model.param_specs(freeze_conv1=False)}
    assert unfrozen["conv1.weight"] == (1.0, 1.0) and unfrozen["conv1.bias"] == (2.0, 0.0)
    model.eval()
    data = torch.randn(2, 3, 160, 224) * 40
    rois = torch.tensor([[0, 0, 0, 100, 80], [1, 30, 20, 200, 150], [0, 50, 50, 60, 60]], dtype=torch.float32)
    out = model(data, rois)
    assert out.cls_score.shape == (3, 21) and out.bbox_pred.shape == (3, 84)
    # the ROI features are conv5 max-pooled over each ROI at 1/16, 6 x 6 bins: the float64 port of the Fast R-CNN
    # fork's roi_pooling_layer.cpp (tests/reference) on the same conv5, including corners that round at .5
    from reference import roi_pooling

    rois = torch.cat([rois, torch.tensor([[0, 8, 24, 39, 56], [1, 120, 8, 215, 151]], dtype=torch.float32)])
    with torch.no_grad():
        conv5 = model.net(data=data, outputs=["conv5"])["conv5"]
        pooled = model.net(data=data, rois=rois, outputs=["pool5"])["pool5"]
    ref = roi_pooling(conv5.double().numpy(), rois.numpy(), pooled_h=6, pooled_w=6, spatial_scale=1 / 16)
    assert pooled.shape == (5, 256, 6, 6) and np.abs(pooled.double().numpy() - ref).max() == 0


def test_group_one_weights_are_accepted(conv_model_dir):
    conv = conv_weights_from_model_dir(conv_model_dir)
    tensors = dict(conv.tensors)
    # a group-1 conv2 (as in a BN-free AlexNet without the two-GPU split): (256, 96, 5, 5)
    tensors["conv2.weight"] = torch.randn(256, 96, 5, 5) * 0.01
    grouped = type(conv)(tensors=tensors, choice="conv", source="test")
    assert grouped.groups()["conv2"] == 1
    model = build_detector(grouped)
    assert model.layer("conv2").weight.shape == (256, 96, 5, 5)


def test_missing_conv_layer_is_an_error(tmp_path):
    from jigsawpp.io import save_state_dict_file

    save_state_dict_file({"conv1.weight": torch.zeros(96, 3, 11, 11)}, tmp_path / "model.safetensors")
    with pytest.raises(KeyError, match="conv1.bias"):
        conv_weights_from_model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="jigsawpp convert"):
        conv_weights_from_model_dir(tmp_path / "nowhere")


def test_detector_round_trips_through_a_caffemodel(conv_model_dir, tmp_path):
    model = build_detector(conv_weights_from_model_dir(conv_model_dir), seed=1).eval()
    path = caffe_import.save_caffemodel(model.net, tmp_path / "detector.caffemodel")
    again = load_caffe_detector(prototxt.path("fast_rcnn/CaffeNet/test.prototxt"), path).eval()
    data = torch.randn(1, 3, 128, 160) * 40
    rois = torch.tensor([[0, 5, 5, 100, 90], [0, 0, 0, 159, 127]], dtype=torch.float32)
    a, b = model(data, rois), again(data, rois)
    torch.testing.assert_close(a.cls_score, b.cls_score, rtol=0, atol=0)
    torch.testing.assert_close(a.bbox_pred, b.bbox_pred, rtol=0, atol=0)


def test_conv_weights_from_a_converted_release(tmp_path):
    from jigsawpp.fixtures import make_release_zip
    from jigsawpp.models import from_release
    from jigsawpp.release import convert_release

    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout="flat", seed=4)
    convert_release(made["path"], tmp_path / "release", onnx=False)
    conv = conv_weights_from_model_dir(tmp_path / "release")
    reference = from_release(tmp_path / "release").state_dict()
    for key, value in conv.tensors.items():
        assert torch.equal(value, reference[key]), key
    assert conv.weights_sha256 and "release" in conv.source
    build_detector(conv)  # shapes fit the Fast R-CNN CaffeNet


def test_fc6_fc7_from_the_model_on_request(conv_model_dir):
    from jigsawpp.transfer_weights import TransferWeights

    conv = conv_weights_from_model_dir(conv_model_dir)
    g = torch.Generator().manual_seed(1)
    fc = {"fc6.weight": torch.randn(4096, 9216, generator=g) * 0.01, "fc6.bias": torch.randn(4096, generator=g),
          "fc7.weight": torch.randn(4096, 4096, generator=g) * 0.01, "fc7.bias": torch.randn(4096, generator=g)}
    weights = TransferWeights(tensors={**conv.tensors, **fc}, choice="conv+fc", source="test")
    model = build_detector(weights, seed=0)
    for key, value in fc.items():
        layer, blob = key.split(".")
        assert torch.equal(getattr(model.layer(layer), blob), value)
    fresh = build_detector(conv, seed=0)
    assert fresh.layer("fc6").weight.std().item() == pytest.approx(0.005, rel=0.02)  # the prototxt's filler
    bad = TransferWeights(tensors={**conv.tensors, **fc, "fc6.weight": torch.zeros(4096, 2304)}, choice="conv+fc",
                          source="stride-2 tower")
    with pytest.raises(ValueError, match=r"fc6.weight has shape \(4096, 2304\).*6 x 6 ROI-pooled conv5"):
        build_detector(bad)
