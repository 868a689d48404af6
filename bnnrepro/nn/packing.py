"""Binary weights held at 1 bit each between optimizer steps (docs/bws.md#packed-weights).

A flip optimizer (optim/flip.py) keeps no latent weights, so the sign is all a binary weight has to
remember from one step to the next. `PackedBinaryWeights` keeps it that way in memory, not only on
paper: between steps each tensor lives as its sign bits, 8 per uint8 byte, and the parameter itself is
an empty tensor; for forward + backward + step it is unpacked to float +-1 and packed again after.
Comparing the bits of one packing with those of the next also counts the weights the step flipped.

    packed = PackedBinaryWeights(flip_params)    # after the optimizer has set them to +-1
    packed.pack_()
    for x, y in batches:
        with packed.unpacked():                  # float +-1 only inside; gradients dropped on exit
            loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()

With train.memory_efficient, `unpacked_just_in_time` narrows "inside" to one layer at a time: its forward,
and its update inside backward.

Bit layout: element i of the flattened tensor is bit i % 8 (least significant first) of byte i // 8,
1 for +1 and 0 for -1, zero-padded to whole bytes: the same bytes as numpy.packbits(bitorder="little")
and export.pack_signs, computed with torch ops on the tensor's own device.
"""

from __future__ import annotations

from contextlib import contextmanager
from numbers import Number

import torch


# Multiplying a 64-bit word whose 8 bytes are each 0 or 1 by this constant moves byte k to bit 56 + k
# (the shifts 56 - 7k never collide, so nothing carries): the top byte is then the 8 bits, first byte lowest.
_GATHER_BYTES = 0x0102040810204080


def pack_signs(w: torch.Tensor) -> torch.Tensor:
    """uint8 tensor of ceil(numel / 8) bytes: the signs of w (sign(0) = +1), 8 per byte."""
    return pack_bits_(w.detach().flatten() >= 0)  # sign(w) > 0, with sign(0) = sign(-0.0) = +1


def pack_bits_(mask: torch.Tensor) -> torch.Tensor:
    """uint8 tensor of ceil(numel / 8) bytes: the bool tensor `mask`, flattened in its index order, 8 per
    byte. The packing works in mask's own memory: pass a bool tensor made for it (it is overwritten)."""
    bits = mask.flatten()
    if bits.numel() % 8:
        bits = torch.cat([bits, bits.new_zeros(-bits.numel() % 8)])
    words = bits.view(torch.uint8).view(torch.int64)  # 8 bools (bytes 0/1) per 64-bit word, a fresh tensor
    return words.mul_(_GATHER_BYTES).bitwise_right_shift_(56).to(torch.uint8)


_SIGNS_OF_BYTE: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _signs_of_byte(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """256 x 8 table: row b holds the +-1 values of the 8 bits of byte b, least significant first."""
    key = (dtype, device)
    if key not in _SIGNS_OF_BYTE:
        bits = torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device) & 1
        _SIGNS_OF_BYTE[key] = (bits * 2 - 1).to(dtype)
    return _SIGNS_OF_BYTE[key]


def unpack_signs(packed: torch.Tensor, shape: torch.Size | tuple[int, ...],
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The +-1 tensor of `shape` whose signs `packed` holds (inverse of pack_signs): one table lookup
    per byte writes its 8 values (index_select: about three times faster than table[index] on the CPU)."""
    n = torch.Size(shape).numel()
    return _signs_of_byte(dtype, packed.device).index_select(0, packed.int()).flatten()[:n].reshape(shape)


_BITS_OF_BYTE: dict[torch.device, torch.Tensor] = {}


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The bool tensor of `shape` that `packed` holds (inverse of pack_bits_)."""
    if packed.device not in _BITS_OF_BYTE:
        _BITS_OF_BYTE[packed.device] = _signs_of_byte(torch.int8, packed.device) > 0
    n = torch.Size(shape).numel()
    return _BITS_OF_BYTE[packed.device].index_select(0, packed.int()).flatten()[:n].reshape(shape)


_ONES_IN_BYTE: dict[torch.device, torch.Tensor] = {}


def count_changed_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bits differ between two uint8 tensors of one shape (a 0-d int64 tensor): the number of
    weights whose sign differs, for two pack_signs of the same tensor."""
    if a.device not in _ONES_IN_BYTE:
        _ONES_IN_BYTE[a.device] = torch.tensor([bin(v).count("1") for v in range(256)], device=a.device)
    return _ONES_IN_BYTE[a.device].index_select(0, torch.bitwise_xor(a, b).int()).sum()


class PackedBinaryWeights:
    """Moves a set of +-1 parameters between float (`unpack_`) and sign bits (`pack_`), and counts the
    signs that changed in between (`sign_changes`, summed over every unpack-pack round)."""

    def __init__(self, params):
        self.params = list(params)
        self._slot = {id(p): i for i, p in enumerate(self.params)}
        self.shapes = [p.shape for p in self.params]
        # the signs as of the last pack_; kept while unpacked (1/32 of the float weights) to count flips
        self.bits: list[torch.Tensor | None] = [None] * len(self.params)
        self.formats = [torch.contiguous_format] * len(self.params)
        self.is_packed = False
        self.sign_changes: torch.Tensor | None = None  # 0-d int64, None before the first repacking
        self.on_unpack = None  # called with each parameter just unpacked (the memory report files it as a weight)

    @torch.no_grad()
    def pack_(self) -> None:
        """Store the signs; the parameters become empty tensors and their gradients are freed."""
        if self.is_packed:
            return
        for i in range(len(self.params)):
            self._pack(i)
        self.is_packed = True

    @torch.no_grad()
    def unpack_(self) -> None:
        """Restore every parameter to float +-1, in its former memory format, from its sign bits."""
        if not self.is_packed:
            return
        for i in range(len(self.params)):
            self._unpack(i)
        self.is_packed = False

    @contextmanager
    def unpacked(self):
        self.unpack_()
        try:
            yield self
        finally:
            self.pack_()

    @contextmanager
    def unpacked_just_in_time(self, layers):
        """Within (packed weights, train.memory_efficient; docs/memory.md#weights-just-in-time): a weight is
        float +-1 only while the forward of its layer (one of `layers`) runs, and again from the moment its
        gradient arrives in backward until `pack_updated` packs its new value (the optimizer's after-update
        callback), so the float weights of all layers never exist together. Backward needs no weight of
        this set: the identity STE keeps nothing and the layers save their +-1 weights themselves."""
        if not self.is_packed:
            raise RuntimeError("unpacked_just_in_time starts from packed weights: call pack_() first")
        handles = []
        for layer in layers:
            i = self._slot.get(id(layer.weight))
            if i is None:
                continue
            handles += [layer.register_forward_pre_hook(lambda module, args, i=i: self._unpack(i)),
                        layer.register_forward_hook(lambda module, args, out, i=i: self._drop(i)),
                        self.params[i].register_hook(lambda grad, i=i: self._unpack(i))]  # before accumulation
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for i, p in enumerate(self.params):  # updated after backward (no after-update callback)
                if p.numel():
                    self._pack(i)

    @torch.no_grad()
    def pack_updated(self, p: torch.Tensor) -> None:
        """p (one of the weights, unpacked just in time) holds its new value: store its signs, free it."""
        self._pack(self._slot[id(p)])

    def _pack(self, i: int) -> None:
        p = self.params[i]
        self.shapes[i], self.formats[i] = p.shape, _memory_format(p)
        bits = pack_signs(p)
        if self.bits[i] is not None:
            changed = count_changed_bits(bits, self.bits[i])
            self.sign_changes = changed if self.sign_changes is None else self.sign_changes + changed
        self.bits[i] = bits
        self._drop(i)
        p.grad = None

    def _unpack(self, i: int) -> None:
        p = self.params[i]
        p.data = unpack_signs(self.bits[i], self.shapes[i], p.dtype).contiguous(memory_format=self.formats[i])
        if self.on_unpack is not None:
            self.on_unpack(p)

    def _drop(self, i: int) -> None:
        """The float copy goes; its values are the bits'. A fresh empty tensor, not a view of the old
        storage, so that the storage is freed."""
        p = self.params[i]
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def num_weights(self) -> int:
        return sum(shape.numel() for shape in self.shapes)

    def weight_bytes(self) -> int:
        """Bytes the weights occupy now: the sign bits, plus the float tensors that are unpacked."""
        return sum(_nbytes(b) for b in self.bits if b is not None) + sum(_nbytes(p) for p in self.params)


def _memory_format(p: torch.Tensor) -> torch.memory_format:
    """channels_last for conv weights stored that way (train.py's model.to(channels_last)), else contiguous."""
    if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _nbytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    return 8 if isinstance(value, Number) else 0  # a Python int or float: counted as one 64-bit word


def resident_bytes(packed: PackedBinaryWeights, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """Live memory of the weights and of the optimizer's state for them, measured from the tensors.

    Between steps, with a flip optimizer: ceil(n/8) bytes per tensor plus a few scalars per tensor,
    so bits_per_weight -> 1 for large tensors. Gradients and activations are transient (not counted)."""
    state_bytes = 0
    if optimizer is not None:
        state_bytes = sum(_nbytes(v) for p in packed.params for v in optimizer.state.get(p, {}).values())
    n, weights = packed.num_weights(), packed.weight_bytes()
    return {"weights": n, "weight_bytes": weights, "optimizer_state_bytes": state_bytes,
            "bits_per_weight": 8 * (weights + state_bytes) / n if n else float("nan")}
