"""BatchLoader: one pass over the data per epoch, reproducible shuffling, scaling and augmentation."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from bnnrepro.data.batches import Augment, BatchLoader, epoch_generator, random_crop, random_flip


def dataset(n: int = 103, c: int = 1, h: int = 6, w: int = 5):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # sample id, to follow samples through batches
    labels = torch.arange(n, dtype=torch.int64) % 7
    return images, labels


def ids(loader) -> list[int]:
    return [int(i) for x, _ in loader for i in x[:, 0, 0, 0].round()]


def test_one_epoch_covers_every_sample_once():
    images, labels = dataset()
    loader = BatchLoader(images, labels, 10, max_value=1, shuffle=True, seed=4)
    assert len(loader) == 11
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    seen = torch.cat([y for _, y in batches])
    assert Counter(seen.tolist()) == Counter(labels.tolist())
    assert sorted(ids(loader)) == list(range(len(labels)))
    for x, y in batches:  # images and labels stay paired
        assert torch.equal(y, labels[x[:, 0, 0, 0].round().long()])


def test_shuffle_depends_on_seed_and_epoch_only():
    images, labels = dataset()
    a = BatchLoader(images, labels, 16, max_value=1, shuffle=True, seed=4)
    b = BatchLoader(images, labels, 16, max_value=1, shuffle=True, seed=4)
    a.set_epoch(3)
    b.set_epoch(3)
    assert ids(a) == ids(b)
    assert ids(a) == ids(a)  # iterating again gives the same epoch
    first = ids(a)
    a.set_epoch(4)
    assert ids(a) != first and sorted(ids(a)) == sorted(first)
    c = BatchLoader(images, labels, 16, max_value=1, shuffle=True, seed=5)
    c.set_epoch(3)
    assert ids(c) != first
    assert first != list(range(len(labels)))


def test_no_shuffle_keeps_order():
    images, labels = dataset()
    loader = BatchLoader(images, labels, 16, max_value=1)
    assert ids(loader) == list(range(len(labels)))
    assert torch.equal(torch.cat([y for _, y in loader]), labels)


def test_scaling_and_normalization():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).repeat(1, 3, 2, 2)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.2, 1.0)
    loader = BatchLoader(images, torch.zeros(3, dtype=torch.int64), 8, max_value=255, mean=mean, std=std)
    (x, _), = list(loader)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 2, 2)
    assert x.is_contiguous(memory_format=torch.channels_last)
    for i, v in enumerate((0.0, 0.2, 1.0)):
        for c in range(3):
            assert torch.allclose(x[i, c], torch.full((2, 2), (v - mean[c]) / std[c]), atol=1e-6)
    assert torch.allclose(x[2, 0], torch.full((2, 2), (1 - 0.5) / 0.5))  # uint8 255 -> (1 - mean) / std
    assert images.dtype == torch.uint8 and int(images.max()) == 255  # the stored data is untouched


def test_digits_scale():
    images = torch.full((2, 1, 8, 8), 16, dtype=torch.uint8)
    (x, _), = list(BatchLoader(images, torch.zeros(2, dtype=torch.int64), 2, max_value=16))
    assert torch.allclose(x, torch.ones_like(x))


def test_stored_images_are_not_modified_by_iteration():
    images, labels = dataset()
    before = images.clone()
    loader = BatchLoader(images, labels, 32, max_value=255, mean=(0.3,), std=(0.7,),
                         augment=Augment(flip=True, crop_padding=2), shuffle=True)
    list(loader)
    list(loader)
    assert torch.equal(loader.images, before)


def arange_batch(n: int = 32, c: int = 2, h: int = 5, w: int = 7) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w) + 1  # no zeros: padding shows


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_random_crop_cuts_a_window_of_the_padded_batch(pad_mode):
    x = arange_batch()
    p = 2
    n, _, h, w = x.shape
    out = random_crop(x, p, pad_mode, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = F.pad(x, (p,) * 4, mode=pad_mode)
    offsets = set()
    for i in range(n):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert len(matches) == 1, f"sample {i} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary between samples


def test_random_crop_constant_pads_with_zeros_and_replicate_with_edges():
    x = arange_batch(n=64)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    zero = random_crop(x, 3, "constant", gen())
    edge = random_crop(x, 3, "replicate", gen())
    assert (zero == 0).any() and (x != 0).all()  # zero padding entered some crops
    assert not (edge == 0).any()                 # edge padding never creates new values ...
    assert set(edge.unique().tolist()) <= set(x.unique().tolist())
    # ... and the same offsets were drawn: where the constant crop shows the image, both agree
    inside = zero != 0
    assert torch.equal(zero[inside], edge[inside])
    # a crop shifted fully to one corner repeats the edge row/column of the source
    padded = F.pad(x, (3,) * 4, mode="replicate")
    assert torch.equal(padded[:, :, 0, 3:-3], x[:, :, 0, :]) and torch.equal(padded[:, :, 3:-3, 0], x[:, :, :, 0])


def test_random_crop_without_padding_is_identity():
    x = arange_batch()
    assert torch.equal(random_crop(x, 0, "constant", torch.Generator().manual_seed(0)), x)


def test_random_flip_flips_some_samples_exactly():
    x = arange_batch(n=64)
    out = random_flip(x, torch.Generator().manual_seed(3))
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    kept = [torch.equal(o, s) for o, s in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is either flipped or left as is
    assert 10 < sum(flipped) < 54


def test_augmentation_is_reproducible_per_epoch():
    images, labels = dataset(n=40, c=3, h=8, w=8)
    aug = Augment(flip=True, crop_padding=2, pad_mode="replicate")
    assert aug.active and not Augment().active

    def epoch(seed, e):
        loader = BatchLoader(images, labels, 16, max_value=255, augment=aug, shuffle=True, seed=seed)
        loader.set_epoch(e)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch(1, 2), epoch(1, 2))
    assert not torch.equal(epoch(1, 2), epoch(1, 3))


def test_epoch_generator_is_deterministic():
    a = torch.rand(5, generator=epoch_generator(3, 7))
    b = torch.rand(5, generator=epoch_generator(3, 7))
    c = torch.rand(5, generator=epoch_generator(3, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_batch_size():
    images, labels = dataset()
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(images, labels, 0, max_value=255)


def test_fixed_order_repeats_the_samplers_permutation_every_epoch():
    """data.order: fixed is the order of a DistributedSampler whose epoch is never set (BinSFO's code):
    torch's own sampler on one process gives the same indices, in epoch 1 as in epoch 2."""
    from torch.utils.data.distributed import DistributedSampler

    images, labels = dataset()
    loader = BatchLoader(images, labels, 16, max_value=1, shuffle=True, order="fixed", seed=4)
    loader.set_epoch(1)
    first = ids(loader)
    loader.set_epoch(2)
    assert ids(loader) == first and sorted(first) == list(range(len(labels)))
    sampler = DistributedSampler(range(len(labels)), num_replicas=1, rank=0, shuffle=True, seed=4)
    assert first == list(sampler)
    per_epoch = BatchLoader(images, labels, 16, max_value=1, shuffle=True, seed=4)
    per_epoch.set_epoch(1)
    one = ids(per_epoch)
    per_epoch.set_epoch(2)
    assert ids(per_epoch) != one  # the default still reshuffles
    with pytest.raises(ValueError, match="order"):
        BatchLoader(images, labels, 16, max_value=1, order="once")


def test_fixed_order_keeps_drawing_new_augmentations():
    images, labels = dataset(c=3, h=8, w=8)
    loader = BatchLoader(images, labels, 16, max_value=1, shuffle=True, order="fixed", seed=4,
                         augment=Augment(flip=True, crop_padding=2))
    loader.set_epoch(1)
    one = torch.cat([x for x, _ in loader])
    loader.set_epoch(2)
    two = torch.cat([x for x, _ in loader])
    assert not torch.equal(one, two)
    loader.set_epoch(1)
    assert torch.equal(torch.cat([x for x, _ in loader]), one)
