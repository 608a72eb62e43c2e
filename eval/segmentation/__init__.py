"""Semantic segmentation with FCN-AlexNet on PASCAL VOC, faithful to shelhamer/fcn.berkeleyvision.org@1305c73
``voc-fcn-alexnet`` (the protocol behind the paper's Table 3 segmentation column).

Pieces: `config` (every constant, with its source), `labels` (VOC PNGs, SBD .mat files, the VOC palette), `data`
(SBD / VOC splits, seg11valid, FCN's training order), `model` (FCN-AlexNet around CaffeAlexNet's conv trunk),
`metric` (FCN's score.py confusion matrix), `evaluate` (testing, prediction PNGs, overlays, the --caffe-test loader),
`results` (scoring a prediction folder, scores.json, plot), `provenance` (the stamp and the verify row), `pipeline`
(end to end), `sample_data`. Heavy imports stay inside those modules.
"""
