"""Caffe's SGD solver (and its Adam solver, `CaffeAdam`): per-blob learning-rate and weight-decay multipliers,
momentum, gradient clipping, iter_size, and every learning-rate policy of ``SGDSolver::GetLearningRate``.

Source: BVLC/caffe ``src/caffe/solvers/sgd_solver.cpp`` (master 9b89154; the same update as caffe-fast-rcnn@bcd9b4e
``src/caffe/solver.cpp``). ``ApplyUpdate`` at iteration i (0-based, before the update), over all learnable blobs::

    rate  = GetLearningRate(i)                                    (`LRPolicy.rate`)
    ClipGradients:  n = sqrt(sum over blobs of sum g^2);  if n > clip_gradients:  g *= clip_gradients / n
    per blob w with gradient g (summed over the iter_size forward/backward passes):
      Normalize:    g /= iter_size                                (only when iter_size > 1)
      Regularize:   g += weight_decay * decay_mult * w            (L2, Caffe's default regularization_type)
      ComputeUpdateValue:  v = momentum * v + rate * lr_mult * g
      Update:       w -= v

Note the order: clipping looks at the *accumulated* gradient, before the iter_size normalisation.

This differs from ``torch.optim.SGD``, which applies the learning rate after the momentum buffer
(``v = m v + g; w -= lr v``): the two agree while the rate is constant and diverge for a while after each change of
the rate. A blob with lr_mult 0 never moves (Fast R-CNN's conv1, frozen layers of the probes): it gets
``requires_grad = False`` and no momentum history.

Learning rates are computed in float64 from the given values; Caffe stores base_lr, gamma and power as float32
proto fields and computes in its Dtype (float), a relative difference below 1e-7.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["LR_POLICIES", "CaffeAdam", "CaffeSGD", "LRPolicy", "ParamSpec", "param_specs", "step_lr"]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
PolicyName = Literal["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]


@dataclass(frozen=True)
class ParamSpec:
    """One Caffe parameter blob and its ``param { lr_mult decay_mult }``."""

    name: str
    layer: str
    parameter: nn.Parameter
    lr_mult: float
    decay_mult: float


def param_specs(module: nn.Module, *, multipliers: Mapping[str, tuple[float, float]] | None = None,
                weight: tuple[float, float] = (1.0, 1.0), bias: tuple[float, float] = (2.0, 0.0),
                frozen: Iterable[str] = ()) -> list[ParamSpec]:
    """One `ParamSpec` per parameter of `module` (tied parameters once), its layer being the name before the last
    dot (``conv1.weight`` -> ``conv1``).

    Multipliers (lr_mult, decay_mult): `bias` for parameters named ``bias``, `weight` for the others (Caffe's usual
    prototxt convention, weights 1/1 and biases 2/0); `multipliers` overrides them by parameter name
    (``fc8.bias``) or layer name (``fc8``), the parameter name winning; layers in `frozen` get (0, 0).

    Raises:
        KeyError: a name in `multipliers` or `frozen` that is no parameter or layer of `module` (listing them).
    """
    named = list(module.named_parameters())
    layers = {name.rpartition(".")[0] for name, _ in named}
    overrides = dict(multipliers or {})
    frozen = set(frozen)
    unknown = sorted((set(overrides) - layers - {n for n, _ in named}) | (frozen - layers))
    if unknown:
        raise KeyError(f"param_specs: {unknown} name no parameter or layer of the model; its layers are "
                       f"{sorted(layers)}.")
    specs = []
    for name, param in named:
        layer, _, blob = name.rpartition(".")
        lr, decay = bias if blob == "bias" else weight
        if layer in overrides:
            lr, decay = overrides[layer]
        if name in overrides:
            lr, decay = overrides[name]
        if layer in frozen:
            lr, decay = 0.0, 0.0
        specs.append(ParamSpec(name, layer, param, float(lr), float(decay)))
    return specs


@dataclass(frozen=True)
class LRPolicy:
    """A Caffe ``lr_policy`` with its solver fields; ``rate(i)`` is ``GetLearningRate`` at 0-based iteration i::

        fixed      base_lr
        step       base_lr * gamma ^ floor(i / stepsize)
        exp        base_lr * gamma ^ i
        inv        base_lr * (1 + gamma * i) ^ (-power)
        multistep  base_lr * gamma ^ (number of stepvalues <= i)
        poly       base_lr * (1 - i / max_iter) ^ power
        sigmoid    base_lr / (1 + exp(-gamma * (i - stepsize)))
    """

    policy: PolicyName
    base_lr: float
    gamma: float = 0.1
    stepsize: int = 0
    stepvalues: tuple[int, ...] = ()
    power: float = 1.0
    max_iter: int = 0

    def __post_init__(self) -> None:
        if self.policy not in LR_POLICIES:
            raise ValueError(f"lr_policy {self.policy!r} is not one of {', '.join(LR_POLICIES)}.")
        if self.policy in ("step", "sigmoid") and self.stepsize <= 0:
            raise ValueError(f"lr_policy {self.policy!r} needs stepsize > 0, got {self.stepsize}.")
        if self.policy == "poly" and self.max_iter <= 0:
            raise ValueError(f"lr_policy 'poly' needs max_iter > 0, got {self.max_iter}.")
        if self.policy in ("step", "exp", "inv", "multistep", "sigmoid") and self.gamma < 0:
            raise ValueError(f"lr_policy {self.policy!r} needs gamma >= 0, got {self.gamma}.")
        values = tuple(int(v) for v in self.stepvalues)
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"multistep stepvalues must increase, got {values}.")
        object.__setattr__(self, "stepvalues", values)

    def rate(self, iteration: int) -> float:
        """The learning rate of the update at 0-based `iteration` (before the update)."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}.")
        p = self.policy
        if p == "fixed":
            return self.base_lr
        if p == "step":
            return self.base_lr * self.gamma ** (iteration // self.stepsize)
        if p == "exp":
            return self.base_lr * self.gamma ** iteration
        if p == "inv":
            return self.base_lr * (1.0 + self.gamma * iteration) ** (-self.power)
        if p == "multistep":
            return self.base_lr * self.gamma ** bisect.bisect_right(self.stepvalues, iteration)
        if p == "poly":
            if iteration > self.max_iter:
                raise ValueError(f"lr_policy 'poly' is defined up to max_iter {self.max_iter}, asked for "
                                 f"iteration {iteration}.")
            return self.base_lr * (1.0 - iteration / self.max_iter) ** self.power
        return self.base_lr / (1.0 + math.exp(-self.gamma * (iteration - self.stepsize)))

    @classmethod
    def from_solver(cls, solver) -> LRPolicy:
        """From a Caffe ``caffe_pb2.SolverParameter`` (a solver.prototxt parsed with ``text_format``); its float32
        fields are taken at their shortest decimal (0.001, not 0.0010000000474974513)."""
        import numpy as np

        def f32(value: float) -> float:
            return float(str(np.float32(value)))

        return cls(policy=solver.lr_policy or "fixed", base_lr=f32(solver.base_lr), gamma=f32(solver.gamma),
                   stepsize=int(solver.stepsize), stepvalues=tuple(int(v) for v in solver.stepvalue),
                   power=f32(solver.power), max_iter=int(solver.max_iter))


def step_lr(iteration: int, *, base_lr: float, gamma: float, stepsize: int) -> float:
    """Caffe's "step" learning-rate policy at a (0-based) iteration."""
    return LRPolicy("step", base_lr, gamma=gamma, stepsize=stepsize).rate(iteration)


class CaffeSGD(torch.optim.Optimizer):
    """Caffe SGD over `ParamSpec` blobs; ``step(rate, iter_size=...)`` applies one ``ApplyUpdate``.

    Each trained blob (lr_mult != 0) is its own parameter group carrying ``name``, ``lr_mult`` and ``decay_mult``;
    the momentum history is ``state[p]["history"]`` (zeros initially, as Caffe's ``history_`` blobs). A trained
    blob without a gradient counts as a zero gradient (Caffe's cleared diff): it still decays and keeps momentum.
    `clip_gradients` None (Caffe's -1) disables clipping.
    """

    def __init__(self, specs: Sequence[ParamSpec], *, momentum: float, weight_decay: float,
                 clip_gradients: float | None = None) -> None:
        for spec in specs:
            spec.parameter.requires_grad_(spec.lr_mult != 0.0)
        groups = [{"params": [s.parameter], "name": s.name, "lr_mult": s.lr_mult, "decay_mult": s.decay_mult}
                  for s in specs if s.lr_mult != 0.0]
        if not groups:
            raise ValueError("CaffeSGD: every blob has lr_mult 0; there is nothing to train.")
        names = [g["name"] for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"CaffeSGD: blob names repeat: {sorted({n for n in names if names.count(n) > 1})}.")
        if clip_gradients is not None and clip_gradients < 0:
            clip_gradients = None
        self.clip_gradients = clip_gradients
        super().__init__(groups, {"momentum": momentum, "weight_decay": weight_decay, "lr": 0.0})

    @torch.no_grad()
    def _clip(self) -> None:
        grads = [g["params"][0].grad for g in self.param_groups if g["params"][0].grad is not None]
        if self.clip_gradients is None or not grads:
            return
        norms = torch.stack([torch.linalg.vector_norm(g).to(grads[0].device, torch.float64) for g in grads])
        total = torch.linalg.vector_norm(norms)
        clip = torch.tensor(self.clip_gradients, dtype=torch.float64, device=total.device)
        # "if (l2norm_diff > clip_gradients) scale by clip_gradients / l2norm_diff", without a host sync
        factor = torch.where(total > clip, clip / total, torch.ones_like(total))
        for g in grads:
            g.mul_(factor.to(g.device))

    @torch.no_grad()
    def step(self, rate: float, *, iter_size: int = 1) -> None:  # type: ignore[override]
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}.")
        self._clip()
        for group in self.param_groups:
            (param,) = group["params"]
            grad = param.grad
            if grad is not None and iter_size > 1:
                grad.mul_(1.0 / iter_size)
            state = self.state[param]
            if "history" not in state:
                state["history"] = torch.zeros_like(param)
            history = state["history"]
            local_rate = rate * group["lr_mult"]
            decay = group["weight_decay"] * group["decay_mult"]
            # v = m v + local_rate (g + decay w), without a temporary the size of the blob
            history.mul_(group["momentum"])
            if decay:
                history.add_(param, alpha=local_rate * decay)
            if grad is not None:
                history.add_(grad, alpha=local_rate)
            param.sub_(history)

    def histories(self) -> dict[str, torch.Tensor]:
        """Momentum histories by blob name (for checkpoints); blobs not yet updated have none."""
        return {g["name"]: self.state[g["params"][0]]["history"] for g in self.param_groups
                if "history" in self.state[g["params"][0]]}

    def load_histories(self, histories: Mapping[str, torch.Tensor]) -> None:
        """Restore `histories` (as saved); every blob they name must be trained by this solver, with its shape."""
        names = {g["name"] for g in self.param_groups}
        unknown = sorted(set(histories) - names)
        if unknown:
            raise KeyError(f"checkpoint has momentum for blobs this solver does not train: {unknown}.")
        for group in self.param_groups:
            if group["name"] in histories:
                param = group["params"][0]
                value = histories[group["name"]]
                if value.shape != param.shape:
                    raise ValueError(f"checkpoint momentum for {group['name']} has shape {tuple(value.shape)}, "
                                     f"the blob has {tuple(param.shape)}.")
                self.state[param]["history"] = value.to(device=param.device, dtype=param.dtype).clone()


class CaffeAdam(CaffeSGD):
    """Caffe's Adam solver (`solver_type: ADAM`, BVLC/caffe ``src/caffe/solvers/adam_solver.cpp``@9b89154) over
    `ParamSpec` blobs: clipping, iter_size normalisation and L2 regularisation as `CaffeSGD`, then per blob, with
    t = iteration + 1 (1-based) and local_rate = rate * lr_mult::

        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        w -= local_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + delta)

    beta1 is SolverParameter.momentum, beta2 momentum2 (default 0.999), delta its default 1e-8. `histories()`
    holds "<blob>/m", "<blob>/v" and "adam_t" (the number of updates so far), for exact resume.
    """

    def __init__(self, specs: Sequence[ParamSpec], *, momentum: float = 0.9, momentum2: float = 0.999,
                 delta: float = 1e-8, weight_decay: float, clip_gradients: float | None = None) -> None:
        super().__init__(specs, momentum=momentum, weight_decay=weight_decay, clip_gradients=clip_gradients)
        self.momentum2, self.delta, self.t = momentum2, delta, 0

    @torch.no_grad()
    def step(self, rate: float, *, iter_size: int = 1) -> None:  # type: ignore[override]
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}.")
        self._clip()
        self.t += 1
        for group in self.param_groups:
            (param,) = group["params"]
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            if iter_size > 1:
                grad = grad * (1.0 / iter_size)
            decay = group["weight_decay"] * group["decay_mult"]
            if decay:
                grad = grad + decay * param
            state = self.state[param]
            if "m" not in state:
                state["m"], state["v"] = torch.zeros_like(param), torch.zeros_like(param)
            beta1, beta2 = group["momentum"], self.momentum2
            state["m"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
            state["v"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            correction = math.sqrt(1.0 - beta2 ** self.t) / (1.0 - beta1 ** self.t)
            param.addcdiv_(state["m"], state["v"].sqrt().add_(self.delta), value=-rate * group["lr_mult"] * correction)

    def histories(self) -> dict[str, torch.Tensor]:
        out = {"adam_t": torch.tensor(self.t, dtype=torch.int64)}
        for group in self.param_groups:
            state = self.state[group["params"][0]]
            if "m" in state:
                out[f"{group['name']}/m"], out[f"{group['name']}/v"] = state["m"], state["v"]
        return out

    def load_histories(self, histories: Mapping[str, torch.Tensor]) -> None:
        """Restore `histories` (as saved by `histories()`); unknown blobs or shapes are an error naming them."""
        names = {g["name"] for g in self.param_groups}
        unknown = sorted(k for k in histories if k != "adam_t" and k.rsplit("/", 1)[0] not in names)
        if unknown:
            raise KeyError(f"checkpoint has Adam moments for blobs this solver does not train: {unknown}.")
        self.t = int(histories["adam_t"]) if "adam_t" in histories else 0
        for group in self.param_groups:
            param, name = group["params"][0], group["name"]
            if f"{name}/m" not in histories:
                continue
            for key in ("m", "v"):
                value = histories[f"{name}/{key}"]
                if value.shape != param.shape:
                    raise ValueError(f"checkpoint Adam {key} for {name} has shape {tuple(value.shape)}, the blob has "
                                     f"{tuple(param.shape)}.")
                self.state[param][key] = value.to(device=param.device, dtype=param.dtype).clone()
