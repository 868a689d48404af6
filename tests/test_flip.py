"""FlipOptimizer (docs/bws.md#flip-rule, docs/binsfo.md#auto-temperature): masks, schedulers, seeding and resume."""

import inspect
import math
import statistics

import pytest
import torch

from bnnrepro.io import torch_load, torch_save
from bnnrepro.optim.flip import ERFINV_HALF, FlipOptimizer, hypermask


def param(values) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))


def step(opt, p, grad) -> list[float]:
    p.grad = torch.as_tensor(grad, dtype=torch.float32)
    opt.step()
    return p.detach().tolist()


def binomial_tolerance(q: float, n: int) -> float:
    return 5 * math.sqrt(q * (1 - q) / n)  # five standard errors of a fraction


# ---------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("g", [1e-4, 5e-3, 2e-2])
def test_emp_flip_rate_equals_latent_sgd_sign_changes(g):
    """Latent w ~ N(0, sigma^2), one SGD step w' = w - eta g: the fraction of weights whose sign changes
    (among those the step pushes towards zero) is erf(eta g / (sqrt2 sigma)), EMP's flip rate (docs/bws.md#flip-rule)."""
    sigma, eta, n = 0.01, 0.5, 200_000
    expected = math.erf(eta * g / (math.sqrt(2) * sigma))  # 0.0040, 0.1974, 0.6827 (docs/bws.md#flip-rule)
    w = sigma * torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    towards_zero = w > 0  # b g > 0 for g > 0
    latent_rate = ((w - eta * g) < 0)[towards_zero].double().mean().item()

    p = torch.nn.Parameter(torch.ones(n))  # b = +1: every weight can flip
    opt = FlipOptimizer([p], lr=eta / (math.sqrt(2) * sigma), mask="emp", scheduler="const", seed=1)
    step(opt, p, torch.full((n,), g))
    flip_rate = (p == -1).double().mean().item()

    assert abs(latent_rate - expected) < binomial_tolerance(expected, int(towards_zero.sum()))
    assert abs(flip_rate - expected) < binomial_tolerance(expected, n)


def test_emp_probability_by_hand():
    g = torch.tensor([0.1, -0.1, 0.1, -0.1, 0.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    e = math.erf(0.2)  # tau |g| = 2 * 0.1
    torch.testing.assert_close(hypermask("emp", g, b, 2.0), torch.tensor([e, 0.0, 0.0, e, 0.0]))


def test_mmp_flips_exactly_from_erfinv_half_over_tau():
    tau = 2.0
    thr = ERFINV_HALF / tau
    assert math.erf(tau * thr) == pytest.approx(0.5)
    below, above = thr * (1 - 1e-4), thr * (1 + 1e-4)
    p = param([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    opt = FlipOptimizer([p], lr=tau, mask="mmp", scheduler="const")
    # b g > 0 needed: the last two gradients are large but point along b's own descent side
    after = step(opt, p, [below, above, -below, -above, -1.0, 1.0])
    assert after == [1.0, -1.0, -1.0, 1.0, 1.0, -1.0]


def test_rand_sets_to_descent_sign_not_toggle():
    n, tau = 100_000, 0.3
    p = torch.nn.Parameter(torch.ones(n))
    opt = FlipOptimizer([p], lr=tau, mask="rand", scheduler="const", seed=2)
    step(opt, p, torch.ones(n))  # sign(-g) = -1: a masked weight becomes -1
    assert abs((p == -1).double().mean().item() - tau) < binomial_tolerance(tau, n)

    p = torch.nn.Parameter(-torch.ones(n))  # already at sign(-g): masked weights stay (a toggle would flip 30%)
    opt = FlipOptimizer([p], lr=tau, mask="rand", scheduler="const", seed=2)
    step(opt, p, torch.ones(n))
    assert (p == -1).all()


def test_rand_with_temperature_above_one_sets_every_weight():
    p = param([1.0, -1.0, 1.0, -1.0, -1.0])
    opt = FlipOptimizer([p], lr=5.0, mask="rand", scheduler="const")
    assert step(opt, p, [2.0, 2.0, -2.0, -2.0, 0.0]) == [-1.0, -1.0, 1.0, 1.0, 1.0]  # sign(-0) = +1


def test_mask_aliases_and_construction_signs():
    p = param([0.3, -0.2, 0.0, -0.0])
    opt = FlipOptimizer([p], mask="EWM")
    assert opt.param_groups[0]["mask"] == "emp"
    assert FlipOptimizer([param([1.0])], mask="wpm").param_groups[0]["mask"] == "mmp"
    assert p.tolist() == [1.0, -1.0, 1.0, 1.0]  # the optimizer owns binary weights: sign at init


# ---------------------------------------------------------------------------------------------- schedulers
GRADS = [[0.02, -0.01, 0.0, 0.03], [0.5, -0.5, 0.1, 0.0], [1e-3, 2e-3, -1e-3, 0.0]]


def run_temperatures(grads, **kw) -> list[float]:
    """The temperature each step uses, read before the step."""
    p = param([1.0, -1.0, 1.0, -1.0])
    opt = FlipOptimizer([p], **kw)
    taus = []
    for g in grads:
        taus.append(float(opt.temperature(p)))
        step(opt, p, g)
    taus.append(float(opt.temperature(p)))
    return taus


def test_const_and_cosine_by_hand():
    assert run_temperatures(GRADS, lr=0.3, scheduler="const") == pytest.approx([0.3] * 4)
    grads = GRADS + GRADS  # 6 steps, T = 4: the cosine stays at tau_min from step 4 on
    taus = run_temperatures(grads, lr=0.5, scheduler="cosine", total_steps=4, tau_min=1e-5)
    expected = [1e-5 + (0.5 - 1e-5) * (1 + math.cos(math.pi * min(t, 4) / 4)) / 2 for t in range(7)]
    assert taus == pytest.approx(expected, rel=1e-12)
    assert taus[2] == pytest.approx(0.25, abs=1e-5) and taus[4:] == pytest.approx([1e-5] * 3)


def test_gaussian_bws_by_hand():
    lr, sigma0 = 0.1, 0.01
    tau, expected = lr / (math.sqrt(2) * sigma0), []
    for g in GRADS:
        expected.append(tau)
        s = statistics.stdev(g)  # unbiased, over the whole tensor
        tau = tau / (1 + 2 * tau ** 2 * s ** 2)  # the BWS code: no square root
    expected.append(tau)
    taus = run_temperatures(GRADS, lr=lr, scheduler="gaussian_bws", sigma0=sigma0)
    assert taus == pytest.approx(expected, rel=1e-5)


def test_gaussian_and_scaled_gaussian_by_hand():
    lr, sigma0 = 0.1, 0.01
    sigma, gauss = sigma0, []
    for g in GRADS:
        gauss.append(lr / (math.sqrt(2) * sigma))
        sigma = math.sqrt(sigma ** 2 + (lr * statistics.stdev(g)) ** 2)
    gauss.append(lr / (math.sqrt(2) * sigma))
    sigma, scaled = sigma0, []
    for g in GRADS:
        scaled.append(lr * math.sqrt(math.pi) / (2 * sigma ** 2))
        sigma = math.sqrt(sigma ** 2 + (math.pi / 2) * (lr * statistics.stdev(g) / sigma) ** 2)
    scaled.append(lr * math.sqrt(math.pi) / (2 * sigma ** 2))
    assert run_temperatures(GRADS, lr=lr, scheduler="gaussian", sigma0=sigma0) == pytest.approx(gauss, rel=1e-5)
    assert run_temperatures(GRADS, lr=lr, scheduler="scaled_gaussian", sigma0=sigma0) == pytest.approx(scaled, rel=1e-5)


def test_gaussian_bws_lacks_the_square_root():
    """docs/bws.md#temperature-schedulers: tau = 707, s = 1e-3 -> 354 in the BWS code, 500 with the exact variance update."""
    g = [1e-3, -1e-3, 1e-3, -1e-3]
    s = statistics.stdev(g)
    lr = 10.0
    tau0 = lr / (math.sqrt(2) * 0.01)
    bws = run_temperatures([g], lr=lr, scheduler="gaussian_bws")
    exact = run_temperatures([g], lr=lr, scheduler="gaussian")
    assert bws[0] == exact[0] == pytest.approx(tau0, rel=1e-6)
    assert bws[1] == pytest.approx(tau0 / (1 + 2 * tau0 ** 2 * s ** 2), rel=1e-5)
    assert exact[1] == pytest.approx(tau0 / math.sqrt(1 + 2 * tau0 ** 2 * s ** 2), rel=1e-5)


def test_step_uses_the_temperature_before_its_update():
    """MMP with gaussian_bws: tau0 = 7.07 flips |g| = 0.07 (threshold 0.067); the updated tau (3.6) would not."""
    p = param([1.0, -1.0])
    opt = FlipOptimizer([p], lr=0.1, mask="mmp", scheduler="gaussian_bws", sigma0=0.01)
    assert ERFINV_HALF / float(opt.temperature(p)) < 0.07
    assert step(opt, p, [0.07, -0.07]) == [-1.0, 1.0]
    assert ERFINV_HALF / float(opt.temperature(p)) > 0.07


def test_lr_enters_gaussian_bws_only_at_the_start():
    p, q = param([1.0, -1.0]), param([1.0, -1.0])
    bws = FlipOptimizer([p], lr=0.1, scheduler="gaussian_bws")
    exact = FlipOptimizer([q], lr=0.1, scheduler="gaussian")
    before = float(bws.temperature(p))
    for opt in (bws, exact):
        opt.param_groups[0]["lr"] = 0.2
    assert float(bws.temperature(p)) == before
    assert float(exact.temperature(q)) == pytest.approx(2 * before)


def test_sigma0_from_weights_is_the_std_of_the_latent_tensor():
    latent = [0.1, -0.3, 0.2, 0.0]
    p = param(latent)
    opt = FlipOptimizer([p], lr=0.1, scheduler="gaussian", sigma0_from_weights=True)
    assert float(opt.state[p]["sigma"]) == pytest.approx(statistics.stdev(latent), rel=1e-6)
    assert p.tolist() == [1.0, -1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------- seeding, resume
def run_masks(seed: int, steps: int = 3) -> list[list[float]]:
    p = torch.nn.Parameter(torch.ones(64))
    opt = FlipOptimizer([p], lr=0.5, mask="rand", scheduler="const", seed=seed)
    gen = torch.Generator().manual_seed(0)
    return [step(opt, p, torch.randn(64, generator=gen)) for _ in range(steps)]


def test_same_seed_same_masks():
    assert run_masks(3) == run_masks(3)
    assert run_masks(3) != run_masks(4)


def test_each_tensor_draws_its_own_stream():
    p, q = torch.nn.Parameter(torch.ones(256)), torch.nn.Parameter(torch.ones(256))
    opt = FlipOptimizer([p, q], lr=0.5, mask="rand", scheduler="const")
    p.grad, q.grad = torch.ones(256), torch.ones(256)
    opt.step()
    assert not torch.equal(p, q)


def test_skips_parameters_without_gradient():
    p = param([1.0, -1.0])
    opt = FlipOptimizer([p], lr=5.0, mask="rand", scheduler="const")
    opt.step()
    assert p.tolist() == [1.0, -1.0] and opt.state[p]["step"] == 0


@pytest.mark.parametrize("scheduler", ["gaussian_bws", "gaussian", "scaled_gaussian", "cosine"])
def test_state_dict_round_trip_continues_identically(tmp_path, scheduler):
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 50, generator=gen) * 0.05 for _ in range(6)]
    kw = dict(lr=0.05, mask="emp", scheduler=scheduler, total_steps=10)

    def make(values, seed):
        p, q = torch.nn.Parameter(values[0].clone()), torch.nn.Parameter(values[1].clone())
        return [p, q], FlipOptimizer([p, q], seed=seed, **kw)

    def run(params, opt, gs):
        out = []
        for g in gs:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
            out.append([p.detach().clone() for p in params] + [float(opt.temperature(p)) for p in params])
        return out

    start = torch.randn(2, 50, generator=gen)
    params, opt = make(start, seed=5)
    run(params, opt, grads[:3])
    torch_save({"params": [p.detach().clone() for p in params], "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    uninterrupted = run(params, opt, grads[3:])

    saved = torch_load(tmp_path / "c.pt")
    params, opt = make(torch.randn(2, 50), seed=99)  # the checkpoint restores weights, schedule and seed
    with torch.no_grad():
        for p, v in zip(params, saved["params"]):
            p.copy_(v)
    opt.load_state_dict(saved["optimizer"])
    resumed = run(params, opt, grads[3:])
    for a, b in zip(uninterrupted, resumed):
        assert all(torch.equal(x, y) for x, y in zip(a[:2], b[:2])) and a[2:] == b[2:]


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kw", [dict(mask="foo"), dict(scheduler="linear"), dict(lr=0.0), dict(lr=-1.0),
                                dict(sigma0=0.0), dict(tau_min=-1.0), dict(scheduler="cosine"),
                                dict(scheduler="cosine", total_steps=2.5), dict(seed="a")])
def test_bad_arguments_raise(kw):
    with pytest.raises(ValueError):
        FlipOptimizer([param([0.5, -0.5])], **kw)


def test_sigma0_from_constant_weights_raises():
    with pytest.raises(ValueError, match="sigma0"):
        FlipOptimizer([param([0.5, 0.5])], scheduler="gaussian", sigma0_from_weights=True)


def test_constructor_arguments_are_plain_config_values():
    """The config loader checks optim.args against these defaults: each must be a float, int, str or bool."""
    params = list(inspect.signature(FlipOptimizer.__init__).parameters.values())[2:]
    assert {type(p.default) for p in params} <= {float, int, str, bool}
