"""Reference crop, following BVLC `src/caffe/layers/crop_layer.cpp` (LayerSetUp, Reshape, Forward_cpu)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import as_f64


def crop(x: np.ndarray, ref_shape: Sequence[int], *, axis: int = 2, offset: Sequence[int] = ()) -> np.ndarray:
    """Caffe ``Crop``: dims before ``axis`` are kept; each dim ``i >= axis`` becomes ``ref_shape[i]`` starting at
    its offset.

    Offsets: none -> 0 for every cropped dim; one -> the same for every cropped dim; otherwise exactly one per
    cropped dim (``x.ndim - axis`` values). Caffe CHECKs ``x.shape[i] - offset_i >= ref_shape[i]``; so does this.
    """
    x = as_f64(x)
    ref = tuple(int(v) for v in ref_shape)
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ValueError(f"crop axis {axis} out of range for rank {x.ndim}")
    if len(ref) != x.ndim:
        raise ValueError(f"reference shape {ref} must have the rank of the data {x.shape}")
    offsets = [int(o) for o in offset]
    if any(o < 0 for o in offsets):
        raise ValueError(f"crop offsets are unsigned in caffe.proto, got {offsets}")
    cropped = x.ndim - axis
    if len(offsets) > 1 and len(offsets) != cropped:
        raise ValueError(f"{len(offsets)} offsets given for {cropped} cropped dims (axis {axis}, rank {x.ndim})")
    index: list[slice] = []
    for i in range(x.ndim):
        if i < axis:
            index.append(slice(None))
            continue
        start = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - axis]
        if x.shape[i] - start < ref[i]:
            raise ValueError(f"crop of dim {i} out of bounds: size {x.shape[i]}, offset {start}, crop {ref[i]}")
        index.append(slice(start, start + ref[i]))
    return x[tuple(index)].copy()
