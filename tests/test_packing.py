"""1-bit storage of binary weights between optimizer steps (bnnrepro.nn.packing, docs/bws.md#packed-weights)."""

import numpy as np
import torch
import torch.nn.functional as F

from bnnrepro.models import ModelConfig, build_model
from bnnrepro.nn.packing import PackedBinaryWeights, count_changed_bits, pack_signs, resident_bytes, unpack_signs
from bnnrepro.optim.flip import FlipOptimizer


def large_fcn():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="mlp", depth=4, hidden=128, bias=False), 1, 10, 28)


def test_pack_by_hand():
    w = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 0.0, -0.0, -3.0])
    # byte 0: bits 0,3,4,5 -> 1 + 8 + 16 + 32 = 57; byte 1: bits 0,1,2 (sign(0) = +1) -> 7, zero-padded
    assert pack_signs(w).tolist() == [57, 7]
    assert pack_signs(w).dtype == torch.uint8


def test_round_trip_and_numpy_packbits_layout():
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (8,), (9,), (10, 13), (4, 5, 3, 3), (1000, 37), (64, 32, 3, 3)]:  # vector and tail paths
        b = torch.randn(shape, generator=gen).sign()
        packed = pack_signs(b)
        assert packed.numel() == -(-b.numel() // 8)
        assert torch.equal(unpack_signs(packed, b.shape), b)
        # the byte layout of the shipped checkpoints: numpy.packbits(bitorder="little") of the +1 positions
        assert packed.tolist() == np.packbits((b > 0).numpy(), bitorder="little").tolist()


def test_every_byte_value_round_trips():
    # all 256 bit patterns, once each: the packing and the unpacking tables agree with numpy on each
    bits = torch.from_numpy(np.unpackbits(np.arange(256, dtype=np.uint8), bitorder="little").astype(bool))
    b = torch.where(bits, 1.0, -1.0)
    assert pack_signs(b).tolist() == list(range(256))
    assert torch.equal(unpack_signs(pack_signs(b), b.shape), b)


def test_count_changed_bits_by_hand():
    a = torch.tensor([0b0000_0000, 0b1111_1111, 0b1010_1010], dtype=torch.uint8)
    b = torch.tensor([0b0000_0001, 0b0000_1111, 0b0101_0101], dtype=torch.uint8)
    assert count_changed_bits(a, b).item() == 1 + 4 + 8
    assert count_changed_bits(a, a).item() == 0


def test_repacking_counts_the_weights_whose_sign_changed():
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0]))
    packed = PackedBinaryWeights([w])
    packed.pack_()
    assert packed.sign_changes is None  # nothing to compare with yet
    with packed.unpacked():
        w.data[[0, 1, 9]] *= -1  # three flips, one in the zero-padded tail byte
    with packed.unpacked():
        w.data[0] *= -1
    assert packed.sign_changes.item() == 4


def test_packed_model_holds_one_bit_per_weight():
    model = large_fcn()
    opt = FlipOptimizer(model.parameters(), lr=10.0)
    before = [p.detach().clone() for p in model.parameters()]
    packed = PackedBinaryWeights(model.parameters())
    packed.pack_()
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == 0  # no float weights left
    assert sum(b.numel() * b.element_size() for b in packed.bits) == 134_400 // 8
    report = resident_bytes(packed, opt)
    assert report["weights"] == 134_400 and report["weight_bytes"] == 16_800
    assert 1.0 < report["bits_per_weight"] < 1.01  # plus a few scalars per tensor (step, index, tau)
    packed.unpack_()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert resident_bytes(packed)["weight_bytes"] == 4 * 134_400 + 16_800  # the bits stay, to count flips


def test_packed_training_equals_unpacked_training():
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 10
    results = []
    for use_packing in (False, True):
        model = large_fcn()
        opt = FlipOptimizer(model.parameters(), lr=10.0, seed=3)
        packed = PackedBinaryWeights(model.parameters())
        if use_packing:
            packed.pack_()
        for _ in range(3):
            with packed.unpacked() if use_packing else torch.enable_grad():
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            if use_packing:
                assert packed.is_packed and all(p.grad is None for p in model.parameters())
        packed.unpack_()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_channels_last_weights_come_back_channels_last():
    w = torch.nn.Parameter(torch.randn(8, 3, 3, 3).sign().contiguous(memory_format=torch.channels_last))
    packed = PackedBinaryWeights([w])
    before = w.detach().clone()
    packed.pack_()
    packed.unpack_()
    assert torch.equal(w, before) and w.is_contiguous(memory_format=torch.channels_last)
