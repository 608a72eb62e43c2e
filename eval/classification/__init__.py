"""PASCAL VOC2007 multi-label classification fine-tuning, faithful to Krähenbühl et al.'s
philkr/voc-classification@c209779 (the protocol behind the paper's Table 3 classification column).

Pieces: `config` (every constant, with its source), `labels` (the devkit's per-class image sets), `data` (the
random scale/crop/mirror warp and the image order), `model` (CaffeAlexNet clipped at drop7 + fc8_cls, the four
variants), `metric` (devkit VOCevalcls 11-point and area AP, Krähenbühl's sklearn AP), `results` (devkit results
files, scores.json, plots), `provenance` (the stamp and the verify row), `pipeline` (end to end), `sample_data`.
Heavy imports stay inside those modules.
"""
