"""Reference softmax, following BVLC `src/caffe/layers/softmax_layer.cpp` Forward_cpu."""

from __future__ import annotations

import numpy as np

from ._common import as_f64


def softmax(x: np.ndarray, *, axis: int = 1) -> np.ndarray:
    """Caffe ``Softmax``: independent softmaxes along ``axis`` (default 1, the channel axis) for every position of
    the other axes; ``y = exp(x - max_axis x) / sum_axis exp(x - max_axis x)``.

    Unlike ONNX Softmax before opset 13 it never flattens the trailing dims into one distribution.
    """
    x = as_f64(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)
