"""`jigsawpp transfer ...`: knowledge transfer by cluster classification (Noroozi et al., CVPR 2018, §3), a thin
click layer over `jigsawpp.transfer`. Heavy imports happen inside the commands; user mistakes are one line."""

from __future__ import annotations

from pathlib import Path

import click

from jigsawpp.cli.common import parse_sets

DATA_HELP = ("Image folder: an ImageFolder tree (root/<class>/<image>), the ImageNet or Places205 root with "
             "--split, or the root that --list's paths are relative to.")


def _data_options():
    def wrap(fn):
        fn = click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                          help="A Caffe ImageData list (`relative/path label` lines).")(fn)
        fn = click.option("--split", type=click.Choice(("train", "val")),
                          help="ImageNet / Places205 split under the data root.")(fn)
        return click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                            help=DATA_HELP)(fn)
    return wrap


def _model_options(fn):
    fn = click.option("--seed", "teacher_seed", type=int, default=0, show_default=True,
                      help="Seed of a random:alexnet teacher.")(fn)
    fn = click.option("--variant", default="transfer", show_default=True,
                      help="Release folders: the variant whose conv4 is used (the paper transfers the stride-4 "
                           "one).")(fn)
    fn = click.option("--blob", default=None, help="Blob to pool [paper: conv4; default conv4, or conv4_3 for "
                                                   "VGG16].")(fn)
    fn = click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      help="Weights, when MODEL is a deploy prototxt.")(fn)
    return fn


def _feature_options(fn):
    for option in reversed([
        click.option("--dtype", type=click.Choice(("float16", "float32")), default="float16", show_default=True,
                     help="Storage of the rows (1.28M x 9,600 float16 = 24.6 GB)."),
        click.option("--pool-grid", type=int, default=None, help="Adaptive max pooling to G x G instead of the "
                                                                 "paper preset (5x5 AlexNet conv4, 4x4 VGG16)."),
        click.option("--pool-kernel", type=int, default=None, help="Caffe MAX pooling kernel instead of the preset."),
        click.option("--pool-stride", type=int, default=None, help="Caffe MAX pooling stride (with --pool-kernel)."),
        click.option("--crop", type=int, default=None, help="Centre crop [default: the model's input, 227/224]."),
        click.option("--batch-size", type=int, default=64, show_default=True, help="Images per forward pass."),
        click.option("--workers", type=int, default=4, show_default=True, help="Image decoding processes."),
    ]):
        fn = option(fn)
    return fn


def _feature_config(dtype, pool_grid, pool_kernel, pool_stride, crop, batch_size, workers):
    from jigsawpp.transfer.features import FeatureConfig

    return FeatureConfig(dtype=dtype, pool_grid=pool_grid, pool_kernel=pool_kernel, pool_stride=pool_stride,
                         crop=crop, batch_size=batch_size, workers=workers)


def _images(data, split, list_file):
    from jigsawpp.transfer.store import images_from_data

    return images_from_data(data, split=split, list_file=list_file)




def _user_errors():
    """Exceptions that are the user's mistake (bad path, layout, stale folder, option): one line, no traceback."""
    from jigsawpp.data import DatasetLayoutError, ImageReadError
    from jigsawpp.label_files import LabelFileError
    from jigsawpp.outputs import OutputDirError
    from jigsawpp.transfer.store import FeatureStoreError

    return (ValueError, KeyError, FileNotFoundError, DatasetLayoutError, ImageReadError, FeatureStoreError,
            OutputDirError, LabelFileError)


@click.group("transfer")
def transfer_group() -> None:
    """Knowledge transfer by cluster classification: teacher features -> k-means -> pseudo-labels -> AlexNet."""


@transfer_group.command("features")
@click.argument("model")
@_model_options
@_data_options()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Feature folder (features.npy, images.txt, manifest.json). Re-running resumes or reuses it.")
@_feature_options
@click.option("--device", default=None, help="torch device (default: cuda if available). Several GPUs: torchrun.")
@click.option("--overwrite", is_flag=True, help="Replace a feature folder made from other inputs.")
def features_cmd(model, caffemodel, blob, variant, teacher_seed, data, split, list_file, out, dtype, pool_grid,
                 pool_kernel, pool_stride, crop, batch_size, workers, device, overwrite) -> None:
    """Pooled conv4 of MODEL for every image: MODEL is a `jigsawpp convert` folder, a deploy prototxt (with
    --caffemodel), a folder with one caffemodel and one deploy*.prototxt, or random:alexnet."""
    try:
        from jigsawpp.engine.distributed import barrier, init_distributed, is_main, resolve_device, world
        from jigsawpp.transfer.features import ModelFeatures, extract_features
        from jigsawpp.transfer.teacher import load_teacher

        init_distributed()
        config = _feature_config(dtype, pool_grid, pool_kernel, pool_stride, crop, batch_size, workers)
        teacher = load_teacher(model, caffemodel=caffemodel, blob=blob, variant=variant, seed=teacher_seed)
        extractor = ModelFeatures(teacher, config)
        rank, size = world()
        result = extract_features(extractor, _images(data, split, list_file), out, config=config,
                                  device=resolve_device(device), rank=rank, world_size=size, overwrite=overwrite,
                                  progress=is_main(), barrier=barrier)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if is_main():
        verb = "already complete" if result.skipped else f"{result.images_per_second:.1f} images/s"
        click.echo(f"{extractor.description}: {result.shape[0]} x {result.shape[1]} {dtype} -> {out} ({verb})")


@transfer_group.command("hog")
@_data_options()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Feature folder of bag-of-words histograms (+ vocabulary.npy).")
@click.option("--vocabulary", "vocabulary_from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Reuse the words of this HOG feature folder (e.g. train's, to describe val).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="HogConfig override, e.g. --set words=1000 --set vocab_images=10000. Unknown keys fail.")
@click.option("--workers", type=int, default=4, show_default=True, help="Processes computing HOG.")
@click.option("--overwrite", is_flag=True, help="Replace a feature folder made from other inputs or settings.")
def hog_cmd(data, split, list_file, out, vocabulary_from, sets, workers, overwrite) -> None:
    """The CC+HOG baseline's features: bag of visual words of dense HOG descriptors, one row per image."""
    try:
        from jigsawpp.transfer.features import FeatureConfig
        from jigsawpp.transfer.hog import HogConfig, hog_features

        config = HogConfig.from_overrides(parse_sets(sets)) if vocabulary_from is None or sets else None
        result = hog_features(_images(data, split, list_file), out, config=config,
                              feature_config=FeatureConfig(workers=workers, batch_size=64),
                              vocabulary_from=vocabulary_from, overwrite=overwrite)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"HOG bag of words: {result.shape[0]} x {result.shape[1]} -> {out}"
               + (" (already complete)" if result.skipped else ""))


@transfer_group.command("cluster")
@click.argument("features", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Centroids folder (centroids.safetensors, manifest.json, objective.png).")
@click.option("--k", type=int, default=2000, show_default=True, help="Clusters [paper: 2000].")
@click.option("--niter", type=int, default=20, show_default=True, help="k-means iterations (DeepCluster: 20).")
@click.option("--seed", type=int, default=1234, show_default=True, help="faiss seed (recorded).")
@click.option("--max-points-per-centroid", type=int, default=None,
              help="Cap the points to this many per centroid (faiss's subsampling); default: every point.")
@click.option("--normalize", type=click.Choice(("none", "l2", "pca")), default="none", show_default=True,
              help="Row transform before k-means: none (default), l2, or pca (PCA-whitening + L2, DeepCluster).")
@click.option("--pca-dim", type=int, default=256, show_default=True, help="With --normalize pca.")
@click.option("--gpus", type=int, default=-1, show_default=True, help="faiss GPUs: -1 all, 0 none.")
@click.option("--overwrite", is_flag=True, help="Replace a centroids folder made from other features or settings.")
def cluster_cmd(features, out, k, niter, seed, max_points_per_centroid, normalize, pca_dim, gpus, overwrite) -> None:
    """k-means (faiss) of every row of a feature folder."""
    try:
        from jigsawpp.transfer.kmeans import KMeansConfig, cluster
        from jigsawpp.transfer.store import open_features

        config = KMeansConfig(k=k, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid,
                              normalize=normalize, pca_dim=pca_dim, gpus=gpus)
        result = cluster(open_features(features), out, config=config, overwrite=overwrite)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    state = "already complete" if result.skipped else f"{result.seconds:.1f} s"
    click.echo(f"k-means k = {k} on {result.points_used} points: objective {result.objective[0]:.6g} -> "
               f"{result.objective[-1]:.6g} ({state}) -> {out}")


@transfer_group.command("label")
@click.argument("features", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("centroids", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Pseudo-label folder: <split>.txt (path label), <split>.npz, sizes, montage, manifest.")
@click.option("--split", default="train", show_default=True, help="Name of this list (train, val, ...).")
@click.option("--gpus", type=int, default=-1, show_default=True, help="faiss GPUs: -1 all, 0 none.")
@click.option("--no-montage", is_flag=True, help="Skip the montage of sample clusters.")
@click.option("--overwrite", is_flag=True, help="Replace this split if it was labelled from other inputs.")
def label_cmd(features, centroids, out, split, gpus, no_montage, overwrite) -> None:
    """Nearest-centroid pseudo-labels for every image of a feature folder (any list made like the clustered one)."""
    try:
        from jigsawpp.transfer.kmeans import load_centroids
        from jigsawpp.transfer.labels import label_features
        from jigsawpp.transfer.store import open_features

        result = label_features(open_features(features), load_centroids(centroids), out, split=split, gpus=gpus,
                                montage=not no_montage, overwrite=overwrite)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{split}: {result.labels.size} images in {int((result.sizes > 0).sum())} clusters "
               f"({result.empty_clusters} empty; largest {int(result.sizes.max())})"
               + (" (already complete)" if result.skipped else "") + f" -> {out}")


def _train_options(fn):
    for option in reversed([
        click.option("--iters", type=int, default=None, help="SGD iterations [BVLC CaffeNet: 450000]."),
        click.option("--batch-size", type=int, default=None, help="Images per iteration, all GPUs [256]."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="CCConfig override (JSON values), e.g. --set base_lr=0.01. Unknown keys fail."),
        click.option("--amp", type=click.Choice(("off", "bf16", "fp16")), default="off", show_default=True,
                     help="Autocast on CUDA (off: Caffe's float32)."),
        click.option("--workers", type=int, default=8, show_default=True,
                     help="Image-decoding processes per training process."),
        click.option("--device", default=None, help="torch device (default: cuda if available). Several GPUs: "
                                                    "torchrun."),
        click.option("--overwrite", is_flag=True, help="Start over instead of resuming."),
    ]):
        fn = option(fn)
    return fn


def _train_config(iters, batch_size, sets, amp, workers):
    from jigsawpp.transfer.train import CCConfig

    overrides = parse_sets(sets)
    overrides.update({k: v for k, v in (("max_iter", iters), ("batch_size", batch_size)) if v is not None})
    return CCConfig.from_overrides({**overrides, "amp": amp, "workers": workers})


@transfer_group.command("train")
@click.option("--labels", "labels", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Pseudo-label folder with train.npz (and val.npz): `transfer label` output, or the "
                   "pseudo_labels/ folder of a converted release (the authors' labels).")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder the pseudo-label image paths are relative to.")
@click.option("--val-data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder the val pseudo-label paths are relative to, if not --data (the authors' ImageNet lists "
                   "name val images relative to the val folder).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Training folder; NAME.zip inside is the release-shaped result. Re-running resumes.")
@click.option("--name", default="cc_alexnet", show_default=True,
              help="Release name (a paper release name such as jigsawpp_acc attaches its numbers in convert).")
@_train_options
def train_cmd(labels, data, val_data, out, name, iters, batch_size, sets, amp, workers, device, overwrite) -> None:
    """Cluster classification: train the stride-4 CaffeNet AlexNet (fc8 = k) on the pseudo-labels."""
    try:
        from jigsawpp.engine.distributed import init_distributed, is_main
        from jigsawpp.transfer.train import train_cc

        init_distributed()
        result = train_cc(labels, data, out, config=_train_config(iters, batch_size, sets, amp, workers), name=name,
                          device=device, overwrite=overwrite, val_data=val_data)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if is_main():
        last = result.tests[-1] if result.tests else None
        score = f"; val top-1 {last['top1']:.3f} top-5 {last['top5']:.3f}" if last else ""
        click.echo(f"k = {result.k}: {result.iterations} iterations{score} -> {result.release_zip} "
                   f"(`jigsawpp convert {result.release_zip} --out DIR`)")


@transfer_group.command("regress")
@click.argument("model")
@_model_options
@_data_options()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Training folder; NAME.zip inside is the release-shaped student. Re-running resumes.")
@click.option("--name", default="regression_alexnet", show_default=True, help="Release name of the student.")
@click.option("--grid", type=int, default=None, help="Pooled grid of the targets [5 AlexNet, 4 VGG16 teacher].")
@_train_options
def regress_cmd(model, caffemodel, blob, variant, teacher_seed, data, split, list_file, out, name, grid, iters,
                batch_size, sets, amp, workers, device, overwrite) -> None:
    """The paper's [37] baseline: an AlexNet student regressing MODEL's conv4 and conv5."""
    if blob is not None:
        raise click.UsageError("--blob does not apply to `transfer regress`: the student regresses the teacher's conv4 "
                               "and conv5 (conv4_3 and conv5_3 of a VGG16), the paper's [37] targets.")
    try:
        from jigsawpp.engine.distributed import init_distributed, is_main
        from jigsawpp.transfer.regression import train_regression
        from jigsawpp.transfer.teacher import load_teacher

        init_distributed()
        teacher = load_teacher(model, caffemodel=caffemodel, blob=blob or _conv5(model, caffemodel), variant=variant,
                               seed=teacher_seed)
        result = train_regression(teacher, _images(data, split, list_file), out, grid=grid, name=name,
                                  config=_train_config(iters, batch_size, sets, amp, workers), device=device,
                                  overwrite=overwrite)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if is_main():
        click.echo(f"{result.iterations} iterations -> {result.release_zip}")


def _conv5(model: str, caffemodel) -> str | None:
    """conv5 (conv5_3 for a VGG16 prototxt): the deepest blob the regression needs."""
    path = Path(model)
    if path.suffix == ".prototxt" and path.is_file():
        return "conv5_3" if "conv5_3" in path.read_text(encoding="utf-8") else "conv5"
    if (path / "deploy.prototxt").is_file():
        return "conv5_3" if "conv5_3" in (path / "deploy.prototxt").read_text(encoding="utf-8") else "conv5"
    return "conv5"


@transfer_group.command("run")
@click.option("--teacher", "model", required=True,
              help="MODEL as for `transfer features`, or hog for the CC+HOG baseline.")
@_model_options
@_data_options()
@click.option("--val-split", type=click.Choice(("train", "val")),
              help="Validation images under --data (ImageNet / Places205 split): labelled too, for the TEST pass.")
@click.option("--val-list", "val_list_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Validation images as a Caffe list relative to --data.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: features/, centroids/, labels/, cc/ (cc/NAME.zip), run.json.")
@click.option("--k", type=int, default=2000, show_default=True, help="Clusters [paper: 2000].")
@click.option("--normalize", type=click.Choice(("none", "l2", "pca")), default="none", show_default=True,
              help="Row transform before k-means, as `transfer cluster --normalize`.")
@click.option("--name", default="cc_alexnet", show_default=True, help="Release name of the result.")
@click.option("--feature-set", "feature_sets", multiple=True, metavar="KEY=VALUE",
              help="FeatureConfig override (e.g. pool_grid=3, dtype=float32).")
@click.option("--hog-set", "hog_sets", multiple=True, metavar="KEY=VALUE", help="HogConfig override (--teacher hog).")
@click.option("--kmeans-set", "kmeans_sets", multiple=True, metavar="KEY=VALUE",
              help="KMeansConfig override (e.g. niter=20, pca_dim=256).")
@_train_options
def run_cmd(model, caffemodel, blob, variant, teacher_seed, data, split, list_file, val_split, val_list_file, out, k,
            normalize, name, feature_sets, hog_sets, kmeans_sets, iters, batch_size, sets, amp, workers, device,
            overwrite) -> None:
    """The whole chain, each stage skipped when its output is complete and matches its inputs."""
    try:
        from jigsawpp.engine.distributed import init_distributed, is_main
        from jigsawpp.transfer.features import FeatureConfig
        from jigsawpp.transfer.hog import HogConfig
        from jigsawpp.transfer.kmeans import KMeansConfig
        from jigsawpp.transfer.pipeline import RunConfig, TeacherSpec, run_transfer

        init_distributed()
        train_images = _images(data, split, list_file)
        val_images = None
        if val_split is not None or val_list_file is not None:
            val_images = _images(data, val_split, val_list_file)
        config = RunConfig(
            features=FeatureConfig.from_overrides({"workers": workers, **parse_sets(feature_sets)}),
            hog=HogConfig.from_overrides(parse_sets(hog_sets)),
            kmeans=KMeansConfig.from_overrides({"k": k, "normalize": normalize, **parse_sets(kmeans_sets)}),
            train=_train_config(iters, batch_size, sets, amp, workers), name=name)
        reports = run_transfer(TeacherSpec(model, str(caffemodel) if caffemodel else None, blob, variant,
                                           teacher_seed), train_images, out, val_images=val_images, config=config,
                               device=device, overwrite=overwrite,
                               say=lambda m: click.echo(f"… {m}", err=True) if is_main() else None)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if is_main():
        for r in reports:
            click.echo(f"  {r.name:<14} {'skipped' if r.skipped else f'{r.seconds:8.1f} s'}  {r.detail}")
