"""`transfer_weights`: the one recorded choice of which layers of a converted model initialise an evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from jigsawpp.convert import manifest_sha256
from jigsawpp.io import save_state_dict_file, sha256_file
from jigsawpp.transfer_weights import TRANSFER_CHOICES, transfer_weights

SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3), "conv4": (384, 192, 3, 3),
          "conv5": (256, 192, 3, 3), "fc6": (16, 32), "fc7": (16, 16)}


def _model_dir(tmp_path, layers):
    g = torch.Generator().manual_seed(0)
    state = {}
    for name in layers:
        state[f"features.{name}.weight"] = torch.randn(SHAPES[name], generator=g)
        state[f"features.{name}.bias"] = torch.randn(SHAPES[name][0], generator=g)
    save_state_dict_file(state, tmp_path / "model.safetensors")
    (tmp_path / "manifest.json").write_text(json.dumps({"inputs": {}}))
    return tmp_path, state


def test_conv_is_the_default_and_conv_fc_takes_fc6_fc7(tmp_path):
    folder, state = _model_dir(tmp_path, SHAPES)
    conv = transfer_weights(folder)
    assert conv.choice == "conv" and conv.layers == TRANSFER_CHOICES["conv"]
    assert sorted(conv.tensors) == sorted(f"conv{i}.{b}" for i in range(1, 6) for b in ("weight", "bias"))
    assert torch.equal(conv.tensors["conv3.weight"], state["features.conv3.weight"])  # prefix stripped by name
    assert conv.groups() == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    # fc6/fc7 are found by name, but must have AlexNet's shapes: the protocols' fc6 reads pool5 256 x 6 x 6
    with pytest.raises(ValueError, match=r"fc6.weight has shape \(16, 32\).*\(4096, 9216\)"):
        transfer_weights(folder, layers="conv+fc")
    record = conv.record()
    assert record["transfer"] == "conv" and record["fc6_fc7"] == "not transferred"
    assert record["model"]["manifest_sha256"] == manifest_sha256(folder / "manifest.json") == conv.manifest_sha256
    assert record["weights_sha256"] == sha256_file(folder / "model.safetensors")


def test_fc_layers_missing_or_unknown_choice(tmp_path):
    folder, _ = _model_dir(tmp_path, [f"conv{i}" for i in range(1, 6)])
    with pytest.raises(KeyError, match="fc6.weight.*no fully connected layers"):
        transfer_weights(folder, layers="conv+fc")
    with pytest.raises(ValueError, match="'conv' .* or 'conv\\+fc'"):
        transfer_weights(folder, layers="fc")
    with pytest.raises(FileNotFoundError, match="jigsawpp convert"):
        transfer_weights(tmp_path / "nowhere")
