"""The software and hardware a result was computed with, for every protocol's provenance stamp."""

from __future__ import annotations

import platform

import torch

from jigsawpp.engine.distributed import world

__all__ = ["environment_stamp"]


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
