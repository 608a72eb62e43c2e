"""Classification image sets for the sample VOC folder of real photos (`eval.detection.sample_data`).

The devkit's per-class image sets are derived from the annotations by the rule its documentation states
("Classification/Detection Image Sets"): an image is ``1`` for a class if it has at least one non-difficult object of
it, ``0`` if all its objects of the class are difficult, ``-1`` if it has none. We apply that rule to the sample
folder's XML, so the classification protocol runs on the same real photos as detection.
"""

from __future__ import annotations

import os
from pathlib import Path

from eval.classification.labels import class_image_set_path
from eval.constants import VOC_CLASSES
from eval.voc import VOCDataset

__all__ = ["make_sample_voc_classification", "write_class_image_sets"]


def write_class_image_sets(voc_root: str | os.PathLike[str], split: str) -> list[Path]:
    """Write ``ImageSets/Main/<class>_<split>.txt`` for every VOC class from the split's annotations."""
    from jigsawpp.io import write_text_atomic

    dataset = VOCDataset(voc_root, split)
    annotations = list(dataset.annotations())
    written = []
    for name in VOC_CLASSES:
        lines = []
        for ann in annotations:
            flags = [o.difficult for o in ann.objects if o.name == name]
            label = -1 if not flags else (0 if all(flags) else 1)
            lines.append(f"{ann.image_id} {label:2d}\n")  # the devkit pads the label to two characters
        written.append(write_text_atomic(class_image_set_path(voc_root, name, split), "".join(lines)))
    return written


def make_sample_voc_classification(dest: str | os.PathLike[str], **kwargs: bool):
    """`eval.detection.sample_data.make_sample_voc` plus the class image sets of ``trainval`` and ``test``."""
    from eval.detection.sample_data import make_sample_voc

    sample = make_sample_voc(dest, **kwargs)
    for split in ("trainval", "test"):
        write_class_image_sets(sample.root, split)
    return sample
