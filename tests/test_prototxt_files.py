"""Sanity checks on the bundled prototxt files (package `prototxt`), using only the standard library.

These run before and independently of `caffe_import`: a tiny text-format reader below builds a nested
(key, value) tree, enough to check structure (comment header, braces, blob wiring, weight sharing) and to redo the
size/offset arithmetic the files' headers claim (Caffe ceil pooling, the FCN crop offset from the coordinate map
as `caffe.coord_map.crop` computes it).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest

import prototxt

EXPECTED = [
    "alexnet/conv_conv1s4.prototxt",
    "alexnet/deploy_conv1s2.prototxt",
    "alexnet/deploy_conv1s4.prototxt",
    "caffenet/deploy.prototxt",
    "fast_rcnn/CaffeNet/solver.prototxt",
    "fast_rcnn/CaffeNet/test.prototxt",
    "fast_rcnn/CaffeNet/train.prototxt",
    "fcn_alexnet/deploy.prototxt",
    "jigsawpp/cfn_deploy.prototxt",
    "jigsawpp/train_val_cfn_jps++.prototxt",
    "vgg16/deploy.prototxt",
]
NETS = [n for n in EXPECTED if not n.endswith("solver.prototxt")]

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:]|[^\s{}:#"\']+')

Tree = list[tuple[str, "str | Tree"]]


def _tokens(text: str) -> list[str]:
    """Tokens with whitespace and comments dropped; quoted strings kept whole (a '#' inside one is not a comment)."""
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"cannot tokenize at offset {pos}: {text[pos : pos + 20]!r}"
        tok = m.group(0)
        if not tok.isspace() and not tok.startswith("#"):
            out.append(tok)
        pos = m.end()
    return out


def _parse(text: str) -> Tree:
    """Nested (key, value) list; message values are lists, scalars stay raw strings (quotes stripped)."""
    stack: list[Tree] = [[]]
    toks = _tokens(text)
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok == "}":
            assert len(stack) > 1, "unbalanced '}'"
            stack.pop()
            i += 1
            continue
        key = tok
        if toks[i + 1] == ":" and toks[i + 2] != "{":
            value = toks[i + 2]
            if value[0] in "\"'":
                value = value[1:-1]
            stack[-1].append((key, value))
            i += 3
            continue
        i += 2 if toks[i + 1] == "{" else 3
        child: Tree = []
        stack[-1].append((key, child))
        stack.append(child)
    assert len(stack) == 1, "unbalanced '{'"
    return stack[0]


def _get(tree: Tree, key: str) -> list:
    return [v for k, v in tree if k == key]


def _one(tree: Tree, key: str, default=None):
    vals = _get(tree, key)
    assert len(vals) <= 1, f"{key} repeated"
    return vals[0] if vals else default


def _read(name: str) -> str:
    return prototxt.path(name).read_text()


def _layers(name: str) -> list[Tree]:
    return _get(_parse(_read(name)), "layer")


def _by_name(layers: list[Tree]) -> dict[str, Tree]:
    return {_one(lay, "name"): lay for lay in layers}


def _phases(lay: Tree) -> set[str]:
    inc = [_one(rule, "phase") for rule in _get(lay, "include")]
    return set(inc) if inc else {"TRAIN", "TEST"}


# ------------------------------------------------------------------------------------------------ package API
def test_available_lists_every_bundled_file() -> None:
    assert prototxt.available() == sorted(prototxt.available())
    assert set(EXPECTED) <= set(prototxt.available())


def test_path_of_unknown_name_lists_available_names() -> None:
    with pytest.raises(FileNotFoundError) as err:
        prototxt.path("alexnet/deploy_conv1s3.prototxt")
    assert "alexnet/deploy_conv1s4.prototxt" in str(err.value)


# ------------------------------------------------------------------------------------------------ every file
@pytest.mark.parametrize("name", prototxt.available())
def test_file_has_header_and_balanced_braces(name: str) -> None:
    path = prototxt.path(name)
    assert path.is_file()
    text = path.read_text()
    assert text.strip(), f"{name} is empty"
    lines = text.splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 3, f"{name} must open with a '#' comment block"
    assert "preprocessing" in "\n".join(header).lower(), f"{name}: header must state the expected preprocessing"
    depth = 0
    for tok in _tokens(text):
        depth += {"{": 1, "}": -1}.get(tok, 0)
        assert depth >= 0, f"{name}: '}}' without '{{'"
    assert depth == 0, f"{name}: {depth} unclosed '{{'"


@pytest.mark.parametrize("name", prototxt.available())
def test_file_has_no_machine_paths(name: str) -> None:
    machine_dirs = "|".join(f"/{d}/" for d in ("wo" + "rk", "home", "tmp", "Users"))
    assert not re.search(rf"({machine_dirs}|[A-Z]:\\)", _read(name))


@pytest.mark.parametrize("name", NETS)
def test_every_bottom_is_produced_earlier(name: str) -> None:
    for phase in ("TRAIN", "TEST"):
        produced: set[str] = set()
        for lay in _layers(name):
            if phase not in _phases(lay):
                continue
            lname, ltype = _one(lay, "name"), _one(lay, "type")
            assert lname and ltype, f"{name}: layer without name/type"
            for bottom in _get(lay, "bottom"):
                assert bottom in produced, f"{name} ({phase}): layer {lname!r} reads {bottom!r} before any top"
            produced.update(_get(lay, "top"))


@pytest.mark.parametrize("name", NETS)
def test_layer_names_unique_per_phase(name: str) -> None:
    for phase in ("TRAIN", "TEST"):
        names = [_one(lay, "name") for lay in _layers(name) if phase in _phases(lay)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        assert not dupes, f"{name} ({phase}): duplicate layer names {dupes}"


# ------------------------------------------------------------------------------------------------ specific nets
@pytest.mark.parametrize("name", ["jigsawpp/cfn_deploy.prototxt", "jigsawpp/train_val_cfn_jps++.prototxt"])
def test_cfn_towers_share_weights_by_param_name(name: str) -> None:
    layers = _by_name(_layers(name))
    for i in range(1, 10):
        for base, shared in [(f"conv{k}", f"conv{k}") for k in range(1, 6)] + [("fc6", "fc6s")]:
            lay = layers[f"{base}_s{i}"]
            assert [_one(p, "name") for p in _get(lay, "param")] == [f"{shared}_w", f"{shared}_b"]
            assert _get(lay, "top") == [f"{base}_s{i}"]
    concat = layers["concat"]
    assert _get(concat, "bottom") == [f"fc6_s{i}" for i in range(1, 10)]
    assert _one(_one(layers["fc8"], "inner_product_param"), "num_output") == "1000"


def test_cfn_train_net_carries_fork_fields() -> None:
    layers = _layers("jigsawpp/train_val_cfn_jps++.prototxt")
    merge = next(lay for lay in layers if _one(lay, "type") == "MergeData")
    assert len(_get(merge, "bottom")) == 18
    assert _get(merge, "top") == [f"data_{i}" for i in range(1, 10)] + ["sub_num"]
    data = [lay for lay in layers if _one(lay, "type") == "Data"]
    jumps = {(_one(lay, "name"), _phases(lay).pop()): _one(_one(lay, "data_param"), "rand_jump") for lay in data}
    assert jumps == {
        ("data_0", "TRAIN"): "2",
        ("data_r", "TRAIN"): "8",
        ("data_0", "TEST"): "0",
        ("data_r", "TEST"): "3",
    }
    for lay in data:
        assert _one(_one(lay, "transform_param"), "hash_file") == "./permutations_701.bin"


def _spatial(name: str, until: str, size: int, *, ceil: bool = True) -> int:
    """Follow the layer chain up to `until`, applying Caffe's conv and pooling output-size rules (square inputs)."""
    for lay in _layers(name):
        ltype = _one(lay, "type")
        if ltype in ("Convolution", "Pooling"):
            p = _one(lay, "convolution_param" if ltype == "Convolution" else "pooling_param")
            k, s, pad = (int(_one(p, f, d)) for f, d in (("kernel_size", 1), ("stride", 1), ("pad", 0)))
            height = size
            span = height + 2 * pad - k
            if ltype == "Convolution" or not ceil:
                size = span // s + 1
            else:
                size = math.ceil(span / s) + 1
                if pad and (size - 1) * s >= height + pad:  # Caffe's clip: the last window must start in the image
                    size -= 1
        if _one(lay, "name") == until:
            return size
    raise AssertionError(f"{until} not in {name}")


@pytest.mark.parametrize(
    ("name", "until", "size", "expected"),
    [
        ("alexnet/deploy_conv1s2.prototxt", "pool5", 64, 3),
        ("caffenet/deploy.prototxt", "pool5", 227, 6),
        ("alexnet/conv_conv1s4.prototxt", "pool5", 227, 6),
        ("vgg16/deploy.prototxt", "pool5", 224, 7),
        ("fcn_alexnet/deploy.prototxt", "fc6", 500, 16),
        ("fast_rcnn/CaffeNet/test.prototxt", "conv5", 227, 15),
    ],
)
def test_ceil_pooling_sizes(name: str, until: str, size: int, expected: int) -> None:
    assert _spatial(name, until, size) == expected


def test_tile_pool5_would_be_2x2_with_floor_pooling() -> None:
    assert _spatial("alexnet/deploy_conv1s2.prototxt", "pool5", 64, ceil=False) == 2


def test_fcn_crop_offset_matches_coordinate_map() -> None:
    """Compose caffe.coord_map's per-layer maps from data to upscore; Crop's offset must be the resulting shift."""
    layers = _by_name(_layers("fcn_alexnet/deploy.prototxt"))
    crop = layers["score"]
    assert _get(crop, "bottom") == ["upscore", "data"]
    chain = []
    blob = "upscore"
    while blob != "data":
        producer = next(lay for lay in layers.values() if blob in _get(lay, "top") and blob not in _get(lay, "bottom"))
        chain.append(producer)
        blob = _get(producer, "bottom")[0]
    scale, shift = Fraction(1), Fraction(0)
    for lay in reversed(chain):
        ltype = _one(lay, "type")
        if ltype not in ("Convolution", "Pooling", "Deconvolution"):
            continue
        p = _one(lay, "pooling_param" if ltype == "Pooling" else "convolution_param")
        k, s, pad = (int(_one(p, f, d)) for f, d in (("kernel_size", 1), ("stride", 1), ("pad", 0)))
        if ltype == "Deconvolution":
            a, b = Fraction(s), Fraction(k - 1, 2) - pad
        else:
            a, b = Fraction(1, s), (pad - Fraction(k - 1, 2)) / s
        scale, shift = scale * a, shift * a + b
    assert scale == 1
    crop_param = _one(crop, "crop_param")
    assert _one(crop_param, "axis") == "2"
    assert shift == int(_one(crop_param, "offset")) == 18
    upscore = (_spatial("fcn_alexnet/deploy.prototxt", "fc6", 500) - 1) * 32 + 63
    assert upscore - 18 >= 500


def test_fast_rcnn_train_freezes_conv1_and_solver_names_train_net() -> None:
    layers = _by_name(_layers("fast_rcnn/CaffeNet/train.prototxt"))
    assert [(_one(p, "lr_mult"), _one(p, "decay_mult")) for p in _get(layers["conv1"], "param")] == [("0", "0")] * 2
    assert _get(layers["loss_bbox"], "bottom") == [
        "bbox_pred",
        "bbox_targets",
        "bbox_inside_weights",
        "bbox_outside_weights",
    ]
    solver = _parse(_read("fast_rcnn/CaffeNet/solver.prototxt"))
    assert _one(solver, "train_net") in prototxt.available()
