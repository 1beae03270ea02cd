"""FastAdamW: the fused AdamW step without torch's per-call bookkeeping is bit-identical to `opt.step()`
(parameters and state_dict, over changing learning rates, two groups, after a state_dict reload), and falls
back to `opt.step()` for what it does not cover."""
from __future__ import annotations

import copy

import pytest
import torch

from clipforge.train.adamw_step import FastAdamW, fast_adamw_applies


def _setup(seed=0, **kw):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))
    decay = [model[0].weight, model[2].weight]
    rest = [model[0].bias, model[2].bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.98), eps=1e-6, fused=True, **kw)
    return model, opt


def _grads(model, step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(4, 7, generator=g)
    model(x).pow(2).sum().backward()


def _run(fast: bool, steps=6, reload_at=None):
    model, opt = _setup()
    stepper = FastAdamW(opt)
    for k in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-2 * (0.7 ** k)
        _grads(model, k)
        (stepper.step if fast else opt.step)()
        opt.zero_grad(set_to_none=True)
        if reload_at == k:  # a resume: the state tensors are replaced
            sd = copy.deepcopy(opt.state_dict())
            opt.load_state_dict(sd)
            stepper.reset()
    return model, opt


@pytest.mark.parametrize("reload_at", [None, 2])
def test_bit_identical_to_torch_step(reload_at):
    m_ref, o_ref = _run(False, reload_at=reload_at)
    m_fast, o_fast = _run(True, reload_at=reload_at)
    for a, b in zip(m_ref.parameters(), m_fast.parameters()):
        assert torch.equal(a, b)
    s_ref, s_fast = o_ref.state_dict()["state"], o_fast.state_dict()["state"]
    assert s_ref.keys() == s_fast.keys()
    for k in s_ref:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s_ref[k][name], s_fast[k][name]), (k, name)
    # and it moved the parameters at all (the comparison is not between two untouched models)
    assert not torch.equal(next(m_fast.parameters()), _setup()[0][0].weight)


def test_a_parameter_without_gradient_goes_through_torch():
    model, opt = _setup()
    ref_model, ref_opt = _setup()
    fast = FastAdamW(opt)
    for k in range(4):
        for m in (model, ref_model):
            _grads(m, k)
            if k >= 2:
                m[2].bias.grad = None   # torch skips such a parameter: so must we
        fast.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)


def test_only_fused_plain_adamw_applies():
    assert fast_adamw_applies(_setup()[1])
    assert not fast_adamw_applies(_setup(amsgrad=True)[1])
    model = torch.nn.Linear(3, 2)
    assert not fast_adamw_applies(torch.optim.AdamW(model.parameters(), foreach=True))
    assert not fast_adamw_applies(torch.optim.SGD(model.parameters(), lr=0.1))


def test_step_hooks_still_run():
    model, opt = _setup()
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    fast = FastAdamW(opt)
    for k in range(3):
        _grads(model, k)
        fast.step()
        opt.zero_grad(set_to_none=True)
    assert len(calls) == 3
