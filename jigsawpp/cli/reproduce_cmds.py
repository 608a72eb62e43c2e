"""`jigsawpp reproduce` and `jigsawpp report`: thin click wrappers over `eval.reproduce`. Heavy imports happen inside
the commands."""

from __future__ import annotations

from pathlib import Path

import click

DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _echo_plan(plan) -> None:
    from eval.reproduce.estimates import K40

    click.echo(f"plan for {plan.method or 'a model with no paper row'} ({plan.model_dir}), scale {plan.scale}:")
    if plan.jobs:
        width = max(len(p.name) for p in plan.jobs)
        click.echo(f"  {'job':<{width}}  {'paper cell':<22} {'GPUs':>4}  {'GPU-hours':>9}")
        for k, p in enumerate(plan.jobs, 1):
            columns = p.job.columns
            cell = f"{p.job.table} {','.join(columns) if len(columns) < 3 else columns[0] + '..' + columns[-1]}"
            click.echo(f"  {p.name:<{width}}  {cell:<22} {p.processes:>4}  {p.estimate.gpu_hours:9.2f}  [{k}]")
        click.echo(f"  {'total':<{width}}  {'':<22} {'':>4}  {plan.gpu_hours:9.2f}")
    for s in plan.skipped:
        click.echo(f"  not run: {s.name} ({s.title}): {s.reason}")
    for k, p in enumerate(plan.jobs, 1):
        click.echo(f"  [{k}] {p.name}: {p.estimate.how}")
    if plan.jobs:
        click.echo(f"  GPU-hours on an {K40}, from published speeds (eval.reproduce.estimates); a current GPU is "
                   "several times faster (benchmarks/fast_rcnn_speed.py, benchmarks/voc_speed.py measure yours).")


def _echo_summary(files) -> None:
    import json

    data = json.loads(files.json.read_text(encoding="utf-8"))
    width = max([len(c["job"]) for c in data["cells"]] + [3])
    click.echo(f"\n{'job':<{width}} {'cell':<20} {'measured':>8} {'paper':>6} {'diff':>6}  deviations")
    for c in data["cells"]:
        measured = f"{c['measured']:8.1f}" if c["measured"] is not None else f"{'-':>8}"
        paper = f"{c['paper']:6.1f}" if c["paper"] is not None else f"{'-':>6}"
        diff = (f"{c['difference']:+6.1f}" if c["difference"] is not None else
                f"{'n/c' if c['measured'] is not None and c['paper'] is not None else '':>6}")
        click.echo(f"{c['job']:<{width}} {c['table'] + ' ' + c['column']:<20} {measured} {paper} {diff}  "
                   f"{len(c['deviations'])}")
    click.echo(f"report: {files.html}  {files.markdown}")


@click.command("reproduce")
@click.option("--model", "model_dir", type=DIR, required=True, help="Converted model folder (`jigsawpp convert`).")
@click.option("--voc", "voc07", type=DIR, help="VOCdevkit or VOCdevkit/VOC2007: detection (SS and MS) and "
                                               "classification (Table 3).")
@click.option("--voc12", type=DIR, help="VOC2012 (or VOC2011) folder with ImageSets/Segmentation: FCN's test set "
                                        "seg11valid (its list there, or val minus SBD train); with --sbd.")
@click.option("--sbd", type=DIR, help="SBD's 'dataset' folder (img/, cls/, train.txt): FCN's training set.")
@click.option("--imagenet", type=DIR, help="ImageNet (train/, val/): linear probes (Table 4), nonlinear classifier "
                                           "(Table 6), for the jobs registered for them.")
@click.option("--places", type=DIR, help="Places205: linear probes (Table 5), for the jobs registered for them.")
@click.option("--ss-mat", "ss_mat", type=DIR, help="fast-rcnn's selective-search .mat files (voc_2007_{trainval,"
                                                   "test}.mat): the paper's proposals; without them they are computed.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: one sub-folder per job, report.{html,md,json}. Re-running the same command resumes.")
@click.option("--only", default=None, metavar="JOBS", help="Comma-separated jobs or groups, e.g. det,cls or det_ms "
                                                           "(default: all the datasets allow).")
@click.option("--gpus", default=None, metavar="IDS", help="e.g. 0,1,2,3: run jobs as subprocesses in parallel, one "
                                                          "per GPU (CUDA_VISIBLE_DEVICES). Default: one after the "
                                                          "other in this process.")
@click.option("--gpus-per-job", type=int, default=1, show_default=True,
              help="With --gpus: GPUs per job (torchrun), as far as the protocol's batch divides.")
@click.option("--device", default=None, help="Without --gpus: torch device (default: cuda if available, else cpu).")
@click.option("--dry-run", is_flag=True, help="Print the plan with the expected GPU-hours of each job, run nothing.")
@click.option("--scale", type=click.Choice(("paper", "tiny")), default="paper", show_default=True,
              help="tiny: a smoke test with iterations, batches and image sizes cut (recorded, flagged in the "
                   "report); not a reproduction.")
@click.option("--set", "sets", multiple=True, metavar="JOB.KEY=VALUE",
              help="Override a protocol setting (JSON value) of a job or group, e.g. --set det.amp=true. Recorded; "
                   "unknown keys fail.")
@click.option("--method", default=None, help="Paper row to compare with when the model's manifest names none "
                                             "(e.g. 'CC+Jigsaw++').")
@click.option("--overwrite", is_flag=True, help="Empty a non-empty --out folder first (default: resume it).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reproduce(model_dir, voc07, voc12, sbd, imagenet, places, ss_mat, out_dir, only, gpus, gpus_per_job, device,
              dry_run, scale, sets, method, overwrite, quiet) -> None:
    """Run every evaluation of the paper the given datasets allow for one model, each in its own resumable
    sub-folder of --out, and write report.html / report.md: the paper's numbers beside the measured ones, with
    every protocol deviation, per-class tables, figures, run times and provenance stamps."""
    from eval.reproduce import Datasets, make_plan
    from eval.reproduce.plan import parse_overrides

    gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else []
    if gpus is not None and not gpu_ids:
        raise click.UsageError("--gpus needs GPU ids, e.g. --gpus 0,1.")
    if gpus_per_job < 1:
        raise click.UsageError("--gpus-per-job must be at least 1.")
    try:
        plan = make_plan(model_dir, Datasets(voc07=voc07, voc12=voc12, sbd=sbd, imagenet=imagenet, places=places,
                                             ss_mat=ss_mat),
                         only=[n.strip() for n in only.split(",") if n.strip()] if only else None, scale=scale,
                         overrides=parse_overrides(sets), gpus_per_job=min(gpus_per_job, len(gpu_ids) or 1),
                         method=method)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        raise click.UsageError(_message(exc)) from None
    _echo_plan(plan)
    if dry_run:
        return
    if not plan.jobs:
        raise click.UsageError("nothing to run: give the datasets of at least one job (see 'not run' above).")
    if gpu_ids:
        import torch

        if device is not None:
            raise click.UsageError("--device applies without --gpus only (with --gpus each job gets its GPUs).")
        if not torch.cuda.is_available():
            raise click.UsageError("--gpus: torch sees no CUDA device here; run without --gpus to use the CPU.")
    problems = _dataset_problems(plan)
    if problems:
        raise click.ClickException("the datasets cannot be used (checked before any job runs): " + "; ".join(problems)
                                   + ". Fix them, or leave the option out to skip those jobs.")
    _run(plan, out_dir, gpu_ids=gpu_ids, device=device, overwrite=overwrite, quiet=quiet)


def _dataset_problems(plan) -> list[str]:
    """Each given dataset that a planned job needs, read as that job's protocol reads it; what is wrong with each
    (a folder that is no ImageNet layout would otherwise fail only when its job starts, after the others ran)."""
    from eval.detection.pipeline import resolve_voc_root
    from eval.probes.data import dataset_splits
    from eval.reproduce.jobs import DATASET_OPTIONS, JOBS
    from eval.segmentation.pipeline import resolve_segmentation_root
    from jigsawpp.data import DatasetLayoutError

    checks = {"voc07": resolve_voc_root, "voc12": resolve_segmentation_root,
              "imagenet": lambda root: dataset_splits(root, "imagenet"),
              "places": lambda root: dataset_splits(root, "places205")}
    needed = {name for job in plan.jobs if job.name in JOBS for name in JOBS[job.name].needs}
    problems = []
    for name in sorted(needed & set(checks)):
        root = getattr(plan.datasets, name)
        if root is None:
            continue
        try:
            checks[name](root)
        except (DatasetLayoutError, FileNotFoundError, ValueError) as exc:
            text = _message(exc).rstrip(".")
            text = text[len(f"{root}: "):] if text.startswith(f"{root}: ") else text
            problems.append(f"{DATASET_OPTIONS[name]} {root}: {text}")
    return problems


def _run(plan, out_dir: Path, *, gpu_ids: list[str], device: str | None, overwrite: bool, quiet: bool) -> None:
    from eval.reproduce.plan import PLAN_FILE, read_plan_record, write_plan
    from eval.reproduce.report import write_report
    from eval.reproduce.runner import RunLockedError, run_in_process, run_lock, run_scheduled
    from jigsawpp.outputs import OutputDirError, prepare_output_dir

    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / PLAN_FILE).is_file() and not overwrite:
        raise click.ClickException(f"{out_dir} is not empty and holds no reproduce run ({PLAN_FILE}); choose another "
                                   "--out or pass --overwrite to empty it.")
    run_device = None
    if not gpu_ids:
        from jigsawpp.engine.distributed import resolve_device

        try:
            run_device = resolve_device(device)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--device") from None
    try:
        prepare_output_dir(out_dir, overwrite=overwrite, resume=True, what="reproduce output")
        with run_lock(out_dir):
            write_plan(out_dir, plan)
            record = read_plan_record(out_dir)
            names = [p.name for p in plan.jobs]
            if gpu_ids:
                outcomes = run_scheduled(out_dir, record, names, gpus=gpu_ids, on_event=click.echo)
            else:
                outcomes = run_in_process(out_dir, record, names, device=run_device, progress=not quiet,
                                          on_event=click.echo)
            files = write_report(out_dir)
    except (OutputDirError, RunLockedError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(_message(exc)) from None
    _echo_summary(files)
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        by_error: dict[str, list[str]] = {}  # several jobs failing for one cause (a dataset's layout) say it once
        for o in failed:
            by_error.setdefault(str(o.error).rstrip("."), []).append(o.name)
        raise click.ClickException(f"{len(failed)} job(s) failed: "
                                   + "; ".join(f"{', '.join(names)}: {error}" for error, names in by_error.items())
                                   + ". Fix the cause and re-run the same command: finished jobs are kept.")


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=DIR)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write report.{html,md,json} (and figures/): default the run folder for one run; "
                   "required for several.")
def report(runs: tuple[Path, ...], out_dir: Path | None) -> None:
    """Rebuild a reproduce run's report from its files (RUN), or put several runs side by side in the form of the
    paper's Table 3 (RUN1 RUN2 ... --out DIR)."""
    from eval.reproduce.report import write_comparison, write_report

    try:
        if len(runs) == 1:
            files = write_report(runs[0], out_dir)
        elif out_dir is None:
            raise click.UsageError("several runs need --out DIR for the comparison.")
        else:
            files = write_comparison(runs, out_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(_message(exc)) from None
    click.echo(f"report: {files.html}  {files.markdown}")


def register(group: click.Group) -> None:
    """Add `reproduce` and `report` to the top-level `jigsawpp` group."""
    group.add_command(reproduce)
    group.add_command(report)
