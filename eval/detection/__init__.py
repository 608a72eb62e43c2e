"""Fast R-CNN detection on PASCAL VOC, faithful to rbgirshick/fast-rcnn@b612190 (the paper's detection protocol).

Pieces: `config` (every constant, with its source, and the named presets), `boxes` (overlaps, targets, NMS),
`proposals` (the released .mat files, computed selective search and its content-keyed cache), `selective_search`
(R-CNN's selective search from OpenCV's pieces), `validate` (every split checked before training), `roidb`,
`sampling` (mini-batches), `model` (the CaffeNet detector and its loss), `solver` (Caffe SGD), `train` (checkpointed
training), `test` (inference and devkit results), `provenance` (the stamp on every result, and its deviations from
the preset and the paper), `rescale` (Krähenbühl et al.'s rescaling), `pipeline` (end to end). Heavy imports stay
inside those modules.
"""

from eval.detection.config import PROTOCOLS, FastRCNNConfig, protocol

__all__ = ["PROTOCOLS", "FastRCNNConfig", "protocol"]
