"""Seeded stand-in weights for bundled nets: the demo and the tests build real caffemodels from them.

The released zips cannot be downloaded here, so every code path is exercised on caffemodels we write ourselves.
Weights are He-scaled Gaussians (std = sqrt(2 / fan_in), fan_in = count / shape[0] as Caffe's fillers compute it)
so that activations keep a sensible range through 8 layers, which makes parity checks meaningful; biases are
small constants.
"""

from __future__ import annotations

import functools
import math

import torch

import caffe_import


@torch.no_grad()
def randomize_weights(net: caffe_import.CaffeNet, *, seed: int = 0) -> caffe_import.CaffeNet:
    """Overwrite every Caffe blob of `net` with seeded values (shared params stay shared); returns `net`."""
    generator = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    for layer in net.layers_with_shapes:
        module = net.module_of(layer.name)
        for index, attr in enumerate(module.caffe_blobs):
            tensor = getattr(module, attr)
            if id(tensor) in done:
                continue
            done.add(id(tensor))
            if layer.type == "BatchNorm":
                if index == 2:
                    tensor.fill_(1.0)
                elif index == 1:
                    tensor.uniform_(0.5, 1.5, generator=generator)
                else:
                    tensor.normal_(0.0, 0.1, generator=generator)
            elif tensor.dim() >= 2:
                fan_in = tensor.numel() / tensor.shape[0]
                tensor.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            else:
                tensor.uniform_(-0.05, 0.05, generator=generator)
    return net


def seeded_caffemodel(prototxt, path, *, seed: int = 0) -> caffe_import.CaffeNet:
    """Load `prototxt` with seeded weights and write them to `path` as a caffemodel; returns the net."""
    net = randomize_weights(caffe_import.load(prototxt), seed=seed)
    caffe_import.save_caffemodel(net, path)
    return net


# -- release-shaped zips ----------------------------------------------------------------------------------------------
# The five release zips cannot be downloaded here, and their layout is undocumented; these stand-ins hold what the
# project page says a zip holds (a caffemodel, deploy prototxt(s), train/val pseudo-labels) in several layouts and
# label formats, so that the content-based finder in jigsawpp.release is exercised for real. Never commit the output.

S2_FC_DEPLOY = "generated:alexnet_conv1s2_fc"   # `alexnet_conv1s2_fc_prototxt()`, not a bundled file
S4_FC_DEPLOY = "generated:alexnet_conv1s4_fc"   # the bundled alexnet/deploy_conv1s4.prototxt with other fc sizes
GENERATED_DEPLOYS = {S2_FC_DEPLOY: "deploy_conv1s2_fc.prototxt", S4_FC_DEPLOY: "deploy_conv1s4_fc.prototxt"}
RELEASE_KINDS = {
    # kind: (prototxt the caffemodel is written from, default release name, number of clusters)
    "jigsawpp": ("jigsawpp/cfn_deploy.prototxt", "jigsawpp", 2000),     # 9-tower CFN, conv1 stride 2 (~320 MB)
    "cc": ("alexnet/deploy_conv1s4.prototxt", "jigsawpp_acc", 2000),    # CC AlexNet, fc8 2000 (~250 MB)
    "conv": ("alexnet/conv_conv1s4.prototxt", "release", 2000),         # conv layers only (~9 MB): cheap tests
    # one AlexNet tower trained at conv1 stride 2 on 64-px tiles, fc6 reading its 3x3 pool5 (~140 MB with fc 4096)
    "alexnet_s2": (S2_FC_DEPLOY, "jigsawpp", 2000),
}
# The deploys each kind's zip holds, by member role: the stride-2 one (with fc layers for alexnet_s2) and the
# conv-only stride-4 one the paper transfers, or the caffemodel's own full deploy.
_KIND_DEPLOYS = {"jigsawpp": {"deploy_pretext": "jigsawpp/cfn_deploy.prototxt",
                              "deploy_transfer": "alexnet/conv_conv1s4.prototxt"},
                 "alexnet_s2": {"deploy_pretext": S2_FC_DEPLOY, "deploy_transfer": "alexnet/conv_conv1s4.prototxt"}}
RELEASE_LAYOUTS = ("flat", "nested", "split", "odd_names")
LABEL_FORMATS = {"txt": ".txt", "tsv": ".tsv", "csv": ".csv", "labels_only": ".txt", "npy": ".npy", "npz": ".npz",
                 "txt.gz": ".txt.gz"}
_SOLVER = 'net: "train_val.prototxt"\nbase_lr: 0.01\nlr_policy: "step"\nmax_iter: 350000\nsolver_mode: GPU\n'
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


def alexnet_conv1s2_fc_prototxt(*, fc_sizes: tuple[int, int, int] = (4096, 4096, 2000)) -> str:
    """Deploy of one AlexNet tower trained at conv1 stride 2: the bundled 64-px tile net
    (alexnet/deploy_conv1s2.prototxt, pool5 256x3x3) followed by fc6 (2304 inputs), fc7, fc8 with ReLU and Dropout
    and a Softmax, as the bundled stride-4 deploy has them; `fc_sizes` = num_output of fc6, fc7, fc8."""
    import prototxt

    text = prototxt.path("alexnet/deploy_conv1s2.prototxt").read_text(encoding="utf-8")
    text = text.replace('name: "AlexNet_conv1s2_tile"', 'name: "AlexNet_conv1s2_fc"', 1)
    head, bottom = [], "pool5"
    for i, size in zip((6, 7, 8), fc_sizes):
        head.append(f'layer {{\n  name: "fc{i}"\n  type: "InnerProduct"\n  bottom: "{bottom}"\n  top: "fc{i}"\n'
                    f'  inner_product_param {{\n    num_output: {size}\n  }}\n}}\n')
        if i < 8:
            head.append(f'layer {{\n  name: "relu{i}"\n  type: "ReLU"\n  bottom: "fc{i}"\n  top: "fc{i}"\n}}\n'
                        f'layer {{\n  name: "drop{i}"\n  type: "Dropout"\n  bottom: "fc{i}"\n  top: "fc{i}"\n'
                        '  dropout_param {\n    dropout_ratio: 0.5\n  }\n}\n')
        bottom = f"fc{i}"
    head.append('layer {\n  name: "prob"\n  type: "Softmax"\n  bottom: "fc8"\n  top: "prob"\n}\n')
    return text.rstrip("\n") + "\n" + "".join(head)


def release_prototxt_text(name: str, *, fc_sizes: tuple[int, int, int] = (4096, 4096, 2000)) -> str:
    """The text of a bundled prototxt `name`, or of a generated AlexNet deploy with fc layers of `fc_sizes`:
    S2_FC_DEPLOY (stride 2, 64-px tile) or S4_FC_DEPLOY (the bundled stride-4 deploy, fc num_output replaced)."""
    from google.protobuf import text_format

    import prototxt

    if name == S2_FC_DEPLOY:
        return alexnet_conv1s2_fc_prototxt(fc_sizes=fc_sizes)
    if name == S4_FC_DEPLOY:
        net = caffe_import.read_prototxt(prototxt.path("alexnet/deploy_conv1s4.prototxt"))
        for lp in net.layer:
            if lp.name in ("fc6", "fc7", "fc8"):
                lp.inner_product_param.num_output = fc_sizes[int(lp.name[2]) - 6]
        return text_format.MessageToString(net)
    return prototxt.path(name).read_text(encoding="utf-8")


def write_release_caffemodel(kind: str, path, *, seed: int = 0, fc_sizes: tuple[int, int, int] = (4096, 4096, 2000)):
    """Write the caffemodel of a stand-in release of `kind` (see RELEASE_KINDS); returns its path. `fc_sizes`:
    num_output of fc6, fc7, fc8 for the alexnet_s2 kind (small ones make small test files)."""
    import warnings
    from pathlib import Path

    text = release_prototxt_text(RELEASE_KINDS[kind][0], fc_sizes=fc_sizes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded_caffemodel(caffe_import.read_prototxt_string(text), path, seed=seed)
    return Path(path)


def release_pseudo_labels(split: str, count: int, *, clusters: int, seed: int = 0):
    """(names, labels) like ImageNet lists: train `n<wnid>/n<wnid>_<i>.JPEG`, val `ILSVRC2012_val_<i>.JPEG`."""
    import numpy as np

    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    if split == "train":
        wnids = rng.choice(np.arange(1440764, 15075141), size=8, replace=False)
        names = [f"n{w:08d}/n{w:08d}_{rng.integers(1, 99999)}.JPEG" for w in rng.choice(wnids, size=count)]
    else:
        names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(count)]
    return names, rng.integers(0, clusters, size=count).astype("int32")


def encode_labels(names, labels, label_format: str) -> bytes:
    """A label file in `label_format` (see LABEL_FORMATS)."""
    import gzip
    import io

    import numpy as np

    if label_format in ("txt", "txt.gz"):
        data = "".join(f"{n} {int(y)}\n" for n, y in zip(names, labels)).encode()
        return gzip.compress(data, mtime=0) if label_format == "txt.gz" else data
    if label_format == "tsv":
        return "".join(f"{n}\t{int(y)}\n" for n, y in zip(names, labels)).encode()
    if label_format == "csv":
        return ("image,cluster\n" + "".join(f"{n},{int(y)}\n" for n, y in zip(names, labels))).encode()
    if label_format == "labels_only":
        return "".join(f"{int(y)}\n" for y in labels).encode()
    buffer = io.BytesIO()
    if label_format == "npy":
        np.save(buffer, np.asarray(labels, dtype=np.int32))
    elif label_format == "npz":
        np.savez(buffer, paths=np.asarray(names), clusters=np.asarray(labels, dtype=np.int32))
    else:
        raise ValueError(f"unknown label format {label_format!r}; known: {sorted(LABEL_FORMATS)}")
    return buffer.getvalue()


@functools.lru_cache(maxsize=4)
def permutation_table_bin(count: int = 701, *, seed: int = 0) -> bytes:
    """The authors' permutation file format (int32 LE header [N, 9], then N*9 1-based tile indices) holding a
    Jigsaw++ set as the authors' file is one: `generate_permutations(count, min_hamming=3)`, so `jigsawpp info` reports
    what it would for theirs (minimum distance 3, no identity; their rows themselves cannot be rebuilt, see
    `jigsawpp.permutations`)."""
    from jigsawpp.permutations import encode_permutations_bin, generate_permutations

    return encode_permutations_bin(generate_permutations(count, min_hamming=3, seed=seed))


def make_release_zip(path, kind: str = "cc", *, layout: str = "nested", label_format: str = "txt", seed: int = 0,
                     caffemodel=None, n_labels: int = 300, release: str | None = None, deploys=None,
                     fc_sizes: tuple[int, int, int] = (4096, 4096, 2000)) -> dict[str, object]:
    """Write a release-shaped zip; returns {"path", "members": {role: name}, "labels": {split: (names, labels)}}.

    caffemodel: an existing caffemodel of this kind to pack (from `write_release_caffemodel`, with the same
    `fc_sizes`); written beside `path` and deleted afterwards when None. `layout` moves the files around
    (RELEASE_LAYOUTS) so that nothing can be found by a fixed path: flat; nested folders with macOS metadata;
    deploy and caffemodel in different folders with unrelated prototxts and a solver; odd names (no .caffemodel
    extension, deploy as .txt). deploys: the deploys to pack instead of the kind's own, as bundled prototxt names
    or GENERATED_DEPLOYS; each is stored under its base name and listed in "members" under the name given.
    """
    import zipfile
    from pathlib import Path

    if kind not in RELEASE_KINDS:
        raise ValueError(f"unknown release kind {kind!r}; known: {sorted(RELEASE_KINDS)}")
    if layout not in RELEASE_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {RELEASE_LAYOUTS}")
    path = Path(path)
    source, default_name, clusters = RELEASE_KINDS[kind]
    top = release or default_name
    own = caffemodel is None
    weights = Path(caffemodel) if caffemodel else write_release_caffemodel(kind, path.with_suffix(".caffemodel"),
                                                                           seed=seed, fc_sizes=fc_sizes)
    text = {name: release_prototxt_text(name, fc_sizes=fc_sizes) for name in
            (source, "alexnet/conv_conv1s4.prototxt", "caffenet/deploy.prototxt", "vgg16/deploy.prototxt")}
    ext = LABEL_FORMATS[label_format]
    folder = {"flat": ("", "", "", ""), "nested": (f"{top}/model/", f"{top}/model/", f"{top}/pseudo_labels/", ""),
              "split": (f"{top}/weights/", f"{top}/prototxt/", f"{top}/lists/", f"{top}/prototxt/extra/"),
              "odd_names": (f"{top}/", f"{top}/", f"{top}/", "")}[layout]
    odd = layout == "odd_names"
    members: dict[str, str] = {"caffemodel": folder[0] + (f"{top}_iter_350000" if odd else f"{top}.caffemodel")}
    files: dict[str, bytes] = {}
    if deploys is not None:
        for name in deploys:
            base = GENERATED_DEPLOYS.get(name, name.rsplit("/", 1)[-1])
            members[name] = folder[1] + base
            files[members[name]] = release_prototxt_text(name, fc_sizes=fc_sizes).encode()
    elif kind in _KIND_DEPLOYS:
        odd_names = {"deploy_pretext": "cfn_net.txt" if kind == "jigsawpp" else "tile_net.txt",
                     "deploy_transfer": "transfer_net.txt"}
        plain = {"deploy_pretext": "deploy_cfn_conv1s2.prototxt" if kind == "jigsawpp" else
                 "deploy_conv1s2.prototxt", "deploy_transfer": "deploy_conv1s4.prototxt"}
        for role, name in _KIND_DEPLOYS[kind].items():
            members[role] = folder[1] + (odd_names[role] if odd else plain[role])
            files[members[role]] = release_prototxt_text(name, fc_sizes=fc_sizes).encode()
    else:
        members["deploy"] = folder[1] + ("net_definition.txt" if odd else "deploy.prototxt")
        files[members["deploy"]] = text[source].encode()
    if kind == "jigsawpp":
        members["permutations"] = folder[1] + "permutations_701.bin"
        files[members["permutations"]] = permutation_table_bin(701, seed=seed)
    labels = {}
    for split in ("train", "val"):
        names, ys = release_pseudo_labels(split, n_labels if split == "train" else n_labels // 3, clusters=clusters,
                                          seed=seed)
        labels[split] = (names, ys)
        members[f"labels_{split}"] = folder[2] + (f"imagenet_{split}_clusters{ext}" if odd else f"{split}{ext}")
        files[members[f"labels_{split}"]] = encode_labels(names, ys, label_format)
    if layout == "nested":
        files[f"__MACOSX/{top}/model/._{top}.caffemodel"] = _APPLEDOUBLE
        files[f"{top}/README.txt"] = b"Pre-trained model and ImageNet pseudo labels (stand-in written by jigsawpp).\n"
    if layout == "split":
        files[folder[3] + "caffenet_deploy.prototxt"] = text["caffenet/deploy.prototxt"].encode()
        files[folder[3] + "vgg16_deploy.prototxt"] = text["vgg16/deploy.prototxt"].encode()
        files[folder[1] + "solver.prototxt"] = _SOLVER.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(weights, members["caffemodel"], compress_type=zipfile.ZIP_STORED)
            for name, data in files.items():
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    finally:
        if own:
            weights.unlink(missing_ok=True)
    return {"path": path, "members": members, "labels": labels}
