"""The context-free network against the bundled CFN deploy run by caffe_import, a float64 MVN reference, and the
caffemodel/zip round trip through `jigsawpp convert`."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from jigsawpp.convert import convert_caffe
from jigsawpp.io import load_state_dict_file
from jigsawpp.models import from_release
from jigsawpp.permutations import generate_permutations
from jigsawpp.pretext.caffe_export import CFN_DEPLOY_NAME, cfn_deploy, write_release_zip
from jigsawpp.pretext.evaluate import load_cfn_caffemodel
from jigsawpp.pretext.networks import CFNConfig, ContextFreeNetwork, TileNormalization
from jigsawpp.release import convert_release

SMALL = CFNConfig(num_classes=12, fc6=32, fc7=48)   # the real AlexNet tower, a narrow head (small caffemodels)


def _tiles(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 9, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 255.0


def _copy_into(net, model: ContextFreeNetwork) -> None:
    with torch.no_grad():
        for layer, values in model.caffe_blobs().items():
            module = net.module_of(layer)
            for attr, value in zip(module.caffe_blobs, values):
                getattr(module, attr).copy_(value)


def test_tile_normalization_matches_a_float64_reference():
    x = torch.rand(5, 3, 64, 64, dtype=torch.float64) * 255
    x[1] = 17.0  # a flat tile: zero variance gives zeros, not NaN (eps 1e-9 is added to the std)
    got = TileNormalization()(x.float()).double()
    flat = x.reshape(5, -1).numpy()
    centred = flat - flat.mean(axis=1, keepdims=True)
    expected = 50.0 * centred / (np.sqrt((centred ** 2).mean(axis=1, keepdims=True)) + 1e-9)
    np.testing.assert_allclose(got.reshape(5, -1).numpy(), expected, atol=2e-4)
    assert torch.all(got[1] == 0)


def test_one_tower_of_weights_and_the_bundled_deploy_agree():
    model = ContextFreeNetwork(CFNConfig()).eval()
    # conv1..conv5 once (CaffeNet's conv shapes), fc6 2304 -> 1024 once, fc7 9216 -> 4096, fc8 4096 -> 1000
    conv = 96 * 3 * 121 + 96 + 256 * 48 * 25 + 256 + 384 * 256 * 9 + 384 + 384 * 192 * 9 + 384 + 256 * 192 * 9 + 256
    assert sum(p.numel() for p in model.parameters()) == conv + 2304 * 1024 + 1024 + 9216 * 4096 + 4096 + 4096 * 1000 \
        + 1000
    net = caffe_import.load(prototxt.path("jigsawpp/cfn_deploy.prototxt"))  # written independently from the docs
    _copy_into(net, model)
    tiles = _tiles(2)
    with torch.inference_mode():
        expected = net(**{f"data_{i + 1}": tiles[:, i] for i in range(9)}, outputs=["fc8"])["fc8"]
        got = model(tiles)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    ours = [(lp.name, lp.type) for lp in cfn_deploy(CFNConfig()).layer]
    bundled = [(lp.name, lp.type) for lp in caffe_import.read_prototxt(prototxt.path("jigsawpp/cfn_deploy.prototxt"))
               .layer]
    assert ours == bundled


def test_vgg16_cfn_runs_like_its_deploy():
    config = CFNConfig(arch="vgg16", num_classes=5, fc6=16, fc7=16, tile_size=32)  # 32-px tiles: pool5 1x1
    model = ContextFreeNetwork(config).eval()
    net = caffe_import.load(cfn_deploy(config))
    _copy_into(net, model)
    tiles = _tiles(1, seed=1)[..., :32, :32]
    with torch.inference_mode():
        expected = net(**{f"data_{i + 1}": tiles[:, i] for i in range(9)}, outputs=["fc8"])["fc8"]
        got = model(tiles)
    assert got.shape == (1, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(5)
    model = ContextFreeNetwork(SMALL).eval()
    perms = generate_permutations(12, seed=2)
    folder = tmp_path_factory.mktemp("export")
    written = write_release_zip(model, perms, folder / "jigsawpp_small.zip")
    return model, perms, written, folder


def test_release_zip_converts_back_to_the_same_tower(exported):
    model, _perms, written, folder = exported
    manifest = convert_release(written.path, folder / "converted", onnx=False)
    assert set(manifest["variants"]) == {"pretext_conv1s2", "transfer_conv1s4"}
    assert manifest["permutations"]["count"] == 12 and manifest["permutations"]["min_hamming"] >= 3
    tower = model.tower.state_dict()
    for variant, stride in (("pretext", 2), ("transfer", 4)):
        alexnet = from_release(folder / "converted", variant)
        assert alexnet.config.conv1_stride == stride
        state = alexnet.state_dict()
        assert set(state) == set(tower)
        for key in tower:
            assert torch.equal(state[key], tower[key]), key


def test_cfn_caffemodel_reads_back_identically(exported):
    model, _perms, written, folder = exported
    with zipfile.ZipFile(written.path) as archive:
        archive.extractall(folder / "unzipped")
    caffemodel = folder / "unzipped" / written.members["caffemodel"]
    deploy = folder / "unzipped" / written.members["deploy_pretext"]
    assert deploy.name == CFN_DEPLOY_NAME
    result = convert_caffe(deploy, caffemodel, folder / "cfn_converted")
    state = load_state_dict_file(result.out_dir / "model.safetensors")
    for layer, values in model.caffe_blobs().items():
        for blob, value in zip(("weight", "bias"), values):
            assert torch.equal(state[f"{layer}.{blob}"], value.detach()), layer
    again = load_cfn_caffemodel(caffemodel)
    assert again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_export_refuses_a_set_larger_than_fc8():
    with pytest.raises(ValueError, match="fc8 has 12 outputs but the permutation set has 13 rows"):
        write_release_zip(ContextFreeNetwork(SMALL), generate_permutations(13, seed=0), "unused.zip")


@pytest.mark.parametrize("init", ["caffe", "msra"])
def test_initial_weights_follow_the_named_fillers(init):
    model = ContextFreeNetwork(CFNConfig(num_classes=12, fc6=256, fc7=512))
    model.reset_parameters(torch.Generator().manual_seed(0), init=init)
    tower = model.tower

    def he(weight):  # Caffe's MSRAFiller, FAN_IN: fan_in = count / num_output (in_channels / groups x kernel area)
        return float(np.sqrt(2.0 / (weight.numel() / weight.shape[0])))

    if init == "caffe":  # train_val_cfn_jps++.prototxt
        expected = {"conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv5": (0.01, 1.0), "fc6": (0.005, 1.0),
                    "fc7": (0.005, 1.0), "fc8": (0.01, 0.0)}
    else:
        expected = {"conv1": (he(tower.conv1.weight) / 50.0, 0.0), "conv2": (he(tower.conv2.weight), 0.0),
                    "conv5": (he(tower.conv5.weight), 0.0), "fc6": (he(model.fc6.weight), 0.0),
                    "fc7": (he(model.fc7.weight), 0.0), "fc8": (0.01, 0.0)}
    layers = {"conv1": tower.conv1, "conv2": tower.conv2, "conv5": tower.conv5, "fc6": model.fc6, "fc7": model.fc7,
              "fc8": model.fc8}
    for name, (std, bias) in expected.items():
        weight = layers[name].weight.detach().double()
        assert float(weight.std()) == pytest.approx(std, rel=0.05), (init, name)
        assert torch.all(layers[name].bias == bias), (init, name)
    with pytest.raises(ValueError, match="init 'he'"):
        model.reset_parameters(init="he")
