"""`jigsawpp eval classification|segmentation|score-classification|score-segmentation`: thin click wrappers over
`eval.classification` and `eval.segmentation`. Heavy imports happen inside the commands."""

from __future__ import annotations

from pathlib import Path

import click

from jigsawpp.cli.common import parse_sets, start_device

AMP_CHOICES = ("off", "bf16", "fp16")


def _message(exc: BaseException) -> str:
    """Library errors are sentences; KeyError's str() would quote them."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _fail(exc: BaseException) -> click.ClickException:
    return click.ClickException(_message(exc))




def _prepare(out: Path, *, overwrite: bool, what: str, command: str | None = None, protocol: str | None = None) -> None:
    """A training command (`command`, whose config.json records `protocol`) continues its own earlier folder and
    refuses any other non-empty one; without them (a test-only run) any non-empty folder needs --overwrite."""
    from jigsawpp.cli.common import refuse_foreign_output
    from jigsawpp.engine.distributed import is_main
    from jigsawpp.outputs import OutputDirError, prepare_output_dir

    if is_main():
        try:
            if command is not None and protocol is not None:
                refuse_foreign_output(out, command=command, protocol=protocol, overwrite=overwrite)
            prepare_output_dir(out, overwrite=overwrite, what=what, resume=protocol is not None)
        except OutputDirError as exc:
            raise _fail(exc) from None


def _common(fn):
    """Options shared by the two training commands."""
    options = [
        click.option("--iters", type=int, default=None, help="SGD iterations [classification 80000; FCN 100000]."),
        click.option("--transfer", type=click.Choice(("conv", "conv+fc")), default=None,
                     help="Layers taken from --model: conv1..conv5 (default, as the paper) or also fc6/fc7."),
        click.option("--rescale", is_flag=True, help="Kraehenbuehl et al.'s rescaling of conv1..conv5 first."),
        click.option("--device", default=None, help="torch device (default: cuda if available). Several GPUs: "
                                                    "torchrun --nproc_per_node=N."),
        click.option("--amp", type=click.Choice(AMP_CHOICES), default=None,
                     help="Autocast on CUDA (default off: fp32 for fidelity; recorded)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key (JSON values), e.g. --set snapshot_iters=2000. Unknown keys fail."),
        click.option("--no-resume", is_flag=True, help="Start over even if --out has checkpoints."),
        click.option("--overwrite", is_flag=True, help="Empty a non-empty --out folder first."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _overrides(sets: tuple[str, ...], **flags: object) -> dict:

    overrides = parse_sets(sets)
    names = {"iters": "max_iters"}
    for key, value in flags.items():
        if value is not None and value is not False:
            overrides[names.get(key, key)] = value
    return overrides


def _echo_classification(ap) -> None:
    width = max(len(c) for c in ap.class_names)
    click.echo(f"\n{'class':<{width}}  AP sklearn  AP 11-pt  AP area   pos")
    for c in ap.class_names:
        if ap.n_pos[c]:
            click.echo(f"{c:<{width}}  {ap.ap_sklearn[c] * 100:10.1f}  {ap.ap_11point[c] * 100:8.1f}  "
                       f"{ap.ap_area[c] * 100:7.1f}  {ap.n_pos[c]:4d}")
        else:
            click.echo(f"{c:<{width}}  {'-':>10}  {'-':>8}  {'-':>7}  {0:4d}")
    click.echo(f"{'mAP':<{width}}  {ap.map_sklearn * 100:10.1f}  {ap.map_11point * 100:8.1f}  {ap.map_area * 100:7.1f}"
               "   (sklearn = Kraehenbuehl's, the number Table 3 reports)")


def _echo_segmentation(scores, class_names) -> None:
    click.echo(f"\nmean IU {scores.mean_iu * 100:.1f}   pixel accuracy {scores.pixel_accuracy * 100:.1f}   mean "
               f"accuracy {scores.mean_accuracy * 100:.1f}   frequency-weighted IU "
               f"{scores.frequency_weighted_iu * 100:.1f}   ({scores.n_images} images)")
    cells = [f"{c} {v * 100:.1f}" if v == v else f"{c} -" for c, v in zip(class_names, scores.iu.tolist())]
    for k in range(0, len(cells), 6):
        click.echo("  " + "   ".join(cells[k:k + 6]))


@click.command("classification")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Converted model folder (`jigsawpp convert`).")
@click.option("--voc", "voc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="VOCdevkit (or VOCdevkit/VOC2007): ImageSets/Main/<class>_{trainval,test}.txt and JPEGImages/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: voc07_classification_<variant>). Re-running with it resumes.")
@click.option("--variant", type=click.Choice(("all", "fc678", "fc8", "pool5")), default=None,
              help="Layers fine-tuned (philkr's experiments): all [Table 3], fc678, fc8, or a pool5 linear classifier.")
@_common
def classification(model_dir, voc, out_dir, variant, iters, transfer, rescale, device, amp, sets, no_resume,
                   overwrite, quiet) -> None:
    """VOC2007 classification as Kraehenbuehl et al.'s code runs it: fine-tune on trainval (random scale/crop/mirror,
    sigmoid cross-entropy, 80K iterations), test on test with 10 random crops; writes devkit results files, AP per
    class (sklearn, 11-point, area), PR curves and a provenance stamp."""
    from eval.classification.config import VOCClassificationConfig

    try:
        cfg = VOCClassificationConfig().replace(**_overrides(sets, variant=variant, iters=iters, transfer=transfer,
                                                             rescale=rescale, amp=amp))
    except (KeyError, TypeError, ValueError) as exc:
        raise click.UsageError(_message(exc)) from None
    out = out_dir or Path(f"voc07_classification_{cfg.variant}")
    dev = start_device(device)
    from eval.classification.provenance import PROTOCOL_NAME

    _prepare(out, overwrite=overwrite, what="classification output", command="eval classification",
             protocol=PROTOCOL_NAME)
    from eval.classification.pipeline import run_classification

    try:
        run = run_classification(model_dir, voc, out, cfg, device=dev, resume=not no_resume, progress=not quiet)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        raise _fail(exc) from None
    if run.ap is not None:
        _echo_classification(run.ap)
        click.echo(f"\nprotocol: {run.stamp['key']}\nscores: {run.scores_path}  results: {run.results_dir}  "
                   f"curves: {run.curves}")


@click.command("segmentation")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Converted model folder (`jigsawpp convert`).")
@click.option("--voc", "voc", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="VOC folder with ImageSets/Segmentation/, SegmentationClass/, JPEGImages/: VOC2011 for seg11valid, "
                   "VOC2012 for voc_train / voc_val (or a VOCdevkit holding one).")
@click.option("--sbd", "sbd", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="SBD's 'dataset' folder (img/, cls/, train.txt): the default training set; also defines "
                   "seg11valid when VOC2011 lacks ImageSets/Segmentation/seg11valid.txt.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: fcn_segmentation_<protocol>). Re-running with it resumes.")
@click.option("--protocol", "protocol_name", type=click.Choice(("fcn", "colorization", "voc2012")), default="fcn",
              show_default=True, help="fcn: 100K iterations on SBD train, test seg11valid (Table 3); colorization: "
                                      "150K iterations; voc2012: VOC2012 train / val.")
@click.option("--train-data", type=click.Choice(("sbd_train", "voc_train")), default=None, help="Training set.")
@click.option("--val-data", type=click.Choice(("seg11valid", "voc_val")), default=None, help="Test set.")
@click.option("--caffe-test", "caffe_prototxt", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate a trained Caffe FCN instead (deploy or train/val prototxt; a Python data layer is cut "
                   "off); needs --caffemodel and --split; no training.")
@click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --caffe-test: the trained weights.")
@click.option("--split", default=None, help="With --caffe-test: seg11valid, or a VOC ImageSets/Segmentation split "
                                            "(val, train, ...).")
@click.option("--score-blob", default="score", show_default=True, help="With --caffe-test: the blob to argmax.")
@_common
def segmentation(model_dir, voc, sbd, out_dir, protocol_name, train_data, val_data, caffe_prototxt, caffemodel, split,
                 score_blob, iters, transfer, rescale, device, amp, sets, no_resume, overwrite, quiet) -> None:
    """Semantic segmentation with FCN-AlexNet as FCN trains it (pad 100, fc6/fc7 convolutions, bilinear upscore,
    fixed lr 1e-4, 20 images per update): fine-tune from --model's conv layers, test at full image size; writes
    mean IU, pixel accuracy, per-class IU, prediction PNGs, overlays and a provenance stamp."""
    from eval.segmentation.config import fcn_protocol

    try:
        cfg = fcn_protocol(protocol_name, **_overrides(sets, iters=iters, transfer=transfer, rescale=rescale, amp=amp,
                                                        train_data=train_data, val_data=val_data))
    except (KeyError, TypeError, ValueError) as exc:
        raise click.UsageError(_message(exc)) from None
    out = out_dir or Path(f"fcn_segmentation_{protocol_name}" if caffe_prototxt is None else "fcn_caffe_test")
    dev = start_device(device)
    from eval.segmentation.labels import SEG_CLASSES
    from eval.segmentation.pipeline import (
        evaluate_caffe_segmenter,
        resolve_segmentation_root,
        run_segmentation,
        split_for,
    )

    try:
        if caffe_prototxt is not None:
            if caffemodel is None or split is None or voc is None:
                raise click.UsageError("--caffe-test needs --caffemodel, --voc and --split.")
            _prepare(out, overwrite=overwrite, what="segmentation output")
            voc_root = resolve_segmentation_root(voc)
            which = "seg11valid" if split == "seg11valid" else f"voc_{split}"
            run = evaluate_caffe_segmenter(caffe_prototxt, caffemodel, out, split=split_for(which, voc_root, sbd),
                                           mean_bgr=cfg.mean_bgr, score_blob=score_blob, device=dev, amp=cfg.amp,
                                           num_overlays=cfg.num_overlays, progress=not quiet)
        else:
            if model_dir is None:
                raise click.UsageError("--model is required (or --caffe-test with --caffemodel).")
            from eval.segmentation.provenance import PROTOCOL_NAME

            _prepare(out, overwrite=overwrite, what="segmentation output", command="eval segmentation",
                     protocol=PROTOCOL_NAME)
            run = run_segmentation(model_dir, out, cfg, voc_root=voc, sbd_root=sbd, device=dev,
                                   resume=not no_resume, progress=not quiet)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        raise _fail(exc) from None
    if run.scores is not None:
        _echo_segmentation(run.scores, SEG_CLASSES)
        click.echo(f"\nprotocol: {run.stamp['key']}\nscores: {run.scores_path}  predictions: {run.results_dir}  "
                   f"plot: {run.plot}")


@click.command("score-classification")
@click.option("--voc", "voc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="VOCdevkit/VOC2007 (or VOCdevkit) with ImageSets/Main/<class>_<split>.txt.")
@click.option("--split", default="test", show_default=True, help="Image set the results are for.")
@click.option("--results", "results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder of comp1_cls_<split>_<class>.txt files (lines 'image_id score').")
@click.option("--comp", default="comp1", show_default=True, help="Competition id in the file names.")
def score_classification_cmd(voc: Path, split: str, results_dir: Path, comp: str) -> None:
    """Score devkit-format classification results: AP per class as the devkit's VOCevalcls (11-point and area) and
    as Kraehenbuehl et al.'s code (sklearn); writes RESULTS/scores.json."""
    import json

    from eval.classification.results import score_classification, write_classification_scores
    from eval.detection.pipeline import resolve_voc_root

    try:
        ap = score_classification(resolve_voc_root(voc), split, results_dir, comp=comp)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    stamp_path = results_dir / "provenance.json"
    stamp = json.loads(stamp_path.read_text(encoding="utf-8")) if stamp_path.is_file() else None
    path = write_classification_scores(ap, results_dir, split=split, stamp=stamp)
    _echo_classification(ap)
    missing = sum(ap.n_missing.values())
    if missing:
        click.echo(f"note: {missing} (image, class) scores were missing and count as -inf, as in the devkit.")
    click.echo(f"wrote {path}")


@click.command("score-segmentation")
@click.option("--voc", "voc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="VOC folder with ImageSets/Segmentation/ and SegmentationClass/ (or a VOCdevkit holding one).")
@click.option("--split", default="val", show_default=True, help="seg11valid, or an ImageSets/Segmentation split.")
@click.option("--sbd", "sbd", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="SBD's 'dataset' folder, to define seg11valid when the VOC folder lacks seg11valid.txt.")
@click.option("--results", "results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder of <image_id>.png predictions (indexed PNGs of class indices).")
def score_segmentation_cmd(voc: Path, split: str, sbd: Path | None, results_dir: Path) -> None:
    """Score predicted label PNGs with FCN's score.py metric (mean IU etc.); writes RESULTS/scores.json."""
    import json

    from eval.segmentation.labels import SEG_CLASSES
    from eval.segmentation.pipeline import resolve_segmentation_root, split_for
    from eval.segmentation.results import score_prediction_folder, write_segmentation_scores

    try:
        root = resolve_segmentation_root(voc)
        chosen = split_for("seg11valid" if split == "seg11valid" else f"voc_{split}", root, sbd)
        scores = score_prediction_folder(chosen, results_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    stamp_path = results_dir / "provenance.json"
    stamp = json.loads(stamp_path.read_text(encoding="utf-8")) if stamp_path.is_file() else None
    path = write_segmentation_scores(scores, results_dir, split=chosen.source, stamp=stamp)
    _echo_segmentation(scores, SEG_CLASSES)
    click.echo(f"wrote {path}")


def register(main: click.Group) -> None:
    """Add the four commands to the `jigsawpp eval` group."""
    group = main.commands["eval"]
    assert isinstance(group, click.Group)
    for command in (classification, segmentation, score_classification_cmd, score_segmentation_cmd):
        group.add_command(command)
