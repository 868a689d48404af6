"""The training loop shared by every experiment.

fit() builds the run from its config, trains epoch by epoch, validates after each epoch, keeps the
best-validation weights, checkpoints after every epoch (resuming from the checkpoint when one
exists), and finally evaluates the best weights on the test split.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bnnrepro.config import ConfigError, DataConfig, ExperimentConfig
from bnnrepro.data.batches import Augment, BatchLoader
from bnnrepro.data.download import mirror_from_env
from bnnrepro.data.prepared import Dataset
from bnnrepro.engine.checkpoint import load_checkpoint, save_checkpoint
from bnnrepro.engine.distributed import Ranks, wrap
from bnnrepro.engine.losses import bin_regularizer, loss_function
from bnnrepro.errors import InputError
from bnnrepro.models import build_model
from bnnrepro.models.pretrained import load_pretrained
from bnnrepro.nn.layers import (clip_latent_weights_, init_latent_weights_, memory_efficient_activations,
                                quantized_layers)
from bnnrepro.nn.packing import PackedBinaryWeights
from bnnrepro.optim import TrainingOptimizers, build_optimizers
from bnnrepro.runtime import reuse_freed_memory, seed_everything, set_deterministic

log = logging.getLogger(__name__)


@dataclass
class Loaders:
    train: BatchLoader
    val: BatchLoader
    test: BatchLoader


@dataclass
class FitResult:
    model: nn.Module  # holding the best-validation weights
    history: list[dict[str, float]]
    best_epoch: int
    best_val_top1: float
    test: dict[str, float]
    train_seconds: float
    resumed_from_epoch: int = 0
    shortened_epoch: int | None = None  # steps per epoch when train.max_steps cut each epoch short
    extra: dict[str, Any] = field(default_factory=dict)


def make_loaders(cfg: DataConfig, dataset: Dataset, seed: int, device: torch.device) -> Loaders:
    """Train/val split as RWTH: validation is the last `val_size` training images; with
    val_size 0 the test split doubles as validation (as in the SGDAT and BWS codes)."""
    n = len(dataset.train_labels)
    if not 0 <= cfg.val_size < n:
        raise ValueError(f"data.val_size must be in [0, {n}), got {cfg.val_size}")
    cut = n - cfg.val_size
    augment = Augment(cfg.flip, cfg.crop_padding, cfg.pad_mode)
    common = dict(max_value=dataset.max_value, mean=tuple(cfg.mean), std=tuple(cfg.std), resize=cfg.resize,
                  device=device)
    train = BatchLoader(dataset.train_images[:cut], dataset.train_labels[:cut], cfg.batch_size, augment=augment,
                        shuffle=True, order=cfg.order, seed=seed, **common)
    test = BatchLoader(dataset.test_images, dataset.test_labels, cfg.eval_batch_size, **common)
    if cfg.val_size == 0:
        return Loaders(train, test, test)
    val = BatchLoader(dataset.train_images[cut:], dataset.train_labels[cut:], cfg.eval_batch_size,
                      augment=augment if cfg.augment_val else Augment(), seed=seed + 1, **common)
    return Loaders(train, val, test)


# How exactly tied logits are ranked when accuracy is counted (train.tie_break). Binary networks tie often:
# integer dot products through a BatchNorm give equal logits for hundreds of test images.
TIE_BREAKS = ("topk", "first_max")


def top_classes(logits: torch.Tensor, k: int, tie_break: str = "topk") -> torch.Tensor:
    """The k best classes of each row, best first.

    topk: torch.topk's order, which leaves the order of tied logits unspecified. first_max: tied logits
    rank by class index, lowest first, so column 0 is torch.max(1)'s index, the first maximal one (the
    RWTH code counts correct predictions with `output.max(1)`), and top-5 ranks ties the same way; a
    stable descending sort gives exactly that."""
    if tie_break == "topk":
        return logits.topk(k, dim=1).indices
    if tie_break == "first_max":
        return logits.sort(dim=1, descending=True, stable=True).indices[:, :k]
    raise ValueError(f"Unknown tie break '{tie_break}'. Valid: {TIE_BREAKS}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, tie_break: str = "topk") -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of `model` in eval mode; `tie_break` ranks tied logits (TIE_BREAKS)."""
    model.eval()
    correct1 = correct5 = total = 0
    for x, y in loader:
        logits = model(x)
        top = top_classes(logits, min(5, logits.shape[1]), tie_break)
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        total += len(y)
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "n": total}


class FlipCounter:
    """Counts sign changes of the quantized weights, step by step (a latent weight that crosses zero
    and a binary weight that flips both count). Cheap: one sign-bit snapshot per weight and step; the
    snapshot after a step is the one before the next (nothing else writes the weights in between).
    With `packed` (train.pack_weights) the weights are sign bits between steps already: `packed`
    counts the bits that change from one packing to the next, and no byte-per-weight snapshot is kept."""

    def __init__(self, weights: list[torch.Tensor], packed: PackedBinaryWeights | None = None):
        self.weights = weights
        self.packed = packed
        self.signs = None
        self.count = None

    def before_step(self) -> None:
        if self.packed is None and self.signs is None:
            self.signs = [w.detach().signbit() for w in self.weights]

    def after_step(self) -> None:
        if self.packed is not None:
            return
        signs = [w.detach().signbit() for w in self.weights]
        for new, old in zip(signs, self.signs):
            changed = torch.count_nonzero(new != old)  # far faster than a bool sum()
            self.count = changed if self.count is None else self.count + changed
        self.signs = signs

    def total(self) -> int:
        count = self.packed.sign_changes if self.packed is not None else self.count
        return 0 if count is None else int(count.item())


def train_one_epoch(model, loader, optimizer: TrainingOptimizers, cfg: ExperimentConfig, epoch: int,
                    bar, net: nn.Module | None = None, ranks: Ranks = Ranks()) -> dict[str, float]:
    """One pass over the training batches. `net` is what the steps call (DDP around `model` when
    training on several processes; see distributed.py), and each rank takes its rows of every batch."""
    model.train()
    weights = [layer.weight for layer in quantized_layers(model)]
    # with train.pack_weights the binary weights are sign bits between steps (1 bit each, measurable);
    # the epoch ends unpacked, so evaluation and checkpoints see ordinary float weights
    packed = PackedBinaryWeights(weights) if cfg.train.pack_weights else None
    if packed:
        packed.pack_()
    flips = FlipCounter(weights, packed)
    try:
        with memory_efficient_steps(model, optimizer, cfg, packed):
            row = _train_steps(net or model, loader, optimizer, cfg, epoch, bar, flips, packed, ranks)
    finally:
        if packed:
            packed.unpack_()
    return {**row, "flips": flips.total()} if flips.weights else row


@contextlib.contextmanager
def memory_efficient_steps(model: nn.Module, optimizer: TrainingOptimizers, cfg: ExperimentConfig,
                           packed: PackedBinaryWeights | None = None):
    """train.memory_efficient (docs/memory.md): within, the binary weights update inside backward, each as
    its gradient completes (and, packed, go back into bits at once), sign activations save 1 bit per value
    for backward, and the blocks a model names are recomputed in backward. Nothing otherwise."""
    if not cfg.train.memory_efficient:
        yield
        return
    repack = packed.pack_updated if packed else None
    with optimizer.updates_in_backward(cfg.optim.grad_clip, repack), memory_efficient_activations(model):
        yield


def weights_for_step(layers: list[nn.Module], packed: PackedBinaryWeights | None, cfg: ExperimentConfig):
    """Packed weights (train.pack_weights) as one step needs them: all unpacked for the step, or with
    train.memory_efficient each only while its layer (of `layers`) runs forward and while it is updated."""
    if packed is None:
        return contextlib.nullcontext()
    if cfg.train.memory_efficient:
        return packed.unpacked_just_in_time(layers)
    return packed.unpacked()


def _train_steps(model, loader, optimizer, cfg, epoch, bar, flips, packed, ranks) -> dict[str, float]:
    loss_fn = loss_function(cfg.train.loss)
    use_bin_reg = cfg.optim.regularization == "bin" and cfg.optim.weight_decay > 0
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    seen = 0
    layers = quantized_layers(model)
    for step, batch in enumerate(loader, start=1):
        optimizer.start_step(len(batch[1]))
        x, y = ranks.shard(*batch)
        with weights_for_step(layers, packed, cfg):
            logits, loss = _train_step(model, x, y, optimizer, cfg, epoch, step, loss_fn, use_bin_reg, flips)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if step == cfg.train.max_steps:  # train.max_steps: a shortened epoch (0 never equals a step)
            break
    return {"train_loss": loss_sum.item() / seen, "train_top1": 100.0 * correct.item() / seen}


class TrainingDiverged(InputError, FloatingPointError):
    """The loss or the weights stopped being finite: the config's rates do not train this network."""


def check_finite_weights(model: nn.Module, cfg: ExperimentConfig, epoch: int) -> None:
    """Stop before a non-finite tensor reaches a checkpoint or a model file. The loss alone does not
    tell: binary layers see only sign(w), so NaN latent weights can leave every loss finite."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingDiverged(f"{cfg.name}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} not finite after "
                               f"epoch {epoch}: training stopped, nothing saved - lower optim.lr or check the config")


def _train_step(model, x, y, optimizer, cfg, epoch, step, loss_fn, use_bin_reg, flips):
    logits = model(x)
    loss = loss_fn(logits, y)
    if use_bin_reg:
        loss = loss + cfg.optim.weight_decay * bin_regularizer(model)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{cfg.name}: loss is {loss.item()} at epoch {epoch}, step {step}: training stopped "
                               "- lower optim.lr or check the data")
    optimizer.zero_grad()
    flips.before_step()  # before backward: with train.memory_efficient the binary weights change inside it
    loss.backward()
    if cfg.optim.grad_clip > 0:  # element-wise, before the optimizer sees it (tf.clip_by_value in BinaryNet)
        nn.utils.clip_grad_value_(model.parameters(), cfg.optim.grad_clip)  # gradients freed in backward: skipped
    optimizer.step()
    if cfg.train.clip_latent > 0:
        clip_latent_weights_(model, cfg.train.clip_latent)
    flips.after_step()
    return logits, loss


def fit(cfg: ExperimentConfig, dataset: Dataset, device: torch.device, checkpoint_path: str | Path,
        progress: bool = True, ranks: Ranks = Ranks(), pretrained_dir: str | Path | None = None) -> FitResult:
    """`pretrained_dir` holds the official checkpoints that `model.pretrained` names (fine-tuning runs)."""
    if cfg.train.memory_efficient and ranks.world > 1:
        raise ConfigError(f"{cfg.name}: train.memory_efficient updates each weight inside backward, before DDP's "
                          "all-reduce of its gradient completes; train on one process or set it false")
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    reuse_freed_memory()
    if dataset.name != cfg.data.dataset:
        raise ValueError(f"config {cfg.name} trains on '{cfg.data.dataset}' but was given '{dataset.name}'")
    channels, size = dataset.image_shape[0], cfg.data.resize or dataset.image_shape[1]  # batches are resized
    model = build_model(cfg.model, channels, dataset.num_classes, size)
    extra = {}
    if cfg.model.pretrained:  # before the optimizers: flip's sigma0 and Bop's m start from the pretrained weights
        loaded = load_pretrained(model, cfg.model.arch, cfg.model.pretrained, pretrained_dir, mirror_from_env())
        extra["pretrained"] = loaded.to_dict()
        log.info("loaded %d parameter tensors of %s (sha256 %s)", loaded.loaded, loaded.file, loaded.sha256)
    # channels_last: the CPU max-pool and conv kernels are several times faster on it (batches match)
    model = model.to(device, memory_format=torch.channels_last)
    init_latent_weights_(model, cfg.train.latent_init)
    optimizer = build_optimizers(cfg, model)
    loaders = make_loaders(cfg.data, dataset, cfg.train.seed, device)
    digest = cfg.digest()

    state = load_checkpoint(checkpoint_path, digest)
    history, best = [], {"epoch": 0, "val_top1": -1.0, "model": None}
    start_epoch, train_seconds = 1, 0.0
    if state is not None:
        if state["epoch"] > cfg.train.epochs:
            raise RuntimeError(f"checkpoint '{checkpoint_path}' is after epoch {state['epoch']}, past the "
                               f"{cfg.train.epochs} epochs asked for; ask for more epochs or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best, train_seconds = state["history"], state["best"], state["train_seconds"]
        start_epoch = state["epoch"] + 1
        log.info("resuming %s from the checkpoint after epoch %d", cfg.name, state["epoch"])
    net = wrap(model, ranks, device)

    steps = min(len(loaders.train), cfg.train.max_steps or len(loaders.train))
    images_per_epoch = min(len(loaders.train.labels), steps * cfg.data.batch_size)
    bar = tqdm(total=cfg.train.epochs * steps, initial=(start_epoch - 1) * steps, unit="step",
               desc=cfg.name, disable=not progress or not ranks.is_main, mininterval=2.0, dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        lrs = optimizer.start_epoch(epoch)
        loaders.train.set_epoch(epoch)
        loaders.val.set_epoch(epoch)
        tic = time.perf_counter()
        row = train_one_epoch(model, loaders.train, optimizer, cfg, epoch, bar, net, ranks)
        seconds = time.perf_counter() - tic
        check_finite_weights(model, cfg, epoch)
        val = evaluate(model, loaders.val, cfg.train.tie_break)
        train_seconds += seconds
        row = {"epoch": epoch, **lrs, **row, "val_top1": val["top1"], "val_top5": val["top5"],
               "epoch_seconds": round(seconds, 3), "train_images_per_s": round(images_per_epoch / seconds, 1)}
        history.append(row)
        if val["top1"] > best["val_top1"]:  # strict: the earliest epoch wins ties, as in the RWTH code
            best = {"epoch": epoch, "val_top1": val["top1"], "model": copy.deepcopy(model.state_dict())}
        bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}", val=f"{val['top1']:.2f}",
                        best=f"{best['val_top1']:.2f}@{best['epoch']}")
        if ranks.is_main:
            save_checkpoint(checkpoint_path, {"digest": digest, "epoch": epoch, "model": model.state_dict(),
                                              "optimizer": optimizer.state_dict(), "history": history, "best": best,
                                              "train_seconds": train_seconds})
        ranks.barrier()  # a restarted rank must never find an older checkpoint than rank 0 wrote
    bar.close()

    model.load_state_dict(best["model"])
    test = evaluate(model, loaders.test, cfg.train.tie_break)
    return FitResult(model=model, history=history, best_epoch=best["epoch"], best_val_top1=best["val_top1"],
                     test=test, train_seconds=train_seconds, resumed_from_epoch=start_epoch - 1,
                     shortened_epoch=steps if steps < len(loaders.train) else None, extra=extra)
