"""FCN-AlexNet: our CaffeAlexNet-based module against caffe_import on the bundled deploy prototxt, and the
``--caffe-test`` path (caffe_import) against OpenCV 4.x's independent Caffe importer on the real sample photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from caffe_import.fillers import bilinear_kernel
from eval.segmentation.data import voc_segmentation_split
from eval.segmentation.model import FCN_CROP_OFFSET, build_fcn

DEPLOY = "fcn_alexnet/deploy.prototxt"
FCN_MEAN = (104.00699, 116.66877, 122.67892)


def test_upscore_is_fcns_bilinear_interpolation():
    model = build_fcn(None)
    w = model.upscore.weight
    assert not w.requires_grad and w.shape == (21, 21, 63, 63)
    assert w[3, 3, 31, 31] == 1.0 and w[3, 3, 31, 0] == pytest.approx(1 - 31 / 32) and w[3, 4].abs().sum() == 0
    # upsampling a constant map by 32 gives the constant back away from the borders
    up = model.upscore(torch.ones(1, 21, 6, 6))
    assert torch.allclose(up[0, :, 40:150, 40:150], torch.ones(21, 110, 110))
    assert not model.score_fr.weight.any() and model.fc6.weight.std().item() == pytest.approx(0.005, rel=0.02)


@pytest.fixture(scope="module")
def seeded_fcn_caffemodel(tmp_path_factory):
    """The bundled FCN-AlexNet deploy with seeded He weights and FCN's bilinear upscore, as a caffemodel."""
    from jigsawpp.fixtures import randomize_weights

    net = randomize_weights(caffe_import.load(prototxt.path(DEPLOY)), seed=3)
    with torch.no_grad():
        weight = net.state_dict()["upscore.weight"]
        weight.zero_()
        for c in range(21):
            weight[c, c] = bilinear_kernel((1, 1, 63, 63))[0, 0]
    path = tmp_path_factory.mktemp("fcn") / "fcn_alexnet_seeded.caffemodel"
    caffe_import.save_caffemodel(net, path)
    return path, net


def test_our_fcn_equals_caffe_import_on_the_bundled_deploy(seeded_fcn_caffemodel, seg_sample):
    from eval.segmentation.data import load_image_blob

    _, net = seeded_fcn_caffemodel
    ours = build_fcn(None)
    ours.load_state_dict(net.state_dict())
    ours.eval()
    sample = voc_segmentation_split(seg_sample.root, "val").samples[1]
    x = load_image_blob(sample.image_path, FCN_MEAN)
    with torch.inference_mode():
        a, b = ours(x), net(data=x)["score"]
    assert a.shape == b.shape == (1, 21, *x.shape[2:])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    assert FCN_CROP_OFFSET == 18


def test_caffe_test_path_agrees_with_opencv(seeded_fcn_caffemodel, seg_sample, tmp_path):
    import cv2

    from eval.segmentation.evaluate import evaluate_segmenter, load_caffe_segmenter

    path, _ = seeded_fcn_caffemodel
    split = voc_segmentation_split(seg_sample.root, "val")
    model = load_caffe_segmenter(prototxt.path(DEPLOY), path)
    run = evaluate_segmenter(model, split, tmp_path / "out", mean_bgr=FCN_MEAN, stamp={"key": "test"},
                             progress=False, num_overlays=1)
    assert run.scores is not None and run.scores.n_images == len(split.samples)
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt.path(DEPLOY)), str(path))
    disagree = near_ties = total = 0
    from eval.segmentation.data import load_image_blob
    from eval.segmentation.labels import read_label_png

    for sample in split.samples:
        x = load_image_blob(sample.image_path, FCN_MEAN).numpy()
        cv_net.setInput(x, "data")
        cv_score = cv_net.forward("score")[0]
        ours = read_label_png(run.results_dir / f"{sample.image_id}.png")
        theirs = cv_score.argmax(0)
        top2 = np.sort(cv_score, axis=0)[-2:]
        gap = (top2[1] - top2[0]) / np.abs(cv_score).max()
        differ = ours != theirs
        disagree += int(differ.sum())
        near_ties += int((differ & (gap < 1e-4)).sum())
        total += differ.size
    # every disagreement is a near-tie of OpenCV's own scores (top-2 gap < 1e-4 of the largest score)
    assert disagree == near_ties and disagree <= total * 1e-3, (disagree, near_ties, total)
    assert (run.out_dir / "overlays").is_dir() and run.plot.is_file()


def test_caffe_test_cuts_a_python_data_layer(seeded_fcn_caffemodel, seg_sample, tmp_path):
    from eval.segmentation.data import load_image_blob
    from eval.segmentation.evaluate import load_caffe_segmenter

    path, net = seeded_fcn_caffemodel
    text = prototxt.path(DEPLOY).read_text()
    body = text[text.index("layer {", text.index('type: "Input"')):]
    val = ('layer {\n  name: "data"\n  type: "Python"\n  top: "data"\n  top: "label"\n  python_param {\n'
           '    module: "voc_layers"\n    layer: "VOCSegDataLayer"\n    param_str: "{\'split\': \'seg11valid\'}"\n'
           '  }\n}\n' + body + 'layer {\n  name: "loss"\n  type: "SoftmaxWithLoss"\n  bottom: "score"\n'
           '  bottom: "label"\n  top: "loss"\n  loss_param {\n    ignore_label: 255\n    normalize: true\n  }\n}\n')
    (tmp_path / "val.prototxt").write_text(val)
    model = load_caffe_segmenter(tmp_path / "val.prototxt", path)
    x = load_image_blob(voc_segmentation_split(seg_sample.root, "val").samples[0].image_path, FCN_MEAN)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), net(data=x)["score"], rtol=0, atol=0)


def softmax_loss_port(score, label):
    """Caffe SoftmaxWithLoss forward/backward, normalize true (VALID), ignore_label 255, in float64."""
    c = score.shape[1]
    s = score[0].reshape(c, -1)
    y = label.reshape(-1)
    p = np.exp(s - s.max(0))
    p /= p.sum(0)
    valid = y != 255
    count = max(1, int(valid.sum()))
    loss = -np.log(np.maximum(p[y[valid], np.flatnonzero(valid)], np.finfo(np.float32).tiny)).sum() / count
    grad = p.copy()
    grad[y[valid], np.flatnonzero(valid)] -= 1
    grad[:, ~valid] = 0
    return loss, (grad / count).reshape(score.shape)


def test_segmentation_loss_equals_softmax_with_loss():
    from eval.segmentation.pipeline import segmentation_loss

    rng = np.random.default_rng(1)
    score = rng.normal(scale=3, size=(1, 21, 7, 9))
    label = rng.integers(0, 21, size=(1, 7, 9))
    label[0, :2] = 255
    x = torch.tensor(score, requires_grad=True)
    loss = segmentation_loss(x, torch.tensor(label))
    loss.backward()
    ref_loss, ref_grad = softmax_loss_port(score, label)
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-5, atol=1e-8)
    void = torch.full((1, 7, 9), 255)
    assert float(segmentation_loss(torch.tensor(score), void)) == 0.0  # Caffe divides by max(1, 0)


def test_fcn_multipliers_follow_net_py():
    from eval.segmentation.model import fcn_param_specs

    specs = {s.name: (s.lr_mult, s.decay_mult) for s in fcn_param_specs(build_fcn(None))}
    assert specs["conv1.bias"] == (1.0, 1.0) and specs["fc6.bias"] == (1.0, 1.0)  # no param {} in net.py
    assert specs["score_fr.weight"] == (1.0, 1.0) and specs["score_fr.bias"] == (2.0, 0.0)
    assert specs["upscore.weight"] == (0.0, 0.0)
