"""Krähenbühl's random-scale/crop/mirror warp against a plain-loop port of philkr's TransformationLayer and against
OpenCV's warpAffine; the classifier's variants, initialisation and transferred layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.classification.data import AffineDraw, ClassificationSource, draw_affine, warp_crop
from eval.classification.model import VARIANTS, VOCClassifier, build_classifier
from jigsawpp.transfer_weights import transfer_weights

MEAN = (104.0, 117.0, 123.0)


def transformation_layer_port(image, draw, crop, mean):
    """transformation_layer.cpp Forward_cpu, pixel by pixel, in float32 like its Dtype."""
    f = np.float32
    h, w = image.shape[:2]
    s = f(draw.scale)
    a = -s if draw.mirror else s
    t0 = a * f(-0.5 * crop) + f(0.5 * w + draw.shift_x)
    t1 = s * f(-0.5 * crop) + f(0.5 * h + draw.shift_y)
    out = np.zeros((3, crop, crop), dtype=np.float32)
    img = image.astype(np.float32)
    for c in range(3):
        for y in range(crop):
            for x in range(crop):
                xx, yy = a * f(x) + t0, s * f(y) + t1
                if 0 <= yy < h and 0 <= xx < w:
                    x0, y0 = int(xx), int(yy)
                    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                    wx, wy = f(x1) - xx, f(y1) - yy
                    v = (wx * wy * img[y0, x0, c] + (f(1) - wx) * wy * img[y0, x1, c]
                         + wx * (f(1) - wy) * img[y1, x0, c] + (f(1) - wx) * (f(1) - wy) * img[y1, x1, c])
                    out[c, y, x] = v - f(mean[c])
    return out


@pytest.fixture(scope="module")
def small_photo(cls_sample):
    import cv2

    from jigsawpp.data import read_image_bgr

    image = read_image_bgr(cls_sample.root / "JPEGImages" / f"{cls_sample.image_ids[-1]}.jpg")
    return cv2.resize(image, (61, 47), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("seed", range(6))
def test_warp_equals_the_transformation_layer_port(small_photo, seed):
    rng = np.random.default_rng(seed)
    crop = 19
    draw = draw_affine(rng, width=61, height=47, crop=crop, min_scale=0.5, max_scale=2.0, mirror=True)
    assert 0.5 <= draw.scale <= min(2.0, 47 / crop)
    ours = warp_crop(small_photo, draw, crop=crop, mean_bgr=MEAN)
    np.testing.assert_allclose(ours, transformation_layer_port(small_photo, draw, crop, MEAN), rtol=0, atol=2e-4)


def test_warp_agrees_with_opencv_warpaffine(small_photo):
    import cv2

    crop = 25
    for draw in (AffineDraw(1.37, 3.2, -2.1, False), AffineDraw(0.83, -4.0, 1.5, True)):
        ours = warp_crop(small_photo, draw, crop=crop, mean_bgr=MEAN)
        a = -draw.scale if draw.mirror else draw.scale
        matrix = np.array([[a, 0, -0.5 * crop * a + 0.5 * 61 + draw.shift_x],
                           [0, draw.scale, -0.5 * crop * draw.scale + 0.5 * 47 + draw.shift_y]])
        theirs = cv2.warpAffine(small_photo.astype(np.float32), matrix, (crop, crop),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        theirs = theirs.transpose(2, 0, 1) - np.asarray(MEAN, np.float32)[:, None, None]
        # OpenCV quantises sample positions to 1/32 pixel; the pixels agree to that precision
        gradient = np.abs(np.diff(small_photo.astype(np.float32), axis=1)).max()
        assert np.abs(ours - theirs).max() <= gradient * max(1.0, draw.scale) / 32 + 1e-3


def test_integer_scale_uses_whole_pixels(small_photo):
    crop = 20
    draw = AffineDraw(1.0, 0.3, -0.2, False)
    out = warp_crop(small_photo, draw, crop=crop, mean_bgr=(0, 0, 0))
    left = int(-0.5 * crop + 0.5 * 61 + 0.3 + 0.5)
    top = int(-0.5 * crop + 0.5 * 47 - 0.2 + 0.5)
    np.testing.assert_array_equal(out, small_photo[top:top + crop, left:left + crop].transpose(2, 0, 1))


def test_source_order_cycles_and_resumes(cls_sample):
    paths = [cls_sample.root / "JPEGImages" / f"{i}.jpg" for i in cls_sample.image_ids]
    targets = np.eye(len(paths), 20, dtype=np.float32)
    kwargs = dict(batch_size=3, crop=32, min_scale=0.5, max_scale=2.0, mirror=True, mean_bgr=MEAN, seed=5)
    source = ClassificationSource(paths, targets, **kwargs)
    first = source.next_batch()
    state = source.state_dict()
    second = source.next_batch()
    order = source.order.tolist()
    assert list(first.indices + second.indices) == (order * 2)[:6]  # sequential through one permutation, cycled
    assert first.data.shape == (3, 3, 32, 32) and torch.equal(first.targets, torch.from_numpy(targets[order[:3]]))
    again = ClassificationSource(paths, targets, **kwargs)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch().data, second.data)
    rank1 = ClassificationSource(paths, targets, **kwargs, rank=1, world_size=2)
    assert rank1.next_batch().indices == tuple(order[k % len(order)] for k in (1, 3, 5))


def test_variants_and_initialisation(conv_model_dir):
    weights = transfer_weights(conv_model_dir)
    model = build_classifier(weights, VARIANTS["all"], seed=0).eval()
    for key, value in weights.tensors.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.fc6.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(model.fc7.bias == 0.1) and torch.all(model.fc8_cls.bias == 0.1)
    assert model(torch.zeros(2, 3, 227, 227)).shape == (2, 20)
    pool5 = build_classifier(weights, VARIANTS["pool5"])
    assert pool5.fc8_cls.weight.shape == (20, 9216) and not pool5.fc8_cls.weight.any()  # Caffe's default filler
    assert not hasattr(pool5, "fc6") and pool5(torch.zeros(1, 3, 227, 227)).abs().sum() == 0
    with pytest.raises(ValueError, match="freezes fc6, fc7.*--transfer conv\\+fc"):
        build_classifier(weights, VARIANTS["fc8"])


def test_fc6_fc7_transfer_on_request(conv_model_dir, tmp_path):
    from jigsawpp.io import load_state_dict_file, save_state_dict_file

    state = load_state_dict_file(conv_model_dir / "model.safetensors")
    state["fc6.weight"], state["fc6.bias"] = torch.randn(4096, 9216), torch.randn(4096)
    state["fc7.weight"], state["fc7.bias"] = torch.randn(4096, 4096), torch.randn(4096)
    save_state_dict_file(state, tmp_path / "model.safetensors")
    weights = transfer_weights(tmp_path, layers="conv+fc")
    assert weights.layers[-2:] == ("fc6", "fc7")
    model = build_classifier(weights, VARIANTS["fc8"])
    assert torch.equal(model.fc6.weight, state["fc6.weight"]) and torch.equal(model.fc7.bias, state["fc7.bias"])
    with pytest.raises(KeyError, match="fc6.weight.*no fully connected layers"):
        transfer_weights(conv_model_dir, layers="conv+fc")
    with pytest.raises(ValueError, match="transfer layers 'fc': choose 'conv'"):
        transfer_weights(conv_model_dir, layers="fc")
    assert isinstance(VOCClassifier(), torch.nn.Module)


def sigmoid_loss_port(f, t, n):
    """philkr's python_layers.SigmoidCrossEntropyLoss forward and backward in float64 (ignore_label 255)."""
    mask = (t != 255).astype(np.float64)
    lz = np.log(1 + np.exp(-np.abs(f))) * mask
    loss = np.sum(lz + ((f > 0) - t) * f * mask) / n
    dlz = np.exp(np.minimum(f, 0)) / (np.exp(np.minimum(f, 0)) + np.exp(-np.maximum(f, 0))) * mask
    return loss, (dlz - t * mask) / n


def test_sigmoid_loss_equals_philkrs_layer():
    from eval.classification.pipeline import sigmoid_cross_entropy

    rng = np.random.default_rng(0)
    f = rng.normal(scale=4, size=(5, 20))
    t = rng.choice([0.0, 1.0, 255.0], size=(5, 20), p=[0.6, 0.3, 0.1])
    logits = torch.tensor(f, requires_grad=True)
    loss = sigmoid_cross_entropy(logits, torch.tensor(t))
    loss.backward()
    ref_loss, ref_grad = sigmoid_loss_port(f, t, 5)
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-6)  # over the batch size, not the labelled count
    np.testing.assert_allclose(logits.grad.numpy(), ref_grad, rtol=1e-5, atol=1e-7)


def test_multipliers_follow_train_cls(conv_model_dir):
    from eval.classification.model import classifier_param_specs

    weights = transfer_weights(conv_model_dir)
    model = build_classifier(weights, VARIANTS["fc678"])
    specs = {s.name: (s.lr_mult, s.decay_mult) for s in classifier_param_specs(model, VARIANTS["fc678"])}
    assert specs["conv5.weight"] == (0.0, 0.0) and specs["conv1.bias"] == (0.0, 0.0)
    assert specs["fc6.weight"] == (1.0, 1.0) and specs["fc7.bias"] == (2.0, 1.0) and specs["fc8_cls.bias"] == (2.0, 1.0)
