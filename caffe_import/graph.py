"""An immutable, phase-filtered, SSA-named view of a Caffe net.

Caffe resolves each bottom to the latest preceding top of that name in layer order (BVLC `src/caffe/net.cpp`
`Init`, `src/caffe/util/insert_splits.cpp`), so in-place layers (`relu1` with bottom == top == conv1) create a
new *version* of a blob. We give every version its own SSA name (`conv1`, `conv1#1`, ...) once, here, so that
converters see clean bottoms/tops and a consumer listed before an in-place layer sees the value before it.

Caffe itself refuses one such case ("Top blob 'conv' produced by multiple sources"): an in-place layer on a blob
that another layer already consumed. We accept it with OpenCV's reading and warn.

NetState rules follow BVLC `src/caffe/net.cpp` (`Net::FilterNet`, `Net::StateMeetsRule`, at c9f71bd): a rule is met
when the state has the rule's phase (if set), min_level <= level <= max_level (each if set), every `stage` and no
`not_stage`; a layer with `include` rules is kept when any of them is met, a layer with `exclude` rules when none
is, a layer with neither always. The state is built as `Net(param_file, phase, level, stages)` builds it (the
constructor pycaffe's `caffe.Net(prototxt, phase, level=, stages=)` and the `caffe` tool's `-level`/`-stage` call):
phase and level replace those of the file's own `state { }` message, and the given stages are *added* to its
`state { stage }` entries.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from google.protobuf import text_format

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
class NetState:
    """The state a net is filtered with (Caffe's `NetState` message): phase "TEST"/"TRAIN", level, stages."""

    phase: str = "TEST"
    level: int = 0
    stages: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"phase {self.phase}, level {self.level}, stages {list(self.stages)}"

    def as_dict(self) -> dict[str, object]:
        return {"phase": self.phase, "level": self.level, "stages": list(self.stages)}


def net_state(net: caffe_pb2.NetParameter, *, phase: str = "TEST", level: int = 0, stages: Sequence[str] = (),
              source: str = "<net>") -> NetState:
    """The state `Net(param_file, phase, level, stages)` filters `net` with: `phase` and `level` replace the file's
    `state { phase level }`, `stages` are appended to its `state { stage }` (BVLC net.cpp, Net constructor)."""
    if phase not in ("TEST", "TRAIN"):
        raise CaffeImportError(f"{source}: phase must be 'TEST' or 'TRAIN', not {phase!r}.")
    if isinstance(stages, str) or not all(isinstance(s, str) and s for s in stages):
        raise CaffeImportError(
            f"{source}: stages must be a list of non-empty stage names such as ['deploy'], not {stages!r}.")
    if isinstance(level, bool) or not isinstance(level, int):
        raise CaffeImportError(f"{source}: level must be an integer (Caffe NetState.level), not {level!r}.")
    merged = tuple(dict.fromkeys([*net.state.stage, *stages]))
    return NetState(phase=phase, level=int(level), stages=merged)


def describe_rules(layer: caffe_pb2.LayerParameter) -> str:
    """The layer's include/exclude rules as prototxt text, e.g. `include { stage: "deploy" }`."""
    parts = [f"{kind} {{ {text_format.MessageToString(rule, as_one_line=True)} }}"
             for kind in ("include", "exclude") for rule in getattr(layer, kind)]
    return " ".join(parts) or "no rules"


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
    state: NetState = field(default=NetState())   # what the include/exclude rules were evaluated against
    source: str = "<net>"                           # the prototxt it came from, for messages

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


def _both_rules(layer: caffe_pb2.LayerParameter) -> str:
    return (f"layer '{layer.name}' specifies both include and exclude rules, which Caffe refuses ('Specify either "
            "include rules or exclude rules; not both'); keep only one kind.")


def layer_included(layer: caffe_pb2.LayerParameter, phase: str, level: int = 0, stages: Sequence[str] = ()) -> bool:
    """Caffe's `Net::FilterNet` decision for one layer in the state (phase, level, stages)."""
    phase_value = caffe_pb2.Phase.Value(phase)
    if len(layer.include) and len(layer.exclude):
        raise CaffeImportError(_both_rules(layer))
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
    """Filter by NetState rules, drop data/loss layers, SSA-rename, and prune to `outputs` (Caffe blob names).

    `phase`, `level` and `stages` select layers by their include/exclude rules exactly as Caffe does (module
    docstring): a DIGITS-style file holding train, val and deploy layers loads as deploy with `stages=["deploy"]`.
    `inputs` declares extra input blobs (name -> shape), cutting the net there: this turns a train_val net into a
    deploy one (e.g. declare `data_1` of the Jigsaw++ training net as an input to skip its data pipeline).
    """
    state = net_state(net, phase=phase, level=level, stages=stages, source=source)
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
    left_out: dict[str, caffe_pb2.LayerParameter] = {}   # Caffe blob -> a layer the rules left out that makes it
    for lp in net.layer:
        if len(lp.include) and len(lp.exclude):
            raise CaffeImportError(f"{source}: {_both_rules(lp)}")
        if not layer_included(lp, state.phase, state.level, state.stages):
            left_out.update({top: lp for top in lp.top if top not in version})
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
            producer = left_out.get(missing[0])
            if producer is not None:
                raise CaffeImportError(
                    f"{source}: layer '{lp.name}' ({lp.type}) reads bottom '{missing[0]}', which only layer "
                    f"'{producer.name}' makes, and its rules ({describe_rules(producer)}) leave it out for "
                    f"{state.describe()}; pass the phase, stages or level that select it (stages=[...], level= "
                    "here; --stage, --level on the command line)."
                )
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
            raise CaffeImportError(f"{source}: the net has no output blobs after dropping data/loss layers for "
                                   f"{state.describe()}; name the blobs you want with outputs=[...].")
        graph_layers, graph_inputs = tuple(kept), tuple(input_names)
    else:
        out_blobs = list(outputs)
        unknown = [b for b in out_blobs if b not in final_version]
        if unknown:
            raise CaffeImportError(
                f"{source}: requested output blob(s) {unknown} do not exist in the graph for {state.describe()}; "
                f"known blobs: {sorted(final_version)}."
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
        state=state,
        source=source,
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
