"""Fast R-CNN detection on PASCAL VOC, faithful to rbgirshick/fast-rcnn@b612190 (the paper's detection protocol).

Pieces: `config` (every constant, with its source), `boxes` (overlaps, targets, NMS), `proposals` (selective
search), `roidb`, `sampling` (mini-batches), `model` (the CaffeNet detector and its loss), `solver` (Caffe SGD),
`train` (checkpointed training), `test` (inference and devkit results), `provenance` (the stamp on every result),
`rescale` (Krähenbühl et al.'s rescaling), `pipeline` (end to end). Heavy imports stay inside those modules.
"""

from eval.detection.config import PROTOCOLS, FastRCNNConfig, protocol

__all__ = ["PROTOCOLS", "FastRCNNConfig", "protocol"]
