"""The BWS / BinSFO multilayer perceptron (docs/bws.md#mlp, docs/binsfo.md#mlp-on-mnist)."""

import dataclasses

import pytest
import torch
import torch.nn as nn

from bnnrepro.models import ModelConfig, build_model
from bnnrepro.nn.layers import QuantAct, QuantLinear

NEW_FIELDS = ("depth", "hidden", "bn_affine", "bn_out")


def mlp(in_channels=1, num_classes=10, image_size=28, **flags):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="mlp", **flags), in_channels, num_classes, image_size)


def linears(model):
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


@pytest.mark.parametrize("shape, classes, features", [((1, 8, 8), 10, 64), ((1, 28, 28), 10, 784),
                                                      ((1, 64, 64), 10, 4096), ((3, 32, 32), 100, 3072)])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_output_shapes(shape, classes, features, depth):
    model = mlp(shape[0], classes, shape[1], depth=depth, hidden=16)
    assert model(torch.randn(5, *shape)).shape == (5, classes)
    sizes = [(m.in_features, m.out_features) for m in linears(model)]
    assert sizes == list(zip([features] + [16] * (depth - 1), [16] * (depth - 1) + [classes]))


def test_large_fcn_has_134400_binary_weights_and_no_real_parameters():
    """BWS Exp. 5.1: depth 4, hidden 128, no bias, no BN affine, output BN."""
    model = mlp(depth=4, hidden=128, bias=False, bn_affine=False, bn_out=True)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == 784 * 128 + 2 * 128 * 128 + 128 * 10 == 134_400
    assert {id(p) for p in params} == {id(m.weight) for m in linears(model)}
    assert all(m.precision == "binary" for m in linears(model))
    assert list(model.buffers()) == []  # no running statistics


def test_bias_and_affine_flags():
    model = mlp(depth=4, hidden=128, bias=True, bn_affine=True)
    binary = {id(m.weight) for m in linears(model)}
    n_real = sum(p.numel() for p in model.parameters() if id(p) not in binary)
    assert n_real == (3 * 128 + 10) + 3 * 2 * 128  # biases + hidden BN scale and shift (output BN: none)
    assert all(torch.all(m.bias == 0) for m in linears(model))


def test_init_and_layers():
    model = mlp(depth=3, hidden=256)
    w = torch.cat([m.weight.flatten() for m in linears(model)])
    assert w.std().item() == pytest.approx(0.01, rel=0.02) and abs(w.mean().item()) < 1e-3
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    assert len(acts) == 2 and all(a.estimator == "bnn" for a in acts)  # clipped STE (docs/bws.md#clipped-ste)
    fp = mlp(depth=3, weights="fp", activations="relu", batchnorm=False, bn_out=False)
    assert all(m.precision == "fp" for m in linears(fp))
    assert sum(isinstance(m, nn.ReLU) for m in fp.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fp.modules())


def test_batch_statistics_also_in_eval_mode():
    model = mlp(depth=4, hidden=32)
    x = torch.randn(16, 1, 28, 28)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    torch.testing.assert_close(eval_out, train_out)
    # a sample's logits depend on the rest of its batch
    other = torch.cat([x[:1], torch.randn(15, 1, 28, 28) * 3])
    assert not torch.allclose(model(other)[0], eval_out[0])


def test_bad_flags_raise():
    for flags in [dict(depth=0), dict(hidden=0), dict(width=2.0), dict(bn_scale=False), dict(layer_order="CBAP")]:
        with pytest.raises(ValueError):
            mlp(**flags)


def test_new_model_fields_leave_existing_digests_alone():
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert [defaults[k] for k in NEW_FIELDS] == [4, 1024, False, True]
