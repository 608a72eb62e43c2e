"""Float64 numpy ports of Caffe's CPU forward kernels, used as independent oracles by the converter tests.

Each function is written from the documented Caffe semantics (its docstring gives the formula and the source file),
with plain loops where Caffe loops, and shares no code with ``caffe_import``.
"""

from ._common import NEG_FLT_MAX, c_round
from .conv import convolution, deconvolution
from .crop import crop
from .elementwise import eltwise, power
from .fillers import bilinear_filler
from .inner_product import inner_product
from .lrn import lrn_across, lrn_within
from .normalization import batch_norm, mvn, scale
from .pooling import pooling, pooling_output_shape
from .roi_pooling import roi_pooling
from .softmax import softmax

__all__ = [
    "NEG_FLT_MAX",
    "batch_norm",
    "bilinear_filler",
    "c_round",
    "convolution",
    "crop",
    "deconvolution",
    "eltwise",
    "inner_product",
    "lrn_across",
    "lrn_within",
    "mvn",
    "pooling",
    "pooling_output_shape",
    "power",
    "roi_pooling",
    "scale",
    "softmax",
]
