"""`jigsawpp pretext permutations|show|train|eval`: thin click wrappers over `jigsawpp.permutations`,
`jigsawpp.puzzle` and `jigsawpp.pretext`. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from jigsawpp.cli.common import parse_sets


@click.group("pretext")
def pretext_group() -> None:
    """The Jigsaw++ pretext task: permutation sets, puzzles, training and puzzle accuracy."""


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))




@pretext_group.command("permutations")
@click.option("--n", "count", type=int, default=1000, show_default=True,
              help="Number of permutations (1000: the fc8 size of the authors' net; 701 is their file's size).")
@click.option("--min-hamming", type=int, default=3, show_default=True,
              help="Minimum number of differing positions between any two (3: Jigsaw++; 0 or 2: the 2016 rule).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first permutation.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write: the authors' int32 format for .bin, NumPy (0-based) otherwise.")
@click.option("--check", "check", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Instead of generating, read this permutation file (.bin or .npy) and print its statistics.")
def permutations_cmd(count: int, min_hamming: int, seed: int, out: Path | None, check: Path | None) -> None:
    """Generate a maximal-Hamming permutation set (Noroozi & Favaro 2016, Algorithm 1, with the Jigsaw++ distance
    rule), or check an existing file."""
    from jigsawpp.permutations import (
        PermutationFileError,
        generate_permutations,
        permutation_stats,
        read_permutation_file,
        save_permutations,
    )

    try:
        if check is not None:
            table = read_permutation_file(check)
            perms, what = table.perms, f"{check}: {table.note}"
        else:
            if out is None:
                raise click.UsageError("give --out FILE (or --check FILE to read one).")
            perms = generate_permutations(count, min_hamming=min_hamming, seed=seed)
            save_permutations(perms, out)
            what = f"wrote {out}"
    except (PermutationFileError, ValueError) as exc:
        raise _fail(exc) from None
    stats = permutation_stats(perms)
    click.echo(what)
    click.echo(f"N = {stats.count} permutations of {stats.tiles} tiles; Hamming distance min {stats.min_distance}, "
               f"mean {stats.mean_distance:.3f}; identity {'included' if stats.has_identity else 'not included'}")


@pretext_group.command("show")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Figure to write (PNG, or PDF/SVG by suffix).")
@click.option("--permutations", "perms_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Permutation file (.bin/.npy); default: a generated set of --n.")
@click.option("--n", "count", type=int, default=1000, show_default=True, help="Size of the generated set.")
@click.option("--per-image", type=int, default=2, show_default=True, help="Puzzles drawn per image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test", "test_phase", is_flag=True, help="Centre crops (the TEST phase) instead of training crops.")
def show_cmd(images: tuple[Path, ...], out: Path, perms_file: Path | None, count: int, per_image: int, seed: int,
             test_phase: bool) -> None:
    """Draw puzzles of IMAGES: the crop, the 9 tiles as the network sees them, and the solution, with the
    occluding tiles marked (occluders come from the next image; from the image itself when only one is given)."""
    from jigsawpp.data import ImageReadError
    from jigsawpp.permutations import PermutationFileError, generate_permutations, load_permutations
    from jigsawpp.pretext.figures import show_puzzles

    try:
        perms = load_permutations(perms_file) if perms_file else generate_permutations(count)
        figure = show_puzzles(list(images), out, perms=perms, per_image=per_image, seed=seed, train=not test_phase)
    except (ImageReadError, PermutationFileError, ValueError) as exc:
        raise _fail(exc) from None
    click.echo(f"wrote {figure.path}: {figure.puzzles} puzzles; permutation labels {figure.labels}; occluded slots "
               f"{figure.occluded_slots}")


@pretext_group.command("train")
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), required=True,
              help="Training images: the ImageNet root or train/ folder, any folder of images, or a list file.")
@click.option("--arch", type=click.Choice(["alexnet", "vgg16"]), default="alexnet", show_default=True,
              help="Tower network: AlexNet (the released jigsawpp model) or VGG16 (the paper's vgg-Jigsaw++).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (re-running the same command resumes from its newest checkpoint).")
@click.option("--permutations", "perms_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Permutation file (e.g. the authors' permutations_701.bin); default: generate --set permutations=N "
                   "(1000) with the Jigsaw++ distance rule.")
@click.option("--max-iters", type=int, help="Iterations (default 350000, the authors' max_iter).")
@click.option("--batch-size", type=int, help="Global batch (default 256; split over torchrun processes).")
@click.option("--iter-size", type=int, help="Passes per update, to fit a GPU's memory (the global batch is kept).")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), help="Mixed precision (default off, Caffe's "
                                                                          "float32; bf16 recommended on GPUs).")
@click.option("--workers", type=int, help="DataLoader processes per training process (default 4).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: this rank's GPU, else cpu).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of PretextConfig (fc8_outputs=1000, puzzle.train_crop=random, base_lr=0.01, "
                   "...); unknown keys are an error.")
@click.option("--overwrite", is_flag=True, help="Start over in a non-empty --out folder.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_cmd(data: Path, arch: str, out: Path, perms_file: Path | None, max_iters: int | None,
              batch_size: int | None, iter_size: int | None, amp: str | None, workers: int | None,
              device: str | None, sets: tuple[str, ...], overwrite: bool, no_progress: bool) -> None:
    """Train the Jigsaw++ context-free network with the authors' solver. Several GPUs: `torchrun
    --nproc_per_node=N -m jigsawpp.cli pretext train ...` (the global batch stays 256)."""
    from jigsawpp.data import DatasetLayoutError, ImageReadError
    from jigsawpp.outputs import OutputDirError
    from jigsawpp.permutations import PermutationFileError
    from jigsawpp.pretext.train import PretextConfig, train_pretext

    overrides = parse_sets(sets)
    for key, value in (("arch", arch), ("max_iters", max_iters), ("batch_size", batch_size),
                       ("iter_size", iter_size), ("amp", amp), ("workers", workers)):
        if value is not None:
            overrides[key] = value
    try:
        config = PretextConfig().with_overrides(overrides)
        result = train_pretext(data, out, config=config, permutations_file=perms_file, device=device,
                               overwrite=overwrite, progress=not no_progress)
    except (DatasetLayoutError, ImageReadError, OutputDirError, PermutationFileError, ValueError, TypeError) as exc:
        raise _fail(exc) from None
    from jigsawpp.engine.distributed import is_main

    if not is_main():
        return
    click.echo(f"trained {result.iterations} iterations (resumed from {result.resumed_from}) in "
               f"{result.seconds:.0f} s -> {result.out_dir}")
    if result.last_log:
        from jigsawpp.pretext.figures import accuracy_by_occluders

        by = ", ".join(f"{k} occluders {v:.3f}" for k, v in sorted(accuracy_by_occluders(result.last_log).items()))
        click.echo(f"  last log: loss {result.last_log['loss']:.4f}, accuracy {result.last_log['accuracy']:.3f} "
                   f"({by})")
    for label, path in (("curve", result.curve), ("model", result.model), ("release zip", result.release_zip)):
        if path is not None:
            click.echo(f"  {label}: {path}")
    if result.release_zip is not None and config.arch == "alexnet":
        click.echo(f"  convert for transfer: jigsawpp convert {result.release_zip} --out CONVERTED/")
    elif result.release_zip is not None:
        click.echo("  the zip holds the 9-tower caffemodel and its deploy: `jigsawpp convert --prototxt DEPLOY "
                   "--caffemodel CAFFEMODEL` reads them once unzipped")


@pretext_group.command("eval")
@click.option("--model", "model", type=click.Path(exists=True, path_type=Path), required=True,
              help="A `pretext train` output folder, its model.safetensors, or a 9-tower CFN caffemodel.")
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), required=True,
              help="Held-out images (folder, ImageNet val layout, or list file).")
@click.option("--permutations", "perms_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Permutation file the model was trained with (default: the training folder's permutations.bin).")
@click.option("--per-image", type=int, default=10, show_default=True, help="Puzzles per image.")
@click.option("--batch-size", type=int, default=50, show_default=True, help="Images per batch (TEST batch 50).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", help="cpu, cuda ... (default: cuda if available).")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Write the result as JSON.")
def eval_cmd(model: Path, data: Path, perms_file: Path | None, per_image: int, batch_size: int, seed: int,
             device: str | None, workers: int, out: Path | None) -> None:
    """Puzzle accuracy on held-out images, overall and by number of occluders (0, 1, 2). A training folder's
    puzzle settings (provenance.json) are used; otherwise the authors'."""
    from jigsawpp.data import DatasetLayoutError, ImageReadError
    from jigsawpp.engine.distributed import resolve_device
    from jigsawpp.permutations import PermutationFileError, load_permutations
    from jigsawpp.pretext.data import list_images
    from jigsawpp.pretext.evaluate import evaluate_puzzles, model_from_path
    from jigsawpp.pretext.train import PERMUTATIONS_NAME, PROVENANCE_NAME
    from jigsawpp.puzzle import PuzzleConfig

    if out is not None:  # refuse an --out that cannot be written before the evaluation, not after it
        folder = out.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if out.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise click.ClickException(f"--out {out}: cannot write this file ({folder} is not a writable folder "
                                       f"or {out} is a folder); choose another location.")
    run_dir = model if model.is_dir() else model.parent  # a training folder, or the folder of its model file
    try:
        if perms_file is None:
            if not (run_dir / PERMUTATIONS_NAME).is_file():
                raise ValueError("give --permutations FILE: the set the model was trained with.")
            perms_file = run_dir / PERMUTATIONS_NAME
        perms = load_permutations(perms_file)
        network = model_from_path(model)
        puzzle = PuzzleConfig()
        if (run_dir / PROVENANCE_NAME).is_file():  # the puzzles the model was trained on
            puzzle = PuzzleConfig.from_dict(json.loads((run_dir / PROVENANCE_NAME).read_text())["config"]["puzzle"])
        result = evaluate_puzzles(network, list_images(data), perms, config=puzzle, per_image=per_image,
                                  batch_size=batch_size, seed=seed, device=resolve_device(device), workers=workers,
                                  progress=True)
    except (DatasetLayoutError, ImageReadError, PermutationFileError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    click.echo(f"puzzle accuracy {result.accuracy:.4f} on {result.puzzles} puzzles of {result.images} images "
               f"(chance {result.chance:.4f})")
    for row in result.by_occluders:
        click.echo(f"  {row.occluders} occluder(s): {row.accuracy:.4f} ({row.correct}/{row.puzzles})")
    if out is not None:
        from jigsawpp.io import write_json_atomic

        write_json_atomic(out, {"model": str(model), "permutations": str(perms_file), **result.to_dict()})
        click.echo(f"  wrote {out}")


def register(group: click.Group) -> None:
    """Add `pretext` to the top-level `jigsawpp` group."""
    group.add_command(pretext_group)
