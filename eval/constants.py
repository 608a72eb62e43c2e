"""PASCAL VOC constants used by the evaluation code, each with the source it comes from.

Sources: the VOC2007 development kit (``VOCdevkit/VOCcode/VOCinit.m``, ``VOCevaldet.m``), the later kits' ``VOCap.m``
(VOC2010 onwards), and Fast R-CNN's ``lib/datasets/pascal_voc.py`` (rbgirshick/fast-rcnn@b612190), which writes the
results files the devkit scores.
"""

from __future__ import annotations

# The 20 object classes in the devkit's order (VOCinit.m, ``VOCopts.classes``). Class indices everywhere in `eval`
# are positions in this tuple (Fast R-CNN prepends ``__background__`` as class 0; we do not).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Minimum overlap (intersection / union, +1-pixel inclusive boxes) for a detection to match a ground-truth object
# (VOCinit.m: ``VOCopts.minoverlap=0.5``). VOCevaldet.m compares with ``ovmax >= minoverlap``; the widely copied
# Python port (py-faster-rcnn ``voc_eval.py``) uses ``>`` instead, which differs exactly at 0.5.
VOC_MIN_OVERLAP: float = 0.5

# Recall thresholds of the VOC2007 11-point AP, ``for t=0:0.1:1`` in VOCevaldet.m, as the exact doubles MATLAB's
# colon operator produces. MATLAB fills a colon range from both ends (first half ``a + k*d``, second half
# ``b - k*d``, MathWorks' ``colonop`` description), so entries 7 and 8 are the doubles nearest 0.6 and 0.7, whereas
# ``numpy.arange(0, 1.1, 0.1)`` (used by py-faster-rcnn and mmeval) gives 0.6000000000000001 and 0.7000000000000001.
# Entry 4 is 0.30000000000000004 in both. The difference matters only when a recall equals 0.6 or 0.7 exactly
# (e.g. 3 of 5 positives found).
VOC07_RECALL_THRESHOLDS: tuple[float, ...] = (
    0.0,
    0.1,
    0.2,
    0.1 * 3,  # 0.30000000000000004, as in MATLAB's 0:0.1:1
    0.4,
    0.5,
    1.0 - 0.1 * 4,  # == 0.6 exactly (nearest double), filled from the right end
    1.0 - 0.1 * 3,  # == 0.7 exactly (nearest double)
    0.8,
    0.9,
    1.0,
)

# Names of the two AP definitions exposed by `eval.metrics.voc_ap`.
METRIC_11POINT = "11point"  # VOC2007 VOCevaldet.m: mean over t of max precision at recall >= t
METRIC_AREA = "area"  # VOC2010+ VOCap.m (Fast R-CNN's wrapper prints it as ``ap_auc`` via xVOCap.m)

# VOCdevkit/VOC20XX directory layout (VOCinit.m: ``annopath``, ``imgpath``, ``imgsetpath``).
VOC_ANNOTATIONS_DIR = "Annotations"  # <id>.xml
VOC_IMAGES_DIR = "JPEGImages"  # <id>.jpg
VOC_IMAGESETS_DIR = "ImageSets/Main"  # <split>.txt, one image id per line
VOC_IMAGE_EXT = ".jpg"
VOC_ANNOTATION_EXT = ".xml"

# Results file name (VOCinit.m: ``detrespath = [resdir 'Main/%s_det_' testset '_%s.txt']`` filled with the
# competition id and class). "comp4" is the competition for detectors trained on any data except the test set,
# the id Fast R-CNN writes (it may append a salt, ``comp4-<pid>``).
VOC_COMPETITION_ID = "comp4"
VOC_RESULTS_TEMPLATE = "{comp}_det_{split}_{cls}.txt"

# Fast R-CNN's results-file precision (pascal_voc.py ``_write_voc_results_file``: ``'{:s} {:.3f} {:.1f} ...'``,
# coordinates +1 to make them 1-based). Rounding the score to 3 decimals creates ties, which the devkit then breaks
# by file order; our writer keeps full precision unless these are asked for.
FAST_RCNN_SCORE_DECIMALS = 3
FAST_RCNN_BOX_DECIMALS = 1

# Name of the JSON summary written next to the results files by `eval.metrics.write_scores`.
SCORES_FILENAME = "scores.json"
