"""Bop, Bop2ndOrder, SGDT and SGDAT update rules against steps computed by hand."""

import copy
import inspect
import math

import pytest
import torch

from bnnrepro.optim.bop import Bop, Bop2ndOrder
from bnnrepro.optim.sgdat import SGDAT, SGDT


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
                                  lambda p: Bop(p, lr=0.1, m_init="minus_weights"),
                                  lambda p: Bop2ndOrder(p, lr=0.1, zero_latent_first_step=True),
                                  lambda p: SGDT(p, lr=0.1, threshold=0.05),
                                  lambda p: SGDT(p, lr=0.1, threshold=0.05, latent_init="weights"),
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


# ------------------------------------------------------------------------------------------ SGDT

def test_sgdt_by_hand():
    # lr 1, tau 0.25, latent starts at 0 (SGDAT code). w <- clip(w - g, -1, 1); b <- sgn(w) where |w| > tau.
    history, state = run(SGDT, [1.0, -1.0, 1.0, -1.0],
                         [[0.2, -0.5, 0.0, 0.3], [0.2, -1.5, -0.1, 0.0], [-0.3, 1.75, 0.0, -0.3]], lr=1.0, threshold=0.25)
    # step 1: w = [-0.2, 0.5, 0, -0.3]; |w| > 0.25 at 1 and 3 -> b = [1, +1, 1, -1] (weight 0 keeps +1 in the dead zone)
    assert history[0] == [1.0, 1.0, 1.0, -1.0]
    # step 2: w = [-0.4, clip(2.0) = 1.0, 0.1, -0.3] -> weight 0 leaves the dead zone: b = [-1, 1, 1, -1]
    assert history[1] == [-1.0, 1.0, 1.0, -1.0]
    # step 3: w = [-0.1, 1.0 - 1.75 = -0.75, 0.1, 0.0] -> only weight 1 flips. Without the clip, w1 = 0.25
    # would stay in the dead zone (strict >); weight 3 at w = 0 keeps -1 (sgn(0) = +1 is not applied in the zone)
    assert history[2] == [-1.0, -1.0, 1.0, -1.0]
    torch.testing.assert_close(state["latent"], torch.tensor([-0.1, -0.75, 0.1, 0.0]))
    assert state["flips"].item() == 3


def test_sgdt_latent_from_weights_and_sign_of_zero():
    # latent_init "weights": w0 = the real initial weight; b0 = sgn(w0), sgn(0) = +1.
    # lr 0.1, tau 0.01: w = [0.3 - 0.1, -0.05 + 0.1, 0 - 0.005] = [0.2, 0.05, -0.005] -> b = [1, 1, sgn(0) = 1]
    history, state = run(SGDT, [0.3, -0.05, 0.0], [[1.0, -1.0, 0.05]],
                         lr=0.1, threshold=0.01, latent_init="weights")
    assert history == [[1.0, 1.0, 1.0]]  # the parameter now holds exactly +-1
    torch.testing.assert_close(state["latent"], torch.tensor([0.2, 0.05, -0.005]))
    assert state["flips"].item() == 1  # weight 1: -1 -> +1; weight 2 was already +1 (sgn(0))
    # the same weights from a zero latent: w = [-0.1, 0.1, -0.005] -> b = [-1, 1, +1 (dead zone keeps sgn(0))]
    history, _ = run(SGDT, [0.3, -0.05, 0.0], [[1.0, -1.0, 0.05]], lr=0.1, threshold=0.01)
    assert history == [[-1.0, 1.0, 1.0]]


def test_sgdt_without_threshold_is_clipped_latent_sgd():
    """tau = 0: b = sgn(w) wherever w != 0, w the clipped latent of plain SGD (BinaryNet's org copy)."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(50, generator=g) * 0.5
    p = torch.nn.Parameter(w0.clone())
    opt = SGDT([p], lr=0.3, threshold=0.0, latent_init="weights")
    w, b = w0.clone(), torch.sign(w0)
    for _ in range(8):
        grad = torch.randn(50, generator=g)
        p.grad = grad.clone()
        opt.step()
        w = (w - 0.3 * grad).clamp(-1, 1)
        b = torch.where(w != 0, torch.sign(w), b)
        assert torch.equal(p.detach(), b)
    assert torch.allclose(opt.state[p]["latent"], w)
    assert (w.abs() == 1).any()  # the clip was active


def test_sgdat_counts_flips_against_the_sign_of_a_real_initial_weight():
    # the parameter still holds the real initial weight: b0 = sgn(p). m = [0.1, -0.1] keeps both signs: no flips.
    history, state = run(SGDAT, [0.3, -0.2], [[-0.1, 0.1]], lr=1.0, threshold=0.5)
    assert history == [[1.0, -1.0]]
    assert state["flip_count"].tolist() == [0.0, 0.0] and state["flips"].item() == 0


# ------------------------------------------------------------------------------- Bop options

def test_bop_uses_the_sign_of_a_real_initial_weight():
    # b = sgn(0.01) = +1: m = 0.25, b m = 0.25 > 0.1 -> flips (0.01 * m = 0.0025 would not)
    history, _ = run(Bop, [0.01, -0.0], [[0.5, 0.0]], lr=0.5, threshold=0.1)
    assert history == [[-1.0, 1.0]]  # -0.0 is read as sgn(0) = +1


def test_bop_m_seeded_with_minus_weights():
    # m0 = -w = [-0.5, 0.2], b = [1, -1], gamma 0.5, tau 0
    history, state = run(Bop, [0.5, -0.2], [[0.4, 0.4], [1.0, -1.0]], lr=0.5, threshold=0.0, m_init="minus_weights")
    # step 1: m = 0.5 m0 + 0.5 g = [-0.05, 0.3]; b m = [-0.05, -0.3]: the pretrained magnitude holds both weights
    assert history[0] == [1.0, -1.0]
    # step 2: m = [0.475, -0.35]; b m = [0.475, 0.35] > 0 -> both flip
    assert history[1] == [-1.0, 1.0]
    torch.testing.assert_close(state["m"], torch.tensor([0.475, -0.35]))
    # from m0 = 0 the first step already flips weight 0: m = [0.2, 0.2], b m = [0.2, -0.2]
    history, _ = run(Bop, [0.5, -0.2], [[0.4, 0.4]], lr=0.5, threshold=0.0)
    assert history == [[-1.0, -1.0]]


def test_bop2ndorder_zero_latent_first_step():
    kw = dict(lr=0.5, sigma=0.25, threshold=0.1)
    grads = [[1.0, -1.0, 0.5], [0.0, 0.0, 0.0]]
    # step 1: m = [0.5, -0.5, 0.25], v = [0.25, 0.25, 0.0625], r = [1, -1, 1]
    # step 2: m = [0.25, -0.25, 0.125], v = [0.1875, 0.1875, 0.046875], r = [0.577, -0.577, 0.577]
    quirk, state = run(Bop2ndOrder, [-1.0, 1.0, -1.0], grads, zero_latent_first_step=True, **kw)
    # step 1 reads b = 0: nothing exceeds tau, sgn(0) = +1 -> all +1; step 2: b r = [0.577, -0.577, 0.577] -> flip 0, 2
    assert quirk == [[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]]
    assert state["flips"].item() == 4
    plain, _ = run(Bop2ndOrder, [-1.0, 1.0, -1.0], grads, **kw)  # b r = -[1, 1, 1], then -[0.577] * 3: no flips
    assert plain == [[-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]]


def test_bop2ndorder_quirk_only_on_the_very_first_step():
    p = torch.nn.Parameter(torch.tensor([-1.0]))
    opt = Bop2ndOrder([p], lr=0.5, sigma=0.25, threshold=0.1, zero_latent_first_step=True)
    p.grad = torch.tensor([1.0])
    opt.step()
    assert p.item() == 1.0
    opt.reset_epoch_state()  # an epoch boundary: the public code's latent copy holds b by now
    with torch.no_grad():
        p.fill_(-1.0)  # set b by hand
    p.grad = torch.tensor([1.0])  # m = 0.75, v = 0.4375, r > 0; b r < 0: no flip
    opt.step()
    assert p.item() == -1.0


# ------------------------------------------------------------------------- per-epoch state (B.1, C.14)

RESETS = [  # optimizer, kwargs, state kept by reset_epoch_state (the public code's tensor attributes), state cleared
    (Bop, dict(lr=0.5, threshold=0.0), {"m", "flips"}, set()),
    (Bop2ndOrder, dict(lr=0.5, sigma=0.5, threshold=0.0), {"step", "m", "v", "flips"}, set()),
    (SGDT, dict(lr=0.5, threshold=0.1), {"latent", "flips"}, set()),
    (SGDAT, dict(lr=0.5, threshold=0.1, momentum=0.9), {"m", "flips"}, {"flip_count", "momentum_buffer"}),
]


@pytest.mark.parametrize("cls, kw, kept, cleared", RESETS)
def test_reset_epoch_state(cls, kw, kept, cleared):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.sign(torch.randn(30, generator=g)))
    opt = cls([p], **kw)
    for _ in range(3):
        p.grad = torch.randn(30, generator=g)
        opt.step()
    before = copy.deepcopy(opt.state[p])
    assert set(before) == kept | cleared
    opt.reset_epoch_state()
    after = opt.state[p]
    for key in kept:
        assert torch.equal(after[key], before[key]), key
    assert "momentum_buffer" not in after
    if "flip_count" in cleared:
        assert before["flip_count"].sum() > 0 and torch.equal(after["flip_count"], torch.zeros(30))


def test_sgdat_after_reset_behaves_like_a_rebuilt_optimizer():
    """The public code builds a new SGDAT each epoch on the same parameters; only p.m survives."""
    g = torch.Generator().manual_seed(1)
    p1 = torch.nn.Parameter(torch.sign(torch.randn(40, generator=g)))
    opt1 = SGDAT([p1], lr=0.2, threshold=0.05, momentum=0.9)
    grads = [torch.randn(40, generator=g) for _ in range(6)]
    for grad in grads[:3]:
        p1.grad = grad.clone()
        opt1.step()
    p2 = torch.nn.Parameter(p1.detach().clone())
    opt2 = SGDAT([p2], lr=0.2, threshold=0.05, momentum=0.9)  # the rebuilt one, given the surviving m
    p2.grad = torch.zeros(40)
    opt2.step()  # creates the state; zero gradient with fresh momentum changes nothing
    opt2.state[p2]["m"].copy_(opt1.state[p1]["m"])
    opt2.state[p2]["flip_count"].zero_()
    opt2.state[p2].pop("momentum_buffer")
    opt1.reset_epoch_state()
    for grad in grads[3:]:
        p1.grad, p2.grad = grad.clone(), grad.clone()
        opt1.step(), opt2.step()
        assert torch.equal(p1, p2)
        assert torch.equal(opt1.state[p1]["flip_count"], opt2.state[p2]["flip_count"])


# ------------------------------------------------------------------------------- constructors

@pytest.mark.parametrize("cls", [Bop, Bop2ndOrder, SGDT, SGDAT])
def test_constructor_args_are_simple_keywords_with_defaults(cls):
    """Configs pass `args:` validated against the signature: every argument has a bool/int/float/str default."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, params
    assert params and all(type(a.default) in (bool, int, float, str) for a in params)
    assert hasattr(cls, "reset_epoch_state")


@pytest.mark.parametrize("make, match", [
    (lambda p: SGDT(p, latent_init="ones"), "latent_init"),
    (lambda p: SGDT(p, lr=0.0), "lr"),
    (lambda p: SGDT(p, threshold=-1.0), "threshold"),
    (lambda p: Bop(p, m_init="weights"), "m_init"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.nn.Parameter(torch.ones(2))])


@pytest.mark.parametrize("tensor_dead_zone", [False, True])
def test_hysteresis_sign_equals_its_definition_on_random_and_boundary_values(tensor_dead_zone):
    """The one-product test (a b + dead zone < 0) against the rule as written:
    b <- sgn(a) where |a| > dead zone, else b; including |a| exactly at the dead zone, a = 0 and -0.0."""
    from bnnrepro.nn.quantizers import sign
    from bnnrepro.optim.sgdat import hysteresis_sign_

    g = torch.Generator().manual_seed(0)
    n = 10_000
    b = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    dead_zone = torch.rand(n, generator=g) * 0.1 if tensor_dead_zone else 0.05
    a = torch.randn(n, generator=g) * 0.1
    dz = dead_zone if tensor_dead_zone else torch.full((n,), dead_zone)
    a[:100] = dz[:100] * torch.sign(torch.randn(100, generator=g))  # exactly on the boundary: inside, no change
    a[100:110] = 0.0
    a[110:120] = -0.0
    before = b.clone()
    expected = torch.where(a.abs() > dz, sign(a), b)
    changed = hysteresis_sign_(b, a, dead_zone)
    assert torch.equal(b, expected)
    assert torch.equal(changed, expected != before)
    assert 0 < int(changed.sum()) < n and not changed[:120].any()
