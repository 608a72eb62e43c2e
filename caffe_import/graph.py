"""An immutable, phase-filtered, SSA-named view of a Caffe net.

Caffe resolves each bottom to the latest preceding top of that name in layer order (BVLC `src/caffe/net.cpp`
`Init`, `src/caffe/util/insert_splits.cpp`), so in-place layers (`relu1` with bottom == top == conv1) create a
new *version* of a blob. We give every version its own SSA name (`conv1`, `conv1#1`, ...) once, here, so that
converters see clean bottoms/tops and a consumer listed before an in-place layer sees the value before it.

Caffe itself refuses one such case ("Top blob 'conv' produced by multiple sources"): an in-place layer on a blob
that another layer already consumed. We accept it with OpenCV's reading and warn.

Phase rules follow `Net::StateMeetsRule` / `FilterNet`: a layer with `include` rules is kept when any rule
matches the net state, and dropped when any `exclude` rule matches.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from caffe_import.errors import CaffeImportError, CaffeImportWarning
from caffe_import.proto import caffe_pb2

Shape = tuple[int, ...]

# Layers that only exist to feed or score training; a deploy graph drops them (with a note).
DATA_LAYER_TYPES = frozenset({
    "Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "AnnotatedData", "VideoData", "MergeData",
})
TRAIN_ONLY_TYPES = frozenset({
    "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "SmoothL1Loss", "HingeLoss", "InfogainLoss",
    "ContrastiveLoss", "MultinomialLogisticLoss", "Accuracy", "HDF5Output", "MultiBoxLoss",
})


@dataclass(frozen=True)
class Layer:
    """One Caffe layer with SSA bottoms/tops. `blob_tops` keep the Caffe names (what pycaffe's `net.blobs` uses)."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    blob_bottoms: tuple[str, ...]
    blob_tops: tuple[str, ...]
    param: caffe_pb2.LayerParameter
    in_shapes: tuple[Shape, ...] = ()
    phase: str = "TEST"

    def where(self) -> str:
        return f"layer '{self.name}' ({self.type})"


@dataclass(frozen=True)
class Graph:
    """Layers in file order plus the SSA bookkeeping the runtime needs."""

    name: str
    layers: tuple[Layer, ...]
    inputs: tuple[str, ...]                 # Caffe blob names of net inputs, in declaration order
    input_shapes: dict[str, Shape]
    outputs: tuple[str, ...]                # Caffe blob names of net outputs
    final_version: dict[str, str]           # Caffe blob name -> SSA name of its last version
    notes: tuple[str, ...] = field(default=())

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named '{name}' in net '{self.name}'")


def _rule_met(rule: caffe_pb2.NetStateRule, phase: int, level: int, stages: Sequence[str]) -> bool:
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, phase: str, level: int = 0, stages: Sequence[str] = ()) -> bool:
    """Caffe's `Net::FilterNet` decision for one layer."""
    phase_value = caffe_pb2.Phase.Value(phase)
    if len(layer.include) and len(layer.exclude):
        raise CaffeImportError(f"layer '{layer.name}' specifies both include and exclude rules; Caffe refuses that.")
    if len(layer.include):
        return any(_rule_met(rule, phase_value, level, stages) for rule in layer.include)
    return not any(_rule_met(rule, phase_value, level, stages) for rule in layer.exclude)


def _is_data_layer(layer: caffe_pb2.LayerParameter) -> bool:
    if layer.type in DATA_LAYER_TYPES:
        return True
    # Python data layers (FCN's VOCSegDataLayer, Fast R-CNN's RoIDataLayer) have tops but no bottoms.
    return layer.type == "Python" and not len(layer.bottom)


def build_graph(
    net: caffe_pb2.NetParameter,
    *,
    phase: str = "TEST",
    outputs: Iterable[str] | None = None,
    inputs: dict[str, Shape] | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
    source: str = "<net>",
) -> Graph:
    """Filter by phase, drop data/loss layers, SSA-rename, and prune to `outputs` (Caffe blob names) if given.

    `inputs` declares extra input blobs (name -> shape), cutting the net there: this turns a train_val net into a
    deploy one (e.g. declare `data_1` of the Jigsaw++ training net as an input to skip its data pipeline).
    """
    if phase not in ("TEST", "TRAIN"):
        raise CaffeImportError(f"phase must be 'TEST' or 'TRAIN', not {phase!r}.")
    declared = dict(inputs or {})
    notes: list[str] = []
    version: dict[str, str] = {}           # Caffe blob -> current SSA name
    consumed: set[str] = set()             # SSA names read by some kept layer
    unavailable: set[str] = set()          # Caffe blobs produced only by dropped layers
    input_names: list[str] = []
    input_shapes: dict[str, Shape] = {}
    kept: list[Layer] = []
    counts: dict[str, int] = {}

    def new_version(blob: str) -> str:
        n = counts.get(blob, 0)
        counts[blob] = n + 1
        return blob if n == 0 else f"{blob}#{n}"

    for name, shape in declared.items():
        version[name] = new_version(name)
        input_names.append(name)
        input_shapes[name] = tuple(int(d) for d in shape)

    seen_names: set[str] = set()
    for lp in net.layer:
        if not layer_included(lp, phase, level, stages):
            continue
        if lp.name in seen_names:
            raise CaffeImportError(f"{source}: two layers are named '{lp.name}'; Caffe matches weights by layer name.")
        seen_names.add(lp.name)
        if any(top in declared for top in lp.top):
            notes.append(f"layer '{lp.name}' ({lp.type}) skipped: its tops are declared as net inputs")
            unavailable.update(top for top in lp.top if top not in declared)
            continue
        if lp.type == "Input":
            shapes = list(lp.input_param.shape)
            if len(shapes) not in (1, len(lp.top)):
                raise CaffeImportError(
                    f"{source}: Input layer '{lp.name}' has {len(lp.top)} tops but {len(shapes)} shapes "
                    "(input_param.shape needs one shape, or one per top)."
                )
            for i, top in enumerate(lp.top):
                version[top] = new_version(top)
                input_names.append(top)
                input_shapes[top] = tuple(int(d) for d in shapes[i if len(shapes) > 1 else 0].dim)
            continue
        if phase == "TEST" and (_is_data_layer(lp) or lp.type in TRAIN_ONLY_TYPES):
            notes.append(f"layer '{lp.name}' ({lp.type}) dropped from the {phase} graph: data/loss/accuracy layer")
            unavailable.update(top for top in lp.top if top not in version)
            continue
        missing = [b for b in lp.bottom if b not in version]
        if missing:
            if all(b in unavailable for b in missing):
                notes.append(
                    f"layer '{lp.name}' ({lp.type}) dropped: it reads {', '.join(missing)} from a dropped data layer "
                    "(declare those blobs with inputs= to keep it)"
                )
                unavailable.update(lp.top)
                continue
            raise CaffeImportError(
                f"{source}: layer '{lp.name}' ({lp.type}) reads bottom '{missing[0]}', which no earlier layer or "
                "input produces (Caffe: 'Unknown bottom blob')."
            )
        bottoms = tuple(version[b] for b in lp.bottom)
        tops = []
        for top in lp.top:
            if top in lp.bottom and version[top] in consumed:
                warnings.warn(
                    f"{source}: in-place layer '{lp.name}' works on blob '{top}', which an earlier layer also reads. "
                    f"Caffe itself refuses this net ('Top blob {top!r} produced by multiple sources'); following "
                    "OpenCV's reading, earlier consumers see the value before this layer.",
                    CaffeImportWarning,
                    stacklevel=2,
                )
            version[top] = new_version(top)
            unavailable.discard(top)
            tops.append(version[top])
        consumed.update(bottoms)
        kept.append(Layer(
            name=lp.name, type=lp.type, bottoms=bottoms, tops=tuple(tops), blob_bottoms=tuple(lp.bottom),
            blob_tops=tuple(lp.top), param=lp, phase=phase,
        ))

    if not input_names:
        raise CaffeImportError(
            f"{source}: the net declares no inputs (no Input layer and no 'input:' fields). Use a deploy prototxt, or "
            "pass inputs={'blob': shape} to cut a train_val net at a blob."
        )
    final_version = dict(version)
    ssa_to_blob = {ssa: blob for blob in counts for ssa in _versions(blob, counts[blob])}

    if outputs is None:
        produced = [t for layer in kept for t in layer.tops]
        dangling = [t for t in produced if t not in consumed]
        # Name outputs by Caffe blob; only the final version of a blob is addressable by that name.
        out_blobs: list[str] = []
        for ssa in dangling:
            blob = ssa_to_blob[ssa]
            if final_version[blob] == ssa and blob not in out_blobs:
                out_blobs.append(blob)
        if not out_blobs:
            raise CaffeImportError(f"{source}: the net has no output blobs after dropping data/loss layers.")
        graph_layers, graph_inputs = tuple(kept), tuple(input_names)
    else:
        out_blobs = list(outputs)
        unknown = [b for b in out_blobs if b not in final_version]
        if unknown:
            raise CaffeImportError(
                f"{source}: requested output blob(s) {unknown} do not exist in the {phase} graph; known blobs: "
                f"{sorted(final_version)}."
            )
        graph_layers = _prune(kept, {final_version[b] for b in out_blobs})
        needed_inputs = {b for layer in graph_layers for b in layer.bottoms} | {final_version[b] for b in out_blobs}
        # An input is the first version of its blob, so its SSA name is the blob name itself.
        graph_inputs = tuple(name for name in input_names if name in needed_inputs)
        dropped = [layer.name for layer in kept if layer not in graph_layers]
        if dropped:
            notes.append(f"pruned to outputs {out_blobs}: {len(dropped)} layer(s) not needed ({', '.join(dropped[:8])}"
                         f"{', ...' if len(dropped) > 8 else ''})")
    return Graph(
        name=net.name or "net",
        layers=graph_layers,
        inputs=graph_inputs,
        input_shapes={name: input_shapes[name] for name in graph_inputs},
        outputs=tuple(out_blobs),
        final_version=final_version,
        notes=tuple(notes),
    )


def _versions(blob: str, count: int) -> list[str]:
    return [blob if i == 0 else f"{blob}#{i}" for i in range(count)]


def _prune(layers: list[Layer], wanted: set[str]) -> tuple[Layer, ...]:
    """Keep only the layers the wanted SSA names depend on (walking backwards, as a Caffe deploy cut would)."""
    needed = set(wanted)
    keep: list[Layer] = []
    for layer in reversed(layers):
        if needed.intersection(layer.tops):
            keep.append(layer)
            needed.update(layer.bottoms)
    return tuple(reversed(keep))


def with_shapes(layer: Layer, shapes: Sequence[Shape]) -> Layer:
    """A copy of `layer` that knows the shapes of its bottoms (filled in by the net builder)."""
    return replace(layer, in_shapes=tuple(tuple(int(d) for d in s) for s in shapes))
