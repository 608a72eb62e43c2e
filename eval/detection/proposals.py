"""Object proposals: the released selective-search .mat files, or selective search computed with OpenCV.

Fast R-CNN reads R-CNN's selective-search boxes from ``data/selective_search_data/voc_2007_<split>.mat``
(rbgirshick/fast-rcnn@b612190 ``lib/datasets/pascal_voc.py`` ``_load_selective_search_roidb``): a cell array
``boxes`` with one (R, 4) array per image of the split, in image-set order, each row ``(y1, x1, y2, x2)`` 1-based;
fast-rcnn reorders the columns to ``(x1, y1, x2, y2)`` and subtracts 1. Those boxes were made by R-CNN's
``selective_search_boxes.m`` in "fast" mode, then boxes narrower or shorter than 20 pixels and duplicates were
removed (rbgirshick/rcnn ``selective_search/selective_search_boxes.m``).

Without the .mat files we run OpenCV's implementation (``cv2.ximgproc.segmentation``, Uijlings et al. IJCV 2013;
"fast" mode with its defaults base_k 150, inc_k 150, sigma 0.8, opencv_contrib
``modules/ximgproc/include/opencv2/ximgproc/segmentation.hpp``), apply R-CNN's width filter and de-duplication, and
cache each image's boxes as ``<cache>/<method>/<image_id>.npy`` (int32, loaded with ``allow_pickle=False``), sorted
by coordinates because OpenCV's ranking is randomised by a generator we cannot seed. The proposals are not
identical to R-CNN's MATLAB ones (different segmentation parameters and ranking), which is why the proposal source
is part of every result's provenance stamp.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "OPENCV_METHODS",
    "compute_proposals",
    "filter_proposals",
    "load_selective_search_mat",
    "selective_search",
]

OPENCV_METHODS = ("opencv_fast", "opencv_quality")


def filter_proposals(boxes: np.ndarray, *, min_size: int) -> np.ndarray:
    """R-CNN's post-processing: drop boxes narrower or shorter than `min_size` pixels (``FilterBoxesWidth``), then
    exact duplicates, keeping the first occurrence and the original order (``BoxRemoveDuplicates``)."""
    b = np.asarray(boxes).reshape(-1, 4)
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b = b[(w >= min_size) & (h >= min_size)]
    _, first = np.unique(b, axis=0, return_index=True)
    return b[np.sort(first)]


def selective_search(image_bgr: np.ndarray, *, method: str = "opencv_fast", min_size: int = 20) -> np.ndarray:
    """Selective-search boxes of one image, (R, 4) int32 (x1, y1, x2, y2) 0-based inclusive, sorted.

    Needs ``opencv-contrib-python(-headless)``: the ``ximgproc`` module is not in the plain OpenCV wheels.
    """
    import cv2

    if method not in OPENCV_METHODS:
        raise ValueError(f"selective_search: method {method!r} is not one of {OPENCV_METHODS}.")
    if not hasattr(cv2, "ximgproc"):
        raise ImportError(
            "cv2.ximgproc is missing: selective search needs the OpenCV contrib build. Install exactly one OpenCV "
            "wheel, `pip install opencv-contrib-python-headless`, after uninstalling the others."
        )
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image_bgr)
    if method == "opencv_fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), dtype=np.int64).reshape(-1, 4)  # (x, y, w, h), w = x2 - x1 + 1
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1, rects[:, 1] + rects[:, 3] - 1], 1)
    # OpenCV randomises the ranking with a generator cv2.setRNGSeed does not reach, so the same image gives the
    # same boxes in a different order from call to call. Nothing here truncates by rank, so the boxes are stored
    # sorted (x1, y1, x2, y2): the ROI sampler's draws, and with them training, become reproducible.
    return np.unique(filter_proposals(boxes, min_size=min_size), axis=0).astype(np.int32)


def load_selective_search_mat(path: str | os.PathLike[str], image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Read a released ``voc_2007_<split>.mat``: one (R, 4) float64 array per image, (x1, y1, x2, y2) 0-based.

    If the file lists its image ids (``images``), they are matched by name; otherwise the boxes must be in the
    order of `image_ids` (the image set), as fast-rcnn assumes.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"selective-search file {path} does not exist; fast-rcnn's data/scripts/fetch_selective_search_data.sh "
            "downloads voc_2007_trainval.mat and voc_2007_test.mat, or use the OpenCV proposals."
        )
    raw = scipy.io.loadmat(str(path))
    if "boxes" not in raw:
        raise ValueError(f"{path}: no 'boxes' variable; keys are {sorted(k for k in raw if not k.startswith('_'))}.")
    cells = raw["boxes"].ravel()
    names = None
    if "images" in raw:
        names = [str(np.asarray(v).ravel()[0]) if np.asarray(v).size else "" for v in raw["images"].ravel()]
    if names is not None:
        if len(names) != len(cells):
            raise ValueError(f"{path}: {len(names)} image names but {len(cells)} box arrays.")
        by_name = dict(zip(names, cells))
        missing = [i for i in image_ids if i not in by_name]
        if missing:
            raise ValueError(f"{path}: no boxes for {len(missing)} images of the split, e.g. {missing[:3]}.")
        ordered = [by_name[i] for i in image_ids]
    else:
        if len(cells) != len(image_ids):
            raise ValueError(f"{path}: {len(cells)} box arrays but the split has {len(image_ids)} images.")
        ordered = list(cells)
    out = {}
    for image_id, cell in zip(image_ids, ordered):
        yx = np.asarray(cell, dtype=np.float64).reshape(-1, 4)
        out[image_id] = yx[:, (1, 0, 3, 2)] - 1  # (y1, x1, y2, x2) 1-based -> (x1, y1, x2, y2) 0-based
    return out


def _cache_file(cache_dir: Path, method: str, image_id: str) -> Path:
    return cache_dir / method / f"{image_id}.npy"


def _compute_one(job: tuple[str, str, str, int, str]) -> str:
    image_id, image_path, method, min_size, out = job
    import cv2

    from jigsawpp.data import read_image_bgr

    cv2.setNumThreads(1)  # one process per core already
    image = read_image_bgr(image_path)
    boxes = selective_search(image, method=method, min_size=min_size)
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, boxes, allow_pickle=False)
    os.replace(tmp, out_path)
    return image_id


def compute_proposals(
    image_paths: Mapping[str, str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    *,
    method: str = "opencv_fast",
    min_size: int = 20,
    workers: int | None = None,
    progress: bool = True,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Selective search for every image (id -> path), cached on disk; returns id -> (R, 4) int32 boxes.

    Images already in the cache are not recomputed. `workers` processes (default: all cores) share the rest.
    """
    cache = Path(cache_dir)
    (cache / method).mkdir(parents=True, exist_ok=True)
    todo = [(i, str(p), method, min_size, str(_cache_file(cache, method, i)))
            for i, p in image_paths.items() if not _cache_file(cache, method, i).is_file()]
    if todo:
        from tqdm import tqdm

        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        bar = tqdm(total=len(todo), desc=f"selective search ({method})", unit="img", disable=not progress)
        try:
            if workers == 1:
                for job in todo:
                    done = _compute_one(job)
                    bar.update()
                    if on_done:
                        on_done(done)
            else:
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for done in pool.imap_unordered(_compute_one, todo):
                        bar.update()
                        if on_done:
                            on_done(done)
        finally:
            bar.close()
    return {i: np.load(_cache_file(cache, method, i), allow_pickle=False) for i in image_paths}
