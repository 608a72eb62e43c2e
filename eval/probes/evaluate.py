"""Testing the probes: top-1/top-5 per head on the validation split, from cached features or through the trunk.

Each process scores rows rank::world and the correct counts are summed over processes. With several views per
image (10 crops) the softmax probabilities are averaged (`eval.probes.metrics.average_crops`); one view scores its
logits directly, as Caffe's Accuracy layer does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from eval.probes.cache import CacheSplit
from eval.probes.extract import autocast_context
from eval.probes.heads import MultiHeadProbe
from eval.probes.metrics import Accuracy, TopKAccuracy, average_crops

__all__ = ["evaluate_cached", "evaluate_images", "reduce_meters"]


def reduce_meters(meters: Mapping[str, TopKAccuracy], device: torch.device) -> dict[str, Accuracy]:
    """Sum the counts of every meter over the processes (when distributed) and compute them."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        names = list(meters)
        counts = torch.tensor([meters[n].counts() for n in names], dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        for name, row in zip(names, counts.cpu().tolist()):
            meters[name].load_counts([int(round(v)) for v in row])
    return {name: meter.compute() for name, meter in meters.items()}


def _score(meters: dict[str, TopKAccuracy], logits: Mapping[str, torch.Tensor], labels: torch.Tensor,
           views: int) -> None:
    for tap, z in logits.items():
        scores = average_crops(z, views) if views > 1 else z.float()
        meters[tap].update(scores.cpu(), labels.cpu())


@torch.no_grad()
def evaluate_cached(heads: MultiHeadProbe, cache: CacheSplit, *, batch_size: int = 256,
                    device: torch.device | None = None, rank: int = 0, world: int = 1) -> dict[str, Accuracy]:
    """Top-k of every head on a complete cached split (no trunk forward)."""
    device = device or torch.device("cpu")
    heads = heads.to(device).eval()
    arrays = {t: cache.features(t) for t in heads.taps}
    labels = np.asarray(cache.labels())
    meters = {t: TopKAccuracy((1, 5)) for t in heads.taps}
    rows = np.arange(rank, cache.count, world)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        feats = {}
        for tap, array in arrays.items():
            block = np.asarray(array[chunk]).astype(np.float32)  # (B, V, C, s, s)
            feats[tap] = torch.from_numpy(block.reshape(-1, *block.shape[2:])).to(device)
        _score(meters, heads(feats), torch.from_numpy(labels[chunk]), cache.views)
    return reduce_meters(meters, device)


@torch.no_grad()
def evaluate_images(forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], names: list[str],
                    dataset: Dataset, *, batch_size: int, workers: int = 0, device: torch.device | None = None,
                    amp: str = "off", rank: int = 0, world: int = 1, progress: bool = False,
                    extra_view: int | None = None) -> tuple[dict[str, Accuracy], int]:
    """Top-k of each output of `forward` (images (B*V, 3, H, W) -> {name: logits}) on `dataset`, whose items are
    ``(views (V, 3, H, W) or (3, H, W), label, index)``. With `extra_view` set (V > it), each output is also scored
    on that single view alone (e.g. view 4, the centre of `ten_crops`) under the name ``<name>@view<k>``.
    Returns (accuracies, images forwarded by this process)."""
    device = device or torch.device("cpu")
    shard = Subset(dataset, list(range(rank, len(dataset), world)))  # type: ignore[arg-type]
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    meters = {n: TopKAccuracy((1, 5)) for n in names}
    if extra_view is not None:
        meters.update({f"{n}@view{extra_view}": TopKAccuracy((1, 5)) for n in names})
    images = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(shard), desc="testing", unit="img", leave=False)
    for views, labels, _ in loader:
        if views.dim() == 4:
            views = views.unsqueeze(1)
        n, v = views.shape[:2]
        with autocast_context(device, amp):
            logits = forward(views.reshape(n * v, *views.shape[2:]).to(device, non_blocking=True))
        _score(meters, logits, labels, v)
        if extra_view is not None:
            if v <= extra_view:
                raise ValueError(f"view {extra_view} was asked for, the test transform gives {v} views.")
            for name, z in logits.items():
                meters[f"{name}@view{extra_view}"].update(z.float().view(n, v, -1)[:, extra_view].cpu(), labels)
        images += n
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return reduce_meters(meters, device), images
