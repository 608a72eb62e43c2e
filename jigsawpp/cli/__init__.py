"""The `jigsawpp` command line: a thin click layer that parses options, calls one library function, and prints.

Heavy modules (torch, onnx, cv2) are imported inside the commands so that `jigsawpp --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from jigsawpp import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="jigsawpp")
def main() -> None:
    """Convert the released Caffe models of Noroozi et al. (CVPR 2018) to PyTorch/ONNX and re-run the paper's
    evaluations. Start with `jigsawpp demo`."""


@main.command()
@click.option("--prototxt", "prototxt_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Deploy prototxt (text) of the model.")
@click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Trained weights (binary caffemodel, any Caffe version).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: model.safetensors, deploy.prototxt, manifest.json.")
@click.option("--output", "outputs", multiple=True,
              help="Blob to keep as an output (repeatable); the net is pruned to what these need.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
def convert(prototxt_path: Path, caffemodel: Path, out_dir: Path, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Convert a Caffe model (prototxt + caffemodel) to safetensors with a manifest."""
    from jigsawpp.convert import convert_caffe

    result = convert_caffe(prototxt_path, caffemodel, out_dir, outputs=list(outputs) or None, overwrite=overwrite)
    net = result.manifest["net"]
    click.echo(f"converted {len(net['layers'])} layers ({net['n_parameters'] / 1e6:.1f} M parameters) "
               f"in {result.seconds:.1f} s -> {result.out_dir}")
    for name, shape in net["outputs"].items():
        click.echo(f"  output {name}: {shape}")
    for note in net["notes"]:
        click.echo(f"  note: {note}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Working folder for the demo's files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stand-in weights.")
def demo(out_dir: Path, seed: int) -> None:
    """Run the main job on an embedded default (no download): write, convert, run and check a CaffeNet."""
    from jigsawpp.demo import run_demo

    report = run_demo(out_dir, seed=seed, progress=lambda name: click.echo(f"… {name}", err=True))
    width = max(len(step.name) for step in report.steps)
    click.echo(f"\njigsawpp demo — files in {report.out_dir}\n")
    for step in report.steps:
        click.echo(f"  {step.name:<{width}}  {step.seconds:7.2f} s  {step.detail}")
    click.echo(f"  {'total':<{width}}  {sum(s.seconds for s in report.steps):7.2f} s")


if __name__ == "__main__":
    main()
