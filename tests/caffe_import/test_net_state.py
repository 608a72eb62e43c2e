"""NetState filtering (phase, level, stages) as BVLC Caffe does it (`src/caffe/net.cpp` at c9f71bd).

`Net::StateMeetsRule`: a rule is met when the state has its phase (if set), min_level <= level <= max_level (each
if set), all its `stage`s and none of its `not_stage`s. `Net::FilterNet`: a layer with include rules is kept when
any is met, with exclude rules when none is, with neither always. The `Net(param_file, phase, level, stages)`
constructor (pycaffe's `caffe.Net(..., level=, stages=)`) sets phase and level and *adds* the stages to the
file's own `state { stage }`. The rule logic is checked against an independent set-based reference over a sweep of
(phase, level, stages) x seeded random rules, and a DIGITS-style AlexNet (train/val/deploy in one file) loaded as
deploy must compute every blob of the plain deploy exactly (same weights, same float32 kernels: max |diff| 0).
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe_import
import prototxt
from caffe_import import CaffeImportError, CaffeImportWarning
from caffe_import.graph import build_graph
from caffe_import.proto import caffe_pb2

PHASES = ("TRAIN", "TEST")
LEVELS = (-1, 0, 1, 2, 3)
STAGE_NAMES = ("a", "b", "deploy")


def random_rule(rng: np.random.Generator) -> dict:
    """A NetStateRule as a plain dict; levels are drawn from the swept range so that boundaries are hit."""
    rule: dict = {}
    if rng.random() < 0.4:
        rule["phase"] = PHASES[rng.integers(2)]
    if rng.random() < 0.35:
        rule["min_level"] = int(rng.integers(-1, 4))
    if rng.random() < 0.35:
        rule["max_level"] = int(rng.integers(-1, 4))
    rule["stage"] = [s for s in STAGE_NAMES if rng.random() < 0.25]
    rule["not_stage"] = [s for s in STAGE_NAMES if rng.random() < 0.2]
    return rule


def rule_text(rule: dict) -> str:
    parts = [f"phase: {rule['phase']}"] if "phase" in rule else []
    parts += [f"{key}: {rule[key]}" for key in ("min_level", "max_level") if key in rule]
    parts += [f'stage: "{s}"' for s in rule["stage"]] + [f'not_stage: "{s}"' for s in rule["not_stage"]]
    return " ".join(parts)


def reference_rule_met(rule: dict, phase: str, level: int, stages: set[str]) -> bool:
    """Written from the documented semantics with set operations, not from the code under test."""
    checks = [
        rule.get("phase", phase) == phase,
        level >= rule.get("min_level", level),
        level <= rule.get("max_level", level),
        set(rule["stage"]).issubset(stages),
        not set(rule["not_stage"]) & stages,
    ]
    return all(checks)


def reference_keeps(kind: str | None, rules: list[dict], phase: str, level: int, stages: set[str]) -> bool:
    met = [reference_rule_met(rule, phase, level, stages) for rule in rules]
    return {"include": any(met), "exclude": not any(met), None: True}[kind]


def sweep_net(seed: int, n_layers: int, file_state: str) -> tuple[str, list[tuple[str, str | None, list[dict]]]]:
    rng = np.random.default_rng(seed)
    lines = [file_state, 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }']
    layers = []
    for i in range(n_layers):
        kind = [None, "include", "exclude"][rng.integers(3)]
        rules = [random_rule(rng) for _ in range(rng.integers(1, 3))] if kind else []
        name = f"l{i}"
        body = " ".join(f"{kind} {{ {rule_text(rule)} }}" for rule in rules)
        lines.append(f'layer {{ name: "{name}" type: "Power" bottom: "data" top: "{name}" {body} }}')
        layers.append((name, kind, rules))
    return "\n".join(lines), layers


@pytest.mark.parametrize("file_state, file_stages",
                         [("", set()), ('state { phase: TRAIN level: 7 stage: "b" }', {"b"})])
def test_rules_match_an_independent_reference_over_a_sweep(file_state: str, file_stages: set[str]) -> None:
    text, layers = sweep_net(5, 150, file_state)
    net = caffe_import.read_prototxt_string(text)
    n_kept = 0
    for phase, level in itertools.product(PHASES, LEVELS):
        for r in range(len(STAGE_NAMES) + 1):
            for stages in itertools.combinations(STAGE_NAMES, r):
                graph = build_graph(net, phase=phase, level=level, stages=stages)
                # The file's phase and level are replaced, its stages kept and joined by the given ones.
                effective = set(stages) | file_stages
                expected = [name for name, kind, rules in layers if reference_keeps(kind, rules, phase, level,
                                                                                    effective)]
                assert [layer.name for layer in graph.layers] == expected, (phase, level, stages)
                assert graph.state.phase == phase and graph.state.level == level
                assert set(graph.state.stages) == effective
                n_kept += len(expected)
    assert 0.2 < n_kept / (150 * 80) < 0.8   # the sweep exercises both outcomes


def test_state_arguments_are_checked() -> None:
    net = caffe_import.read_prototxt_string(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }')
    with pytest.raises(CaffeImportError, match=r"stages must be a list of non-empty stage names such as \['deploy'\], "
                                               r"not 'deploy'"):
        caffe_import.load(net, stages="deploy")
    with pytest.raises(CaffeImportError, match="level must be an integer"):
        caffe_import.load(net, level=1.5)
    with pytest.raises(CaffeImportError, match="phase must be 'TEST' or 'TRAIN'"):
        caffe_import.load(net, phase="DEPLOY")


def test_messages_name_the_rule_that_left_a_layer_out() -> None:
    gated = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } include { stage: "deploy" } }
    layer { name: "sq" type: "Power" bottom: "data" top: "sq" power_param { power: 2 } }
    """
    with pytest.raises(CaffeImportError, match=r"layer 'sq' \(Power\) reads bottom 'data', which only layer 'data' "
                                               r"makes, and its rules \(include \{ stage: \"deploy\" \}\) leave it "
                                               r"out for phase TEST, level 0, stages \[\]; pass the phase, stages"):
        caffe_import.load(caffe_import.read_prototxt_string(gated))
    net = caffe_import.load(caffe_import.read_prototxt_string(gated), stages=["deploy"])
    assert net.output_names == ("sq",) and net.graph.state.stages == ("deploy",)
    high = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "deep" type: "Power" bottom: "data" top: "deep" include { min_level: 2 } }
    layer { name: "head" type: "Power" bottom: "deep" top: "head" }
    """
    with pytest.raises(CaffeImportError, match=r"layer 'head' \(Power\) reads bottom 'deep', which only layer 'deep' "
                                               r"makes, and its rules \(include \{ min_level: 2 \}\) leave it out"):
        caffe_import.load(caffe_import.read_prototxt_string(high), level=1)
    assert caffe_import.load(caffe_import.read_prototxt_string(high), level=2).output_names == ("head",)


# -- a DIGITS-style AlexNet: train, val and deploy in one file ---------------------------------------------------

def digits_style(plain: caffe_pb2.NetParameter, *, with_input: bool) -> caffe_pb2.NetParameter:
    """The layout of NVIDIA/DIGITS `digits/standard-networks/caffe/alexnet.prototxt`: Data layers for the train
    and val stages, loss `exclude { stage: "deploy" }`, accuracy for val, the Softmax for deploy only; optionally
    an Input layer for the deploy stage (DIGITS' own file has none and declares the input when it deploys)."""
    net = caffe_pb2.NetParameter(name=plain.name)
    for stage, mirror in (("train", True), ("val", False)):
        data = net.layer.add(name=f"{stage}-data", type="Data", top=["data", "label"])
        data.transform_param.crop_size = 227
        data.transform_param.mirror = mirror
        data.data_param.batch_size = 100
        data.include.add(stage=[stage])
    for layer in plain.layer:
        if layer.type == "Input" and not with_input:
            continue
        added = net.layer.add()
        added.CopyFrom(layer)
        if layer.type == "Input":
            added.include.add(stage=["deploy"])
        if layer.type == "Softmax":
            added.include.add(stage=["deploy"])
    accuracy = net.layer.add(name="accuracy", type="Accuracy", bottom=["fc8", "label"], top=["accuracy"])
    accuracy.include.add(stage=["val"])
    loss = net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["fc8", "label"], top=["loss"])
    loss.exclude.add(stage=["deploy"])
    return net


def test_digits_style_alexnet_loads_as_its_deploy(tmp_path: Path) -> None:
    plain = caffe_import.read_prototxt(prototxt.path("caffenet/deploy.prototxt"))
    plain.layer[0].input_param.shape[0].dim[0] = 1
    reference = caffe_import.load(plain, seed=0)
    path = tmp_path / "digits.prototxt"
    path.write_text(text_format.MessageToString(digits_style(plain, with_input=True)))
    with pytest.raises(CaffeImportError, match=r"reads bottom 'data', which only layer 'input' makes, and its rules "
                                               r"\(include \{ stage: \"deploy\" \}\) leave it out for phase TEST"):
        caffe_import.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaffeImportWarning)
        net = caffe_import.load(path, stages=["deploy"], seed=None)
    assert not net.notes    # the rules, not the deploy heuristics (data/loss layers dropped with a note), decided

    def wiring(graph):
        return [(layer.name, layer.type, layer.bottoms, layer.tops) for layer in graph.layers]

    assert wiring(net.graph) == wiring(reference.graph)
    net.load_state_dict(reference.state_dict())
    blobs = sorted(reference.blob_shapes)
    x = torch.from_numpy(np.random.default_rng(3).uniform(-120, 130, (1, 3, 227, 227)).astype(np.float32))
    with torch.no_grad():
        expected, got = reference(data=x, outputs=blobs), net(data=x, outputs=blobs)
    for blob in blobs:
        assert torch.equal(got[blob], expected[blob]), blob

    # DIGITS' own file has no Input layer: declare the input, as DIGITS does when it deploys.
    bare = caffe_import.read_prototxt_string(text_format.MessageToString(digits_style(plain, with_input=False)))
    deploy = build_graph(bare, stages=["deploy"], inputs={"data": (1, 3, 227, 227)})
    assert wiring(deploy) == wiring(reference.graph) and not deploy.notes
    # As the val net (TEST phase) the rules keep val-data, accuracy and loss, and leave out train-data and prob; the
    # TEST graph then drops the data/loss/accuracy layers with a note.
    val = build_graph(bare, stages=["val"], inputs={"data": (1, 3, 227, 227)})
    assert wiring(val) == wiring(reference.graph)[:-1] and val.outputs == ("fc8",)
    notes = "\n".join(val.notes)
    assert "'val-data' (Data) skipped" in notes and "'train-data'" not in notes
    assert "'accuracy' (Accuracy) dropped" in notes and "'loss' (SoftmaxWithLoss) dropped" in notes
