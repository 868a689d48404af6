"""Training batches drawn from in-memory uint8 tensors, augmented a whole batch at a time.

This replaces a torchvision DataLoader with per-sample PIL transforms: one index gather, one
float conversion and a few tensor ops per batch. Shuffling and augmentation draw from a generator
seeded by (seed, epoch), so epoch k looks the same whether or not the run was resumed before it.

Two training orders: `per_epoch` shuffles anew every epoch; `fixed` draws one permutation from a
generator seeded with the seed alone and reuses it every epoch. `fixed` is the order of BinSFO's code,
whose DistributedSampler never has its epoch set: on one process it is exactly that sampler's
permutation, torch.randperm(n) under manual_seed(seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Random horizontal flip and random crop after padding, both per sample (torchvision semantics)."""

    flip: bool = False
    crop_padding: int = 0
    pad_mode: str = "constant"  # "constant" (zeros) or "replicate" (edge), as torchvision's padding_mode

    @property
    def active(self) -> bool:
        return self.flip or self.crop_padding > 0


ORDERS = ("per_epoch", "fixed")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def fixed_permutation(n: int, seed: int) -> torch.Tensor:
    """The permutation torch's DistributedSampler(shuffle=True, seed=seed) draws at epoch 0 on one process."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images resized to size x size (bilinear, antialiased, rounded back to uint8); size 0, or the
    images' own size, returns them unchanged. BinSFO feeds MNIST to its MLP at 64 x 64 (torchvision's
    Resize on PIL images, also bilinear).

    The kernel is torch's antialiased bilinear interpolation on uint8, the one torchvision's resize calls on
    x86 CPUs with AVX2 (the same bytes). Called directly, it spares every training process the import of
    torchvision (about 165 MiB resident). Each image is resized on its own, so a batch at a time gives the
    same bytes as the whole dataset at once, without a resized copy of the dataset in memory (the 64 x 64
    MNIST would be 5 times the 28 x 28 one)."""
    if size == 0 or images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int, pad_mode: str, gen: torch.Generator) -> torch.Tensor:
    """Pad the batch, then cut one H x W window per sample at a random offset in [0, 2*padding]."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=pad_mode)
    dy, dx = (torch.randint(0, 2 * padding + 1, (2, n), generator=gen)).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n,1,1,w
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class BatchLoader:
    """Iterate over (images, labels) batches: images float32 in channels_last layout, resized (`resize`,
    see resize_images), scaled to [0, 1], augmented, then normalized."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, max_value: int,
                 mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,), augment: Augment = Augment(),
                 shuffle: bool = False, order: str = "per_epoch", seed: int = 0, resize: int = 0,
                 device: str | torch.device = "cpu"):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if resize < 0:
            raise ValueError(f"resize must be 0 (native size) or a size in pixels, got {resize}")
        self.device = torch.device(device)
        # a resized batch is drawn and resized on the CPU, where torch has the uint8 kernel, then moved
        self.resize = 0 if resize == images.shape[-1] == images.shape[-2] else resize
        self.images = images if self.resize else images.to(device)
        self.labels = labels.to(self.images.device)
        self.batch_size, self.shuffle, self.order, self.seed, self.augment = batch_size, shuffle, order, seed, augment
        self.max_value = max_value
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        gen = epoch_generator(self.seed, self.epoch)  # augmentation (and the per-epoch shuffle)
        n = len(self.labels)
        order = None
        if self.shuffle:
            perm = fixed_permutation(n, self.seed) if self.order == "fixed" else torch.randperm(n, generator=gen)
            order = perm.to(self.images.device)
        for start in range(0, n, self.batch_size):
            idx = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            yield self._transform(self.images[idx], gen), self.labels[idx].to(self.device)

    def _transform(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = resize_images(images, self.resize).to(self.device)
        # divided, not multiplied by 1 / max_value: torchvision's ToTensor (the published pipelines') divides, and
        # x * (1/255) differs from x / 255 in the last bit for 126 of the 256 pixel values (docs/rwth.md)
        x = images.float() / self.max_value  # not in place: float images would alias the dataset
        if self.augment.flip:
            x = random_flip(x, gen)
        if self.augment.crop_padding:
            x = random_crop(x, self.augment.crop_padding, self.augment.pad_mode, gen)
        return ((x - self.mean) / self.std).to(memory_format=torch.channels_last)
