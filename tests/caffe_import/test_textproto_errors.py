"""A prototxt that ends inside a message points at the '{' that was never closed (its line and field), not only
at the end of the file; every other case keeps its line-numbered message."""

from __future__ import annotations

import pytest

from caffe_import.errors import CaffeImportError
from caffe_import.proto import caffe_pb2
from caffe_import.textproto import parse_text

NET = """name: "n"
layer {
  name: "conv1"
  type: "Convolution"
  convolution_param {
    num_output: 4
    kernel_size: 3
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "fc"
  type: "InnerProduct"
}
"""


def _error(text: str) -> str:
    with pytest.raises(CaffeImportError) as info:
        parse_text(text, caffe_pb2.NetParameter(), source="net.prototxt")
    return str(info.value)


def test_the_complete_net_parses():
    net = caffe_pb2.NetParameter()
    parse_text(NET, net, source="net.prototxt")
    assert [layer.name for layer in net.layer] == ["conv1", "pool1", "fc"]


@pytest.mark.parametrize(("drop_line", "opened", "what"), [
    (9, 2, "layer[0] (name 'conv1')"),  # the '}' of the first layer: the next layers are read inside it
    (8, 2, "layer[0] (name 'conv1')"),  # convolution_param's: the layer's '}' closes it, the layer stays open
    (14, 10, "layer[1] (name 'pool1')"),
    (18, 15, "layer[2] (name 'fc')"),   # the last '}' of the file
])
def test_a_missing_brace_points_at_the_unclosed_one(drop_line, opened, what):
    lines = NET.splitlines()
    assert lines[drop_line - 1].strip() == "}"
    message = _error("\n".join(lines[: drop_line - 1] + lines[drop_line:]) + "\n")
    assert message.startswith(f"net.prototxt:{opened}: the '{{' of {what} opened on line {opened} is never closed")
    assert "add the missing '}'" in message


def test_unclosed_inside_an_unknown_field_names_it():
    message = _error('name: "n"\nlayer {\n  name: "a"\n  fork_param {\n    x: 1\n')
    assert message.startswith("net.prototxt:4: the '{' of layer[0].fork_param (unknown to the schema) opened on line 4")
    assert "1 enclosing one(s) are open too" in message


def test_other_syntax_errors_keep_their_line():
    assert _error('name: "n"\nlayer {\n  name "a"\n}\n').startswith("net.prototxt:3: expected ':' after scalar")
    assert _error('name: "n"\nlayer {\n  name: "a"\n}\n}\n').startswith("net.prototxt:5: expected a field name")
