"""Our binary LeNet5 computes exactly what the official RWTH "Efficient Binary Neural Networks" code computes.

The official network (RWTH-IDS/efficient-binary-neural-networks, models/lenet.py LeNet5_binary with the
binary_mnist preset: CPBA, STE bnn, no biases) is re-written below with plain torch ops, after the
published models/binary_modules.py, models/lenet.py, util.py and main.py, and fed the weights of our model
built from config/rwth/binary_mnist.yml. On one batch we check bit-identical logits, loss, gradients and
BatchNorm running statistics in train mode, and logits in eval mode afterwards.

The official weights and activations binarize through round((t + 1) / 2) * 2 - 1 (round half to even),
which gives -1 for every t in [0, 2**-24] in fp32 (1 + t rounds to 1); our default sign rule gives +1
there. Exact zeros are common in a binary network: binary conv and linear outputs are integers, and a fresh
BatchNorm (scale 1, shift 0, running mean 0) maps them onto 0. The config therefore sets
model.sign_rule = round_half_even, and the checks run where the two rules differ: at a fresh BatchNorm, and
with latent weights exactly at 0 and inside (0, 2**-24]. A last group shows that the default rule does
differ there, so the option is what makes these checks pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bnnrepro.config import load_experiment
from bnnrepro.engine.losses import loss_function
from bnnrepro.models import build_model
from bnnrepro.nn.quantizers import sign

CONFIG = Path(__file__).resolve().parents[1] / "config" / "rwth" / "binary_mnist.yml"
BINARY_WEIGHTS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")
# latent values where the two sign rules disagree (the official rule gives -1, sign(0) = +1 gives +1)
BAND = (0.0, -0.0, 2.0 ** -24, 1e-8, 2.0 ** -30, 2.0 ** -149)


# ------------------------------------------------------------------ the official code, re-written
def official_binarize(t):
    """models/binary_modules.py binarize: [-1, 1] -> [0, 1], round (half to even), back to +-1."""
    return ((t + 1) / 2).clamp(0, 1).round() * 2 - 1


def official_act(x):
    """`x = ste_forward(x); x.data = binarize(x.data)` with ste bnn = F.hardtanh: the forward value is +-1,
    the gradient is hardtanh's, 1 on -1 < x < 1."""
    x = F.hardtanh(x)
    x.data = official_binarize(x.data)
    return x


def official_square_hinge(output, target, num_outputs=10):
    """util.py SquareHingeLoss: +-1 one-hot targets, per sample sum_c max(0, 1 - y_c t_c)^2, batch mean."""
    target = 2 * torch.eye(num_outputs)[target] - 1
    out = 1 - output * target
    out[out.le(0)] = 0
    return torch.mean(torch.sum(out * out, dim=1))


def official_lenet5(x, p, training, pre_sign=None):
    """LeNet5_binary.forward, layer order CPBA: conv -> maxpool -> BN -> hardtanh -> binarize;
    fc2 takes binary inputs and its output only goes through BN1d(10, affine=False).
    `pre_sign` (a list) collects the BatchNorm outputs that are binarized."""
    def bn(x, name):  # nn.BatchNorm defaults: momentum 0.1, eps 1e-5; bn4 has no weight/bias
        x = F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p.get(f"{name}.weight"),
                         p.get(f"{name}.bias"), training, 0.1, 1e-5)
        if pre_sign is not None and name != "bn4":
            pre_sign.append(x.detach())
        return x
    x = official_act(bn(F.max_pool2d(F.conv2d(x, p["conv1.weight"], padding=2), (2, 2)), "bn1"))  # 32x14x14
    x = official_act(bn(F.max_pool2d(F.conv2d(x, p["conv2.weight"]), (2, 2)), "bn2"))  # 64x5x5
    x = official_act(bn(F.linear(x.view(x.shape[0], -1), p["fc1.weight"]), "bn3"))
    return bn(F.linear(x, p["fc2.weight"]), "bn4")


def official_state(model):
    """Our state_dict under the same names (the official ones: conv1, bn1, conv2, bn2, fc1, bn3, fc2, bn4).
    A binary layer's latent weight is the official `weight.org`; the official layer convolves with
    `weight.data = binarize(org)`, a leaf whose .grad the training loop hands to the optimizer for the latent
    weight (identity STE). Weights and BN affine parameters get gradients, running stats are copies."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in BINARY_WEIGHTS:
        state[k] = official_binarize(state[k])
    for k, v in state.items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            v.requires_grad_()
    return state


# ------------------------------------------------------------------------------------------ setups
def build(sign_rule: str | None = None):
    """Our binary LeNet5 from the config (optionally with another sign rule), at PyTorch's fresh BatchNorm."""
    cfg = load_experiment(CONFIG, {"model.sign_rule": sign_rule} if sign_rule else None)
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, 1, 10, 28)  # MNIST: 1x28x28, 10 classes


def randomize_batchnorm(model):
    """Non-trivial BN scales and shifts: BN outputs then almost never sit exactly on 0."""
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)


def put_weights_in_band(model):
    """The first latent weights of every binary layer become exactly 0, -0 and values in (0, 2**-24]."""
    with torch.no_grad():
        for k in BINARY_WEIGHTS:
            model.get_parameter(k).view(-1)[:len(BAND)] = torch.tensor(BAND)


def batch(n: int = 50):
    torch.manual_seed(1)
    return torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


def run_both(cfg, model, x, y):
    """Ours and the official code on the same weights: an eval-mode forward (with the model's running
    statistics as they are), one train-mode forward/backward, and an eval-mode forward after the running
    statistics' update. Returns our and the official results side by side, and the official pre-sign
    activations of the first eval pass and of the train pass."""
    p = official_state(model)
    pre_eval, pre_train = [], []
    model.eval()
    with torch.no_grad():
        eval_logits, ref_eval_logits = model(x), official_lenet5(x, p, training=False, pre_sign=pre_eval)
    model.train()
    logits = model(x)
    loss = loss_function(cfg.train.loss)(logits, y)
    loss.backward()
    ref_logits = official_lenet5(x, p, training=True, pre_sign=pre_train)
    ref_loss = official_square_hinge(ref_logits, y)
    ref_loss.backward()
    model.eval()
    with torch.no_grad():
        eval_after, ref_eval_after = model(x), official_lenet5(x, p, training=False)
    ours = {"eval_logits": eval_logits, "logits": logits, "loss": loss, "eval_logits_after": eval_after}
    ref = {"eval_logits": ref_eval_logits, "logits": ref_logits, "loss": ref_loss, "eval_logits_after": ref_eval_after}
    return ours, ref, p, pre_train, pre_eval


def assert_bit_identical(model, ours, ref, p):
    for key in ours:
        assert torch.equal(ours[key], ref[key]), key
    params = dict(model.named_parameters())
    assert set(params) == {k for k, v in p.items() if v.requires_grad}
    for name, param in params.items():
        assert torch.equal(param.grad, p[name].grad), name
        assert param.grad.abs().sum() > 0, name  # the gradient really reaches every layer
    for name, buf in model.state_dict().items():  # running stats after one train-mode update
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(buf, p[name]), name


def zeros(tensors) -> int:
    return sum(int((t == 0).sum()) for t in tensors)


# ------------------------------------------------------------------------------------------ tests
def test_config_uses_the_published_sign_rule():
    cfg, model = build()
    assert cfg.model.sign_rule == "round_half_even"
    assert cfg.train.loss == "squared_hinge"
    for layer in (model.conv1, model.conv2, model.fc1, model.fc2, model.act1, model.act2, model.act3):
        assert layer.sign_rule == "round_half_even"


def test_matches_official_with_random_batchnorm():
    cfg, model = build()
    randomize_batchnorm(model)
    x, y = batch(8)
    ours, ref, p, _, _ = run_both(cfg, model, x, y)
    assert_bit_identical(model, ours, ref, p)


def test_matches_official_at_a_fresh_batchnorm():
    """Scale 1, shift 0, running mean 0 / var 1: integer conv2 and fc1 outputs land exactly on 0, where
    the official binarizer gives -1."""
    cfg, model = build()
    x, y = batch()
    ours, ref, p, pre_train, pre_eval = run_both(cfg, model, x, y)
    assert zeros(pre_eval) > 100 and zeros(pre_train) > 0  # the band is really exercised
    assert_bit_identical(model, ours, ref, p)


def test_matches_official_with_latent_weights_at_zero_and_in_the_band():
    cfg, model = build()
    put_weights_in_band(model)
    for k in BINARY_WEIGHTS:  # precondition: these weights are where the two rules differ
        w = model.get_parameter(k).detach().view(-1)[:len(BAND)]
        assert torch.equal(official_binarize(w), -torch.ones(len(BAND))), k
        assert torch.equal(sign(w), torch.ones(len(BAND))), k
    x, y = batch()
    ours, ref, p, _, _ = run_both(cfg, model, x, y)
    assert_bit_identical(model, ours, ref, p)


def test_the_default_sign_rule_differs_there():
    """Without the option (sign(0) = +1) the same checks fail: the option is what makes them pass."""
    cfg, model = build("zero_positive")
    assert model.act1.sign_rule == model.fc1.sign_rule == "zero_positive"
    x, y = batch()
    ours, ref, _, _, _ = run_both(cfg, model, x, y)  # fresh BatchNorm: zeros in the activations
    assert not torch.equal(ours["eval_logits"], ref["eval_logits"])

    cfg, model = build("zero_positive")
    randomize_batchnorm(model)  # activations off zero: only the weights in the band differ
    put_weights_in_band(model)
    ours, ref, _, pre_train, pre_eval = run_both(cfg, model, *batch(8))
    assert zeros(pre_train) == zeros(pre_eval) == 0
    assert not torch.equal(ours["logits"], ref["logits"])


def test_squared_hinge_on_a_hand_computed_example():
    z = torch.tensor([[0.5, -2.0, 1.5], [-0.5, 0.25, 3.0]], requires_grad=True)
    y = torch.tensor([2, 0])
    # sample 0, targets (-1, -1, +1): margins 1.5, -1, -0.5 -> 2.25 + 0 + 0 = 2.25
    # sample 1, targets (+1, -1, -1): margins 1.5, 1.25, 4  -> 2.25 + 1.5625 + 16 = 19.8125; mean 11.03125
    loss = loss_function("squared_hinge")(z, y)
    assert loss.item() == 11.03125
    assert official_square_hinge(z.detach(), y, num_outputs=3).item() == 11.03125
    loss.backward()  # d/dz = -2 t max(0, 1 - t z) / batch
    assert torch.equal(z.grad, torch.tensor([[1.5, 0.0, 0.0], [-1.5, 1.25, 4.0]]))


def test_the_two_sign_rules_on_hand_picked_values():
    t = torch.tensor([-1e-3, -0.0, 0.0, 1e-8, 2.0 ** -24, 2.0 ** -23, 1e-3, 2.0, -2.0])
    assert official_binarize(t).tolist() == [-1, -1, -1, -1, -1, 1, 1, 1, -1]
    assert sign(t, "round_half_even").tolist() == [-1, -1, -1, -1, -1, 1, 1, 1, -1]
    assert sign(t).tolist() == [-1, 1, 1, 1, 1, 1, 1, 1, -1]
    with pytest.raises(ValueError, match="Unknown sign rule"):
        sign(t, "round_half_up")


# ------------------------------------------------------------------------------ VGGNet7, binary
VGG_CONFIG = CONFIG.parent / "binary_cifar10.yml"
VGG_BINARY_WEIGHTS = tuple(f"conv{i}.weight" for i in range(1, 7)) + ("fc1.weight", "fc2.weight", "fc3.weight")


def official_same_replicate(x):
    """BinaryConv2d_pad's padding for a 3x3 kernel at stride 1: total 2 per dimension (no odd extra row),
    one replicated edge row/column on each side (F.pad with mode='replicate')."""
    return F.pad(x, [1, 1, 1, 1], mode="replicate")


def official_vggnet7(x, p, training):
    """VGGNet7_binary.forward_cpba: conv1 (valid) -> BN -> act; conv2-6 (SAME, replicate) -> [maxpool after
    conv2, conv4, conv6] -> BN -> act; fc1, fc2 -> BN -> act; fc3 -> BN1d(10, affine=False)."""
    def bn(x, name):
        return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p.get(f"{name}.weight"),
                            p.get(f"{name}.bias"), training, 0.1, 1e-5)
    x = official_act(bn(F.conv2d(x, p["conv1.weight"]), "bn1"))
    for i in range(2, 7):
        x = F.conv2d(official_same_replicate(x), p[f"conv{i}.weight"])
        x = official_act(bn(F.max_pool2d(x, (2, 2)) if i % 2 == 0 else x, f"bn{i}"))
    x = official_act(bn(F.linear(x.view(x.shape[0], -1), p["fc1.weight"]), "bn7"))
    x = official_act(bn(F.linear(x, p["fc2.weight"]), "bn8"))
    return bn(F.linear(x, p["fc3.weight"]), "bn9")


def test_binary_vggnet7_matches_official_except_the_padding_backward():
    """At a fresh BatchNorm, with latent weights in the band: logits, loss and BN statistics are
    bit-identical. Gradients are bit-identical down to conv6's weight and bn6; below that they pass through
    the replicate padding's backward, which adds the border gradients in another order than F.pad's (see
    bnnrepro.nn.layers.replicate_pad), so they agree only up to float rounding."""
    cfg = load_experiment(VGG_CONFIG, {"model.width": 0.125})
    assert cfg.model.sign_rule == "round_half_even" and cfg.train.loss == "cross_entropy"
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 10, 32)
    with torch.no_grad():
        for k in VGG_BINARY_WEIGHTS:
            model.get_parameter(k).view(-1)[:len(BAND)] = torch.tensor(BAND)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in VGG_BINARY_WEIGHTS:
        state[k] = official_binarize(state[k])
    p = {k: v.requires_grad_() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")) else v
         for k, v in state.items()}
    torch.manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (16,))

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), official_vggnet7(x, p, training=False))
    model.train()
    loss = loss_function(cfg.train.loss)(model(x), y)
    ref_loss = F.cross_entropy(official_vggnet7(x, p, training=True), y)
    assert torch.equal(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    exact = {"conv6.weight", "bn6.weight", "bn6.bias", "fc1.weight", "bn7.weight", "bn7.bias", "fc2.weight",
             "bn8.weight", "bn8.bias", "fc3.weight"}
    for name, param in model.named_parameters():
        if name in exact:
            assert torch.equal(param.grad, p[name].grad), name
        else:  # below the padding of conv6 (and conv2-5)
            torch.testing.assert_close(param.grad, p[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buf in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(buf, p[name]), name
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), official_vggnet7(x, p, training=False))
