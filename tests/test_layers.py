"""replicate_pad: the values and gradients of F.pad(mode="replicate"), from deterministic ops."""

import pytest
import torch
import torch.nn.functional as F

from bnnrepro.nn.layers import replicate_pad


@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 1, 0, 1), (2, 1, 0, 3), (0, 0, 0, 0)])
def test_replicate_pad_matches_torch(pads):
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ours, ref = replicate_pad(x, *pads), F.pad(x, pads, mode="replicate")
    assert torch.equal(ours, ref)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)
