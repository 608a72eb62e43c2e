"""Segmentation label maps on disk: VOC's indexed PNGs, SBD's ``.mat`` files, the VOC palette, and overlays.

* VOC ``SegmentationClass/<id>.png`` (VOC2007-2012 devkit): an indexed ("P" mode) PNG whose pixel values are class
  indices 0..20 (0 background, then `eval.constants.VOC_CLASSES`) and 255 for "void" (object borders, difficult
  regions), shown with the devkit's colour map (``VOClabelcolormap.m``).
* SBD ``dataset/cls/<id>.mat`` (Hariharan et al. 2011, the FCN training set): a MATLAB struct ``GTcls`` whose
  ``Segmentation`` field is the (H, W) class map (0..20, no void); read as FCN's ``SBDDSegDataLayer`` does,
  ``loadmat(path)['GTcls'][0]['Segmentation'][0]`` (shelhamer/fcn.berkeleyvision.org@1305c73 ``voc_layers.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eval.constants import VOC_CLASSES

__all__ = [
    "SEG_CLASSES",
    "VOID_LABEL",
    "overlay_labels",
    "read_label_png",
    "read_sbd_cls_mat",
    "voc_palette",
    "write_label_png",
]

# FCN's model output order (fcn.berkeleyvision.org data/pascal/classes.txt): background, then the 20 VOC classes.
SEG_CLASSES: tuple[str, ...] = ("background",) + VOC_CLASSES
VOID_LABEL = 255  # VOC devkit; FCN's SoftmaxWithLoss ignore_label and score.py's [0, n) filter both drop it


def voc_palette(count: int = 256) -> np.ndarray:
    """(count, 3) uint8 RGB colours of the VOC devkit's ``VOClabelcolormap.m``: the bits of the label, three at a
    time, go to the high bits of R, G and B (label 1 -> (128, 0, 0), 15 person -> (192, 128, 128), 255 void ->
    (224, 224, 192))."""
    palette = np.zeros((count, 3), dtype=np.uint8)
    for label in range(count):
        value, shift = label, 7
        while value:
            for channel in range(3):
                palette[label, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return palette


def read_label_png(path: str | os.PathLike[str], *, what: str = "label map") -> np.ndarray:
    """(H, W) uint8 class indices of an indexed ("P") or greyscale ("L") PNG; the palette is not consulted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PNG of class indices (e.g. an RGB rendering of the colours).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in ("P", "L"):
                raise ValueError(f"{what} {path} is a {mode} image; expected an indexed (palette) or greyscale PNG "
                                 "whose pixel values are class indices (0..20, 255 = void), as VOC's "
                                 "SegmentationClass/ holds.")
            return np.array(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what} {path} cannot be read as a PNG ({exc}).") from None


def write_label_png(path: str | os.PathLike[str], labels: np.ndarray) -> Path:
    """Write (H, W) class indices as an indexed PNG with the VOC palette, atomically (what VOC's evaluation server
    and `read_label_png` read)."""
    from PIL import Image

    from jigsawpp.io import write_atomic

    path = Path(path)
    values = np.asarray(labels)
    if values.ndim != 2 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise ValueError(f"{path}: labels must be a 2-D array of values 0..255, got shape {values.shape}.")
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    return write_atomic(path, lambda handle: image.save(handle, format="PNG"))


def read_sbd_cls_mat(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) uint8 class map of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a MATLAB v5 file with a ``GTcls`` struct holding ``Segmentation`` (the message says which).
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SBD class annotation {path} does not exist.")
    try:
        mat = scipy.io.loadmat(str(path))  # MATLAB v5 structs; no pickle involved
    except (ValueError, NotImplementedError, OSError) as exc:
        raise ValueError(f"SBD class annotation {path} cannot be read as a MATLAB file ({exc}).") from None
    gt = mat.get("GTcls")
    names = getattr(getattr(gt, "dtype", None), "names", None) or ()
    if gt is None or "Segmentation" not in names:
        raise ValueError(f"SBD class annotation {path} has no GTcls.Segmentation field (found variables "
                         f"{sorted(k for k in mat if not k.startswith('__'))}); is it from SBD's dataset/cls/?")
    labels = np.asarray(gt[0]["Segmentation"][0])
    if labels.ndim != 2:
        raise ValueError(f"SBD class annotation {path}: GTcls.Segmentation has shape {labels.shape}, not (H, W).")
    return labels.astype(np.uint8)


def overlay_labels(image_bgr: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """The image with each labelled pixel blended with its VOC colour (background and void left as they are)."""
    colours = voc_palette()[:, ::-1].astype(np.float32)  # RGB -> BGR
    out = image_bgr.astype(np.float32)
    mask = (labels > 0) & (labels != VOID_LABEL)
    out[mask] = (1 - alpha) * out[mask] + alpha * colours[labels[mask]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
