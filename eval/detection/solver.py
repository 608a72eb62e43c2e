"""Caffe's SGD solver: per-blob learning-rate and weight-decay multipliers, momentum, the "step" policy.

BVLC ``src/caffe/solver.cpp`` (the version in caffe-fast-rcnn@bcd9b4e), ``SGDSolver::ComputeUpdateValue`` with L2
``Regularize``, for a blob w with gradient g at iteration i (0-based, before the update)::

    rate  = base_lr * gamma ^ floor(i / stepsize)                     (lr_policy "step")
    g    += weight_decay * decay_mult * w
    v     = momentum * v + rate * lr_mult * g
    w    -= v

This differs from ``torch.optim.SGD``, which applies the learning rate after the momentum buffer
(``v = m v + g; w -= lr v``): the two agree while the rate is constant and diverge for a while after each step of
the schedule. A blob with lr_mult 0 never moves (conv1 of Fast R-CNN's CaffeNet).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eval.detection.model import ParamSpec

__all__ = ["CaffeSGD", "step_lr"]


def step_lr(iteration: int, *, base_lr: float, gamma: float, stepsize: int) -> float:
    """Caffe's "step" learning-rate policy at a (0-based) iteration."""
    return base_lr * gamma ** (iteration // stepsize)


class CaffeSGD(torch.optim.Optimizer):
    """Caffe SGD over `ParamSpec` blobs; ``step(rate)`` takes the iteration's base rate from `step_lr`.

    Each blob is its own parameter group carrying ``name``, ``lr_mult`` and ``decay_mult``; the momentum history
    is ``state[p]["history"]`` (zeros initially, as Caffe's ``history_`` blobs).
    """

    def __init__(self, specs: Sequence[ParamSpec], *, momentum: float, weight_decay: float) -> None:
        groups = [{"params": [s.parameter], "name": s.name, "lr_mult": s.lr_mult, "decay_mult": s.decay_mult}
                  for s in specs if s.lr_mult != 0.0]
        super().__init__(groups, {"momentum": momentum, "weight_decay": weight_decay, "lr": 0.0})

    @torch.no_grad()
    def step(self, rate: float) -> None:  # type: ignore[override]
        for group in self.param_groups:
            (param,) = group["params"]
            if param.grad is None:
                continue
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
            history.add_(param.grad, alpha=local_rate)
            param.sub_(history)

    def histories(self) -> dict[str, torch.Tensor]:
        """Momentum histories by blob name (for checkpoints); blobs not yet updated have none."""
        return {g["name"]: self.state[g["params"][0]]["history"] for g in self.param_groups
                if "history" in self.state[g["params"][0]]}

    def load_histories(self, histories: dict[str, torch.Tensor]) -> None:
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
