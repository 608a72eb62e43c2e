"""`CaffeNet`: the nn.Module that runs a converted Caffe graph with pycaffe's blob semantics.

`net(data=x)` returns `{blob: tensor}` for the graph outputs; `net(data=x, outputs=["conv4"])` returns named
blobs instead, each holding what pycaffe's `net.blobs[name]` holds after a forward pass (the last version of
the blob, e.g. `conv4` after the in-place `relu4`). Modules are registered under their Caffe layer names, so
`state_dict()` keys read `conv1.weight`, `conv1.bias`, ...

Construction happens on the meta device: shapes are inferred by running each converted module on meta tensors,
and parameters are only materialised once, either from the caffemodel or from Caffe's fillers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.fillers import fill
from caffe_import.graph import Graph, Layer, Shape, with_shapes
from caffe_import.layers import get_converter

_RESERVED = set(dir(nn.Module)) | {"graph", "blob_shapes", "weight_report", "notes"}


@dataclass(frozen=True)
class _Step:
    attr: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    frees: tuple[str, ...]      # SSA names whose last reader is this step
    may_overwrite: bool         # an in-place layer whose input dies here: at inference it may run with inplace=True


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
                module = get_converter(layer)(layer)
                if not hasattr(module, "caffe_blobs"):
                    raise RuntimeError(f"converter for {layer.where()} returned a module without caffe_blobs")
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
        self._plans: dict[tuple[str, ...] | None, tuple[tuple[_Step, ...], tuple[tuple[str, str], ...]]] = {}

    @staticmethod
    def _infer(module: nn.Module, layer: Layer) -> tuple[torch.Tensor, ...]:
        bottoms = [torch.empty(s, device="meta") for s in layer.in_shapes]
        try:
            out = module(*bottoms)
        except CaffeImportError:
            raise
        except Exception as exc:  # shape errors from torch: rephrase with the layer and the shapes involved
            raise CaffeImportError(
                f"{layer.where()}: cannot run on bottoms of shape {list(layer.in_shapes)}: {exc}"
            ) from None
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(layer.tops):
            raise CaffeImportError(
                f"{layer.where()}: produces {len(outs)} outputs but declares {len(layer.tops)} tops."
            )
        return outs

    # -- parameters ----------------------------------------------------------------------------------------------
    def module_of(self, layer_name: str) -> nn.Module:
        return getattr(self, self.layer_attr[layer_name])

    def materialize(self, *, generator: torch.Generator | None = None) -> None:
        """Allocate every parameter/buffer on the CPU and fill it with the layer's Caffe filler."""
        self.to_empty(device="cpu")
        for layer in self.layers_with_shapes:
            module = self.module_of(layer.name)
            fillers = getattr(module, "caffe_fillers", ())
            for i, attr in enumerate(module.caffe_blobs):
                fill(getattr(module, attr), fillers[i] if i < len(fillers) else None, where=layer.where(),
                     generator=generator)
        self.tie_shared_params()

    def tie_shared_params(self) -> None:
        """Layers naming the same `param { name }` share one nn.Parameter (Caffe `Net::AppendParam` ShareData).

        Caffe copies caffemodel blobs layer by layer into the one shared blob, so the last layer's copy wins; we
        keep the last member's tensor as the shared one for the same reason.
        """
        groups: dict[str, list[tuple[Layer, str]]] = {}
        for layer in self.layers_with_shapes:
            module = self.module_of(layer.name)
            for i, spec in enumerate(layer.param.param):
                if spec.name and i < len(module.caffe_blobs):
                    groups.setdefault(spec.name, []).append((layer, module.caffe_blobs[i]))
        for name, members in groups.items():
            last_layer, last_attr = members[-1]
            shared = getattr(self.module_of(last_layer.name), last_attr)
            for layer, attr in members[:-1]:
                module = self.module_of(layer.name)
                current = getattr(module, attr)
                if current.shape != shared.shape:
                    raise CaffeImportError(
                        f"{layer.where()}: shared param '{name}' has shape {tuple(current.shape)} here but "
                        f"{tuple(shared.shape)} in layer '{last_layer.name}'; PERMISSIVE sharing of differently "
                        "shaped blobs is not supported."
                    )
                if attr in module._parameters:
                    module._parameters[attr] = shared
                else:
                    module._buffers[attr] = shared

    def shared_params(self) -> dict[str, list[str]]:
        """`param { name }` -> the layers sharing it (owner first)."""
        groups: dict[str, list[str]] = {}
        for layer in self.layers_with_shapes:
            for spec in layer.param.param:
                if spec.name:
                    groups.setdefault(spec.name, []).append(layer.name)
        return {k: v for k, v in groups.items() if len(v) > 1}

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
