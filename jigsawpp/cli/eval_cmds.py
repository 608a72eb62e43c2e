"""`jigsawpp eval detection|score-detections` and `jigsawpp verify`: thin click wrappers over `eval.detection` and
`eval.verify`. Heavy imports happen inside the commands."""

from __future__ import annotations

from pathlib import Path

import click

from jigsawpp.cli.common import OVERWRITE_HELP, parse_sets, start_device, tidy_on_failure

PROTOCOL_CHOICES = ("single_scale", "multiscale", "ms_train_ss_test", "fast_rcnn_default")


@click.group("eval")
def eval_group() -> None:
    """Re-run the paper's evaluations: Fast R-CNN detection, classification and FCN segmentation on PASCAL VOC
    (Table 3), linear and nonlinear classifiers on frozen layers (Tables 4-6), and scoring of devkit-format results."""








def _echo_ap(run, out: Path) -> None:
    ap = run.ap
    width = max(len(c) for c in ap.class_names)
    click.echo(f"\n{'class':<{width}}  AP (11-pt)  AP (area)")
    for c in ap.class_names:
        a, b = ap.per_class[c], ap.per_class_area[c]
        click.echo(f"{c:<{width}}  {a * 100:10.1f}  {b * 100:9.1f}" if a == a else f"{c:<{width}}  {'-':>10}  {'-':>9}")
    click.echo(f"{'mAP':<{width}}  {ap.map_11point * 100:10.1f}  {ap.map_area * 100:9.1f}")
    click.echo(f"\nprotocol: {run.stamp.get('key')}")
    click.echo(f"results: {run.results_dir}  scores: {run.scores_path}  curves: {run.pr_curves}")
    click.echo(f"detections drawn: {out / 'detections'}")


@eval_group.command("detection")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Converted model folder (`jigsawpp convert`); its conv1..conv5 initialise the detector.")
@click.option("--voc", "voc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="VOCdevkit (or VOCdevkit/VOC2007) folder: trainval for training, test for evaluation.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: detection_<protocol>). Re-running with the same folder resumes.")
@click.option("--protocol", "protocol_name", default=None,
              type=click.Choice(("noroozi18-ms", "noroozi18-ss", "fast-rcnn-ss", "ms-train-ss-test",
                                 "multiscale", "single_scale", "fast_rcnn_default", "ms_train_ss_test")),
              help="Preset [default noroozi18-ms: the paper's multi-scale train and test (480..1200, max 2000), 150K "
                   "iterations, lr 0.001 / 10 every 50K]. noroozi18-ss: the same at 600/1000; fast-rcnn-ss: "
                   "fast-rcnn's own 600/1000, 40K, step 30K; ms-train-ss-test: the colorization papers' variant. "
                   "The options below override single settings; the stamp records the preset and every override.")
@click.option("--multiscale", is_flag=True, hidden=True, help="Old name of --protocol noroozi18-ms.")
@click.option("--ms-train-ss-test", is_flag=True, hidden=True, help="Old name of --protocol ms-train-ss-test.")
@click.option("--iters", type=int, default=None, help="SGD iterations [paper: 150000; lr / 10 every 50000].")
@click.option("--train-conv1", is_flag=True, help="Also train conv1 (Fast R-CNN freezes it: lr_mult 0). Recorded.")
@click.option("--rescale", is_flag=True, help="Kraehenbuehl et al.'s rescaling of conv1..conv5 before training.")
@click.option("--transfer", type=click.Choice(("conv", "conv+fc")), default=None,
              help="Layers taken from --model [paper: conv, fc6/fc7 initialised fresh]; conv+fc also takes fc6/fc7 "
                   "when the model has them. Recorded.")
@click.option("--proposals", type=click.Choice(("rcnn_fast", "opencv_fast", "opencv_quality", "selective_search_mat")),
              default=None, help="Proposal source [paper: selective_search_mat, the released boxes (--ss-mat); "
                                 "default without them: rcnn_fast, R-CNN's selective search computed here].")
@click.option("--ss-mat", "mat_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with fast-rcnn's voc_2007_{trainval,test}.mat (implies --proposals selective_search_mat).")
@click.option("--proposal-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where computed proposals are cached, keyed by image content (default ~/.cache/jigsawpp/proposals).")
@click.option("--workers", type=int, default=None, help="Processes for selective search (default: all cores).")
@click.option("--device", default=None, help="torch device (default: cuda if available). Several GPUs: torchrun.")
@click.option("--amp", is_flag=True, help="bfloat16 autocast on CUDA (faster, changes results slightly; recorded).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any FastRCNNConfig key (JSON values), e.g. --set snapshot_iters=5000. Unknown keys fail.")
@click.option("--no-resume", is_flag=True, help="Start over even if --out has checkpoints.")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP + " Without it, --out must be new, empty, or an "
                                                                 "earlier run of this command (which resumes).")
@click.option("--caffe-test", "caffe_prototxt", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate a trained Caffe Fast R-CNN instead (its test prototxt, e.g. the bundled "
                   "fast_rcnn/CaffeNet/test.prototxt); needs --caffemodel; no training.")
@click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --caffe-test: the trained Fast R-CNN weights.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def detection(model_dir, voc, out_dir, protocol_name, multiscale, ms_train_ss_test, iters, train_conv1, rescale,
              transfer, proposals, mat_dir, proposal_cache, workers, device, amp, sets, no_resume, overwrite,
              caffe_prototxt,
              caffemodel, quiet) -> None:
    """Fast R-CNN on VOC2007 as the paper ran it: fine-tune from --model's conv layers on trainval, test on test;
    writes per-class AP, mAP, PR curves, sample detections and devkit results files with a provenance stamp."""
    from eval.detection.config import DEFAULT_PROTOCOL, canonical_protocol, protocol

    chosen = {canonical_protocol(n) for n, on in (("multiscale", multiscale), ("ms_train_ss_test", ms_train_ss_test),
                                                  (protocol_name, protocol_name is not None)) if on}
    if len(chosen) > 1:
        raise click.UsageError(f"choose one protocol, got {sorted(chosen)}.")
    name = chosen.pop() if chosen else DEFAULT_PROTOCOL
    overrides = parse_sets(sets)
    if iters is not None:
        overrides["max_iters"] = iters
    if train_conv1:
        overrides["freeze_conv1"] = False
    if rescale:
        overrides["rescale"] = True
    if amp:
        overrides["amp"] = True
    if transfer is not None:
        overrides["transfer"] = transfer
    if mat_dir is not None:
        overrides["proposals"] = "selective_search_mat"
    if proposals is not None:
        overrides["proposals"] = proposals
    try:
        cfg = protocol(name, **overrides)
    except (KeyError, TypeError, ValueError) as exc:
        from jigsawpp.cli.errors import user_message

        raise click.UsageError(user_message(exc)) from None
    out = out_dir or Path(f"detection_{name}")
    if caffe_prototxt is not None and caffemodel is None:
        raise click.UsageError("--caffe-test needs --caffemodel.")
    if caffe_prototxt is None and model_dir is None:
        raise click.UsageError("--model is required (or --caffe-test with --caffemodel).")
    proposal_args = {"mat_dir": mat_dir, "cache_dir": proposal_cache, "workers": workers}
    dev = start_device(device)
    with tidy_on_failure(out):
        _prepare_detection_out(out, overwrite=overwrite)
        if caffe_prototxt is not None:
            from eval.detection.pipeline import evaluate_caffe_detector

            run = evaluate_caffe_detector(caffe_prototxt, caffemodel, voc, out, cfg, protocol_name=name,
                                          device=dev, progress=not quiet, **proposal_args)
        else:
            from eval.detection.pipeline import run_detection

            run = run_detection(model_dir, voc, out, cfg, protocol_name=name, device=dev, resume=not no_resume,
                                progress=not quiet, **proposal_args)
    if run.ap is not None:  # rank 0 only
        _echo_ap(run, out)


def _prepare_detection_out(out: Path, *, overwrite: bool) -> None:
    """The output-folder policy for a resumable command: new, empty, an earlier run of this command (resumed), or
    anything with --overwrite; a folder that is none of these is refused before any work."""
    from eval.detection.provenance import PROTOCOL
    from jigsawpp.cli.common import refuse_foreign_output
    from jigsawpp.outputs import prepare_output_dir

    refuse_foreign_output(out, command="eval detection", protocol=PROTOCOL, overwrite=overwrite)
    prepare_output_dir(out, overwrite=overwrite, resume=True, what="--out")


@eval_group.command("score-detections")
@click.option("--voc", "voc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="VOCdevkit/VOC2007 (or VOCdevkit) folder with Annotations/ and ImageSets/Main/.")
@click.option("--split", default="test", show_default=True, help="Image set the results are for.")
@click.option("--results", "results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder of comp4_det_<split>_<class>.txt files (devkit format).")
def score_detections_cmd(voc: Path, split: str, results_dir: Path) -> None:
    """Score devkit-format detection results with the VOC2007 devkit's metric; writes RESULTS/scores.json."""
    from eval.detection.pipeline import score_results_dir

    ap, path = score_results_dir(voc, split, results_dir)
    for c in ap.class_names:
        value = ap.per_class[c]
        click.echo(f"{c:<12} {value * 100:5.1f}" if value == value else f"{c:<12}     -")
    click.echo(f"{'mAP':<12} {ap.map_11point * 100:5.1f}  (11-point; area {ap.map_area * 100:.1f})")
    click.echo(f"wrote {path}")


@click.command("verify")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Converted model folder the results were computed from; its manifest names the paper's row, and "
                   "its sha256 must match the one recorded in each result.")
@click.option("--results", "results", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path),
              help="`jigsawpp eval ...` output folder or a scores.json (repeatable).")
@click.option("--method", default=None, help="Paper row to compare with when the manifest does not name one "
                                             "(e.g. 'CC+Jigsaw++'); an unknown name is refused with the list.")
def verify_cmd(model_dir: Path, results: tuple[Path, ...], method: str | None) -> None:
    """Print measured numbers beside the paper's tables for this model, with every protocol deviation; results of
    another model are refused, and results on other data than the paper's are marked not comparable (n/c)."""
    from eval.verify import verify

    method, rows = verify(model_dir, results, method=method)
    click.echo(f"paper row: {method or '(unknown: pass --method)'}")
    click.echo(f"{'table':<7} {'column':<13} {'measured':>8} {'paper':>6} {'diff':>6}  protocol")
    for r in rows:
        measured = f"{r.measured:8.1f}" if r.measured is not None else f"{'-':>8}"
        paper = f"{r.paper:6.1f}" if r.paper is not None else f"{'-':>6}"
        diff = f"{r.difference:+6.1f}" if r.difference is not None else f"{'' if r.comparable else 'n/c':>6}"
        click.echo(f"{r.table:<7} {r.column:<13} {measured} {paper} {diff}  {r.protocol}")
        if len(results) > 1:  # several results: say which row came from which
            click.echo(f"{'':<38}  from: {r.source}")
        for d in r.deviations:
            click.echo(f"{'':<38}  differs: {d}")


def register(group: click.Group) -> None:
    """Add `eval` and `verify` to the top-level `jigsawpp` group."""
    group.add_command(eval_group)
    group.add_command(verify_cmd)
    from jigsawpp.cli.eval_probe_cmds import register as register_probes  # eval linear / nonlinear

    register_probes(eval_group)
