"""The `jigsawpp` command line: a thin click layer that parses options, calls one library function, and prints.

Heavy modules (torch, onnx, cv2) are imported inside the commands so that `jigsawpp --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from jigsawpp import __version__
from jigsawpp.cli import eval_cmds, eval_voc_cmds, pretext_cmds, reproduce_cmds, transfer_cmds
from jigsawpp.cli.common import OVERWRITE_HELP, StepProgress, parse_device
from jigsawpp.cli.errors import JigsawppGroup


@click.group(cls=JigsawppGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="jigsawpp")
def main() -> None:
    """Convert the released Caffe models of Noroozi et al. (CVPR 2018) to PyTorch/ONNX and re-run the paper's
    evaluations. Start with `jigsawpp demo`."""


@main.command()
@click.argument("release", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prototxt", "prototxt_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Deploy prototxt (text) of the model; with --caffemodel, instead of a RELEASE zip.")
@click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trained weights (binary caffemodel, any Caffe version); with --prototxt.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder. Release zip: manifest.json, <variant>/{model.safetensors, model.onnx, "
                   "deploy.prototxt}, pseudo_labels/{train,val}.npz. Prototxt+caffemodel: model.safetensors, "
                   "deploy.prototxt, manifest.json.")
@click.option("--deploy", help="Release zip only: deploy to use instead of the best-matching one, as a member name "
                               "in the zip or a prototxt file; it replaces the variant with its conv1 stride.")
@click.option("--no-onnx", is_flag=True, help="Release zip only: skip model.onnx (export and onnxruntime check).")
@click.option("--opset", type=int, default=None, help="Release zip only: ONNX opset (default 17; 13 minimum).")
@click.option("--allow-tower-mismatch", is_flag=True,
              help="Release zip only: convert a 9-tower caffemodel whose tower copies differ (tower 1 is used); "
                   "by default that is an error, since the weights were meant to be shared.")
@click.option("--output", "outputs", multiple=True, metavar="BLOB",
              help="Prototxt+caffemodel only: blob to keep as an output (repeatable); the net is pruned to what "
                   "these need.")
@click.option("--allow-missing", is_flag=True,
              help="Prototxt+caffemodel only: initialise layers the caffemodel has no weights for from their Caffe "
                   "fillers (listed in manifest.json) instead of refusing, as Caffe's CopyTrainedLayersFrom does.")
@click.option("--stage", "stages", multiple=True, metavar="NAME",
              help="Prototxt+caffemodel only: Caffe NetState stage (repeatable), as `caffe test -stage`: layers are "
                   "kept by their include/exclude rules. A DIGITS-style train/val/deploy file needs --stage deploy.")
@click.option("--level", type=int, default=0, show_default=True,
              help="Prototxt+caffemodel only: Caffe NetState level, for min_level/max_level rules.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def convert(release: Path | None, prototxt_path: Path | None, caffemodel: Path | None, out_dir: Path,
            deploy: str | None, no_onnx: bool, opset: int | None, allow_tower_mismatch: bool,
            outputs: tuple[str, ...], allow_missing: bool, stages: tuple[str, ...], level: int,
            overwrite: bool) -> None:
    """Convert a released model zip (RELEASE.zip) or a Caffe model (--prototxt + --caffemodel)."""
    if release is not None:
        if prototxt_path or caffemodel or outputs or allow_missing or stages or level:
            raise click.UsageError("give either RELEASE.zip or --prototxt/--caffemodel (with --output, "
                                   "--allow-missing, --stage, --level), not both.")
        _convert_release(release, out_dir, deploy=deploy, onnx=not no_onnx, opset=opset,
                         allow_tower_mismatch=allow_tower_mismatch, overwrite=overwrite)
        return
    if prototxt_path is None or caffemodel is None:
        raise click.UsageError("give a RELEASE.zip, or both --prototxt and --caffemodel.")
    if deploy or no_onnx or opset or allow_tower_mismatch:
        raise click.UsageError("--deploy, --no-onnx, --opset and --allow-tower-mismatch apply to a RELEASE.zip only.")
    from jigsawpp.convert import convert_caffe

    result = convert_caffe(prototxt_path, caffemodel, out_dir, outputs=list(outputs) or None, stages=stages,
                           level=level, allow_missing=allow_missing, overwrite=overwrite)
    net = result.manifest["net"]
    click.echo(f"converted {len(net['layers'])} layers ({net['n_parameters'] / 1e6:.1f} M parameters) "
               f"in {result.seconds:.1f} s -> {result.out_dir}")
    state = result.manifest["net_state"]
    if state["stages"] or state["level"]:
        click.echo(f"  net state: phase {state['phase']}, level {state['level']}, stages {state['stages']}")
    for name, shape in net["outputs"].items():
        click.echo(f"  output {name}: {shape}")
    for note in net["notes"]:
        click.echo(f"  note: {note}")
    filled = result.manifest["weights"].get("filled")
    if filled:
        click.echo(f"  from fillers (--allow-missing): {', '.join(filled)}")


def _convert_release(release: Path, out_dir: Path, **kwargs: object) -> None:
    from jigsawpp.release import convert_release

    manifest = convert_release(release, out_dir, progress=lambda msg: click.echo(f"… {msg}", err=True),
                               **kwargs)  # type: ignore[arg-type]
    name = manifest["release"]["name"] or "unknown release"
    click.echo(f"converted {release.name} ({name}) in {manifest['seconds']:.1f} s -> {out_dir}")
    for variant, entry in manifest["variants"].items():
        parity = entry["parity"]
        onnx = parity["onnx"]
        onnx_text = ("ONNX skipped" if "skipped" in onnx else
                     f"ONNX max rel. err {max(onnx['export_size']['max_rel_err'].values()):.1e} "
                     f"({onnx['provider']})")
        tag = " [for transfer]" if entry["for_transfer"] else ""
        click.echo(f"  {variant}{tag}: conv1 stride {entry['conv1_stride']}, input {entry['input']['data']}, "
                   f"deploy {entry['deploy']['source']}; CaffeAlexNet vs caffe_import "
                   f"{parity['caffe_alexnet_vs_caffe_import']['max_abs_err']:.1e}; {onnx_text}")
    for split, entry in manifest["pseudo_labels"].items():
        click.echo(f"  pseudo_labels/{split}.npz: {entry['count']} images, {entry['distinct_labels']} clusters "
                   f"({entry['format']}, from {entry['member']})")
    for check in manifest["checks"]:
        if check["ok"] is False:
            click.echo(f"  warning: {check['message']}")


@main.command()
@click.argument("release", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--deploy", help="Deploy to use instead of the best-matching one (member name in the zip or a file).")
@click.option("--allow-tower-mismatch", is_flag=True, help="Report differing tower copies without calling the zip "
                                                            "unconvertible.")
def info(release: Path, deploy: str | None, allow_tower_mismatch: bool) -> None:
    """Say what a released model zip holds, what each file was taken for, and why."""
    from jigsawpp.release import format_release_info, inspect_release

    found = inspect_release(release, deploy, allow_tower_mismatch=allow_tower_mismatch)
    click.echo(format_release_info(found))


@main.command()
@click.option("--model", "model", type=click.Path(exists=True, path_type=Path), required=True,
              help="A `jigsawpp convert` output folder (release root, one of its variant folders, or a "
                   "prototxt+caffemodel conversion), or a deploy prototxt (then give --caffemodel).")
@click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Weights for a --model prototxt.")
@click.option("--variant", default="transfer", show_default=True,
              help="Release folders: variant to export (transfer, pretext, or a folder name).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ONNX file to write, e.g. model.onnx.")
@click.option("--opset", type=int, default=None, help="ONNX opset; default 17, minimum 13 (13..21 with ROIPooling).")
@click.option("--static", is_flag=True, help="Fixed input shapes (default: symbolic batch, and symbolic height/width "
                                             "for fully convolutional nets).")
@click.option("--stage", "stages", multiple=True, metavar="NAME",
              help="For a --model prototxt: Caffe NetState stage (repeatable), e.g. --stage deploy for a DIGITS-style "
                   "file; a converted folder reuses the stages it was converted with.")
@click.option("--level", type=int, default=0, show_default=True,
              help="For a --model prototxt: Caffe NetState level, for min_level/max_level rules.")
@click.option("--allow-missing", is_flag=True,
              help="For a --model prototxt: initialise layers the caffemodel has no weights for from their Caffe "
                   "fillers instead of refusing.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def export(model: Path, caffemodel: Path | None, variant: str, out: Path, opset: int | None, static: bool,
           stages: tuple[str, ...], level: int, allow_missing: bool, overwrite: bool) -> None:
    """Export a model to ONNX and check it in onnxruntime against PyTorch (the file appears only once it passed)."""
    from jigsawpp.export import export_model

    result = export_model(model, out, caffemodel=caffemodel, variant=variant, stages=stages, level=level,
                          allow_missing=allow_missing, opset=opset, dynamic=not static, overwrite=overwrite)
    click.echo(f"exported {result.source} -> {result.path}")
    for label, check in result.checks.items():
        errs = ", ".join(f"{k} {v:.1e}" for k, v in check.max_rel_err.items())  # type: ignore[attr-defined]
        click.echo(f"  onnxruntime vs PyTorch on the {label}: max rel. err {errs}")
    click.echo(f"  provider: {result.provider}" + (f" ({result.notice})" if result.notice else ""))


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Folder for the demo's files (about 380 MB are left; scratch such as "
                                      "fine-tuned weights and solver snapshots goes to OUT/scratch and is removed "
                                      "part by part: 1.9 GB of disk at the peak).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stand-in weights.")
@click.option("--no-release", is_flag=True, help="Skip the release-zip and detection parts (only the CaffeNet/OpenCV "
                                                  "check).")
@click.option("--no-detection", is_flag=True,
              help="Skip the short training steps (Fast R-CNN, VOC classification, FCN, Jigsaw++ pretext; most "
                   "of the time).")
@click.option("--keep-scratch", is_flag=True, help="Keep OUT/scratch (CaffeNet caffemodel and conversion, fine-tuned "
                                                    "weights, solver snapshots with momentum; about 4.5 GB).")
@click.option("--device", default=None, help="torch device of the training steps (default: cuda if available).")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
def demo(out_dir: Path, seed: int, no_release: bool, no_detection: bool, keep_scratch: bool, device: str | None,
         overwrite: bool) -> None:
    """Run the main job on an embedded default (no download): a release-shaped zip through info, convert, ONNX
    export and onnxruntime parity, a real photo, a CaffeNet checked against OpenCV, short Fast R-CNN, VOC
    classification and FCN runs, and a short Jigsaw++ pretext run (held-out puzzle accuracy before and after)."""
    from tqdm import tqdm

    from jigsawpp.demo import demo_steps, run_demo
    from jigsawpp.outputs import prepare_output_dir

    torch_device = parse_device(device)  # a bad --device or --out is refused before the progress bar starts
    prepare_output_dir(out_dir, overwrite=overwrite, what="--out")
    steps = demo_steps(release=not no_release, detection=not no_detection)
    with tqdm(total=len(steps), desc="demo", unit="step", leave=False) as bar:
        report = run_demo(out_dir, seed=seed, progress=StepProgress(bar, len(steps)), release=not no_release,
                          detection=not no_detection, overwrite=overwrite, keep_scratch=keep_scratch, bars=True,
                          device=torch_device)
        bar.update(len(steps) - bar.n)
    width = max(len(step.name) for step in report.steps)
    click.echo(f"jigsawpp demo — files in {report.out_dir}\n")
    click.echo(f"  {'step':<{width}}  {'seconds':>7}  result")
    for step in report.steps:
        click.echo(f"  {step.name:<{width}}  {step.seconds:7.2f}  {step.detail}")
    click.echo(f"  {'total':<{width}}  {sum(s.seconds for s in report.steps):7.2f}")
    scratch = (f"scratch kept in {report.scratch} ({report.scratch_mb:.0f} MB)" if report.scratch else
               f"{report.scratch_mb:.0f} MB of scratch removed")
    click.echo(f"\n{report.kept_mb:.0f} MB left in {report.out_dir} ({scratch}).")


eval_cmds.register(main)
eval_voc_cmds.register(main)
main.add_command(transfer_cmds.transfer_group)
pretext_cmds.register(main)
reproduce_cmds.register(main)

if __name__ == "__main__":
    main()
