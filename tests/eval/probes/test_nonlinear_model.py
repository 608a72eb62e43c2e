"""The nonlinear classifier's network: frozen layers are the model's, fresh layers follow CaffeNet's fillers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.probes.config import NonlinearConfig
from eval.probes.nonlinear_model import build_nonlinear_net
from jigsawpp.models import AlexNetConfig, CaffeAlexNet

SMALL = 99  # pool5 2x2 at a 99-pixel input: small fully connected layers keep the tests fast


@pytest.fixture(scope="module")
def cc_model():
    """A cluster-classification-like AlexNet (fc8 2000) with random weights, narrow fc layers."""
    torch.manual_seed(1)
    return CaffeAlexNet(AlexNetConfig(input_size=SMALL, fc6=512, fc7=512, num_classes=2000))


@pytest.mark.parametrize("upto", ["conv3", "fc6"])
def test_frozen_copied_fresh_filled(cc_model, upto):
    net = build_nonlinear_net(cc_model, NonlinearConfig(freeze_upto=upto, crop_size=SMALL, fc_units=512), seed=0)
    frozen = NonlinearConfig(freeze_upto=upto, crop_size=SMALL, fc_units=512).frozen_layers
    source = dict(cc_model.named_parameters())
    for name, p in net.net.named_parameters():
        layer = name.split(".")[0]
        assert p.requires_grad == (layer not in frozen), name
        if layer in frozen:
            assert torch.equal(p, source[name])
    assert net.trained_layers == tuple(k for k in ("conv4", "conv5", "fc6", "fc7", "fc8") if k not in frozen)
    assert net.net.fc8.weight.shape == (1000, 512)
    # CaffeNet fillers: conv3 N(0, 0.01) bias 0, conv4/conv5 bias 1, fc6/fc7 N(0, 0.005) bias 1, fc8 N(0, 0.01) bias 0
    fillers = {"conv4": (0.01, 1.0), "conv5": (0.01, 1.0), "fc6": (0.005, 1.0), "fc7": (0.005, 1.0),
               "fc8": (0.01, 0.0)}
    for layer in net.trained_layers:
        std, bias = fillers[layer]
        module = getattr(net.net, layer)
        assert float(module.weight.detach().std()) == pytest.approx(std, rel=0.02)
        assert abs(float(module.weight.detach().mean())) < std / 20
        assert torch.all(module.bias == bias)


def test_locked_layers_stay_put_and_dropout_runs(cc_model):
    """One SGD step moves fresh layers only; dropout after the frozen fc6 stays active in training (Caffe TRAIN)."""
    cfg = NonlinearConfig(freeze_upto="fc6", crop_size=SMALL, fc_units=64)
    net = build_nonlinear_net(cc_model, cfg, seed=0).train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 3, SMALL, SMALL) * 50
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]) == (n.split(".")[1] in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6"))
    with torch.no_grad():
        fc6 = net.net.blobs(x, ("fc6",))["fc6"]
    assert float((fc6 == 0).float().mean()) > 0.4  # ReLU zeros plus dropped units


def test_needs_fc_layers_to_freeze_them():
    conv_only = CaffeAlexNet(AlexNetConfig(fc6=None, fc7=None, num_classes=None))
    with pytest.raises(ValueError, match="fc6"):
        build_nonlinear_net(conv_only, NonlinearConfig(freeze_upto="fc6"))
    net = build_nonlinear_net(conv_only, NonlinearConfig(freeze_upto="conv5", crop_size=SMALL))
    assert net.net.fc6.weight.shape == (4096, 256 * 2 * 2)  # CaffeNet's fresh fc6
    np.testing.assert_array_equal(net.net.conv5.weight.detach().numpy(), conv_only.conv5.weight.detach().numpy())
