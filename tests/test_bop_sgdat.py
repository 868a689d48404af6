"""Bop, Bop2ndOrder and SGDAT update rules against steps computed by hand."""

import copy
import math

import pytest
import torch

from bnnrepro.optim.bop import Bop, Bop2ndOrder
from bnnrepro.optim.sgdat import SGDAT


def run(optimizer_cls, b, grads, **kw):
    p = torch.nn.Parameter(torch.tensor(b))
    opt = optimizer_cls([p], **kw)
    history = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        history.append(p.detach().clone().tolist())
    return history, opt.state[p]


def test_bop_by_hand():
    # gamma 0.5, tau 0.1. m1 = 0.5 g1; flip where b * m > tau.
    history, state = run(Bop, [1.0, 1.0, -1.0, -1.0], [[0.4, 0.1, -0.4, 0.3], [0.4, 0.0, 0.0, 0.0]],
                         lr=0.5, threshold=0.1)
    # step 1: m = [0.2, 0.05, -0.2, 0.15]; b*m = [0.2, 0.05, 0.2, -0.15] -> flip weights 0 and 2
    assert history[0] == [-1.0, 1.0, 1.0, -1.0]
    # step 2: m = [0.3, 0.025, -0.1, 0.075]; b*m = [-0.3, 0.025, -0.1, -0.075] -> no flips
    assert history[1] == [-1.0, 1.0, 1.0, -1.0]
    torch.testing.assert_close(state["m"], torch.tensor([0.3, 0.025, -0.1, 0.075]))
    assert state["flips"].item() == 2


def test_bop_threshold_is_strict():
    history, _ = run(Bop, [1.0], [[0.5]], lr=0.5, threshold=0.25)  # b*m = 0.25 exactly: no flip
    assert history == [[1.0]]


def test_bop2ndorder_biased_by_hand():
    gamma, sigma, tau = 0.5, 0.25, 0.5
    history, state = run(Bop2ndOrder, [1.0, -1.0], [[2.0, 1.0], [0.0, -4.0]], lr=gamma, sigma=sigma, threshold=tau)
    # step 1: m = [1, 0.5], v = [1, 0.25], r = m / sqrt(v) = [1, 1]; b*r = [1, -1] -> flip weight 0
    assert history[0] == [-1.0, -1.0]
    # step 2: m = [0.5, -1.75], v = [0.75, 4.1875]; r = [0.577, -0.855]; b*r = [-0.577, 0.855] -> flip weight 1
    assert history[1] == [-1.0, 1.0]
    torch.testing.assert_close(state["v"], torch.tensor([0.75, 4.1875]))


def test_bop2ndorder_bias_correction_by_hand():
    # gamma 0.1, sigma 0.01, g = 1 twice, tau 1.2, b = +1.
    # biased:    r1 = 0.1 / sqrt(0.01) = 1;  r2 = 0.19 / sqrt(0.0199) = 1.347 > 1.2 -> flips at step 2
    # corrected: m_hat = m / (1 - 0.9^t) = 1, v_hat = v / (1 - 0.99^t) = 1 -> r = 1 at both steps: never flips
    kw = dict(lr=0.1, sigma=0.01, threshold=1.2)
    biased, state = run(Bop2ndOrder, [1.0], [[1.0], [1.0]], **kw)
    corrected, _ = run(Bop2ndOrder, [1.0], [[1.0], [1.0]], bias_correction=True, **kw)
    assert biased == [[1.0], [-1.0]] and corrected == [[1.0], [1.0]]
    torch.testing.assert_close(state["m"] / state["v"].sqrt(), torch.tensor([0.19 / math.sqrt(0.0199)]))


def test_sgdat_by_hand():
    # lr 1, tau 0.5. k = 0 at first: any nonzero m sets the sign.
    history, state = run(SGDAT, [1.0, 1.0, -1.0], [[0.3, -0.2, 0.0], [-0.5, 0.4, 0.0], [-0.3, 0.0, 0.0]],
                         lr=1.0, threshold=0.5)
    # step 1: m = [-0.3, 0.2, 0]; |m| > 0 -> b = [-1, 1, -1]  (m = 0 keeps b: |0| > 0 is false)
    assert history[0] == [-1.0, 1.0, -1.0]
    # step 2: m = [0.2, -0.2, 0]; weight 0 (k = 1): |0.2| > 0.5? no -> stays -1; weight 1 (k = 0): -> -1 (flip)
    assert history[1] == [-1.0, -1.0, -1.0]
    # step 3: m = [0.5, -0.2, 0]; weight 0: |0.5| > 0.5 is false (strict) -> stays -1; flips: [1, 1, 0]
    assert history[2] == [-1.0, -1.0, -1.0]
    torch.testing.assert_close(state["m"], torch.tensor([0.5, -0.2, 0.0]))
    torch.testing.assert_close(state["flip_count"], torch.tensor([1.0, 1.0, 0.0]))


def test_sgdat_sign_of_zero_and_momentum():
    # m exactly 0 after two steps with k = 0: |0| > 0 is false, b stays (sgn(0) = +1 is never needed here)
    history, _ = run(SGDAT, [-1.0], [[0.5], [-0.5]], lr=1.0, threshold=0.1)
    assert history == [[-1.0], [-1.0]]
    # momentum 0.5: u1 = g1 = 1, m = -1 -> b = -1; u2 = 0.5 + (-2) = -1.5, m = 0.5 -> |0.5| > 0.1*1 -> b = +1
    history, state = run(SGDAT, [1.0], [[1.0], [-2.0]], lr=1.0, threshold=0.1, momentum=0.5)
    assert history == [[-1.0], [1.0]]
    torch.testing.assert_close(state["momentum_buffer"], torch.tensor([-1.5]))


def test_sgdat_reset_epoch_state_keeps_accumulator():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = SGDAT([p], lr=1.0, threshold=0.5, momentum=0.9)
    p.grad = torch.tensor([1.0])
    opt.step()
    opt.reset_epoch_state()
    assert opt.state[p]["flip_count"].item() == 0 and "momentum_buffer" not in opt.state[p]
    assert opt.state[p]["m"].item() == -1.0


@pytest.mark.parametrize("make", [lambda p: Bop(p, lr=0.1, threshold=0.0), lambda p: Bop2ndOrder(p, lr=0.1),
                                  lambda p: SGDAT(p, lr=0.1, threshold=1e-3, momentum=0.9)])
def test_state_dict_round_trip_in_lockstep(make):
    """timm-style: two optimizers, one restored from the other's state_dict, stay identical."""
    g = torch.Generator().manual_seed(0)
    p1 = torch.nn.Parameter(torch.sign(torch.randn(20, generator=g)))
    opt1 = make([p1])
    for _ in range(5):
        p1.grad = torch.randn(20, generator=g)
        opt1.step()
    p2 = torch.nn.Parameter(p1.detach().clone())
    opt2 = make([p2])
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))  # state_dict() returns live tensors
    for state in opt2.state.values():  # float state keeps its dtype through the round trip
        assert all(t.dtype == torch.float32 for t in state.values() if torch.is_tensor(t))
    for _ in range(5):
        grad = torch.randn(20, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        opt1.step(), opt2.step()
        assert torch.equal(p1, p2)
