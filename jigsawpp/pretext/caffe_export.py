"""A trained context-free network as the authors released theirs: a 9-tower caffemodel plus deploys, in a zip.

`cfn_deploy` builds the inference net of `train_val_cfn_jps++.prototxt@d18dace` (inputs data_1..data_9, per tile
MVN + Power 50, towers `<layer>_s{i}` sharing their blobs through the param names `<layer>_w`/`<layer>_b` and
`fc6s_w`/`fc6s_b`, concat, fc7, fc8, prob); for the AlexNet CFN it is the bundled `jigsawpp/cfn_deploy.prototxt`
with fc8 sized to the permutation set. `write_cfn_caffemodel` fills that net (`caffe_import.load`) with the trained
weights and writes it with `caffe_import.save_caffemodel`, so every tower gets its copy of the shared blobs as Caffe
writes them, and the authors' Caffe fork or any Caffe-compatible reader can load it.

`write_release_zip` packs, like the authors' `jigsawpp.zip`: the caffemodel, the CFN deploy (conv1 stride 2, 64-px
tiles), for AlexNet the stride-4 transfer deploy of the conv layers (`alexnet/conv_conv1s4.prototxt`), and the
permutation file. `jigsawpp convert ZIP --out DIR` then reads it like the release: tower collapse, the
`pretext_conv1s2` and `transfer_conv1s4` variants, and `jigsawpp.models.from_release(DIR, "transfer")` for every
evaluation. `jigsawpp convert --prototxt deploy_cfn_conv1s2.prototxt --caffemodel X.caffemodel` reads the whole CFN.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

import prototxt as bundled
from caffe_import.proto import caffe_pb2
from jigsawpp.pretext.networks import VGG16_BLOCKS, CFNConfig, ContextFreeNetwork

TRANSFER_DEPLOY = "alexnet/conv_conv1s4.prototxt"   # conv1 stride 4, conv layers only: what the paper transfers
CFN_DEPLOY_NAME = "deploy_cfn_conv1s2.prototxt"
TRANSFER_DEPLOY_NAME = "deploy_conv1s4.prototxt"
PERMUTATIONS_NAME = "permutations.bin"


@dataclass(frozen=True)
class ReleaseZip:
    path: Path
    members: dict[str, str]     # role -> member name
    caffemodel_bytes: int


def _conv(net: caffe_pb2.NetParameter, name: str, bottom: str, out: int, kernel: int, *, stride: int = 1,
          pad: int = 0, group: int = 1, shared: str) -> None:
    lp = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
    lp.param.add(name=f"{shared}_w")
    lp.param.add(name=f"{shared}_b")
    p = lp.convolution_param
    p.num_output = out
    p.kernel_size.append(kernel)
    if stride != 1:
        p.stride.append(stride)
    if pad:
        p.pad.append(pad)
    if group != 1:
        p.group = group
    net.layer.add(name=name.replace("conv", "relu", 1), type="ReLU", bottom=[name], top=[name])


def _pool(net: caffe_pb2.NetParameter, name: str, bottom: str, kernel: int, stride: int) -> None:
    lp = net.layer.add(name=name, type="Pooling", bottom=[bottom], top=[name])
    lp.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
    lp.pooling_param.kernel_size = kernel
    lp.pooling_param.stride = stride


def _lrn(net: caffe_pb2.NetParameter, name: str, bottom: str) -> None:
    lp = net.layer.add(name=name, type="LRN", bottom=[bottom], top=[name])
    lp.lrn_param.local_size, lp.lrn_param.alpha, lp.lrn_param.beta = 5, 1e-4, 0.75


def _alexnet_tower(net: caffe_pb2.NetParameter, bottom: str, s: str) -> str:
    _conv(net, f"conv1{s}", bottom, 96, 11, stride=2, shared="conv1")
    _pool(net, f"pool1{s}", f"conv1{s}", 3, 2)
    _lrn(net, f"norm1{s}", f"pool1{s}")
    _conv(net, f"conv2{s}", f"norm1{s}", 256, 5, pad=2, group=2, shared="conv2")
    _pool(net, f"pool2{s}", f"conv2{s}", 3, 2)
    _lrn(net, f"norm2{s}", f"pool2{s}")
    _conv(net, f"conv3{s}", f"norm2{s}", 384, 3, pad=1, shared="conv3")
    _conv(net, f"conv4{s}", f"conv3{s}", 384, 3, pad=1, group=2, shared="conv4")
    _conv(net, f"conv5{s}", f"conv4{s}", 256, 3, pad=1, group=2, shared="conv5")
    _pool(net, f"pool5{s}", f"conv5{s}", 3, 2)
    return f"pool5{s}"


def _vgg16_tower(net: caffe_pb2.NetParameter, bottom: str, s: str) -> str:
    for block, widths in enumerate(VGG16_BLOCKS, start=1):
        for layer, width in enumerate(widths, start=1):
            name = f"conv{block}_{layer}"
            _conv(net, f"{name}{s}", bottom, width, 3, pad=1, shared=name)
            bottom = f"{name}{s}"
        _pool(net, f"pool{block}{s}", bottom, 2, 2)
        bottom = f"pool{block}{s}"
    return bottom


def _inner_product(net: caffe_pb2.NetParameter, name: str, bottom: str, out: int, *, shared: str | None = None,
                   relu_dropout: float | None = None) -> None:
    lp = net.layer.add(name=name, type="InnerProduct", bottom=[bottom], top=[name])
    if shared:
        lp.param.add(name=f"{shared}_w")
        lp.param.add(name=f"{shared}_b")
    lp.inner_product_param.num_output = out
    if relu_dropout is not None:
        suffix = name[2:]  # fc6_s1 -> 6_s1
        net.layer.add(name=f"relu{suffix}", type="ReLU", bottom=[name], top=[name])
        drop = net.layer.add(name=f"drop{suffix}", type="Dropout", bottom=[name], top=[name])
        drop.dropout_param.dropout_ratio = relu_dropout


def cfn_deploy(config: CFNConfig, *, batch: int = 1) -> caffe_pb2.NetParameter:
    """The 9-tower inference net (see the module docstring); inputs data_1..data_9 of (batch, 3, T, T)."""
    c = config
    net = caffe_pb2.NetParameter(name=f"CFN_jps++_{c.arch}_deploy")
    inputs = net.layer.add(name="input", type="Input", top=[f"data_{i}" for i in range(1, c.tiles + 1)])
    for _ in range(c.tiles):
        inputs.input_param.shape.add(dim=[batch, 3, c.tile_size, c.tile_size])
    tower = _alexnet_tower if c.arch == "alexnet" else _vgg16_tower
    for i in range(1, c.tiles + 1):
        mvn = net.layer.add(name=f"mvn_{i}", type="MVN", bottom=[f"data_{i}"], top=[f"mvn_{i}"])
        mvn.mvn_param.across_channels = True
        power = net.layer.add(name=f"scale_{i}", type="Power", bottom=[f"mvn_{i}"], top=[f"scale_{i}"])
        power.power_param.scale = c.tile_scale
        top = tower(net, f"scale_{i}", f"_s{i}")
        _inner_product(net, f"fc6_s{i}", top, c.fc6, shared="fc6s", relu_dropout=c.dropout)
    concat = net.layer.add(name="concat", type="Concat", bottom=[f"fc6_s{i}" for i in range(1, c.tiles + 1)],
                           top=["concat"])
    concat.concat_param.axis = 1
    _inner_product(net, "fc7", "concat", c.fc7, relu_dropout=c.dropout)
    _inner_product(net, "fc8", "fc7", c.num_classes)
    net.layer.add(name="prob", type="Softmax", bottom=["fc8"], top=["prob"])
    return net


def deploy_text(net: caffe_pb2.NetParameter, header: str) -> str:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + text_format.MessageToString(net)


@torch.no_grad()
def cfn_caffe_net(model: ContextFreeNetwork):
    """A `caffe_import.CaffeNet` of `cfn_deploy(model.config)` holding the model's weights."""
    import caffe_import

    net = caffe_import.load(cfn_deploy(model.config), seed=0)
    blobs = model.caffe_blobs()
    missing = []
    for layer in net.layers_with_shapes:
        module = net.module_of(layer.name)
        if not module.caffe_blobs:
            continue
        if layer.name not in blobs:
            missing.append(layer.name)
            continue
        for attr, value in zip(module.caffe_blobs, blobs[layer.name]):
            target = getattr(module, attr)
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"layer {layer.name}: the deploy's blob is {tuple(target.shape)}, the model's "
                                 f"{tuple(value.shape)}.")
            target.copy_(value.detach().to(target.device, target.dtype))
    if missing:
        raise ValueError(f"the CFN deploy has weight layers the model lacks: {missing}.")
    return net


def write_cfn_caffemodel(model: ContextFreeNetwork, path: str | os.PathLike[str]) -> Path:
    """Write the model as the authors' 9-tower caffemodel (atomically, by caffe_import's writer)."""
    import caffe_import

    return caffe_import.save_caffemodel(cfn_caffe_net(model), path)


def write_release_zip(model: ContextFreeNetwork, perms: np.ndarray, path: str | os.PathLike[str], *,
                      name: str | None = None, note: str = "") -> ReleaseZip:
    """Write `path` (a stored zip, renamed into place when complete) holding `<name>/<name>.caffemodel`, the CFN
    deploy, the AlexNet transfer deploy (AlexNet only) and `permutations.bin`; returns what was written."""
    from jigsawpp.io import atomic_path
    from jigsawpp.permutations import encode_permutations_bin

    path = Path(path)
    c = model.config
    name = name or f"jigsawpp_{c.arch}"
    if len(perms) > c.num_classes:
        raise ValueError(f"fc8 has {c.num_classes} outputs but the permutation set has {len(perms)} rows.")
    members = {"caffemodel": f"{name}/{name}.caffemodel", "deploy_pretext": f"{name}/{CFN_DEPLOY_NAME}",
               "permutations": f"{name}/{PERMUTATIONS_NAME}"}
    header = (f"Jigsaw++ context-free network ({c.arch} towers, conv1 stride 2 for AlexNet), {c.tiles} tiles of "
              f"{c.tile_size} px, fc8 {c.num_classes} = permutations in {PERMUTATIONS_NAME}.\n"
              "Written by jigsawpp. Inputs data_1..data_9: the tiles in slot order, BGR 0..255, no mean (each tile "
              "is normalised by its MVN + Power layers).\n" + note)
    files = {members["deploy_pretext"]: deploy_text(cfn_deploy(c), header).encode(),
             members["permutations"]: encode_permutations_bin(perms)}
    if c.arch == "alexnet":
        members["deploy_transfer"] = f"{name}/{TRANSFER_DEPLOY_NAME}"
        files[members["deploy_transfer"]] = bundled.path(TRANSFER_DEPLOY).read_bytes()
    fd, tmp = atomic_path(path)
    os.close(fd)
    caffemodel = tmp.with_name(tmp.name + ".caffemodel")
    try:
        write_cfn_caffemodel(model, caffemodel)
        size = caffemodel.stat().st_size
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.write(caffemodel, members["caffemodel"])
            for member, data in files.items():
                archive.writestr(member, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        caffemodel.unlink(missing_ok=True)
    return ReleaseZip(path, members, size)
