"""`CaffeNet`: the nn.Module that runs a converted Caffe graph with pycaffe's blob semantics.

`net(data=x)` returns `{blob: tensor}` for the graph outputs; `net(data=x, outputs=["conv4"])` returns named
blobs instead, each holding what pycaffe's `net.blobs[name]` holds after a forward pass (the last version of
the blob, e.g. `conv4` after the in-place `relu4`). Modules are registered under their Caffe layer names, so
`state_dict()` keys read `conv1.weight`, `conv1.bias`, ...

Construction happens on the meta device: shapes are inferred by running each converted module on meta tensors,
and parameters are only materialised once, either from the caffemodel or from Caffe's fillers. Python-layer
modules (user code) are built on the CPU instead, so constants they compute in `__init__` survive.

Shared parameters follow BVLC `src/caffe/net.cpp` (`Net::AppendParam`, `Net::ShareWeights`, at c9f71bd): the first
layer that declares a `param { name }` owns the blob; every later layer naming it shares the owner's data. Under
the default `share_mode: STRICT` the shapes must be equal; under `PERMISSIVE` only the element counts, and the
sharer sees the owner's memory in its own shape (`Blob::ShareData`). Here equal shapes share one `nn.Parameter`;
a PERMISSIVE sharer of another shape reads the owner's parameter through a reshaping parametrization
(`torch.nn.utils.parametrize`), so gradients and `.to()` keep one storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from caffe_import.errors import CaffeImportError
from caffe_import.fillers import fill
from caffe_import.graph import Graph, Layer, Shape, with_shapes
from caffe_import.layers import get_converter
from caffe_import.proto import caffe_pb2

_RESERVED = set(dir(nn.Module)) | {"graph", "blob_shapes", "weight_report", "notes", "param_groups", "layer_attr",
                                   "layers_with_shapes"}


@dataclass(frozen=True)
class _Step:
    attr: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    frees: tuple[str, ...]      # SSA names whose last reader is this step
    may_overwrite: bool         # an in-place layer whose input dies here: at inference it may run with inplace=True


@dataclass(frozen=True)
class ParamRef:
    """One Caffe parameter blob of one layer: `getattr(net.module_of(layer), attr)` is blob number `index`."""

    layer: str
    attr: str
    index: int
    shape: Shape


@dataclass(frozen=True)
class SharedParam:
    """A `param { name }` declared by more than one layer: `owner` (the first) holds the data, `sharers` use it."""

    name: str
    owner: ParamRef
    sharers: tuple[ParamRef, ...]

    @property
    def layers(self) -> list[str]:
        return [self.owner.layer] + [ref.layer for ref in self.sharers]


class _SharedView(nn.Module):
    """Parametrization of a PERMISSIVE sharer: the owner's blob seen in the sharer's shape (C order, as Caffe)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, owner: torch.Tensor) -> torch.Tensor:
        return owner.reshape(self.shape)


def _materialize_meta(module: nn.Module, device: str = "cpu") -> None:
    """Give every parameter/buffer still on the meta device (uninitialised) storage; real tensors are kept."""
    for sub in module.modules():
        for key, value in sub._parameters.items():
            if value is not None and value.is_meta:
                sub._parameters[key] = nn.Parameter(torch.empty(value.shape, dtype=value.dtype, device=device),
                                                    requires_grad=value.requires_grad)
        for key, value in sub._buffers.items():
            if value is not None and value.is_meta:
                sub._buffers[key] = torch.empty(value.shape, dtype=value.dtype, device=device)


def _count(shape: Shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _attr_name(layer_name: str, taken: set[str]) -> str:
    """Caffe layer names may contain '.', or clash with nn.Module attributes; keep them readable otherwise."""
    name = layer_name.replace(".", "_") or "_"
    while name in taken or name in _RESERVED:
        name += "_"
    taken.add(name)
    return name


class CaffeNet(nn.Module):
    """A Caffe net as a PyTorch module. Built by `caffe_import.load`; see the module docstring."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.layer_attr: dict[str, str] = {}
        self.blob_shapes: dict[str, Shape] = {}   # Caffe blob name -> shape at load time (last version)
        self.notes: list[str] = list(graph.notes)
        self.weight_report: dict[str, Any] = {}
        ssa_shapes: dict[str, Shape] = dict(graph.input_shapes)
        taken: set[str] = set()
        layers: list[Layer] = []
        with torch.device("meta"):
            for layer in graph.layers:
                layer = with_shapes(layer, [ssa_shapes[b] for b in layer.bottoms])
                module = self._convert(layer)
                outs = self._infer(module, layer)
                for ssa, out in zip(layer.tops, outs):
                    ssa_shapes[ssa] = tuple(out.shape)
                attr = _attr_name(layer.name, taken)
                self.add_module(attr, module)
                self.layer_attr[layer.name] = attr
                layers.append(layer)
        self.layers_with_shapes: tuple[Layer, ...] = tuple(layers)
        for blob, ssa in graph.final_version.items():
            if ssa in ssa_shapes:
                self.blob_shapes[blob] = ssa_shapes[ssa]
        self._ssa_shapes = ssa_shapes
        self.param_groups: dict[str, SharedParam] = self._group_params()
        self._plans: dict[tuple[str, ...] | None, tuple[tuple[_Step, ...], tuple[tuple[str, str], ...]]] = {}

    @staticmethod
    def _convert(layer: Layer) -> nn.Module:
        """The layer's module. Python layers are user code: built on the CPU, and any nn.Module is accepted
        (`caffe_blobs` defaults to none; see `caffe_import.register_python`)."""
        converter = get_converter(layer)
        if layer.type == "Python":
            with torch.device("cpu"):
                module = converter(layer)
        else:
            module = converter(layer)
        if not isinstance(module, nn.Module):
            raise CaffeImportError(
                f"{layer.where()}: its converter returned a {type(module).__name__}, not a torch.nn.Module; return a "
                "module whose forward takes the bottoms in Caffe order."
            )
        if not hasattr(module, "caffe_blobs"):
            module.caffe_blobs = ()
        return module

    @staticmethod
    def _infer(module: nn.Module, layer: Layer) -> tuple[torch.Tensor, ...]:
        """Top shapes: from the module's `caffe_top_shapes(*bottom_shapes)` hook if it has one, else by running the
        module on meta tensors (shapes only, no arithmetic)."""
        hook = getattr(module, "caffe_top_shapes", None)
        if callable(hook):
            shapes = hook(*layer.in_shapes)
            if not isinstance(shapes, Sequence) or not all(
                    isinstance(s, Sequence) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes):
                raise CaffeImportError(
                    f"{layer.where()}: caffe_top_shapes returned {shapes!r}; return one shape (a tuple of "
                    "non-negative ints) per top."
                )
            out: Any = tuple(torch.empty(tuple(s), device="meta") for s in shapes)
        else:
            bottoms = [torch.empty(s, device="meta") for s in layer.in_shapes]
            try:
                out = module(*bottoms)
            except CaffeImportError:
                raise
            except Exception as exc:  # shape errors from torch: rephrase with the layer and the shapes involved
                if layer.type != "Python":
                    raise CaffeImportError(
                        f"{layer.where()}: cannot run on bottoms of shape {list(layer.in_shapes)}: {exc}."
                    ) from None
                out = CaffeNet._run_on_zeros(module, layer)
        outs = out if isinstance(out, tuple) else (out,)
        if not all(isinstance(t, torch.Tensor) for t in outs):
            raise CaffeImportError(f"{layer.where()}: forward returned {type(out).__name__}; return one tensor or a "
                                   "tuple of tensors, one per top.")
        if len(outs) != len(layer.tops):
            raise CaffeImportError(
                f"{layer.where()}: produces {len(outs)} outputs but declares {len(layer.tops)} tops."
            )
        return outs

    @staticmethod
    def _run_on_zeros(module: nn.Module, layer: Layer) -> Any:
        """Top shapes of a Python layer that cannot run on meta tensors (numpy code, CPU constants): run it once on
        zero-filled CPU bottoms, as Caffe sets Python layers up on freshly allocated (zeroed) blobs."""
        try:
            with torch.device("cpu"), torch.no_grad():
                out = module(*[torch.zeros(s) for s in layer.in_shapes])
        except Exception as exc:
            raise CaffeImportError(
                f"{layer.where()}: cannot run on bottoms of shape {list(layer.in_shapes)} (on meta tensors nor on "
                f"zeros): {exc}. Define caffe_top_shapes(*bottom_shapes) on the module to give its top shapes "
                "without running it (as Caffe's Layer::Reshape does)."
            ) from None
        outs = out if isinstance(out, tuple) else (out,)
        if not all(isinstance(t, torch.Tensor) for t in outs):
            return out
        return tuple(torch.empty(tuple(t.shape), device="meta") for t in outs)

    # -- parameters ----------------------------------------------------------------------------------------------
    def module_of(self, layer_name: str) -> nn.Module:
        return getattr(self, self.layer_attr[layer_name])

    def materialize(self, *, generator: torch.Generator | None = None) -> None:
        """Allocate every parameter/buffer on the CPU and fill it with the layer's Caffe filler.

        A shared blob keeps its owner's filler values, as in Caffe (ShareWeights runs after every layer's SetUp).
        """
        _materialize_meta(self)
        shared = {(ref.layer, ref.index) for group in self.param_groups.values() for ref in group.sharers}
        for layer in self.layers_with_shapes:
            module = self.module_of(layer.name)
            fillers = getattr(module, "caffe_fillers", ())
            for i, attr in enumerate(module.caffe_blobs):
                if (layer.name, i) not in shared:
                    fill(getattr(module, attr), fillers[i] if i < len(fillers) else None, where=layer.where(),
                         generator=generator)
        self.tie_shared_params()

    def _group_params(self) -> dict[str, SharedParam]:
        """`param { name }` groups with more than one member, checked as `Net::AppendParam` checks them."""
        groups: dict[str, list[ParamRef]] = {}
        specs: dict[tuple[str, int], caffe_pb2.ParamSpec] = {}
        source = self.graph.source
        for layer in self.layers_with_shapes:
            module = self.module_of(layer.name)
            names = module.caffe_blobs
            for i, spec in enumerate(layer.param.param):
                if not spec.name:
                    continue
                if i >= len(names):
                    raise CaffeImportError(
                        f"{source}: {layer.where()} names param {i} '{spec.name}' but the layer has only "
                        f"{len(names)} blob(s) (Caffe: 'Too many params specified for layer'); remove that param entry."
                    )
                ref = ParamRef(layer.name, names[i], i, tuple(getattr(module, names[i]).shape))
                groups.setdefault(spec.name, []).append(ref)
                specs[(layer.name, i)] = spec
        result: dict[str, SharedParam] = {}
        for name, refs in groups.items():
            if len(refs) < 2:
                continue
            owner = refs[0]
            for ref in refs[1:]:
                permissive = specs[(ref.layer, ref.index)].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
                count, owner_count = _count(ref.shape), _count(owner.shape)
                if permissive and count != owner_count:
                    raise CaffeImportError(
                        f"{source}: layer '{ref.layer}' shares param '{name}' with layer '{owner.layer}', but its blob "
                        f"{ref.index} has {count} values {ref.shape} and the owner's {owner_count} {owner.shape} "
                        "(PERMISSIVE sharing needs equal counts); fix num_output / kernel sizes or stop sharing."
                    )
                if not permissive and ref.shape != owner.shape:
                    raise CaffeImportError(
                        f"{source}: layer '{ref.layer}' shares param '{name}' with layer '{owner.layer}', but its blob "
                        f"{ref.index} has shape {ref.shape} and the owner's {owner.shape} (STRICT sharing, the "
                        f"default, needs equal shapes); add share_mode: PERMISSIVE to the param of '{ref.layer}' if "
                        "equal counts are meant to suffice, or fix the layer sizes."
                    )
            result[name] = SharedParam(name, owner, tuple(refs[1:]))
        return result

    def owner_of(self, layer_name: str, index: int) -> ParamRef | None:
        """The owner of blob `index` of `layer_name` if that blob is shared (the owner itself included), else None."""
        for group in self.param_groups.values():
            for ref in (group.owner, *group.sharers):
                if ref.layer == layer_name and ref.index == index:
                    return group.owner
        return None

    def tie_shared_params(self) -> None:
        """Make every sharer use its owner's tensor (Caffe `Net::ShareWeights`); safe to call again."""
        for group in self.param_groups.values():
            owner_module = self.module_of(group.owner.layer)
            attr = group.owner.attr
            shared = owner_module._parameters.get(attr)
            is_param = shared is not None
            if shared is None:
                shared = owner_module._buffers.get(attr)
            if shared is None:
                raise CaffeImportError(f"layer '{group.owner.layer}': blob '{attr}' is neither a parameter nor a "
                                       "buffer of its module, so it cannot be shared; fix the layer's converter.")
            for ref in group.sharers:
                module = self.module_of(ref.layer)
                if parametrize.is_parametrized(module, ref.attr):
                    if module.parametrizations[ref.attr].original is not shared:
                        raise CaffeImportError(f"layer '{ref.layer}': its view of shared param '{group.name}' lost "
                                               "its owner's tensor; reload the net.")
                    continue
                (module._buffers if is_param else module._parameters).pop(ref.attr, None)
                (module._parameters if is_param else module._buffers)[ref.attr] = shared
                if ref.shape != group.owner.shape:  # PERMISSIVE: the owner's data in this layer's shape
                    parametrize.register_parametrization(module, ref.attr, _SharedView(ref.shape), unsafe=True)

    def shared_params(self) -> dict[str, list[str]]:
        """`param { name }` -> the layers sharing it (owner first)."""
        return {name: group.layers for name, group in self.param_groups.items()}

    # -- running ---------------------------------------------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return self.graph.inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.graph.outputs

    def _plan(self, outputs: tuple[str, ...] | None) -> tuple[tuple[_Step, ...], tuple[tuple[str, str], ...]]:
        if outputs in self._plans:
            return self._plans[outputs]
        blobs = self.graph.outputs if outputs is None else outputs
        targets: list[tuple[str, str]] = []
        for blob in blobs:
            ssa = self.graph.final_version.get(blob)
            if ssa is None or ssa not in self._ssa_shapes:
                raise KeyError(f"blob '{blob}' is not computed by this net; available: {sorted(self.blob_shapes)}")
            targets.append((blob, ssa))
        needed = {ssa for _, ssa in targets}
        selected: list[Layer] = []
        for layer in reversed(self.layers_with_shapes):
            if needed.intersection(layer.tops):
                selected.append(layer)
                needed.update(layer.bottoms)
        selected.reverse()
        keep = {ssa for _, ssa in targets}
        last_use: dict[str, int] = {}
        for i, layer in enumerate(selected):
            for b in layer.bottoms:
                last_use[b] = i
        steps = []
        for i, layer in enumerate(selected):
            frees = tuple(b for b in dict.fromkeys(layer.bottoms) if last_use[b] == i and b not in keep)
            attr = self.layer_attr[layer.name]
            # An in-place Caffe layer (bottom == top) may overwrite its input when nothing reads that version
            # again and it is not a tensor the caller passed in: the saving hand-written nets get from inplace=True.
            dies_here = len(layer.bottoms) == 1 and layer.bottoms[0] in frees
            overwrite = (dies_here and layer.blob_bottoms == layer.blob_tops
                         and layer.bottoms[0] not in self.graph.inputs and self._supports_inplace(self._modules[attr]))
            steps.append(_Step(attr, layer.bottoms, layer.tops, frees, overwrite))
        plan = (tuple(steps), tuple(targets))
        self._plans[outputs] = plan
        return plan

    @staticmethod
    def _supports_inplace(module: nn.Module) -> bool:
        """Parameter-free modules with an `inplace` switch (ReLU, Dropout, ...): flipping it changes no result."""
        return isinstance(getattr(module, "inplace", None), bool) and not any(True for _ in module.parameters())

    def _hooked(self) -> bool:
        """Whether any forward (pre-)hook, on a layer or global, is registered."""
        from torch.nn.modules import module as module_impl

        if module_impl._global_forward_hooks or module_impl._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self._modules.values())

    @staticmethod
    def _sole_owner(env: dict[str, torch.Tensor], name: str, caller_storage: set[int]) -> bool:
        """True when no other live blob and no caller input shares `name`'s storage (Split, Reshape, Crop, Slice
        and Dropout at test time hand out views or the same tensor, so SSA names alone do not prove it)."""
        ptr = env[name].untyped_storage().data_ptr()
        if ptr in caller_storage:
            return False
        return not any(other != name and t.untyped_storage().data_ptr() == ptr for other, t in env.items())

    def forward(self, *args: torch.Tensor, outputs: Iterable[str] | None = None,
                **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the net. Inputs by Caffe blob name (or positionally in `input_names` order); returns {blob: tensor}."""
        if len(args) > len(self.graph.inputs):
            raise TypeError(f"the net takes {len(self.graph.inputs)} inputs {list(self.graph.inputs)}, got {len(args)}")
        env: dict[str, torch.Tensor] = dict(zip(self.graph.inputs, args))
        for name, value in inputs.items():
            if name not in self.graph.inputs:
                raise TypeError(f"'{name}' is not an input of this net; inputs: {list(self.graph.inputs)}")
            env[name] = value
        steps, targets = self._plan(None if outputs is None else tuple(outputs))
        needed_inputs = {b for step in steps for b in step.bottoms} | {ssa for _, ssa in targets}
        missing = [name for name in self.graph.inputs if name in needed_inputs and name not in env]
        if missing:
            raise TypeError(f"missing input blob(s) {missing}; the net's inputs are {list(self.graph.inputs)}")
        modules = self._modules
        # Not while gradients are recorded, nor while hooks run: a hook may keep the tensor an in-place layer would
        # overwrite (the usual way to grab features), and must see what it would without the optimisation.
        may_overwrite = not torch.is_grad_enabled() and not self._hooked()
        caller_storage = {t.untyped_storage().data_ptr() for t in env.values()} if may_overwrite else set()
        for step in steps:
            module = modules[step.attr]
            if may_overwrite and step.may_overwrite and not module.inplace \
                    and self._sole_owner(env, step.bottoms[0], caller_storage):
                # The module itself, switched for this call: its train/eval mode and the user's hooks stay in force.
                module.inplace = True
                try:
                    result = module(env[step.bottoms[0]])
                finally:
                    module.inplace = False
            else:
                result = module(*[env[b] for b in step.bottoms])
            if isinstance(result, tuple):
                for ssa, value in zip(step.tops, result):
                    env[ssa] = value
            elif step.tops:
                env[step.tops[0]] = result
            for ssa in step.frees:
                del env[ssa]
        return {blob: env[ssa] for blob, ssa in targets}

    def extra_repr(self) -> str:
        return f"name={self.graph.name!r}, inputs={list(self.graph.inputs)}, outputs={list(self.graph.outputs)}"
