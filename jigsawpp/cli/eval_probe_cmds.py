"""`jigsawpp eval linear` and `jigsawpp eval nonlinear`: thin click wrappers over `eval.probes.linear` and
`eval.probes.nonlinear`. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from jigsawpp.cli.common import OVERWRITE_HELP, parse_sets, start_device

TAPS_HELP = "conv1,conv2,conv3,conv4,conv5 (Tables 4/5); pool1, pool2, pool5 also exist with --resize bilinear"


def _user_errors() -> tuple[type[BaseException], ...]:
    from jigsawpp.outputs import OutputDirError

    return (FileNotFoundError, ValueError, KeyError, OutputDirError)


def _fmt(value: float | None) -> str:
    return f"{value:6.1f}" if value is not None else f"{'-':>6}"


def _start(device: str | None, out: Path, *, overwrite: bool, resume: bool, what: str):
    """The device, after refusing a malformed --device and an unusable --out before any work starts."""
    from jigsawpp.engine.distributed import is_main
    from jigsawpp.outputs import prepare_output_dir

    dev = start_device(device)
    if is_main():
        prepare_output_dir(out, overwrite=overwrite, what=what, resume=resume)
    return dev


@click.command("linear")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Converted model folder (`jigsawpp convert`); its frozen conv layers are probed.")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset root: ImageNet (train/ and val/ of WordNet-id folders), Places205 (with "
                   "trainvalsplit_places205/), or any root/train/<class>/ + root/val/<class>/ (--dataset folder).")
@click.option("--dataset", type=click.Choice(("imagenet", "places205", "folder")), default="imagenet",
              show_default=True, help="Layout of --data; imagenet -> Table 4, places205 -> Table 5.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; re-running the same command resumes from its checkpoints.")
@click.option("--taps", default=None, help=f"Comma-separated layers [default {TAPS_HELP}].")
@click.option("--resize", type=click.Choice(("bilinear", "avgpool")), default=None,
              help="How taps shrink to ~9K dims [paper: bilinear, Zhang et al.; avgpool: VISSL's variant].")
@click.option("--ten-crop", is_flag=True, help="Test on 10 crops (softmax averaged) instead of the centre crop.")
@click.option("--iters", type=int, default=None, help="SGD iterations [default 140000 at batch 64].")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Feature cache folder: features are extracted once (float16) and reused by later runs with the "
                   "same model and preprocessing; a cache made for another model is refused.")
@click.option("--cache-views", type=int, default=None,
              help="With --cache: random crop+mirror views stored per training image [default 1].")
@click.option("--device", default=None, help="torch device (default: cuda if available). Several GPUs: torchrun.")
@click.option("--amp", type=click.Choice(("off", "bf16", "fp16")), default=None,
              help="Autocast of the frozen trunk's forward [default off; recorded].")
@click.option("--workers", type=int, default=4, show_default=True, help="Image-decoding worker processes.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any LinearProbeConfig key (JSON values), e.g. --set base_lr=0.02 "
                   "--set 'stepvalues=[1000,2000]'. Unknown keys fail.")
@click.option("--no-resume", is_flag=True, help="Start over even if --out has checkpoints.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def linear_cmd(model_dir, data_root, dataset, out_dir, taps, resize, ten_crop, iters, cache_dir, cache_views, device,
               amp, workers, sets, no_resume, overwrite, quiet) -> None:
    """Linear classifiers on frozen conv1..conv5, all trained in one pass (Tables 4 and 5); writes top-1/top-5 per
    layer, a learning curve and a bar chart beside the paper's row, with a provenance stamp."""
    from eval.probes.config import LinearProbeConfig

    overrides = parse_sets(sets)
    for key, value in (("taps", tuple(t.strip() for t in taps.split(",")) if taps else None), ("resize", resize),
                       ("max_iter", iters), ("cache_train_views", cache_views), ("amp", amp),
                       ("test_crops", "ten" if ten_crop else None)):
        if value is not None:
            overrides[key] = value
    try:
        cfg = LinearProbeConfig.from_dict({**LinearProbeConfig().to_dict(), **overrides})
    except (KeyError, TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    from eval.probes.linear import run_linear

    try:
        dev = _start(device, out_dir, overwrite=overwrite, resume=not no_resume, what="linear probe output")
        result = run_linear(model_dir, data_root, out_dir, cfg, dataset=dataset, cache_dir=cache_dir, device=dev,
                            workers=workers, resume=not no_resume, progress=not quiet)
    except _user_errors() as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    if result.scores_path is None:
        return
    from jigsawpp.paper import TABLES

    data = json.loads(result.scores_path.read_text(encoding="utf-8"))
    method = data["provenance"]["model"]["paper_method"]
    table = {"imagenet": "table4", "places205": "table5"}.get(dataset)
    paper = (TABLES[table].row(method) if table and method else None) or {}
    click.echo(f"\n{'layer':<6} {'top-1':>6} {'top-5':>6} {'paper':>6}   ({data['count']} validation images)")
    for tap, acc in result.accuracy.items():
        click.echo(f"{tap:<6} {acc.top1:6.1f} {acc.top5:6.1f} {_fmt(paper.get(tap))}")
    if result.extraction:
        for name, rec in result.extraction.items():
            state = "reused" if rec["reused"] else f"extracted {rec['images_extracted']} images"
            click.echo(f"cache {name}: {state}")
    click.echo(f"results: {result.scores_path}  figures: {result.out_dir / 'layer_accuracy.png'}, "
               f"{result.out_dir / 'learning_curve.png'}")


@click.command("nonlinear")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Converted model folder (`jigsawpp convert`): its layers up to --freeze-upto are kept frozen.")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="ImageNet root (train/ and val/ of WordNet-id folders), or root/train/<class>/ + "
                   "root/val/<class>/ with --dataset folder.")
@click.option("--dataset", type=click.Choice(("imagenet", "folder")), default="imagenet", show_default=True,
              help="Layout of --data (Table 6 is ImageNet).")
@click.option("--freeze-upto", type=click.Choice(("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")),
              required=True, help="Last frozen layer (the Table 6 column); fc6/fc7 need a model with fc layers.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; re-running the same command resumes from its checkpoints.")
@click.option("--iters", type=int, default=None, help="SGD iterations [default 350000 at batch 256, lr/10 every "
                                                      "100000].")
@click.option("--center-crop", is_flag=True, help="Test on the centre crop only [paper: 10 crops].")
@click.option("--device", default=None, help="torch device (default: cuda if available). Several GPUs: torchrun.")
@click.option("--amp", type=click.Choice(("off", "bf16", "fp16")), default=None,
              help="Mixed precision [default off; recorded].")
@click.option("--workers", type=int, default=8, show_default=True, help="Image-decoding worker processes.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any NonlinearConfig key (JSON values), e.g. --set batch_size=128. Unknown keys fail.")
@click.option("--no-resume", is_flag=True, help="Start over even if --out has checkpoints.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def nonlinear_cmd(model_dir, data_root, dataset, freeze_upto, out_dir, iters, center_crop, device, amp, workers, sets,
                  no_resume, overwrite, quiet) -> None:
    """The nonlinear classifier of Table 6: layers up to --freeze-upto frozen, the rest of AlexNet re-initialised
    and trained on ImageNet, tested on 10 crops. No reference code exists: the result is marked unverified."""
    from eval.probes.config import NonlinearConfig

    overrides = parse_sets(sets)
    overrides["freeze_upto"] = freeze_upto
    for key, value in (("max_iter", iters), ("amp", amp), ("test_crops", "center" if center_crop else None)):
        if value is not None:
            overrides[key] = value
    try:
        cfg = NonlinearConfig.from_dict({**NonlinearConfig().to_dict(), **overrides})
    except (KeyError, TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    from eval.probes.nonlinear import run_nonlinear

    try:
        dev = _start(device, out_dir, overwrite=overwrite, resume=not no_resume, what="nonlinear classifier output")
        result = run_nonlinear(model_dir, data_root, out_dir, cfg, dataset=dataset, device=dev, workers=workers,
                               resume=not no_resume, progress=not quiet)
    except _user_errors() as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    if result.scores_path is None or result.accuracy is None:
        return
    data = json.loads(result.scores_path.read_text(encoding="utf-8"))
    from jigsawpp.paper import TABLE6

    method = data["provenance"]["model"]["paper_method"]
    paper = (TABLE6.row(method) if method and dataset == "imagenet" else None) or {}
    crops = "10 crops" if cfg.test_crops == "ten" else "centre crop"
    click.echo(f"\n{freeze_upto} frozen: top-1 {result.accuracy.top1:.1f}, top-5 {result.accuracy.top5:.1f} "
               f"({crops}, {result.accuracy.count} images); paper {_fmt(paper.get(freeze_upto)).strip()}")
    if result.center is not None:
        click.echo(f"centre crop alone: top-1 {result.center.top1:.1f}, top-5 {result.center.top5:.1f}")
    click.echo(f"results: {result.scores_path}")


def register(group: click.Group) -> None:
    """Add `linear` and `nonlinear` to the `jigsawpp eval` group."""
    group.add_command(linear_cmd)
    group.add_command(nonlinear_cmd)
