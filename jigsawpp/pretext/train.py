"""`jigsawpp pretext train`: the Jigsaw++ pretext task with the authors' solver, on one device or under torchrun.

Solver (`solver_cfn_jps.prototxt@8c7ec09`; the Jigsaw++ commit d18dace ships no solver of its own, and the CVPR 2018
paper gives none): SGD, base_lr 0.01, lr_policy step, gamma 0.1, stepsize 100,000, max_iter 350,000, momentum 0.9,
weight_decay 5e-4, display 100, snapshot 5,000; every weight lr_mult 1 / decay_mult 1, every bias 2 / 0
(`train_val_cfn_jps++.prototxt`); batch 256 puzzles; loss SoftmaxWithLoss (mean over the batch). One iteration is
Caffe's (`jigsawpp.engine.train_loop`).

Several GPUs (torchrun): the global batch stays 256. Each of W processes draws 256 / W images per iteration from
its own slice of the shuffled stream (`DatasetSource`), and DDP averages the gradients, which equals the mean loss
over the 256 puzzles; `iter_size` splits further (256 / (W * iter_size) per pass) when a GPU's memory is short.
The loss and accuracies are logged as means over all processes.

Puzzles are cut on the training device from the 255-px windows the DataLoader workers decode and crop, with a
generator seeded by (seed, stream position, rank), so a resumed run sees the same puzzles (`jigsawpp.pretext.data`).

Output folder: checkpoints/ (exact resume: rerun the same command), train_log.jsonl, training_curve.png (loss,
puzzle accuracy by number of occluders), permutations.bin, model.safetensors (the ContextFreeNetwork state and
its config), `jigsawpp_<arch>.zip` (the 9-tower caffemodel + deploys + permutations, shaped like the authors'
release: `jigsawpp convert` reads it) and provenance.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from jigsawpp.config_fields import coerce, matches, refuse_unknown
from jigsawpp.pretext.networks import INITS, Arch, CFNConfig, ContextFreeNetwork, Init
from jigsawpp.puzzle import PuzzleConfig, make_puzzles

CURVE_NAME = "training_curve.png"
MODEL_NAME = "model.safetensors"
PERMUTATIONS_NAME = "permutations.bin"
PROVENANCE_NAME = "provenance.json"


@dataclass(frozen=True)
class PretextConfig:
    """Settings of a pretext run; defaults are the authors' (sources in the comments and the module docstring)."""

    arch: Arch = "alexnet"             # the released jigsawpp model; "vgg16" is the paper's vgg-Jigsaw++
    permutations: int = 1000           # size of the generated set when no file is given (fc8 has 1000 outputs)
    min_hamming: int = 3               # CVPR 2018 Sec. 3
    permutation_seed: int = 0
    permutations_sha256: str = ""      # of the set used (filled in by the run; a resume must use the same set)
    fc8_outputs: int | None = None     # None: one per permutation; 1000 with permutations_701.bin is the authors' net
    fc6: int = 1024                    # fc6_s{i} num_output
    fc7: int = 4096                    # fc7 num_output
    dropout: float = 0.5               # drop6_s{i}, drop7 dropout_ratio
    init: Init = "caffe"               # the prototxt's gaussian fillers; "msra": ContextFreeNetwork.reset_parameters
    batch_size: int = 256              # train_val_cfn_jps++.prototxt TRAIN batch_size (global)
    base_lr: float = 0.01              # solver_cfn_jps.prototxt
    gamma: float = 0.1
    stepsize: int = 100_000
    max_iters: int = 350_000
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_gradients: float | None = None  # SolverParameter clip_gradients (the solver leaves Caffe's -1: off)
    solver: Literal["sgd", "adam"] = "sgd"  # solver_cfn_jps.prototxt: SGD; "adam": Caffe's Adam (CaffeAdam)
    iter_size: int = 1                 # passes per update (Caffe iter_size); the global batch stays batch_size
    snapshot_iters: int = 5000         # solver snapshot
    display: int = 100                 # solver display
    seed: int = 0
    amp: Literal["off", "bf16", "fp16"] = "off"   # Caffe trained in float32; bf16 is the fast choice on GPUs
    workers: int = 4                   # DataLoader processes per training process (decode + crop)
    puzzle: PuzzleConfig = field(default_factory=PuzzleConfig)

    def __post_init__(self) -> None:
        if self.fc8_outputs is not None and self.fc8_outputs < 1:
            raise ValueError(f"fc8_outputs {self.fc8_outputs} must be positive.")
        if self.batch_size < 1 or self.iter_size < 1 or self.max_iters < 0:
            raise ValueError("batch_size and iter_size must be >= 1 and max_iters >= 0.")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}; choose {' or '.join(INITS)}.")
        if self.solver not in ("sgd", "adam"):
            raise ValueError(f"solver {self.solver!r}; choose sgd or adam.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout} must lie in [0, 1).")

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["puzzle"] = self.puzzle.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PretextConfig:
        """Strict: unknown keys (also inside "puzzle") are an error naming them."""
        refuse_unknown(cls, data, what="pretext setting(s)")
        values = dict(data)
        if isinstance(values.get("puzzle"), dict):
            values["puzzle"] = PuzzleConfig.from_dict(values["puzzle"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def with_overrides(self, overrides: dict[str, object]) -> PretextConfig:
        """`overrides` by name; "puzzle.<field>" sets a puzzle field. Unknown names are an error."""
        top = _typed(PretextConfig, {k: v for k, v in overrides.items() if not k.startswith("puzzle.")}, "")
        nested = _typed(PuzzleConfig, {k.split(".", 1)[1]: v for k, v in overrides.items()
                                       if k.startswith("puzzle.")}, "puzzle.")
        merged = self.to_dict()
        merged.update(top)
        merged["puzzle"] = {**self.puzzle.to_dict(), **nested}
        return PretextConfig.from_dict(merged)


def _typed(cls: type, values: dict[str, object], prefix: str) -> dict[str, object]:
    """`values` with JSON's ints made floats where `cls` wants a float; a value of another type than its field's is
    a ValueError naming the setting (unknown names are left to `from_dict`)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        hint = hints.get(key)
        if hint is not None and key != "puzzle":
            value = coerce(value, hint)
            if not matches(value, hint):
                raise ValueError(f"setting {prefix}{key} = {value!r} does not have the type {hint}.")
        out[key] = value
    return out


@dataclass(frozen=True)
class PretextResult:
    out_dir: Path
    iterations: int
    seconds: float
    resumed_from: int
    release_zip: Path | None
    model: Path | None
    curve: Path | None
    last_log: dict


def resolve_permutations(config: PretextConfig, permutations_file: str | os.PathLike[str] | None
                         ) -> tuple[np.ndarray, str]:
    """The permutation set of a run (from the file, or generated) and a sentence saying where it came from."""
    from jigsawpp.permutations import generate_permutations, read_permutation_file

    if permutations_file is not None:
        table = read_permutation_file(permutations_file)
        return table.perms, f"{permutations_file} ({table.note})"
    perms = generate_permutations(config.permutations, min_hamming=config.min_hamming, seed=config.permutation_seed)
    return perms, (f"generated: {config.permutations} permutations, min Hamming {config.min_hamming}, seed "
                   f"{config.permutation_seed}")


def cfn_config(config: PretextConfig, count: int) -> CFNConfig:
    outputs = config.fc8_outputs or count
    if outputs < count:
        raise ValueError(f"fc8_outputs {outputs} is smaller than the {count} permutations; every permutation needs "
                         "an output.")
    return CFNConfig(arch=config.arch, num_classes=outputs, fc6=config.fc6, fc7=config.fc7,
                     tile_size=config.puzzle.tile, dropout=config.dropout)


def puzzle_loss(perms: torch.Tensor, puzzle: PuzzleConfig):
    """loss_fn for `train_loop`: cut the batch's puzzles on its device, then softmax loss and accuracies. Logged:
    loss, accuracy, and for k occluders `share_occ<k>` (fraction of the batch) and `hit_occ<k>` (fraction of the
    batch solved with k occluders); accuracy with k occluders = hit / share over any window."""
    counts = range(puzzle.min_occluders, puzzle.max_occluders + 1)

    def loss_fn(net, batch) -> dict[str, torch.Tensor]:
        device = batch.crops.device
        with torch.autocast(device.type, enabled=False):
            generator = torch.Generator(device=device).manual_seed(batch.puzzle_seed)
            puzzles = make_puzzles(batch.crops, perms.to(device), generator=generator, config=puzzle)
        logits = net(puzzles.tiles)
        loss = F.cross_entropy(logits.float(), puzzles.labels)
        out = {"loss": loss}
        with torch.no_grad():
            correct = logits.argmax(dim=1) == puzzles.labels
            out["accuracy"] = correct.float().mean()
            occluders = puzzles.occluder_counts
            for k in counts:
                mask = occluders == k
                out[f"share_occ{k}"] = mask.float().mean()
                out[f"hit_occ{k}"] = (correct & mask).float().mean()
        return out

    return loss_fn


def train_pretext(images: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                  config: PretextConfig | None = None, permutations_file: str | os.PathLike[str] | None = None,
                  device: str | None = None, overwrite: bool = False, progress: bool = True,
                  stop_after: int | None = None, export: bool = True) -> PretextResult:
    """Train the CFN on the images of `images` (see `jigsawpp.pretext.data.list_images`) into `out_dir`.

    Re-running with the same arguments resumes from the newest checkpoint. `stop_after` ends this call after that
    many iterations (tests); `export=False` skips the release zip.
    Raises:
        ValueError / DatasetLayoutError / PermutationFileError: bad settings, data or permutation file (sentences).
    """
    from jigsawpp.engine.distributed import barrier, init_distributed, is_main, resolve_device, world
    from jigsawpp.engine.loop import DatasetSource, train_loop
    from jigsawpp.engine.solver import CaffeAdam, CaffeSGD, LRPolicy, param_specs
    from jigsawpp.outputs import prepare_output_dir
    from jigsawpp.permutations import encode_permutations_bin, save_permutations
    from jigsawpp.pretext.data import CropSource, crop_dataset, images_fingerprint, list_images

    start = time.perf_counter()
    config = config or PretextConfig()
    init_distributed()
    rank, size = world()
    run_device = resolve_device(device)
    per_pass, remainder = divmod(config.batch_size, size * config.iter_size)
    if remainder or per_pass < 1:
        raise ValueError(f"batch_size {config.batch_size} does not split over {size} processes x iter_size "
                         f"{config.iter_size}; choose a multiple of {size * config.iter_size}.")
    paths = list_images(images)
    perms, perms_source = resolve_permutations(config, permutations_file)
    config = replace(config, permutations_sha256=hashlib.sha256(encode_permutations_bin(perms)).hexdigest())
    out = Path(out_dir)
    if is_main():
        prepare_output_dir(out, overwrite=overwrite, what="pretext training output", resume=True)
        save_permutations(perms, out / PERMUTATIONS_NAME)
    barrier()
    model = ContextFreeNetwork(cfn_config(config, len(perms)))
    model.reset_parameters(torch.Generator().manual_seed(config.seed), init=config.init)
    solver = CaffeAdam if config.solver == "adam" else CaffeSGD
    optimizer = solver(param_specs(model), momentum=config.momentum, weight_decay=config.weight_decay,
                       clip_gradients=config.clip_gradients)
    policy = LRPolicy("step", base_lr=config.base_lr, gamma=config.gamma, stepsize=config.stepsize)
    dataset = crop_dataset(paths, config.puzzle, train=True, seed=config.seed)
    source = CropSource(DatasetSource(dataset, batch_size=per_pass, seed=config.seed, workers=config.workers,
                                      pin_memory=run_device.type == "cuda"), seed=config.seed, rank=rank)
    perms_tensor = torch.from_numpy(perms)
    result = train_loop(
        model=model, optimizer=optimizer, lr=policy, source=source,
        loss_fn=puzzle_loss(perms_tensor, config.puzzle), out_dir=out, max_iters=config.max_iters,
        snapshot_iters=config.snapshot_iters, config=config.to_dict(), fingerprint=images_fingerprint(paths),
        device=run_device, iter_size=config.iter_size, amp=config.amp, progress=progress,
        desc=f"jigsaw++ {config.arch}", display=config.display, stop_after=stop_after, seed=config.seed,
        runtime_keys={"max_iters", "snapshot_iters", "amp", "display", "workers"},
    )
    from jigsawpp.engine.plots import read_log

    log = read_log(result.log) if result.log.is_file() else []
    zip_path = model_path = curve = None
    if is_main():
        from jigsawpp.pretext.figures import plot_pretext_curve

        if log:
            curve = plot_pretext_curve(result.log, out / CURVE_NAME, config=config.puzzle,
                                       chance=1.0 / len(perms))
        model_path = save_model(model, out / MODEL_NAME)
        if export and result.iterations == config.max_iters:
            from jigsawpp.pretext.caffe_export import write_release_zip

            zip_path = write_release_zip(model, perms, out / f"jigsawpp_{config.arch}.zip",
                                         note=f"Trained {result.iterations} iterations; see provenance.json.").path
        _write_provenance(out, config, perms, perms_source, paths, run_device, result, log, zip_path)
    barrier()
    return PretextResult(out, result.iterations, time.perf_counter() - start, result.resumed_from, zip_path,
                         model_path, curve, log[-1] if log else {})


def save_model(model: ContextFreeNetwork, path: Path) -> Path:
    """The ContextFreeNetwork's state dict (safetensors) with its config in the metadata."""
    from jigsawpp.io import save_state_dict_file

    return save_state_dict_file(model.state_dict(), path, metadata={
        "format": "jigsawpp ContextFreeNetwork state dict", "cfn_config": json.dumps(model.config.to_dict())})


def load_model(path: str | os.PathLike[str]) -> ContextFreeNetwork:
    """Inverse of `save_model`; the model is returned in eval mode."""
    from safetensors import safe_open

    from jigsawpp.io import load_state_dict_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "cfn_config" not in metadata:
        raise ValueError(f"{path}: not a ContextFreeNetwork file written by `jigsawpp pretext train` (no cfn_config "
                         "in its metadata).")
    model = ContextFreeNetwork(CFNConfig.from_dict(json.loads(metadata["cfn_config"])))
    model.load_state_dict(load_state_dict_file(path), strict=True)
    return model.eval()


def _write_provenance(out: Path, config: PretextConfig, perms: np.ndarray, perms_source: str, paths: list[str],
                      device: torch.device, result, log: list[dict], zip_path: Path | None) -> None:
    from jigsawpp.engine.stamp import environment_stamp
    from jigsawpp.io import write_json_atomic
    from jigsawpp.permutations import permutation_stats

    stats = permutation_stats(perms)
    write_json_atomic(out / PROVENANCE_NAME, {
        "protocol": "Jigsaw++ pretext task (Noroozi et al., CVPR 2018, Sec. 3)",
        "config": config.to_dict(),
        "choices": {
            "train_crop": f"{config.puzzle.train_crop} (the authors trained on the centre 255 crops their dataset tool "
                          "stores; 'random' moves the window)",
            "occluder_source": f"{config.puzzle.occluder_source} (the paper: another random image; the published "
                               "fork: the same image, rand_jump being unused)",
            "tower": ("AlexNet CFN of train_val_cfn_jps++.prototxt" if config.arch == "alexnet" else
                      "VGG16 conv1_1..pool5 on 64-px tiles, MSRA init, then the AlexNet CFN head (fc6 1024 per tile, "
                      "fc7 4096): the paper does not publish its VGG16 tower head"),
            "amp": config.amp,
            "solver": ("solver_cfn_jps.prototxt (2016); Jigsaw++ ships none" if config.solver == "sgd" and
                       config.clip_gradients is None else f"{config.solver} (Caffe's {config.solver.upper()} solver), "
                       f"clip_gradients {config.clip_gradients}: not the authors' SGD of solver_cfn_jps.prototxt"),
            "init": ("the prototxt's fillers" if config.init == "caffe" else "MSRA (see ContextFreeNetwork."
                     "reset_parameters): not the prototxt's gaussian fillers"),
        },
        "permutations": {"source": perms_source, "count": stats.count, "min_hamming": stats.min_distance,
                         "mean_hamming": stats.mean_distance, "sha256": config.permutations_sha256,
                         "file": PERMUTATIONS_NAME},
        "data": {"images": len(paths), "first": paths[:3]},
        "result": {"iterations": result.iterations, "resumed_from": result.resumed_from,
                   "seconds_this_call": result.seconds, "last_log": log[-1] if log else None,
                   "release_zip": zip_path.name if zip_path else None},
        "environment": environment_stamp(device),
    })
