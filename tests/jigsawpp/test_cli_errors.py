"""Every command through a table of user mistakes: exit status != 0, exactly one `Error:` line that names what is
wrong, no traceback, and nothing written.

To cover a new command, add its rows to CASES (argv with placeholders, a fragment of the expected Error line);
`test_every_command_is_in_the_table` fails until every command listed by `jigsawpp --help` has at least one row.
Placeholders: {ws} a shared workspace of bad and good inputs (built once), {tmp} this case's empty folder, {ro} a
read-only folder (as root, whose writes the kernel does not refuse, writes under it are refused in-process).
"""

from __future__ import annotations

import builtins
import errno
import json
import os

import click
import pytest
from click.testing import CliRunner

import caffe_import
from jigsawpp.cli import main

SMALL_NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

CONVERT = ["convert", "--prototxt", "{ws}/small.prototxt", "--caffemodel", "{ws}/small.caffemodel"]
EXPORT = ["export", "--model", "{ws}/converted"]
DETECTION = ["eval", "detection", "--model", "{ws}/converted", "--voc", "{ws}/voc", "--quiet"]
VERIFY = ["verify", "--model", "{ws}/converted"]
CLASSIFICATION = ["eval", "classification", "--model", "{ws}/converted", "--voc", "{ws}/voc", "--quiet"]
SEGMENTATION = ["eval", "segmentation", "--model", "{ws}/converted", "--voc", "{ws}/voc", "--quiet"]
REPRODUCE = ["reproduce", "--model", "{ws}/converted", "--voc", "{ws}/voc", "--quiet"]
LINEAR = ["eval", "linear", "--model", "{ws}/converted", "--data", "{ws}/taken", "--dataset", "folder", "--quiet"]
NONLINEAR = ["eval", "nonlinear", "--model", "{ws}/converted", "--data", "{ws}/taken", "--freeze-upto", "conv3",
             "--quiet"]

# (id, argv, fragment of the one Error line)
CASES = [
    # convert, prototxt + caffemodel
    ("convert-truncated-caffemodel", ["convert", "--prototxt", "{ws}/small.prototxt", "--caffemodel",
                                      "{ws}/truncated.caffemodel", "--out", "{tmp}/out"], "truncated download"),
    ("convert-empty-caffemodel", ["convert", "--prototxt", "{ws}/small.prototxt", "--caffemodel",
                                  "{ws}/empty.caffemodel", "--out", "{tmp}/out"], "caffemodel is empty (0 bytes)"),
    ("convert-random-caffemodel", ["convert", "--prototxt", "{ws}/small.prototxt", "--caffemodel",
                                   "{ws}/random.caffemodel", "--out", "{tmp}/out"], "not a binary Caffe NetParameter"),
    ("convert-mismatched-prototxt", ["convert", "--prototxt", "{ws}/mismatch.prototxt", "--caffemodel",
                                     "{ws}/small.caffemodel", "--out", "{tmp}/out"],
     "layer 'conv1' (Convolution): blob 0 has shape (4, 3, 3, 3)"),
    ("convert-unknown-layer-type", ["convert", "--prototxt", "{ws}/unknown.prototxt", "--caffemodel",
                                    "{ws}/small.caffemodel", "--out", "{tmp}/out"], "prune it with --output BLOB"),
    ("convert-missing-output-blob", [*CONVERT, "--output", "nope", "--out", "{tmp}/out"],
     "requested output blob(s) ['nope'] do not exist"),
    ("convert-syntax-error", ["convert", "--prototxt", "{ws}/syntax.prototxt", "--caffemodel",
                              "{ws}/small.caffemodel", "--out", "{tmp}/out"],
     "syntax.prototxt:6: the '{' of layer[3] (name 'pool1') opened on line 6 is never closed"),
    ("convert-out-under-file", [*CONVERT, "--out", "{ws}/a_file/out"], "which is a file"),
    ("convert-out-not-empty", [*CONVERT, "--out", "{ws}/taken"], "pass --overwrite"),
    ("convert-out-read-only", [*CONVERT, "--out", "{ro}/out"], "permission denied"),
    ("convert-missing-prototxt", ["convert", "--prototxt", "{ws}/nope.prototxt", "--caffemodel",
                                  "{ws}/small.caffemodel", "--out", "{tmp}/out"], "does not exist"),
    # convert, release zip
    ("convert-release-truncated-zip", ["convert", "{ws}/truncated.zip", "--out", "{tmp}/out"], "truncated.zip"),
    ("convert-release-out-under-file", ["convert", "{ws}/release.zip", "--out", "{ws}/a_file/out"], "a_file"),
    ("convert-release-out-read-only", ["convert", "{ws}/release.zip", "--out", "{ro}/out"], "permission denied"),
    ("convert-release-out-not-empty", ["convert", "{ws}/release.zip", "--out", "{ws}/taken"], "--overwrite"),
    # info
    ("info-truncated-zip", ["info", "{ws}/truncated.zip"], "truncated.zip"),
    ("info-not-a-zip", ["info", "{ws}/random.caffemodel"], "not a readable zip archive"),
    ("info-missing-zip", ["info", "{ws}/nope.zip"], "does not exist"),
    # export
    ("export-empty-caffemodel", ["export", "--model", "{ws}/small.prototxt", "--caffemodel", "{ws}/empty.caffemodel",
                                 "--out", "{tmp}/m.onnx"], "caffemodel is empty"),
    ("export-random-caffemodel", ["export", "--model", "{ws}/small.prototxt", "--caffemodel",
                                  "{ws}/random.caffemodel", "--out", "{tmp}/m.onnx"], "not a binary Caffe"),
    ("export-not-a-converted-folder", ["export", "--model", "{ws}/taken", "--out", "{tmp}/m.onnx"],
     "expected deploy.prototxt and model.safetensors"),
    ("export-out-under-file", [*EXPORT, "--out", "{ws}/a_file/m.onnx"], "which is a file"),
    ("export-out-exists", [*EXPORT, "--out", "{ws}/a_file"], "pass --overwrite"),
    ("export-out-read-only", [*EXPORT, "--out", "{ro}/m.onnx"], "permission denied"),
    # demo (refused before any work)
    ("demo-out-under-file", ["demo", "--out", "{ws}/a_file/demo"], "which is a file"),
    ("demo-out-not-empty", ["demo", "--out", "{ws}/taken"], "pass --overwrite"),
    ("demo-out-read-only", ["demo", "--out", "{ro}/demo"], "permission denied"),
    ("demo-bad-device", ["demo", "--out", "{tmp}/demo", "--device", "gpu0"], "'gpu0' is not a torch device"),
    # eval detection (refused before any work)
    ("detection-not-a-voc-folder", [*DETECTION[:4], "--voc", "{ws}/taken", "--out", "{tmp}/out"],
     "is neither a VOCdevkit folder"),
    ("detection-model-not-converted", ["eval", "detection", "--model", "{ws}/taken", "--voc", "{ws}/voc",
                                       "--out", "{tmp}/out"], "manifest"),
    ("detection-out-under-file", [*DETECTION, "--out", "{ws}/a_file/out"], "which is a file"),
    ("detection-out-foreign-folder", [*DETECTION, "--out", "{ws}/taken"], "not an `eval detection` output folder"),
    ("detection-out-classification-run", [*DETECTION, "--out", "{ws}/cls_run"],
     "its config.json is from 'voc07_classification'"),
    ("detection-out-read-only", [*DETECTION, "--out", "{ro}/out"], "permission denied"),
    ("detection-unknown-setting", [*DETECTION, "--set", "max_iter=5", "--out", "{tmp}/out"], "max_iters"),
    ("detection-bad-device", [*DETECTION, "--device", "cuda:x", "--out", "{tmp}/out"], "is not a torch device"),
    # eval classification / segmentation (VOC07 classification, FCN)
    ("classification-not-a-voc-folder", ["eval", "classification", "--model", "{ws}/converted", "--voc", "{ws}/taken",
                                         "--out", "{tmp}/new/out", "--quiet"], "taken"),
    ("classification-out-under-file", [*CLASSIFICATION, "--out", "{ws}/a_file/out"], "which is a file"),
    ("classification-out-read-only", [*CLASSIFICATION, "--out", "{ro}/out"], "permission denied"),
    ("classification-out-foreign-folder", [*CLASSIFICATION, "--out", "{ws}/taken"],
     "not an `eval classification` output folder (no config.json)"),
    ("classification-out-detection-run", [*CLASSIFICATION, "--out", "{ws}/det_run"],
     "not an `eval classification` output folder (its config.json is from 'Fast R-CNN"),
    ("segmentation-out-foreign-folder", [*SEGMENTATION, "--out", "{ws}/voc"], "not an `eval segmentation` output"),
    ("segmentation-out-classification-run", [*SEGMENTATION, "--out", "{ws}/cls_run"], "not an `eval segmentation`"),
    ("classification-unknown-setting", [*CLASSIFICATION, "--set", "max_iter=5", "--out", "{tmp}/out"], "max_iter"),
    ("segmentation-out-under-file", [*SEGMENTATION, "--out", "{ws}/a_file/out"], "which is a file"),
    ("segmentation-out-read-only", [*SEGMENTATION, "--out", "{ro}/out"], "permission denied"),
    ("score-classification-missing-results", ["eval", "score-classification", "--voc", "{ws}/voc", "--results",
                                              "{ws}/taken"], "does not exist"),
    ("score-segmentation-no-segmentation-sets", ["eval", "score-segmentation", "--voc", "{ws}/voc", "--results",
                                                 "{ws}/taken"], "ImageSets/Segmentation"),
    # eval linear / nonlinear (frozen-feature classifiers)
    ("linear-not-an-alexnet", [*LINEAR, "--out", "{tmp}/out"], "is not a Caffe AlexNet/CaffeNet layout"),
    ("linear-out-under-file", [*LINEAR, "--out", "{ws}/a_file/out"], "which is a file"),
    ("linear-unknown-setting", [*LINEAR, "--set", "lr=0.1", "--out", "{tmp}/out"], "unknown key(s) ['lr']"),
    ("linear-bad-device", [*LINEAR, "--device", "cuda:x", "--out", "{tmp}/out"], "is not a torch device"),
    ("nonlinear-model-not-converted", [*NONLINEAR[:2], "--model", "{ws}/taken", *NONLINEAR[4:], "--out",
                                       "{tmp}/out"], "no manifest.json"),
    ("nonlinear-out-read-only", [*NONLINEAR, "--out", "{ro}/out"], "permission denied"),
    # eval score-detections
    ("score-missing-results-files", ["eval", "score-detections", "--voc", "{ws}/voc", "--results", "{ws}/taken"],
     "comp4_det_test_aeroplane.txt does not exist"),
    ("score-not-a-voc-folder", ["eval", "score-detections", "--voc", "{ws}/taken", "--results", "{ws}/taken"],
     "is neither a VOCdevkit folder"),
    # transfer (knowledge transfer by cluster classification)
    ("transfer-features-model-without-conv4", ["transfer", "features", "{ws}/converted", "--data", "{ws}/voc",
                                               "--out", "{tmp}/out"], "has no blob named conv4"),
    ("transfer-hog-not-an-image-folder", ["transfer", "hog", "--data", "{ws}/taken", "--out", "{tmp}/out"],
     "has no class folders"),
    ("transfer-cluster-not-a-feature-folder", ["transfer", "cluster", "{ws}/taken", "--out", "{tmp}/out"],
     "is it the --out folder of `jigsawpp transfer features`"),
    ("transfer-label-not-a-feature-folder", ["transfer", "label", "{ws}/taken", "{ws}/taken", "--out", "{tmp}/out"],
     "no manifest.json"),
    ("transfer-train-no-pseudo-labels", ["transfer", "train", "--labels", "{ws}/taken", "--data", "{ws}/taken",
                                         "--out", "{tmp}/out"], "has no train.npz"),
    ("transfer-regress-model-without-conv5", ["transfer", "regress", "{ws}/converted", "--data", "{ws}/voc",
                                              "--out", "{tmp}/out"], "requested output blob(s) ['conv5']"),
    ("transfer-run-not-an-image-folder", ["transfer", "run", "--teacher", "{ws}/converted", "--data", "{ws}/taken",
                                          "--out", "{tmp}/out"], "has no class folders"),
    # reproduce and report (refused before any job runs)
    ("reproduce-out-under-file", [*REPRODUCE, "--out", "{ws}/a_file/run"], "which is a file"),
    ("reproduce-out-foreign-folder", [*REPRODUCE, "--out", "{ws}/taken"], "holds no reproduce run"),
    ("reproduce-out-read-only", [*REPRODUCE, "--out", "{ro}/run"], "permission denied"),
    ("reproduce-unknown-setting", [*REPRODUCE, "--set", "cls.max_iter=5", "--out", "{tmp}/run"], "max_iter"),
    ("reproduce-unknown-job", [*REPRODUCE, "--only", "detection", "--out", "{tmp}/run"], "unknown job"),
    ("reproduce-bad-device", [*REPRODUCE, "--device", "gpu0", "--out", "{tmp}/run"], "is not a torch device"),
    ("reproduce-nothing-to-run", ["reproduce", "--model", "{ws}/converted", "--out", "{tmp}/run"], "nothing to run"),
    ("reproduce-model-not-converted", ["reproduce", "--model", "{ws}/taken", "--voc", "{ws}/voc", "--out",
                                       "{tmp}/run"], "manifest.json does not exist"),
    ("report-not-a-run", ["report", "{ws}/taken"], "is not a `jigsawpp reproduce --out` folder"),
    ("report-several-without-out", ["report", "{ws}/taken", "{ws}/voc"], "several runs need --out"),
    # pretext (Jigsaw++ training)
    ("pretext-permutations-impossible", ["pretext", "permutations", "--n", "10", "--min-hamming", "9", "--out",
                                         "{tmp}/p.bin"], "lower --min-hamming"),
    ("pretext-permutations-bad-file", ["pretext", "permutations", "--check", "{ws}/small.prototxt"],
     "not a permutation file"),
    ("pretext-show-not-an-image", ["pretext", "show", "{ws}/random.caffemodel", "--out", "{tmp}/p.png"],
     "OpenCV cannot decode it"),
    ("pretext-train-no-images", ["pretext", "train", "--data", "{ws}/taken", "--out", "{tmp}/out"], "no images"),
    ("pretext-eval-no-permutations", ["pretext", "eval", "--model", "{ws}/taken", "--data", "{ws}/taken"],
     "give --permutations FILE"),
    # verify
    ("verify-unknown-method", [*VERIFY, "--results", "{ws}/scores_this.json", "--method", "Jigsaw+++"],
     "not a row of the paper's tables; known rows: Supervised, CC+HOG"),
    ("verify-results-of-another-model", [*VERIFY, "--results", "{ws}/scores_other.json"],
     "not from --model"),
    ("verify-not-a-scores-file", [*VERIFY, "--results", "{ws}/small.prototxt"], "not a scores.json"),
    ("verify-unknown-result-kind", [*VERIFY, "--results", "{ws}/scores_kind.json"], "not one verify knows"),
    ("verify-model-not-converted", ["verify", "--model", "{ws}/taken", "--results", "{ws}/scores_this.json"],
     "manifest.json does not exist"),
]


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _leaf_commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def _command_of(argv: list[str]) -> tuple[str, ...]:
    return tuple(argv[:2]) if isinstance(main.commands.get(argv[0]), click.Group) else (argv[0],)


def test_every_command_is_in_the_table():
    covered = {_command_of(argv) for _, argv, _ in CASES}
    missing = [" ".join(path) for path in _leaf_commands(main) if path not in covered]
    assert not missing, f"add rows for {missing} to CASES"


@pytest.mark.parametrize("group", ["eval", "transfer", None])
def test_every_option_says_what_it_does(group):
    """`--help` of every command explains each option (a bare ``[default: 8]`` does not)."""
    root = main.commands[group] if group else main
    paths = [p for p in _leaf_commands(root) if group or not isinstance(main.commands[p[0]], click.Group)]
    silent = []
    for path in paths:
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[union-attr]
        silent += [f"{' '.join(path)} {max(p.opts, key=len)}" for p in command.params
                   if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not silent, f"options without help: {silent}"
    assert "classification" in main.commands["eval"].help and "segmentation" in main.commands["eval"].help


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, conv_caffemodel):
    from eval.detection.sample_data import make_sample_voc
    from jigsawpp.convert import convert_caffe, model_record
    from jigsawpp.fixtures import make_release_zip

    ws = tmp_path_factory.mktemp("ws")
    (ws / "small.prototxt").write_text(SMALL_NET)
    caffe_import.save_caffemodel(caffe_import.load(ws / "small.prototxt", seed=3), ws / "small.caffemodel")
    data = (ws / "small.caffemodel").read_bytes()
    (ws / "truncated.caffemodel").write_bytes(data[: len(data) // 3])
    (ws / "empty.caffemodel").write_bytes(b"")
    (ws / "random.caffemodel").write_bytes(os.urandom(4096))
    (ws / "mismatch.prototxt").write_text(SMALL_NET.replace("num_output: 4", "num_output: 6"))
    (ws / "unknown.prototxt").write_text(SMALL_NET.replace('"ReLU"', '"FancyReLU"'))
    (ws / "syntax.prototxt").write_text(SMALL_NET.replace("stride: 2 } }", "stride: 2 }"))
    (ws / "a_file").write_text("a file where a folder is expected\n")
    (ws / "taken").mkdir()
    (ws / "taken" / "keep.txt").write_text("the user's file\n")
    for run, protocol in (("cls_run", "voc07_classification"), ("det_run", "Fast R-CNN (rbgirshick/fast-rcnn@b612190), "
                                                                          "CaffeNet, PASCAL VOC")):
        (ws / run).mkdir()
        (ws / run / "config.json").write_text(json.dumps({"config": {}, "provenance": {"protocol": protocol}}))
    convert_caffe(ws / "small.prototxt", ws / "small.caffemodel", ws / "converted")
    make_release_zip(ws / "release.zip", "conv", layout="flat", caffemodel=conv_caffemodel, n_labels=30)
    zipped = (ws / "release.zip").read_bytes()
    (ws / "truncated.zip").write_bytes(zipped[: len(zipped) // 2])
    make_sample_voc(ws / "voc", labelme=False)
    record = model_record(ws / "converted")
    for name, model, extra in (("this", record, {}), ("other", {**record, "manifest_sha256": "0" * 64}, {}),
                               ("kind", record, {"kind": "tea_leaves"})):
        stamp = {"key": "k", "model": model}
        (ws / f"scores_{name}.json").write_text(json.dumps({"map_11point": 0.5, "provenance": {"fast_rcnn": stamp},
                                                            **extra}))
    return ws


@pytest.fixture()
def read_only(tmp_path, monkeypatch):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        prefix = str(folder) + os.sep

        def refuse(path) -> None:
            name = os.path.abspath(os.fspath(path))
            if name.startswith(prefix) or name == str(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

        real_mkdir, real_os_open, real_open = os.mkdir, os.open, builtins.open

        def mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)
    yield folder
    folder.chmod(0o755)


def _tree(*roots) -> set[str]:
    return {os.path.join(parent, name) for root in roots for parent, dirs, files in os.walk(root)
            for name in dirs + files}


@pytest.mark.parametrize(("argv", "fragment"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_user_mistake_is_one_error_line(argv, fragment, workspace, tmp_path, request):
    ro = request.getfixturevalue("read_only") if any("{ro}" in a for a in argv) else tmp_path / "unused"
    args = [a.format(ws=workspace, tmp=tmp_path, ro=ro) for a in argv]
    before = _tree(workspace, tmp_path)
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert fragment in errors[0], result.output
    assert "Traceback" not in result.output
    assert "%|" not in result.output  # refused before any progress bar starts
    assert _tree(workspace, tmp_path) == before  # nothing written, nothing left behind


def test_a_fork_field_warning_is_one_plain_line(workspace, tmp_path):
    (tmp_path / "fork.prototxt").write_text(SMALL_NET.replace("kernel_size: 3 weight_filler",
                                                              "kernel_size: 3 my_fork_field: 2 weight_filler"))
    result = CliRunner().invoke(main, ["convert", "--prototxt", str(tmp_path / "fork.prototxt"), "--caffemodel",
                                       str(workspace / "small.caffemodel"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "my_fork_field" in line]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Warning: {tmp_path / 'fork.prototxt'}: 1 field(s) unknown"), result.output
    assert result.stderr.splitlines() == lines  # no category name, no echoed source line


def test_a_bug_keeps_its_traceback_and_the_switch_shows_every_traceback(monkeypatch, workspace, tmp_path):
    """Errors raised by other libraries for reasons of their own are not dressed up as user mistakes."""
    import jigsawpp.convert

    def broken(*_args, **_kwargs):
        return {}["missing key"]  # a KeyError from our code, but not a sentence: a bug

    monkeypatch.setattr(jigsawpp.convert, "convert_caffe", broken)
    result = CliRunner().invoke(main, [*[a.format(ws=workspace) for a in CONVERT], "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, KeyError)
    monkeypatch.undo()
    monkeypatch.setenv("JIGSAWPP_TRACEBACK", "1")
    result = CliRunner().invoke(main, [*[a.format(ws=workspace) for a in CONVERT], "--out", str(workspace / "taken")])
    assert isinstance(result.exception, FileExistsError)


@pytest.mark.parametrize(("exc", "shown"), [
    (FloatingPointError("iteration 7: the loss is nan; lower the learning rate"), True),
    (ImportError("selective search needs cv2.ximgproc: pip install opencv-contrib-python-headless"), True),
    (KeyError("no variant 'x'; available: ['transfer_conv1s4']"), True),
    (KeyError("conv9"), False),  # a bare missing key is a bug
    (TypeError("unsupported operand"), False),
])
def test_what_our_code_raises_is_one_line_unless_it_is_a_bug(exc, shown, monkeypatch, workspace, tmp_path):
    import jigsawpp
    import jigsawpp.convert

    namespace: dict = {}
    source = compile("def convert_caffe(*args, **kwargs):\n    raise EXC\n",
                     os.path.join(os.path.dirname(jigsawpp.__file__), "convert.py"), "exec")  # a frame of ours
    exec(source, {"EXC": exc}, namespace)
    monkeypatch.setattr(jigsawpp.convert, "convert_caffe", namespace["convert_caffe"])
    result = CliRunner().invoke(main, [*[a.format(ws=workspace) for a in CONVERT], "--out", str(tmp_path / "o")])
    if shown:
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1
        message = exc.args[0]
        assert result.output.splitlines()[-1] == f"Error: {message}"
    else:
        assert result.exception is exc


def test_library_keywords_are_spelled_as_the_running_command_s_flags():
    from jigsawpp.cli.errors import user_message

    convert = main.commands["convert"]
    message = ("f.prototxt: pass the stages that select it (stages=[...], level= here; --stage, --level on the "
               "command line); prune with outputs=[...] or outputs=['fc7', 'prob'], allow_missing=True, overwrite=True")
    assert user_message(ValueError(message), convert) == (
        "f.prototxt: pass the stages that select it (--stage, --level); prune with --output BLOB or --output fc7 "
        "--output prob, --allow-missing, --overwrite")
    assert user_message(KeyError("unknown key 'x'"), None) == "unknown key 'x'"
    assert user_message(PermissionError(errno.EACCES, "Permission denied", "/r/o")) == (
        "/r/o: permission denied; check the permissions of that path, or choose another location.")
    assert "not_a_flag=True" in user_message(ValueError("pass not_a_flag=True"), convert)


def test_a_failed_atomic_write_names_the_output_not_its_staging_file():
    from jigsawpp.cli.errors import user_message

    def erofs(name: str, name2: str | None = None) -> OSError:
        return OSError(errno.EROFS, "Read-only file system", name, None, name2)

    assert user_message(erofs("/r/o/.scores.json.6952.2cd57ab5.tmp")) == (
        "/r/o/scores.json: read-only file system; choose another location.")
    assert user_message(erofs("/r/o/.m.onnx.partial-7268")) == "/r/o/m.onnx: read-only file system; choose another " \
                                                                "location."
    assert user_message(erofs("/r/o/.x.tmp", "/r/o/x")) == "/r/o/.x.tmp -> /r/o/x: read-only file system; choose " \
                                                           "another location."  # not a staging name of ours
    assert user_message(erofs("/r/o/.a.b.12.ff.tmp", "/r/o/a.b")) == (
        "/r/o/a.b: read-only file system; choose another location.")


@pytest.mark.parametrize("argv", [[*DETECTION, "--out", "{tmp}/out"], ["demo", "--out", "{tmp}/demo"],
                                  [*REPRODUCE, "--out", "{tmp}/run"]], ids=["detection", "demo", "reproduce"])
def test_cuda_on_a_machine_without_it_is_one_error_line(argv, monkeypatch, workspace, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [a.format(ws=workspace, tmp=tmp_path) for a in argv]
    before = _tree(workspace, tmp_path)
    result = CliRunner().invoke(main, [*args, "--device", "cuda"])
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, (result.exception, result.output)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "CUDA is not available" in errors[0], result.output
    assert _tree(workspace, tmp_path) == before


def test_a_training_command_continues_its_own_folder_only(tmp_path):
    from jigsawpp.cli.common import refuse_foreign_output
    from jigsawpp.outputs import OutputDirError

    run = tmp_path / "run"
    refuse_foreign_output(run, command="eval x", protocol="x", overwrite=False)  # new: fine
    run.mkdir()
    refuse_foreign_output(run, command="eval x", protocol="x", overwrite=False)  # empty: fine
    (run / "config.json").write_text(json.dumps({"config": {}, "provenance": {"protocol": "x"}}))
    refuse_foreign_output(run, command="eval x", protocol="x", overwrite=False)  # its own run: resumed
    with pytest.raises(OutputDirError, match="its config.json is from 'x'"):
        refuse_foreign_output(run, command="eval y", protocol="y", overwrite=False)
    refuse_foreign_output(run, command="eval y", protocol="y", overwrite=True)
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(OutputDirError, match="is not an evaluation's"):
        refuse_foreign_output(run, command="eval x", protocol="x", overwrite=False)


def test_an_error_in_a_dataloader_worker_is_its_own_one_line():
    """torch re-raises a worker's exception with the worker's traceback as the message; the line keeps the message."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from jigsawpp.cli.errors import user_message
    from jigsawpp.data import ImageReadError

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> torch.Tensor:
            raise ImageReadError(f"photos/{index}.jpg: truncated JPEG (no end-of-image marker);\nre-download it.")

    with pytest.raises(ImageReadError) as caught:
        list(DataLoader(Broken(), num_workers=1))
    assert "Original Traceback" in str(caught.value)  # what torch makes of it
    assert user_message(caught.value) == "photos/0.jpg: truncated JPEG (no end-of-image marker); re-download it."
    assert user_message(ValueError("Caught nothing here")) == "Caught nothing here"


def test_a_training_command_never_writes_into_a_folder_of_other_files(tmp_path):
    """pretext train into a folder of the user's photos: one Error line, nothing written beside them."""
    import shutil

    from jigsawpp.pretext.sample_run import packaged_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in packaged_photos()[:2]:
        shutil.copy(photo, photos / photo.name)
    (photos / "notes.txt").write_text("mine")
    mine = sorted(p.name for p in photos.iterdir())
    result = CliRunner().invoke(main, ["pretext", "train", "--data", str(photos), "--out", str(photos),
                                       "--max-iters", "1", "--device", "cpu", "--no-progress"])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "holds no earlier run to resume" in errors[0], result.output
    assert sorted(p.name for p in photos.iterdir()) == mine


def test_an_interrupted_training_command_says_where_it_resumes(monkeypatch, tmp_path):
    """Ctrl-C during training: besides click's "Aborted!", one line naming the iteration a re-run resumes from."""
    import jigsawpp.pretext.train as train_module
    from jigsawpp.engine.checkpoint import CHECKPOINT_DIR, LATEST

    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        (out / CHECKPOINT_DIR).mkdir(parents=True)
        (out / CHECKPOINT_DIR / LATEST).write_text(json.dumps({"checkpoint": "iter_0000050", "iteration": 50}))
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_pretext", interrupted)
    photos = tmp_path / "photos"
    photos.mkdir()
    from jigsawpp.pretext.sample_run import packaged_photos

    for photo in packaged_photos()[:2]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    result = CliRunner().invoke(main, ["pretext", "train", "--data", str(photos), "--out", str(out), "--device",
                                       "cpu", "--no-progress"])
    assert result.exit_code == 1 and "Aborted!" in result.output
    assert f"Interrupted: {out} keeps the checkpoint of iteration 50; re-run the same command" in result.output
    assert "Traceback" not in result.output



def test_resume_hints_name_the_checkpoint_or_the_reproduce_run(tmp_path):
    from jigsawpp.cli.errors import resume_hints

    run, plain, empty = tmp_path / "run", tmp_path / "det", tmp_path / "none"
    run.mkdir()
    (run / "reproduce.json").write_text("{}")
    (plain / "checkpoints").mkdir(parents=True)
    (plain / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": "iter_0000007", "iteration": 7}))
    hints = resume_hints([run, plain, empty])
    assert len(hints) == 2 and f"resume the reproduce run in {run}" in hints[0]
    assert hints[1].startswith(f"Interrupted: {plain} keeps the checkpoint of iteration 7")
