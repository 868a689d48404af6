"""Sign/ternary quantizers and their straight-through estimators (docs/rwth.md#quantizers-and-ste, docs/rwth.md#ternary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnrepro.nn.layers import QuantAct
from bnnrepro.nn.quantizers import (ESTIMATORS, TERNARY_ACT_K, TERNARY_WEIGHT_K, binarize, get_estimator, quantize_weight,
                                    sign, surrogate, surrogate_grad, ternarize, ternarize_ste)

BETA = 10.0



# ----------------------------------------------------------------------------------------- sign

def test_sign_maps_both_zeros_to_plus_one_and_never_returns_zero():
    x = torch.tensor([-3.0, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 2.5, float("inf"), float("-inf")])
    assert torch.signbit(x[3]) and not torch.signbit(x[4])  # the input really holds -0.0 and +0.0
    out = sign(x)
    assert out.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0]
    assert not torch.signbit(out[3])  # +1, not a -1 hiding behind -0.0's sign bit
    assert out.dtype == x.dtype


def test_sign_random_tensor_is_pm1_and_matches_x_ge_0():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    x[::7] = 0.0
    x[3::7] = -0.0
    out = sign(x)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(out, torch.where(x >= 0, 1.0, -1.0))


def test_round_half_even_rule_gives_minus_one_on_zero_and_the_fp32_band():
    """The RWTH binarizer: (x + 1) / 2 is exactly 0.5 for x in [0, 2^-24] (1 + x rounds to 1), and round
    half to even sends 0.5 to 0, i.e. -1; just above the band (2^-23) it is +1."""
    x = torch.tensor([-2.0, -1e-3, -0.0, 0.0, 2.0 ** -149, 1e-8, 2.0 ** -24, 2.0 ** -23, 1e-3, 3.0])
    assert sign(x, "round_half_even").tolist() == [-1, -1, -1, -1, -1, -1, -1, 1, 1, 1]
    assert sign(x).tolist() == [-1, -1, 1, 1, 1, 1, 1, 1, 1, 1]
    r = torch.randn(1000, generator=torch.Generator().manual_seed(0))  # off the band the rules agree
    assert torch.equal(sign(r, "round_half_even"), sign(r))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_round_half_even_binarizes_the_surrogate_and_keeps_its_gradient(estimator):
    """As the RWTH code (binarize(ste_forward(x))): the forward is the rule on the surrogate's value (for
    bireal 2x - x^2, so 2^-25 lands in the band), and the backward is the surrogate's derivative."""
    x = torch.tensor([-0.5, 0.0, 2.0 ** -25, 2.0 ** -22, 0.5, 1.5], requires_grad=True)
    out = binarize(x, estimator, BETA, "round_half_even")
    value = surrogate(x.detach(), estimator, BETA)
    if estimator == "swish":  # the RWTH SignSwish puts the pre-swish value back where the swish is exactly 0
        value = torch.where(value == 0, x.detach(), value)
    assert torch.equal(out, ((value + 1) / 2).clamp(0, 1).round() * 2 - 1)
    assert out[1] == -1 and out[3] == 1
    out.sum().backward()
    assert torch.equal(x.grad, surrogate_grad(x.detach(), estimator, BETA))


def test_quantized_layers_use_their_sign_rule():
    act = QuantAct("binary", "bnn", sign_rule="round_half_even")
    assert act(torch.zeros(3)).tolist() == [-1, -1, -1]
    assert QuantAct("binary", "bnn")(torch.zeros(3)).tolist() == [1, 1, 1]
    w = torch.tensor([[0.0, 1e-9, -0.3]])
    assert quantize_weight(w, "binary", rule="round_half_even").tolist() == [[-1, -1, -1]]
    assert quantize_weight(w, "binary").tolist() == [[1, 1, -1]]
    with pytest.raises(ValueError, match="Unknown sign rule"):
        QuantAct("binary", "bnn", sign_rule="nearest")


def test_sign_keeps_channels_last_strides():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    out = sign(x)
    assert out.stride() == x.stride()
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, torch.where(x >= 0, 1.0, -1.0))


# ------------------------------------------------------------------------------ STE gradients

def _grad_reference(x: np.ndarray, estimator: str, beta: float = BETA) -> np.ndarray:
    """d surrogate / dx, written out independently of the package (float64)."""
    x = x.astype(np.float64)
    if estimator == "vanilla":
        return np.ones_like(x)
    if estimator == "bnn":
        return ((x > -1) & (x < 1)).astype(np.float64)  # strict interior
    if estimator == "bireal":
        return np.where(np.abs(x) < 1, 2 - 2 * np.abs(x), 0.0)
    if estimator == "swish":
        s = 1 / (1 + np.exp(-beta * x))
        return 2 * beta * s * (1 - s) * (2 + beta * x * (1 - 2 * s))
    raise AssertionError(estimator)


def _ste_inputs() -> torch.Tensor:
    special = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 0.999, -0.999, 1.001, -1.001, 1.5, -2.0, 3.0, -7.5, 0.05, -0.05]
    rand = torch.randn(200, generator=torch.Generator().manual_seed(1)) * 1.5
    return torch.cat([torch.tensor(special), rand])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_binarize_gradient_matches_reference_derivative(estimator):
    x = _ste_inputs().requires_grad_(True)
    upstream = torch.linspace(0.5, 2.0, len(x))  # not all ones: the STE must multiply the incoming gradient
    binarize(x, estimator, BETA).backward(upstream)
    expected = upstream.double().numpy() * _grad_reference(x.detach().numpy(), estimator)
    # float32: SignSwish's s(1 - s) cancels where s -> 1, so compare on the scale of its peak (beta = 10)
    np.testing.assert_allclose(x.grad.double().numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_surrogate_grad_matches_reference_derivative(estimator):
    x = _ste_inputs()
    np.testing.assert_allclose(surrogate_grad(x, estimator, BETA).double().numpy(),
                               _grad_reference(x.numpy(), estimator), rtol=1e-5, atol=1e-4)
    # in float64 the formula itself must agree tightly
    x64 = x.double()
    np.testing.assert_allclose(surrogate_grad(x64, estimator, BETA).numpy(),
                               _grad_reference(x64.numpy(), estimator), rtol=1e-9, atol=1e-12)


def test_bnn_gradient_boundaries_exactly():
    x = torch.tensor([-1.0, 1.0, -0.9999999, 0.9999999, 0.0, -1.0000001, 1.0000001], requires_grad=True)
    binarize(x, "bnn").sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_bireal_and_vanilla_gradient_at_special_points():
    x = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 2.0], requires_grad=True)
    binarize(x, "bireal").sum().backward()
    assert x.grad.tolist() == [2.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    y = torch.tensor([0.0, 5.0, -5.0, 1.0], requires_grad=True)
    binarize(y, "vanilla").sum().backward()
    assert y.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_swish_gradient_at_zero_is_beta():
    # 2b s(1-s)(2 + 0) with s = 1/2 gives b
    x = torch.tensor([0.0], requires_grad=True)
    binarize(x, "swish", 10.0).sum().backward()
    assert x.grad.item() == pytest.approx(10.0)
    x2 = torch.tensor([0.0], requires_grad=True)
    binarize(x2, "swish", 4.0).sum().backward()
    assert x2.grad.item() == pytest.approx(4.0)


@pytest.mark.parametrize("estimator", ["bireal", "swish"])
def test_surrogate_grad_matches_autograd_of_surrogate(estimator):
    x = torch.randn(500, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    x = x[(x.abs() - 1).abs() > 1e-3]  # away from the kinks at +-1
    x = torch.cat([x, torch.tensor([0.3, -0.3, 0.999, -0.999, 1.2, -3.0], dtype=torch.float64)])
    x.requires_grad_(True)
    (auto,) = torch.autograd.grad(surrogate(x, estimator, BETA).sum(), x)
    torch.testing.assert_close(surrogate_grad(x.detach(), estimator, BETA), auto, rtol=1e-10, atol=1e-10)


def test_unknown_estimator_is_an_error():
    with pytest.raises(ValueError, match="estimator"):
        surrogate(torch.zeros(2), "tanh")
    with pytest.raises(ValueError, match="estimator"):
        surrogate_grad(torch.zeros(2), "tanh")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_binarize_forward_is_exactly_pm1(estimator):
    x = _ste_inputs()
    out = binarize(x, estimator, BETA)
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(out, torch.where(x >= 0, 1.0, -1.0))


# ------------------------------------------------------------------------------------- ternary

def test_ternary_weight_threshold_is_strict_at_07_mean_abs():
    assert TERNARY_WEIGHT_K == 0.7
    w = torch.tensor([7.0, -7.0, 13.0, -13.0])  # mean|w| = 10, Delta = 7
    assert (TERNARY_WEIGHT_K * w.abs().mean()).item() == 7.0
    assert ternarize(w, TERNARY_WEIGHT_K).tolist() == [0.0, 0.0, 1.0, -1.0]  # exactly at Delta -> 0
    w = torch.tensor([7.5, -6.5, 13.0, -14.0])  # mean|w| = 10.25, Delta = 7.175
    assert ternarize(w, TERNARY_WEIGHT_K).tolist() == [1.0, 0.0, 1.0, -1.0]
    w = torch.tensor([0.2, -0.05, 0.1, -0.3, 0.0])  # mean|w| = 0.13, Delta = 0.091
    assert ternarize(w, TERNARY_WEIGHT_K).tolist() == [1.0, 0.0, 1.0, -1.0, 0.0]


def test_ternary_activation_threshold_is_strict_at_04_mean_abs():
    assert TERNARY_ACT_K == 0.4
    x = torch.tensor([4.0, -4.0, 16.0, -16.0])  # mean|x| = 10, Delta = 4
    assert (TERNARY_ACT_K * x.abs().mean()).item() == 4.0
    assert ternarize(x, TERNARY_ACT_K).tolist() == [0.0, 0.0, 1.0, -1.0]
    x = torch.tensor([4.5, -3.5, 15.0, -17.0])  # Delta = 4
    assert ternarize(x, TERNARY_ACT_K).tolist() == [1.0, 0.0, 1.0, -1.0]
    # the same input with the weight constant (Delta = 7) zeroes more
    assert ternarize(x, TERNARY_WEIGHT_K).tolist() == [0.0, 0.0, 1.0, -1.0]


def test_ternary_threshold_is_over_the_whole_tensor():
    w = torch.tensor([[10.0, 10.0], [1.0, 1.0]])  # mean|w| = 5.5, Delta = 3.85; per row it would keep row 2
    assert ternarize(w, TERNARY_WEIGHT_K).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    x = torch.tensor([[[10.0, -10.0], [2.0, -2.0]], [[0.5, 0.5], [-0.5, 9.0]]])  # mean 4.375, Delta 1.75
    assert ternarize(x, TERNARY_ACT_K).tolist() == [[[1.0, -1.0], [1.0, -1.0]], [[0.0, 0.0], [0.0, 1.0]]]


def test_ternary_activation_layer_ternarizes_the_ste_output():
    # vanilla STE: surrogate is the identity, Delta = 0.4 * mean|x| = 4 for this input
    x = torch.tensor([4.0, -4.0, 16.0, -16.0, 4.5, -3.5, 15.0, -17.0])
    assert QuantAct("ternary", "vanilla")(x).tolist() == [0.0, 0.0, 1.0, -1.0, 1.0, 0.0, 1.0, -1.0]
    # bnn STE: ternarize(hardtanh(x)); hardtanh -> [0.5, -0.1, 1, -1, 0.2], mean 0.56, Delta 0.224
    x = torch.tensor([0.5, -0.1, 3.0, -2.0, 0.2])
    assert QuantAct("ternary", "bnn")(x).tolist() == [1.0, 0.0, 1.0, -1.0, 0.0]
    assert ternarize_ste(x, TERNARY_ACT_K, "bnn").tolist() == [1.0, 0.0, 1.0, -1.0, 0.0]


def test_ternary_activation_gradient_is_the_ste_gradient():
    x = torch.tensor([0.5, -0.1, 3.0, -2.0, 0.2, 1.0], requires_grad=True)
    QuantAct("ternary", "bnn")(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("precision", ["binary", "ternary"])
def test_quantize_weight_gradient_is_identity(precision):
    """Weight STE has no |w| <= 1 mask (docs/rwth.md#quantizers-and-ste): the gradient reaches latent weights outside [-1, 1] too."""
    w = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.05, 0.7, 1.0, 2.5], requires_grad=True)
    upstream = torch.arange(1.0, 9.0)
    quantize_weight(w, precision).backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_quantize_weight_forward_values():
    w = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.05, 0.7, 1.0, 2.5])  # mean|w| = 1.05625, Delta = 0.739375
    assert quantize_weight(w, "binary").tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert quantize_weight(w, "ternary").tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert quantize_weight(w, "fp") is w
    with pytest.raises(ValueError, match="precision"):
        quantize_weight(w, "int4")


# ------------------------------------------------------------------------------------- registries

@pytest.mark.parametrize("name", ESTIMATORS)
def test_each_estimator_backward_is_the_incoming_gradient_times_its_derivative(name):
    """A fused backward (vanilla, bnn) must equal the generic grad * derivative."""
    gen = torch.Generator().manual_seed(3)
    x, grad = torch.randn(4096, generator=gen) * 2, torch.randn(4096, generator=gen)
    x[::97] = 1.0  # the window's edges
    x[1::97] = -1.0
    ste = get_estimator(name)
    assert ste.name == name
    assert torch.equal(ste.backward(grad, x, BETA), grad * ste.derivative(x, BETA))


def test_unknown_names_are_one_clear_error():
    with pytest.raises(ValueError, match="Unknown gradient estimator 'tanh'. Valid: \\('vanilla', 'bnn'"):
        get_estimator("tanh")
    with pytest.raises(ValueError, match="Unknown sign rule 'nearest'. Valid: \\('zero_positive', 'round_half_even'\\)"):
        binarize(torch.zeros(2), "bnn", rule="nearest")
    with pytest.raises(ValueError, match="Unknown gradient estimator"):
        QuantAct("binary", estimator="tanh")
