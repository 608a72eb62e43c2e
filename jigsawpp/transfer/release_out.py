"""A trained transfer network packed like the authors' release zips, so `jigsawpp convert` reads it unchanged.

The project page says each zip holds "the pre-trained caffe model and deploy" and "the Imagenet pseudo labels of
both train and validation sets"; `jigsawpp.release` finds those parts by content. We write exactly that:

    NAME.zip
      NAME/deploy.prototxt              the CaffeNet-layout deploy of the trained net (fc8 = k rows, or conv only)
      NAME/NAME.caffemodel              its weights (stored, not compressed: Caffe, OpenCV and caffe_import read it)
      NAME/pseudo_labels/<split>.txt    `path label` lists, one per labelled split (train, val, ...)
      NAME/README.txt                   where it came from (teacher, clustering, training), in words

A zip rather than a folder because `jigsawpp convert` reads release zips, and a zip is what one hands on. Naming it
after one of the five releases (e.g. jigsawpp_acc) makes `convert` attach that release's paper numbers.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

from jigsawpp.io import atomic_path
from jigsawpp.label_files import PseudoLabels
from jigsawpp.models import CaffeAlexNet
from jigsawpp.transfer.network import deploy_text, write_caffemodel

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SPLIT_WORDS = {"train", "training", "trn", "val", "valid", "validation", "test"}  # jigsawpp.label_files.guess_split


def write_release_zip(path: str | os.PathLike[str], *, model: CaffeAlexNet, name: str, description: str,
                      labels: Mapping[str, PseudoLabels]) -> Path:
    """Write `model` (weights, deploy) and the pseudo-labels {split: labels} (as `path label` lists) as the release
    zip `path`. Written to a temporary file beside `path`, then renamed: a failure leaves nothing behind."""
    if not _NAME.match(name):
        raise ValueError(f"release name {name!r}: use letters, digits, '_', '-' or '.', e.g. jigsawpp_acc.")
    split_words = set(re.split(r"[^a-z]+", name.lower())) & _SPLIT_WORDS
    if split_words:  # `jigsawpp convert` tells train from val lists by these words in the member path
        raise ValueError(f"release name {name!r} contains {sorted(split_words)}, which would make its train/val "
                         "label lists ambiguous to `jigsawpp convert`; choose another name.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"{name}: cluster-classification transfer network written by jigsawpp (CaffeNet layout, conv1 stride "
              f"4{', fc8 ' + str(model.config.num_classes) + ' clusters' if model.config.num_classes else ''}).\n"
              "Input: BGR, 0-255, minus the mean B 104, G 117, R 123 (the CaffeNet convention).")
    deploy = deploy_text(model.config, name=name, header=header)
    fd, tmp = atomic_path(path)  # the user's umask, as every other output (mkstemp would make it 0600)
    os.close(fd)
    weights = tmp.with_suffix(".caffemodel")
    try:
        write_caffemodel(model, deploy, weights)
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(f"{name}/deploy.prototxt", deploy, compress_type=zipfile.ZIP_DEFLATED)
            zf.write(weights, f"{name}/{name}.caffemodel", compress_type=zipfile.ZIP_STORED)
            for split, found in labels.items():
                text = "".join(f"{n} {int(y)}\n" for n, y in zip(found.names, found.labels))
                zf.writestr(f"{name}/pseudo_labels/{split}.txt", text, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(f"{name}/README.txt", description.rstrip() + "\n", compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        weights.unlink(missing_ok=True)
    return path
