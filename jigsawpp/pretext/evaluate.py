"""`jigsawpp pretext eval`: puzzle accuracy on held-out images, overall and by number of occluders.

The puzzles are the fork's TEST phase (`data_transformer.cpp`, `merge_data_layer.cpp` with the TEST data layers of
`train_val_cfn_jps++.prototxt`): the centre 255 crop, but tile jitter, colour mode and occluders still drawn at
random (the fork has no phase switch for them), here from a seeded generator so a result can be repeated. Each
image gives `per_image` puzzles; occluders come from the next image of the list.

A model is a `jigsawpp pretext train` output (model.safetensors) or a 9-tower CFN caffemodel such as the authors'
released jigsawpp.caffemodel, with the permutation file it was trained with.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from jigsawpp.pretext.networks import CFNConfig, ContextFreeNetwork
from jigsawpp.puzzle import PuzzleConfig, make_puzzles


@dataclass(frozen=True)
class OccluderAccuracy:
    occluders: int
    puzzles: int
    correct: int
    accuracy: float


@dataclass(frozen=True)
class PuzzleAccuracy:
    """Accuracy of predicting the permutation index (argmax over fc8) on `puzzles` held-out puzzles."""

    images: int
    puzzles: int
    correct: int
    accuracy: float
    chance: float
    by_occluders: tuple[OccluderAccuracy, ...]
    per_image: int
    seed: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def evaluate_puzzles(model: ContextFreeNetwork, paths: list[str], perms: np.ndarray, *,
                     config: PuzzleConfig | None = None, per_image: int = 10, batch_size: int = 50, seed: int = 0,
                     device: torch.device | str = "cpu", workers: int = 0, progress: bool = False,
                     amp: str = "off") -> PuzzleAccuracy:
    """Puzzle accuracy of `model` on the images `paths` (TEST batch 50 as the prototxt)."""
    from tqdm import tqdm

    from jigsawpp.pretext.data import crop_dataset

    c = config or PuzzleConfig()
    if len(paths) < 2 and c.occluder_source == "other_image" and c.max_occluders > 0:
        raise ValueError("evaluate_puzzles: occluders come from another image; give at least two images.")
    if model.config.num_classes < len(perms):
        raise ValueError(f"the model has {model.config.num_classes} outputs for {len(perms)} permutations.")
    device = torch.device(device)
    model = model.to(device).eval()
    table = torch.from_numpy(np.asarray(perms, dtype=np.int64)).to(device)
    loader = torch.utils.data.DataLoader(crop_dataset(paths, c, train=False, seed=seed), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    counts = np.zeros(c.tiles + 1, dtype=np.int64)
    hits = np.zeros(c.tiles + 1, dtype=np.int64)
    first_crop: torch.Tensor | None = None
    pending: torch.Tensor | None = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")

    def score(crops: torch.Tensor, following: torch.Tensor, chunk: int) -> None:
        others = torch.cat([crops[1:], following[:1]])        # occluders: the next image of the list
        for repeat in range(per_image):
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + chunk * 997 + repeat)
            puzzles = make_puzzles(crops, table, generator=generator, config=c, occluder_crops=others)
            with torch.inference_mode(), autocast:
                logits = model(puzzles.tiles)
            correct = (logits.argmax(dim=1) == puzzles.labels).cpu().numpy()
            k = puzzles.occluder_counts.cpu().numpy()
            np.add.at(counts, k, 1)
            np.add.at(hits, k, correct.astype(np.int64))

    chunk = 0
    for crops, _labels, _index in tqdm(loader, desc="puzzle accuracy", unit="batch", disable=not progress):
        crops = crops.to(device)
        if first_crop is None:
            first_crop = crops[:1]
        if pending is not None:
            score(pending, crops, chunk)
            chunk += 1
        pending = crops
    assert pending is not None and first_crop is not None
    score(pending, first_crop, chunk)
    total, correct = int(counts.sum()), int(hits.sum())
    by = tuple(OccluderAccuracy(k, int(counts[k]), int(hits[k]), float(hits[k] / counts[k]))
               for k in range(c.tiles + 1) if counts[k])
    return PuzzleAccuracy(images=len(paths), puzzles=total, correct=correct, accuracy=correct / total,
                          chance=1.0 / len(perms), by_occluders=by, per_image=per_image, seed=seed)


def load_cfn_caffemodel(caffemodel: str | os.PathLike[str], *, arch: str = "alexnet", tile: int = 64
                        ) -> ContextFreeNetwork:
    """A ContextFreeNetwork from a 9-tower CFN caffemodel in the authors' layout (layers conv1_s1 ... fc6_s9, fc7,
    fc8, e.g. their released jigsawpp.caffemodel); sizes are read from the file, every blob is accounted for, and
    the tower copies must be identical (they are one shared set of weights in training)."""
    import caffe_import

    _, arrays = caffe_import.read_caffemodel_arrays(caffemodel)
    names = {name for name, _ in arrays}
    for needed in ("fc6_s1", "fc7", "fc8"):
        if needed not in names:
            raise ValueError(f"{caffemodel}: no layer {needed} with weights; a 9-tower CFN caffemodel (conv1_s1 ... "
                             "fc6_s9, fc7, fc8) is needed.")
    towers = sum(1 for name in names if name.startswith("fc6_s"))
    fc7_rows = arrays[("fc7", 1)].size
    fc6_rows = arrays[("fc6_s1", 1)].size
    config = CFNConfig(arch=arch, num_classes=int(arrays[("fc8", 1)].size), tiles=towers, tile_size=tile,
                       fc6=int(fc6_rows), fc7=int(fc7_rows))
    model = ContextFreeNetwork(config)
    blobs = model.caffe_blobs()
    unused = sorted(names - set(blobs))
    missing = sorted(set(blobs) - names)
    if unused or missing:
        raise ValueError(f"{caffemodel} does not fit a {towers}-tower {arch} CFN: missing {missing}, unexpected "
                         f"{unused}.")
    with torch.no_grad():
        for layer, targets in blobs.items():
            for index, target in enumerate(targets):
                value = torch.from_numpy(np.asarray(arrays[(layer, index)], dtype=np.float32))
                if value.numel() != target.numel():
                    raise ValueError(f"{caffemodel}: {layer} blob {index} has {value.numel()} values, the {arch} CFN "
                                     f"needs {tuple(target.shape)}.")
                value = value.reshape(target.shape)
                _, tower, index_text = layer.rpartition("_s")
                if not tower or index_text == "1":
                    target.copy_(value)
                elif not torch.equal(value, target):
                    raise ValueError(f"{caffemodel}: tower layer {layer} differs from tower 1; the CFN's towers "
                                     "share one set of weights.")
    return model.eval()


def model_from_path(path: str | os.PathLike[str]) -> ContextFreeNetwork:
    """A training output folder (its model.safetensors), a model.safetensors, or a CFN caffemodel."""
    from jigsawpp.pretext.train import MODEL_NAME, load_model

    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_NAME).is_file():
            raise FileNotFoundError(f"{path}: no {MODEL_NAME}; is it a `jigsawpp pretext train` output folder (the "
                                    "model is written when training ends)?")
        return load_model(path / MODEL_NAME)
    if path.suffix == ".safetensors":
        return load_model(path)
    return load_cfn_caffemodel(path)
