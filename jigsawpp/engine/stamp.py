"""The software and hardware a result was computed with, for every protocol's provenance stamp."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from typing import Any

import torch

from jigsawpp.engine.distributed import world

__all__ = ["environment_stamp", "identity_mismatch"]


def environment_stamp(device: torch.device | str) -> dict:
    """Versions (jigsawpp, Python, torch, torchvision, numpy, OpenCV), the device (CUDA and cuDNN versions and the
    GPU's name on CUDA), the number of processes, the determinism switches and the image-reading policy."""
    import cv2
    import numpy as np
    import torchvision

    from jigsawpp import __version__
    from jigsawpp.data import IMAGE_READING

    device = torch.device(device)
    stamp: dict = {
        "jigsawpp": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "world_size": world()[1],
        "deterministic": {
            "torch.use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
        },
        "image_reading": IMAGE_READING,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        stamp.update({
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "gpu": torch.cuda.get_device_name(index),
            "gpu_capability": ".".join(str(v) for v in torch.cuda.get_device_capability(index)),
        })
    return stamp


def identity_mismatch(found: Mapping[str, Any], wanted: Mapping[str, Any], *, found_as: str = "in the folder",
                      prefix: str = "") -> list[str]:
    """What differs between the identity a folder records (`found`: model sha256, transform, settings ...) and
    the one the caller would write now: one ``"dotted.key: FOUND <found_as>, WANTED now"`` line per differing leaf
    (a key absent on one side reads ``<absent>``; strings as they are, other values as JSON, shortened to 80
    characters). Empty when they match."""
    diffs: list[str] = []
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key, "<absent>"), wanted.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += identity_mismatch(a, b, found_as=found_as, prefix=f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {_short(a)} {found_as}, {_short(b)} now")
    return diffs


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
