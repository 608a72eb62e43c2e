"""Reference SGD solver, following BVLC `src/caffe/solvers/sgd_solver.cpp` (GetLearningRate, ApplyUpdate with
ClipGradients, Normalize, Regularize, ComputeUpdateValue) and `src/caffe/solver.cpp` (Step: ApplyUpdate, then
++iter_), in float64 with plain loops over blobs and elements. Shares no code with ``jigsawpp.engine``."""

from __future__ import annotations

import math

import numpy as np


class SGDSolverReference:
    """Caffe's SGDSolver state: blobs (float64 copies), their lr/decay multipliers, history, iter_, current_step_.

    `apply_update(diffs)` takes each blob's diff *accumulated* over iter_size forward/backward passes, as Caffe's
    Net leaves it, and performs one iteration.
    """

    def __init__(self, data, lr_mults, decay_mults, *, lr_policy, base_lr, gamma=0.0, stepsize=0, stepvalue=(),
                 power=0.0, max_iter=0, momentum=0.0, weight_decay=0.0, clip_gradients=-1.0, iter_size=1):
        self.data = [np.array(d, dtype=np.float64) for d in data]
        self.history = [np.zeros_like(d) for d in self.data]
        self.lr_mults, self.decay_mults = list(lr_mults), list(decay_mults)
        self.lr_policy, self.base_lr, self.gamma, self.stepsize = lr_policy, base_lr, gamma, stepsize
        self.stepvalue, self.power, self.max_iter = list(stepvalue), power, max_iter
        self.momentum, self.weight_decay = momentum, weight_decay
        self.clip_gradients, self.iter_size = clip_gradients, iter_size
        self.iter_ = 0
        self.current_step_ = 0

    def get_learning_rate(self) -> float:
        policy, it = self.lr_policy, self.iter_
        if policy == "fixed":
            return self.base_lr
        if policy == "step":
            self.current_step_ = it // self.stepsize
            return self.base_lr * math.pow(self.gamma, self.current_step_)
        if policy == "exp":
            return self.base_lr * math.pow(self.gamma, it)
        if policy == "inv":
            return self.base_lr * math.pow(1.0 + self.gamma * it, -self.power)
        if policy == "multistep":
            # one step per call, as the C++ does; called once per iteration
            if self.current_step_ < len(self.stepvalue) and it >= self.stepvalue[self.current_step_]:
                self.current_step_ += 1
            return self.base_lr * math.pow(self.gamma, self.current_step_)
        if policy == "poly":
            return self.base_lr * math.pow(1.0 - float(it) / float(self.max_iter), self.power)
        if policy == "sigmoid":
            return self.base_lr * (1.0 / (1.0 + math.exp(-self.gamma * (float(it) - float(self.stepsize)))))
        raise ValueError(f"Unknown learning rate policy: {policy}")

    def apply_update(self, diffs) -> float:
        diffs = [np.array(d, dtype=np.float64) for d in diffs]
        rate = self.get_learning_rate()
        # ClipGradients: every learnable blob counts; lr_mult 0 blobs have zero diffs in Caffe
        if self.clip_gradients >= 0:
            sumsq = 0.0
            for d, lr in zip(diffs, self.lr_mults):
                if lr != 0:
                    for v in d.ravel():
                        sumsq += v * v
            l2norm = math.sqrt(sumsq)
            if l2norm > self.clip_gradients:
                diffs = [d * (self.clip_gradients / l2norm) for d in diffs]
        for i, d in enumerate(diffs):
            if self.lr_mults[i] == 0:
                d = np.zeros_like(d)  # param_propagate_down false: the diff stays cleared
            if self.iter_size != 1:  # Normalize
                d = d * (1.0 / self.iter_size)
            local_decay = self.weight_decay * self.decay_mults[i]
            if local_decay:  # Regularize, L2
                d = d + local_decay * self.data[i]
            local_rate = rate * self.lr_mults[i]  # ComputeUpdateValue
            self.history[i] = local_rate * d + self.momentum * self.history[i]
            self.data[i] = self.data[i] - self.history[i]  # Net::Update: data -= diff (= history)
        self.iter_ += 1
        return rate
