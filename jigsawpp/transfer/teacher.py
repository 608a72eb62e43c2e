"""Teachers: the models whose conv4 features are clustered, and how those features are pooled.

Noroozi et al. (CVPR 2018) §4, implementation details: "All the features for all the methods are extracted from
conv4 layer and max-pooled to 5 x 5 x 384 in the case of AlexNet and 4 x 4 x 512 in the case of VGG16, with k = 2K
for k-means." The pooling kernel and stride are not published; the presets below are our choice and every feature
file records the one used (`Pooling.why`).

A teacher is any of
- a `jigsawpp convert RELEASE.zip --out DIR` folder (`DIR/manifest.json` with variants; the transfer variant by
  default, as the authors used the stride-4 network for every transfer),
- a `jigsawpp convert --prototxt P --caffemodel W --out DIR` folder (`DIR/manifest.json` with `net`),
- a deploy prototxt plus its caffemodel (any Caffe model, e.g. a Jigsaw++ pretext model written by `jigsawpp
  pretext`, VGG16, ...), run by `caffe_import` and pruned to the requested blob,
- a folder holding exactly one caffemodel and one deploy prototxt,
- `random:alexnet`: the stride-4 CaffeAlexNet with the BVLC CaffeNet fillers, seeded (the paper's "Random" row:
  "random clusters using a randomly initialized network").

Every teacher returns its blob exactly as pycaffe's `net.blobs[name]` holds it (after the in-place ReLU).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from jigsawpp.constants import IMAGENET_MEAN_BGR

RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class Pooling:
    """Spatial max pooling of the teacher blob, (N, C, H, W) -> (N, C, h, w).

    kind "max": Caffe MAX pooling with `kernel`/`stride`, no padding, Caffe's ceil rounding (exact with PyTorch's
    ceil_mode for pad 0 and kernel >= stride). kind "adaptive": torch's adaptive max pooling to `grid` x `grid`
    (bin i spans [floor(i H / g), ceil((i + 1) H / g))), for blobs no preset covers.
    """

    kind: str
    kernel: int = 0
    stride: int = 0
    grid: int = 0
    why: str = ""

    def __post_init__(self) -> None:
        if self.kind == "max" and not (self.kernel >= self.stride >= 1):
            raise ValueError(f"max pooling needs kernel >= stride >= 1, got kernel {self.kernel} stride {self.stride}.")
        if self.kind == "adaptive" and self.grid < 1:
            raise ValueError(f"adaptive pooling needs a grid >= 1, got {self.grid}.")
        if self.kind not in ("max", "adaptive"):
            raise ValueError(f"pooling kind {self.kind!r}: expected 'max' or 'adaptive'.")

    def module(self) -> nn.Module:
        if self.kind == "max":
            return nn.MaxPool2d(self.kernel, self.stride, ceil_mode=True)
        return nn.AdaptiveMaxPool2d(self.grid)

    def output_side(self, side: int) -> int:
        if self.kind == "adaptive":
            return self.grid
        return -(-(side - self.kernel) // self.stride) + 1  # Caffe: ceil((H - k) / s) + 1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# (channels, side) of the teacher blob at the teacher's input size -> the paper's pooled grid. Chosen by us.
POOL_PRESETS: dict[tuple[int, int], Pooling] = {
    (384, 13): Pooling("max", kernel=5, stride=2, why=(
        "AlexNet conv4 (384 x 13 x 13 at 227 px) to 5 x 5 x 384 as in paper §4; kernel and stride are not "
        "published: kernel 5 stride 2 is the Caffe MAX pooling that gives 5 x 5 under both ceil and floor "
        "rounding with every conv4 position inside a window (overlapping, like AlexNet's own pooling)")),
    (512, 28): Pooling("max", kernel=7, stride=7, why=(
        "VGG16 conv4_3 (512 x 28 x 28 at 224 px) to 4 x 4 x 512 as in paper §4; kernel and stride are not "
        "published: kernel 7 stride 7 splits 28 into 4 equal non-overlapping windows")),
}


def choose_pooling(channels: int, side: int, *, grid: int | None = None, kernel: int | None = None,
                   stride: int | None = None) -> Pooling:
    """The user's pooling if given, else the paper preset for this blob shape; an unknown shape is an error."""
    if kernel is not None or stride is not None:
        if kernel is None or stride is None or grid is not None:
            raise ValueError("give --pool-kernel and --pool-stride together (and not --pool-grid).")
        return Pooling("max", kernel=kernel, stride=stride, why="given by the user")
    if grid is not None:
        return Pooling("adaptive", grid=grid, why="given by the user")
    preset = POOL_PRESETS.get((channels, side))
    if preset is None:
        known = ", ".join(f"{c} x {s} x {s}" for c, s in POOL_PRESETS)
        raise ValueError(f"the teacher blob is {channels} x {side} x {side}; the paper's pooled sizes are defined "
                         f"for AlexNet conv4 and VGG16 conv4_3 ({known}). Give --pool-grid G (adaptive max pooling "
                         "to G x G) or --pool-kernel/--pool-stride.")
    return preset


@dataclass
class Teacher:
    """A loaded teacher: `tap(x)` gives the blob (N, C, H, W) for input x (N, 3, S, S), BGR 0-255 minus `mean_bgr`."""

    tap: nn.Module
    blob: str
    input_size: int                      # S: the side the model was defined for (crop size of the features)
    mean_bgr: tuple[float, float, float]
    identity: dict[str, object]          # what the features depend on (kind, files and their sha256, ...)
    description: str
    known_shapes: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # input side -> blob (C, H, W)

    def __post_init__(self) -> None:
        self.tap.eval()

    @property
    def blob_names(self) -> list[str]:
        """Every blob this teacher can return (the net is pruned after `blob`)."""
        return self.tap.available()

    def blobs(self, x: torch.Tensor, names: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
        """{name: blob} for several blobs in one forward pass."""
        return self.tap.many(x, tuple(names))

    def blob_shape_of(self, name: str, side: int) -> tuple[int, int, int]:
        with torch.no_grad():
            return tuple(int(v) for v in self.blobs(torch.zeros(1, 3, side, side), (name,))[name].shape[1:])

    def blob_shape(self, side: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of the blob for a side x side input (default: the model's input side); one probe per size."""
        side = side or self.input_size
        if side not in self.known_shapes:
            with torch.no_grad():
                probe = self.tap(torch.zeros(1, 3, side, side))
            self.known_shapes[side] = tuple(int(v) for v in probe.shape[1:])  # type: ignore[assignment]
        return self.known_shapes[side]


class _AlexNetTap(nn.Module):
    def __init__(self, net: nn.Module, blob: str) -> None:
        super().__init__()
        self.net, self.blob = net, blob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.blobs(x, (self.blob,))[self.blob]

    def many(self, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return self.net.blobs(x, names)

    def available(self) -> list[str]:
        return list(self.net.config.blob_names)


class _CaffeTap(nn.Module):
    def __init__(self, net: nn.Module, blob: str) -> None:
        super().__init__()
        self.net, self.blob = net, blob
        self.input_name = net.input_names[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(outputs=[self.blob], **{self.input_name: x})[self.blob]

    def many(self, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return self.net(outputs=list(names), **{self.input_name: x})

    def available(self) -> list[str]:
        return [b for b in self.net.blob_shapes if b != self.input_name]


def load_teacher(model: str | os.PathLike[str], *, caffemodel: str | os.PathLike[str] | None = None,
                 blob: str | None = None, variant: str = "transfer", seed: int = 0) -> Teacher:
    """Load a teacher (see the module docstring for what `model` may be). `blob` defaults to conv4 (conv4_3 for
    VGG16). Raises ValueError / FileNotFoundError with one sentence naming the file and what to do."""
    from jigsawpp.io import sha256_file

    text = os.fspath(model)
    if text.startswith(RANDOM_PREFIX):
        return _random_teacher(text[len(RANDOM_PREFIX):], blob=blob, seed=seed)
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a `jigsawpp convert` folder, a deploy "
                                "prototxt with --caffemodel, or random:alexnet.")
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if manifest_path.is_file():
            if caffemodel is not None:
                raise ValueError(f"{path} is a converted folder; --caffemodel applies to a prototxt only.")
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if "variants" in manifest:
                return _release_teacher(path, manifest, variant=variant, blob=blob)
            if "net" in manifest:
                return _converted_teacher(path, manifest, blob=blob)
            raise ValueError(f"{manifest_path} is neither a release conversion (no 'variants') nor a prototxt + "
                             "caffemodel conversion (no 'net'); is it a `jigsawpp convert` output folder?")
        prototxt, caffemodel = _pair_in_folder(path)
    else:
        prototxt = path
        if caffemodel is None:
            raise ValueError(f"{path} is a prototxt: give its weights with --caffemodel.")
    caffemodel = Path(caffemodel)
    import caffe_import

    blob = blob or _default_blob(caffe_import.read_prototxt(prototxt), source=str(prototxt))
    with warnings.catch_warnings():  # skipped fork fields are reported by `jigsawpp convert`; features only need blob
        warnings.simplefilter("ignore", caffe_import.CaffeImportWarning)
        net = caffe_import.load(prototxt, caffemodel, outputs=[blob])
    identity = {"kind": "caffe", "prototxt": prototxt.name, "prototxt_sha256": sha256_file(prototxt),
                "caffemodel": caffemodel.name, "caffemodel_sha256": sha256_file(caffemodel), "blob": blob}
    return Teacher(_CaffeTap(net, blob), blob, _input_side(net), IMAGENET_MEAN_BGR, identity,
                   f"{prototxt.name} + {caffemodel.name} (caffe_import), blob {blob}", _inferred(net, blob))


def _pair_in_folder(folder: Path) -> tuple[Path, Path]:
    models = sorted(folder.glob("*.caffemodel"))
    deploys = sorted(p for p in folder.glob("*.prototxt") if "deploy" in p.name.lower())
    if len(models) != 1 or len(deploys) != 1:
        raise ValueError(f"{folder}: expected one *.caffemodel and one deploy*.prototxt (found "
                         f"{[p.name for p in models]} and {[p.name for p in deploys]}); give the prototxt and "
                         "--caffemodel explicitly.")
    return deploys[0], models[0]


def _default_blob(net_param, *, source: str) -> str:
    tops = {top for layer in net_param.layer for top in layer.top}
    for name in ("conv4", "conv4_3"):
        if name in tops:
            return name
    raise ValueError(f"{source} has no blob named conv4 or conv4_3; choose one with --blob.")


def _input_side(net) -> int:
    shape = net.graph.input_shapes[net.input_names[0]]
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"input {net.input_names[0]} has shape {list(shape)}; a square N x 3 x S x S input is "
                         "expected for feature extraction.")
    return int(shape[2])


def _inferred(net, blob: str) -> dict[int, tuple[int, int, int]]:
    """caffe_import inferred every blob shape at load time (on the meta device): no probe forward needed."""
    shape = net.blob_shapes[blob]
    return {_input_side(net): tuple(int(v) for v in shape[1:])} if len(shape) == 4 else {}


def _release_teacher(folder: Path, manifest: dict, *, variant: str, blob: str | None) -> Teacher:
    from jigsawpp.io import sha256_file
    from jigsawpp.models import from_release

    net = from_release(folder, variant)
    name = manifest["transfer_variant"] if variant == "transfer" else variant
    if variant == "pretext":
        name = next(k for k, v in manifest["variants"].items() if v.get("role") == "pretext")
    entry = manifest["variants"][name]
    blob = blob or "conv4"
    pre = entry.get("preprocessing") or manifest.get("preprocessing") or {}
    mean = tuple(float(v) for v in (pre.get("mean_bgr") or IMAGENET_MEAN_BGR))
    weights = folder / name / entry["files"]["weights"]
    identity = {"kind": "release", "release": (manifest.get("release") or {}).get("name"),
                "source_zip_sha256": (manifest.get("source") or {}).get("sha256"), "variant": name,
                "weights_sha256": sha256_file(weights), "blob": blob}
    return Teacher(_AlexNetTap(net, blob), blob, net.config.input_size, mean, identity,  # type: ignore[arg-type]
                   f"{folder.name} variant {name} (CaffeAlexNet), blob {blob}")


def _converted_teacher(folder: Path, manifest: dict, *, blob: str | None) -> Teacher:
    import caffe_import
    from jigsawpp.io import load_state_dict_file, sha256_file

    files = manifest.get("files", {})
    prototxt = folder / files.get("prototxt", "deploy.prototxt")
    weights = folder / files.get("weights", "model.safetensors")
    blob = blob or _default_blob(caffe_import.read_prototxt(prototxt), source=str(prototxt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe_import.CaffeImportWarning)
        net = caffe_import.load(prototxt, outputs=[blob])
    state = load_state_dict_file(weights)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise ValueError(f"{weights} does not fit {prototxt.name} up to {blob}: missing {missing}, shape mismatch "
                         f"{wrong}; re-run `jigsawpp convert` on the original files.")
    net.load_state_dict({k: state[k] for k in expected}, strict=True)
    identity = {"kind": "converted", "prototxt_sha256": sha256_file(prototxt), "weights_sha256": sha256_file(weights),
                "blob": blob}
    return Teacher(_CaffeTap(net, blob), blob, _input_side(net), IMAGENET_MEAN_BGR, identity,
                   f"{folder.name} (converted {prototxt.name}), blob {blob}", _inferred(net, blob))


def _random_teacher(arch: str, *, blob: str | None, seed: int) -> Teacher:
    from jigsawpp.models import AlexNetConfig, CaffeAlexNet
    from jigsawpp.transfer.network import caffenet_init_

    if arch != "alexnet":
        raise ValueError(f"random:{arch}: only random:alexnet is available (the paper's Random row is an AlexNet).")
    net = CaffeAlexNet(AlexNetConfig(fc6=None, fc7=None, num_classes=None))
    caffenet_init_(net, generator=torch.Generator().manual_seed(seed))
    blob = blob or "conv4"
    identity = {"kind": "random", "arch": "alexnet", "seed": seed, "blob": blob,
                "fillers": "BVLC CaffeNet train_val.prototxt fillers (see jigsawpp.transfer.network)"}
    return Teacher(_AlexNetTap(net, blob), blob, 227, IMAGENET_MEAN_BGR, identity,
                   f"randomly initialised AlexNet (seed {seed}), blob {blob}")
