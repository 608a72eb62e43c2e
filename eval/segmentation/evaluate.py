"""Testing a segmentation net on a split: argmax label maps, FCN's scores, prediction PNGs, overlays, the IU plot.

Used for our fine-tuned FCN-AlexNet and, with `load_caffe_segmenter`, for any Caffe FCN (``--caffe-test``): a
deploy prototxt, or a train/val prototxt whose Python data layer is cut off at ``data`` (what a user would do
with pycaffe), run by `caffe_import` at each image's own size. As FCN's ``score.py``: one forward per image,
``score.argmax(0)``, one confusion matrix over the split.

Output folder::

    results/<image_id>.png      indexed PNG (VOC palette) of the predicted classes, one per image
    results/provenance.json     the stamp, beside the files it describes (score-segmentation reads it)
    scores.json                 mean IU, pixel accuracy, mean accuracy, frequency-weighted IU, per class, confusion
    iu.png                      per-class IU bars
    overlays/<image_id>.jpg     image | ground truth | prediction, for the first ``num_overlays`` images

Under torchrun each rank predicts every world-th image and the confusion matrices are summed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.constants import SCORES_FILENAME
from eval.segmentation.data import SegSplit, load_image_blob
from eval.segmentation.labels import SEG_CLASSES, overlay_labels, write_label_png
from eval.segmentation.metric import SegmentationMetric, SegmentationScores

__all__ = ["PROVENANCE_FILENAME", "SegmentationRun", "autocast_dtype", "evaluate_segmenter", "load_caffe_segmenter"]

PROVENANCE_FILENAME = "provenance.json"


@dataclass(frozen=True)
class SegmentationRun:
    """What a segmentation evaluation produced (``scores`` is None on ranks other than 0)."""

    out_dir: Path
    scores: SegmentationScores | None
    stamp: dict[str, Any]
    scores_path: Path
    results_dir: Path
    plot: Path | None
    overlays: tuple[Path, ...]
    seconds: float
    train: Any = None  # the engine's TrainResult when the net was fine-tuned here


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting ("off", "bf16", "fp16"; the engine's names), None for off."""
    from jigsawpp.engine.loop import AMP_DTYPES

    if amp != "off" and amp not in AMP_DTYPES:
        raise ValueError(f"amp is {amp!r}; expected 'off' or one of {sorted(AMP_DTYPES)}.")
    return AMP_DTYPES.get(amp)


def load_caffe_segmenter(prototxt_path: str | os.PathLike[str], caffemodel: str | os.PathLike[str], *,
                         score_blob: str = "score") -> torch.nn.Module:
    """A Caffe FCN as a module ``data (1, 3, H, W) -> score (1, C, H, W)``, through `caffe_import`.

    A data layer (FCN's Python ``VOCSegDataLayer``) is cut off by declaring ``data`` an input, and the net is pruned
    to what ``score_blob`` needs (the loss and its ``label`` go).
    """
    import caffe_import

    net = caffe_import.load(prototxt_path, caffemodel, inputs={"data": (1, 3, 500, 500)}, outputs=[score_blob])

    class CaffeSegmenter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, data: torch.Tensor) -> torch.Tensor:
            return self.net(data=data)[score_blob]

    return CaffeSegmenter().eval()


def _side_by_side(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.concatenate([image, overlay_labels(image, gt), overlay_labels(image, pred)], axis=1)


def _write_jpeg(path: Path, image: np.ndarray) -> Path:
    import cv2

    from jigsawpp.io import write_bytes_atomic

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError(f"could not encode {path} as JPEG.")
    return write_bytes_atomic(path, data.tobytes())


@torch.inference_mode()
def evaluate_segmenter(model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor], split: SegSplit,
                       out_dir: str | os.PathLike[str], *, mean_bgr: tuple[float, float, float],
                       stamp: dict[str, Any], device: str | torch.device = "cpu", amp: str = "off",
                       num_overlays: int = 8, progress: bool = True,
                       num_classes: int = len(SEG_CLASSES)) -> SegmentationRun:
    """Predict every image of ``split`` at its own size and write predictions, scores, plot and overlays."""
    from eval.segmentation.results import plot_iu, write_segmentation_scores
    from jigsawpp.data import read_image_bgr
    from jigsawpp.engine.distributed import world as world_of
    from jigsawpp.io import write_json_atomic

    out = Path(out_dir)
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    dtype = autocast_dtype(amp)
    rank, world = world_of()
    if isinstance(model, torch.nn.Module):
        model.to(device).eval()
    metric = SegmentationMetric(num_classes)
    samples = list(enumerate(split.samples))[rank::world]
    iterator: Any = samples
    if progress and rank == 0:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"testing {split.name}", unit="image")
    overlays = []
    start = time.perf_counter()
    for index, sample in iterator:
        data = load_image_blob(sample.image_path, mean_bgr).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            score = model(data)
        pred = score[0].float().argmax(0).to(torch.uint8).cpu().numpy()
        gt = sample.read_label()
        metric.update(gt, pred, image_id=sample.image_id)
        write_label_png(results / f"{sample.image_id}.png", pred)
        if index < num_overlays:
            (out / "overlays").mkdir(exist_ok=True)
            image = read_image_bgr(sample.image_path)
            overlays.append(_write_jpeg(out / "overlays" / f"{sample.image_id}.jpg", _side_by_side(image, gt, pred)))
    seconds = time.perf_counter() - start
    if world > 1:
        hist = torch.from_numpy(metric.hist).to(device)
        count = torch.tensor([metric.n_images], device=device)
        torch.distributed.all_reduce(hist)
        torch.distributed.all_reduce(count)
        metric.reset()
        metric.merge(hist.cpu().numpy(), int(count.item()))
    scores_path = out / SCORES_FILENAME
    if rank != 0:
        return SegmentationRun(out, None, stamp, scores_path, results, None, tuple(overlays), seconds)
    scores = metric.compute()
    write_json_atomic(results / PROVENANCE_FILENAME, stamp)
    write_segmentation_scores(scores, out, split=split.source, stamp=stamp)
    plot = plot_iu(scores, out / "iu.png", title=f"{split.name}: mean IU {scores.mean_iu:.3f}\n{stamp.get('key', '')}")
    return SegmentationRun(out, scores, stamp, scores_path, results, plot, tuple(overlays), seconds)
