"""Images in, Caffe blobs out: BGR, 0-255, mean subtracted, CHW (the preprocessing every released model expects).

pycaffe's Transformer (BVLC `python/caffe/io.py`) does channel swap to BGR, raw scale 255, mean subtraction; the
images here are read with OpenCV, which already gives BGR uint8, so no channel swap happens (swapping twice is the
classic bug).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def demo_photo_path() -> Path:
    """A real photograph shipped by a dependency (matplotlib's sample data: Grace Hopper, 600x512)."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def read_bgr(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR as Caffe read it; truncated or corrupt files raise `jigsawpp.data.ImageReadError`."""
    from jigsawpp.data import read_image_bgr

    return read_image_bgr(path)


def caffe_blob(image_bgr: np.ndarray, *, size: int, mean_bgr: tuple[float, float, float],
               resize: int = 256) -> torch.Tensor:
    """Shorter side to `resize`, centre crop `size`, minus the BGR mean -> (1, 3, size, size) float32."""
    h, w = image_bgr.shape[:2]
    scale = resize / min(h, w)
    resized = cv2.resize(image_bgr, (max(size, round(w * scale)), max(size, round(h * scale))),
                         interpolation=cv2.INTER_LINEAR)
    top = (resized.shape[0] - size) // 2
    left = (resized.shape[1] - size) // 2
    crop = resized[top:top + size, left:left + size].astype(np.float32) - np.asarray(mean_bgr, np.float32)
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
