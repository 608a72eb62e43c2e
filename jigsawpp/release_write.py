"""Write one variant folder of a converted release: weights, deploy, ONNX, and the parity checks behind them.

Each variant is loaded by `caffe_import` from its deploy and the caffemodel's layers, rebuilt as a `CaffeAlexNet`
and checked against it on a seeded input; the ONNX export is checked in onnxruntime against PyTorch (conv-only
nets on a second, larger input too). A check that fails stops the conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffe_import.proto import caffe_pb2
from jigsawpp.constants import IMAGENET_MEAN_BGR
from jigsawpp.release_inspect import ReleaseInfo
from jigsawpp.release_scan import ReleaseError
from jigsawpp.release_variants import VariantPlan

__all__ = ["write_variant"]

PARITY_TOLERANCE = 1e-5   # CaffeAlexNet vs caffe_import on the same weights: same kernels, expect ~0


def _preprocessing(plan: VariantPlan, info: ReleaseInfo) -> dict[str, object]:
    mean = None
    source = ("assumed: the CaffeNet convention (BVLC models/bvlc_reference_caffenet), as the authors' transfer "
              "protocols use it; the release does not state it")
    for score in [s for s in info.prototxts if s.net is not None]:
        for lp in score.net.layer:
            if lp.HasField("transform_param") and len(lp.transform_param.mean_value):
                mean = [float(v) for v in lp.transform_param.mean_value]
                source = f"transform_param.mean_value of layer '{lp.name}' in {score.member}"
                break
        if mean:
            break
    if plan.role == "pretext":
        source = "MehdiNoroozi/JigsawPuzzleSolver train_val_cfn_jps++.prototxt (no mean_value)"
        if info.caffemodel is not None and info.caffemodel.kind != "cfn":
            source = ("assumed as for the CFN's towers (MehdiNoroozi/JigsawPuzzleSolver train_val_cfn_jps++.prototxt, "
                      "no mean_value): the release does not state how this single-tower net was fed")
        return {"channel_order": "BGR", "value_range": [0, 255], "mean_bgr": None, "input": "64x64 puzzle tile",
                "normalisation": "per tile: MVN across channels (zero mean, unit variance over C,H,W), then x50 "
                                 "(Power scale 50), as the CFN's mvn_i/scale_i layers do; not part of this deploy",
                "source": source}
    return {"channel_order": "BGR", "value_range": [0, 255], "mean_bgr": mean or list(IMAGENET_MEAN_BGR),
            "source": source}


def write_variant(plan: VariantPlan, info: ReleaseInfo, folder: Path, *, onnx: bool,
                  opset: int | None) -> dict[str, object]:
    import warnings

    import torch

    import caffe_import
    from jigsawpp.io import save_state_dict_file, sha256_file
    from jigsawpp.models import CaffeAlexNet, alexnet_config_from_prototxt, config_dict

    model = info.caffemodel
    assert model is not None
    config = alexnet_config_from_prototxt(plan.deploy_net, source=plan.deploy_source)
    weight_layers = [name for name in _weight_layer_names(plan.deploy_net)]
    weights = model.weights_for(weight_layers, collapsed=plan.collapsed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # caffe_import.load's steps, with the arrays lifted from the member's bytes (load reads only files)
        net = caffe_import.CaffeNet(caffe_import.build_graph(plan.deploy_net, phase="TEST", source=plan.deploy_source))
        net.weight_report = vars(caffe_import.load_weights(net, weights.net, strict=True, source=model.member,
                                                           lifted=weights.arrays))
        net.eval()
    alexnet = CaffeAlexNet.from_caffe_state(net.state_dict(), config).eval()
    side = config.input_size
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 255.0 - 128.0
    blobs = list(config.blob_names)
    with torch.inference_mode():
        ref = net(x, outputs=blobs)
        got = alexnet.blobs(x, blobs)
    err = max(float((got[b] - ref[b]).abs().max()) for b in blobs)
    scale = max(1.0, max(float(ref[b].abs().max()) for b in blobs))
    if err > PARITY_TOLERANCE * scale:
        raise ReleaseError(f"variant {plan.name}: CaffeAlexNet differs from caffe_import on {plan.deploy_source} by "
                           f"{err:.3g} (max |ref| {scale:.3g}); the deploy is not the AlexNet layout it appears to be.")
    folder.mkdir(parents=True)
    save_state_dict_file(alexnet.state_dict(), folder / "model.safetensors",
                         metadata={"format": "CaffeAlexNet state dict, keys = Caffe layer names",
                                   "variant": plan.name})
    (folder / "deploy.prototxt").write_text(plan.deploy_text, encoding="utf-8")
    files = {"weights": "model.safetensors", "prototxt": "deploy.prototxt"}
    onnx_record: dict[str, object] = {"skipped": "convert was run without ONNX export"}
    if onnx:
        onnx_record = _export_and_check(net, folder / "model.onnx", blobs[-1], config.fc6 is None, opset=opset,
                                        variant=plan.name)
        files["onnx"] = "model.onnx"
    used = set(weight_layers)
    view = model.collapsed if plan.collapsed else model.layers
    return {
        "role": plan.role,
        "for_transfer": plan.for_transfer,
        "conv1_stride": plan.conv1_stride,
        "deploy": {"source": plan.deploy_source, "why": plan.why, "patches": list(plan.patches),
                   "sha256": sha256_file(folder / "deploy.prototxt")},
        "weights_view": (f"tower _s{min(model.towers.towers)} of the CFN, renamed to conv1..conv5"
                         if plan.collapsed and model.towers else "layers as stored in the caffemodel"),
        "layers": weight_layers,
        "not_converted": [k for k in view if k not in used],
        "alexnet_config": config_dict(config),
        "input": {"data": [1, 3, side, side]},
        "outputs": {b: list(ref[b].shape) for b in blobs[-1:]},
        "files": files,
        "parity": {"caffe_alexnet_vs_caffe_import": {"max_abs_err": err, "max_abs_ref": scale, "blobs": blobs},
                   "onnx": onnx_record},
        "preprocessing": _preprocessing(plan, info),
        "load_notes": [str(w.message) for w in caught] + list(net.notes),
    }


def _export_and_check(net, path: Path, last_blob: str, any_size: bool, *, opset: int | None,
                      variant: str) -> dict[str, object]:
    """ONNX export, then onnxruntime vs PyTorch on the last AlexNet blob and the net outputs; conv-only nets (any
    input size) are also checked on a second, larger input."""
    import caffe_import

    caffe_import.export_onnx(net, path, opset=opset, dynamic=True)
    outputs = list(dict.fromkeys([last_blob, *net.output_names]))
    runs = {"export_size": caffe_import.check_onnx(net, path, outputs=outputs)}
    if any_size:
        (name, shape), = net.graph.input_shapes.items()
        bigger = (1, shape[1], shape[2] + 32, shape[3] + 32)
        feeds = {name: np.random.default_rng(1).normal(0.0, 50.0, bigger).astype(np.float32)}
        runs[f"second_size_{bigger[2]}"] = caffe_import.check_onnx(net, path, feeds, outputs=outputs)
    record: dict[str, object] = {"opset": opset or "default", "dynamic": True}
    for key, check in runs.items():
        if not check.passed():
            raise ReleaseError(f"variant {variant}: onnxruntime differs from PyTorch on the {key} input (max rel. "
                               f"error {check.worst_rel_err:.3g} > 1e-4).")
        record[key] = {"max_abs_err": check.max_abs_err, "max_rel_err": check.max_rel_err,
                       "shapes": {k: list(v) for k, v in check.shapes.items()}}
    first = runs["export_size"]
    record.update(provider=first.provider, notice=first.notice)
    return record


def _weight_layer_names(net: caffe_pb2.NetParameter) -> list[str]:
    from jigsawpp.release_scan import WEIGHT_TYPES

    return [lp.name for lp in net.layer if lp.type in WEIGHT_TYPES]
