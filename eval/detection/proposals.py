"""Object proposals: the released selective-search .mat files, or selective search computed here.

Fast R-CNN reads R-CNN's selective-search boxes from ``data/selective_search_data/voc_2007_<split>.mat``
(rbgirshick/fast-rcnn@b612190 ``lib/datasets/pascal_voc.py`` ``_load_selective_search_roidb``): a cell array
``boxes`` with one (R, 4) array per image of the split, in image-set order, each row ``(y1, x1, y2, x2)`` 1-based;
fast-rcnn reorders the columns to ``(x1, y1, x2, y2)`` and subtracts 1. Those boxes were made by R-CNN's
``selective_search_boxes.m`` in "fast" mode (rbgirshick/rcnn ``selective_search/``).

Without the .mat files, `PROPOSAL_METHODS` computes them:

* ``rcnn_fast`` (the default): R-CNN's fast mode rebuilt from OpenCV's pieces (`eval.detection.selective_search`,
  whose docstring lists every difference that remains);
* ``opencv_fast`` / ``opencv_quality``: OpenCV's own ``switchToSelectiveSearchFast`` / ``...Quality`` (k = 150, 300,
  450 / 150..750, opencv_contrib ``modules/ximgproc/src/selectivesearchsegmentation.cpp``), followed by R-CNN's
  width filter and de-duplication. Their ranking comes from C's unseeded ``rand``, so their boxes are stored sorted.

Computed boxes are cached on disk by content: ``<cache>/<method>-<settings digest>/<sha256 of the image file>.npy``
(int32, loaded with ``allow_pickle=False``). The settings digest covers the method, its parameters, the code
version and the OpenCV version, so another image with the same name never reuses a box file, and an edited image
or changed setting is computed afresh. ``settings.json`` in each folder says what the digest stands for.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "OPENCV_METHODS",
    "PROPOSAL_METHODS",
    "compute_proposals",
    "filter_proposals",
    "image_sha256",
    "load_selective_search_mat",
    "proposal_cache_files",
    "proposal_settings",
    "require_ximgproc",
    "selective_search",
]

OPENCV_METHODS = ("opencv_fast", "opencv_quality")
PROPOSAL_METHODS = ("rcnn_fast", *OPENCV_METHODS)
# Bumped whenever the computation of a method changes, so that old cache entries are not reused.
_CODE_VERSION = {"rcnn_fast": 1, "opencv_fast": 1, "opencv_quality": 1}


def require_ximgproc() -> None:
    """Raise ImportError with the fix when OpenCV lacks the contrib module ``ximgproc``."""
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise ImportError(
            "cv2.ximgproc is missing: selective search needs the OpenCV contrib build. Install exactly one OpenCV "
            "wheel, `pip install opencv-contrib-python-headless`, after uninstalling the others."
        )


def filter_proposals(boxes: np.ndarray, *, min_size: int) -> np.ndarray:
    """R-CNN's post-processing: drop boxes narrower or shorter than `min_size` pixels (``FilterBoxesWidth``), then
    exact duplicates, keeping the first occurrence and the original order (``BoxRemoveDuplicates``)."""
    b = np.asarray(boxes).reshape(-1, 4)
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b = b[(w >= min_size) & (h >= min_size)]
    _, first = np.unique(b, axis=0, return_index=True)
    return b[np.sort(first)]


def selective_search(image_bgr: np.ndarray, *, method: str = "rcnn_fast", min_size: int = 20) -> np.ndarray:
    """Selective-search boxes of one image, (R, 4) int32 (x1, y1, x2, y2) 0-based inclusive.

    ``rcnn_fast`` keeps R-CNN's pseudo-random priority order (seeded); the OpenCV modes return their boxes sorted.
    Needs ``opencv-contrib-python(-headless)``: the ``ximgproc`` module is not in the plain OpenCV wheels.
    """
    import cv2

    if method not in PROPOSAL_METHODS:
        raise ValueError(f"selective_search: method {method!r} is not one of {PROPOSAL_METHODS}.")
    require_ximgproc()
    if method == "rcnn_fast":
        import dataclasses

        from eval.detection.selective_search import RCNN_FAST, selective_search_rcnn

        return selective_search_rcnn(image_bgr, dataclasses.replace(RCNN_FAST, min_box_size=min_size))
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image_bgr)
    if method == "opencv_fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), dtype=np.int64).reshape(-1, 4)  # (x, y, w, h), w = x2 - x1 + 1
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1, rects[:, 1] + rects[:, 3] - 1], 1)
    # OpenCV ranks with C's unseeded rand(), so the same image gives the same boxes in another order from call to
    # call; stored sorted (x1, y1, x2, y2), the ROI sampler's draws, and with them training, are reproducible.
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
    try:
        raw = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises MatReadError, ValueError, TypeError... for a file that is not a .mat
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc}); expected "
                         "fast-rcnn's selective-search boxes (a cell array 'boxes').") from None
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


def proposal_settings(method: str, *, min_size: int) -> dict:
    """Everything that decides a computed proposal file besides the image: the cache key's settings."""
    import cv2

    if method not in PROPOSAL_METHODS:
        raise ValueError(f"proposal method {method!r} is not one of {PROPOSAL_METHODS}.")
    settings: dict = {"method": method, "min_size": int(min_size), "code_version": _CODE_VERSION[method],
                      "opencv": cv2.__version__}
    if method == "rcnn_fast":
        import dataclasses

        from eval.detection.selective_search import RCNN_FAST

        settings["setting"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in dataclasses.asdict(RCNN_FAST).items() if k != "min_box_size"}
    return settings


def _settings_dir(cache_dir: Path, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{settings['method']}-{digest}"


def image_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of an image file's bytes (the proposal cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def proposal_cache_files(image_paths: Mapping[str, str | os.PathLike[str]], cache_dir: str | os.PathLike[str], *,
                         method: str, min_size: int, image_hashes: Mapping[str, str] | None = None
                         ) -> dict[str, Path]:
    """image id -> the cache file its boxes are (or will be) stored in, keyed by content and settings."""
    folder = _settings_dir(Path(cache_dir), proposal_settings(method, min_size=min_size))
    hashes = image_hashes or {}
    return {i: folder / f"{hashes.get(i) or image_sha256(p)}.npy" for i, p in image_paths.items()}


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
    method: str = "rcnn_fast",
    min_size: int = 20,
    workers: int | None = None,
    progress: bool = True,
    on_done: Callable[[str], None] | None = None,
    image_hashes: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Selective search for every image (id -> path), cached on disk by content; returns id -> (R, 4) int32 boxes.

    Images whose cache file exists are not recomputed; `workers` processes (default: all cores) share the rest.
    `image_hashes` (id -> sha256 of the file) saves reading the images twice when the caller has them.
    """
    files = proposal_cache_files(image_paths, cache_dir, method=method, min_size=min_size,
                                 image_hashes=image_hashes)
    folder = next(iter(files.values())).parent if files else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        description = folder / "settings.json"
        if not description.is_file():
            from jigsawpp.io import write_json_atomic

            write_json_atomic(description, proposal_settings(method, min_size=min_size))
    todo, seen = [], set()
    for i, p in image_paths.items():
        if not files[i].is_file() and files[i] not in seen:  # identical images are computed once
            seen.add(files[i])
            todo.append((i, str(p), method, min_size, str(files[i])))
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
    return {i: np.load(files[i], allow_pickle=False) for i in image_paths}
