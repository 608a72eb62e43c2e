"""Caffe's SGD solver and learning-rate policies against a float64 numpy port of ``sgd_solver.cpp``
(tests/reference/caffe_sgd.py), over lr/decay multipliers, momentum, clipping, iter_size and every policy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from reference.caffe_sgd import SGDSolverReference
from torch import nn

from jigsawpp.engine.solver import LR_POLICIES, CaffeAdam, CaffeSGD, LRPolicy, param_specs, step_lr

POLICY_FIELDS = {
    "fixed": {},
    "step": {"gamma": 0.1, "stepsize": 4},
    "exp": {"gamma": 0.9},
    "inv": {"gamma": 0.05, "power": 0.75},
    "multistep": {"gamma": 0.5, "stepvalues": (2, 3, 7)},
    "poly": {"power": 0.9, "max_iter": 12},
    "sigmoid": {"gamma": -0.0, "stepsize": 5},
}


@pytest.mark.parametrize("policy", LR_POLICIES)
def test_lr_policy_matches_get_learning_rate(policy):
    fields = dict(POLICY_FIELDS[policy])
    if policy == "sigmoid":
        fields["gamma"] = 0.7
    lr = LRPolicy(policy, 0.01, **fields)
    ref = SGDSolverReference([], [], [], lr_policy=policy, base_lr=0.01,
                             **{("stepvalue" if k == "stepvalues" else k): v for k, v in fields.items()})
    for it in range(13):
        ref.iter_ = it
        assert lr.rate(it) == pytest.approx(ref.get_learning_rate(), rel=1e-12, abs=0), (policy, it)


def test_step_lr_shortcut_and_bad_policies():
    assert [step_lr(i, base_lr=0.001, gamma=0.1, stepsize=50_000) for i in (0, 49_999, 50_000, 149_999)] == \
        pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    with pytest.raises(ValueError, match="'step' needs stepsize > 0"):
        LRPolicy("step", 0.1)
    with pytest.raises(ValueError, match="'poly' needs max_iter > 0"):
        LRPolicy("poly", 0.1)
    with pytest.raises(ValueError, match="stepvalues must increase"):
        LRPolicy("multistep", 0.1, stepvalues=(5, 5))
    with pytest.raises(ValueError, match="not one of"):
        LRPolicy("cosine", 0.1)
    with pytest.raises(ValueError, match="defined up to max_iter 10"):
        LRPolicy("poly", 0.1, max_iter=10).rate(11)


def test_lr_policy_from_a_solver_prototxt():
    from google.protobuf import text_format

    import prototxt
    from caffe_import.proto import caffe_pb2

    solver = text_format.Parse(prototxt.path("fast_rcnn/CaffeNet/solver.prototxt").read_text(),
                               caffe_pb2.SolverParameter())
    lr = LRPolicy.from_solver(solver)  # fast-rcnn: step, base_lr 0.001, gamma 0.1, stepsize 30000
    assert (lr.policy, lr.base_lr, lr.gamma, lr.stepsize) == ("step", 0.001, 0.1, 30000)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


def test_param_specs_follow_caffe_conventions():
    net = _Net()
    specs = {s.name: (s.layer, s.lr_mult, s.decay_mult) for s in param_specs(net)}
    assert specs == {"conv1.weight": ("conv1", 1.0, 1.0), "conv1.bias": ("conv1", 2.0, 0.0),
                     "fc.weight": ("fc", 1.0, 1.0), "fc.bias": ("fc", 2.0, 0.0),
                     "head.weight": ("head", 1.0, 1.0), "head.bias": ("head", 2.0, 0.0)}
    custom = {s.name: (s.lr_mult, s.decay_mult) for s in
              param_specs(net, multipliers={"head": (10.0, 1.0), "head.bias": (20.0, 0.0)}, frozen=["conv1"])}
    assert custom["head.weight"] == (10.0, 1.0) and custom["head.bias"] == (20.0, 0.0)
    assert custom["conv1.weight"] == custom["conv1.bias"] == (0.0, 0.0) and custom["fc.bias"] == (2.0, 0.0)
    with pytest.raises(KeyError, match="conv9"):
        param_specs(net, frozen=["conv9"])


CASES = list(itertools.product((None, 0.8), (1, 3)))


@pytest.mark.parametrize(("clip", "iter_size"), CASES)
def test_caffe_sgd_matches_sgd_solver(clip, iter_size):
    rng = np.random.RandomState(0)
    shapes, mults = [(4, 3), (4,), (5,), (2, 2)], [(1.0, 1.0), (2.0, 0.0), (0.0, 0.0), (0.5, 3.0)]
    init = [rng.normal(size=s) for s in shapes]
    params = [nn.Parameter(torch.tensor(a, dtype=torch.float32)) for a in init]
    specs = [s for s in param_specs(nn.ParameterDict({f"b{i}": p for i, p in enumerate(params)}))]
    specs = [type(s)(s.name, s.layer, s.parameter, *m) for s, m in zip(specs, mults)]
    policy = LRPolicy("multistep", 0.2, gamma=0.3, stepvalues=(2, 5))
    opt = CaffeSGD(specs, momentum=0.9, weight_decay=0.01, clip_gradients=clip)
    assert [p.requires_grad for p in params] == [True, True, False, True]
    ref = SGDSolverReference(init, [m[0] for m in mults], [m[1] for m in mults], lr_policy="multistep",
                             base_lr=0.2, gamma=0.3, stepvalue=(2, 5), momentum=0.9, weight_decay=0.01,
                             clip_gradients=-1.0 if clip is None else clip, iter_size=iter_size)
    clipped = 0
    for it in range(8):
        # the gradient Caffe's net accumulates over iter_size passes: a sum of micro-batch gradients
        scale = rng.uniform(0.05, 0.5)  # some iterations above the clip threshold, some below
        diffs = [sum(rng.normal(scale=scale, size=s) for _ in range(iter_size)) for s in shapes]
        for p, d in zip(params, diffs):
            p.grad = torch.tensor(d, dtype=torch.float32)
        clipped += clip is not None and np.sqrt(sum((d ** 2).sum() for d, m in zip(diffs, mults) if m[0])) > clip
        rate = ref.apply_update(diffs)
        assert policy.rate(it) == pytest.approx(rate, rel=1e-12)
        opt.step(policy.rate(it), iter_size=iter_size)
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.detach().double().numpy(), ref.data[i], rtol=2e-5, atol=2e-6,
                                       err_msg=f"blob {i} after iteration {it}")
    assert torch.equal(params[2].detach(), torch.tensor(init[2], dtype=torch.float32))  # lr_mult 0 never moves
    assert set(opt.histories()) == {"b0", "b1", "b3"}
    if clip is not None:
        assert 0 < clipped < 8  # both branches of "if (l2norm_diff > clip_gradients)" ran


def test_histories_round_trip_and_missing_gradients_decay():
    w = nn.Parameter(torch.ones(3))
    spec = param_specs(nn.ParameterDict({"w": w}), weight=(1.0, 1.0))
    opt = CaffeSGD(spec, momentum=0.5, weight_decay=0.1)
    opt.step(1.0)  # no gradient: Caffe's cleared diff is zero, decay still applies: v = 0.1 w
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.9))
    saved = {k: v.clone() for k, v in opt.histories().items()}
    w2 = nn.Parameter(torch.ones(3) * 0.9)
    opt2 = CaffeSGD(param_specs(nn.ParameterDict({"w": w2})), momentum=0.5, weight_decay=0.1)
    opt2.load_histories(saved)
    opt.step(1.0)
    opt2.step(1.0)
    assert torch.equal(w.detach(), w2.detach())
    with pytest.raises(KeyError, match="does not train"):
        opt2.load_histories({"v": torch.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        opt2.load_histories({"w": torch.zeros(4)})


def _adam_reference(w, g, m, v, t, *, rate, lr_mult, decay, beta1=0.9, beta2=0.999, delta=1e-8):
    """float64 port of adam_solver.cpp ComputeUpdateValue (after Regularize), t 1-based; returns new w, m, v."""
    g = g + decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    correction = np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    return w - rate * lr_mult * correction * m / (np.sqrt(v) + delta), m, v


def test_caffe_adam_matches_adam_solver_and_resumes():
    rng = np.random.RandomState(1)
    shapes, mults = [(4, 3), (4,)], [(1.0, 1.0), (2.0, 0.0)]
    init = [rng.normal(size=s) for s in shapes]
    params = [nn.Parameter(torch.tensor(a, dtype=torch.float32)) for a in init]
    specs = list(param_specs(nn.ParameterDict({f"b{i}": p for i, p in enumerate(params)})))
    specs = [type(s)(s.name, s.layer, s.parameter, *m) for s, m in zip(specs, mults)]
    opt = CaffeAdam(specs, momentum=0.9, weight_decay=0.01)
    ref = [(w, np.zeros_like(w), np.zeros_like(w)) for w in init]
    saved, later = None, []
    for t in range(1, 7):
        diffs = [rng.normal(scale=0.3, size=s) for s in shapes]
        later += [diffs] if t > 3 else []
        for p, d in zip(params, diffs):
            p.grad = torch.tensor(d, dtype=torch.float32)
        opt.step(0.05)
        ref = [_adam_reference(w, d, m, v, t, rate=0.05, lr_mult=lm, decay=0.01 * dm)
               for (w, m, v), d, (lm, dm) in zip(ref, diffs, mults)]
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.detach().double().numpy(), ref[i][0], rtol=1e-5, atol=1e-6,
                                       err_msg=f"blob {i} after update {t}")
        if t == 3:
            saved = ({k: v.clone() for k, v in opt.histories().items()}, [p.detach().clone() for p in params])
    assert saved is not None and int(saved[0]["adam_t"]) == 3 and set(saved[0]) == {"adam_t", "b0/m", "b0/v",
                                                                                    "b1/m", "b1/v"}
    resumed = [nn.Parameter(w) for w in saved[1]]  # a new solver from the saved state replays updates 4-6 exactly
    again = CaffeAdam([type(s)(s.name, s.layer, p, s.lr_mult, s.decay_mult) for s, p in zip(specs, resumed)],
                      momentum=0.9, weight_decay=0.01)
    again.load_histories(saved[0])
    for diffs in later:
        for p, d in zip(resumed, diffs):
            p.grad = torch.tensor(d, dtype=torch.float32)
        again.step(0.05)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(resumed, params))
    with pytest.raises(KeyError, match="does not train"):
        opt.load_histories({"c/m": torch.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        opt.load_histories({"adam_t": torch.tensor(1), "b1/m": torch.zeros(3), "b1/v": torch.zeros(3)})
