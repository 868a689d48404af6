"""reports/runs/<run>/metrics.json: what one training stage reports. stages/train.py writes it, bnnrepro.report
reads it, both through RunMetrics, so the two sides cannot drift apart.

One record for both outcomes: a trained run carries its budget and results; a run its profile leaves out
("skipped", e.g. a GPU recipe under the quick profile) carries the reason instead, and its results stay None.
Wall-clock times are not here on purpose: two identical runs must give byte-identical reports (stages/train.py
writes them to runs/timing/).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnrepro.errors import BadFileError

TRAINED, SKIPPED = "trained", "skipped"


@dataclass(frozen=True, kw_only=True)
class RunMetrics:
    # the field order is the order of the keys in metrics.json
    run: str
    paper: str
    status: str                          # trained | skipped
    reason: str | None = None            # skipped: why the profile leaves it out (the config's profiles.<p>.skip)
    profile: str
    epochs: int | None = None
    steps_per_epoch: int | None = None   # set when train.max_steps cut every epoch short (None: whole epochs)
    seed: int | None = None
    device: str | None = None            # cpu | cuda | mps
    device_name: str | None = None       # the processor or GPU model: it can change the last digits
    dataset: str
    num_classes: int | None = None
    data_sha256: str | None = None       # of the prepared dataset file trained on
    model: str
    method: str                          # ModelConfig.describe(): "float" or the binarization scheme
    optimizer: str                       # ExperimentConfig.describe_optimizer()
    binary_weights: int | None = None    # weights of the quantized layers
    reported: dict[str, float] = field(default_factory=dict)  # the paper's numbers: top1, top5 (%)
    best_epoch: int | None = None
    best_val_top1: float | None = None
    test_top1: float | None = None       # of the best-validation epoch's weights
    test_top5: float | None = None
    test_n: int | None = None            # test images
    pretrained: dict[str, Any] | None = None  # fine-tuning: the official checkpoint's SHA-256 and what was loaded

    def __post_init__(self):
        if self.status not in (TRAINED, SKIPPED):
            raise ValueError(f"status must be '{TRAINED}' or '{SKIPPED}', got {self.status!r}")
        if self.status == SKIPPED and not self.reason:
            raise ValueError("a skipped run needs its reason")
        if self.status == TRAINED and None in (self.epochs, self.seed, self.device, self.test_top1, self.test_n):
            raise ValueError("a trained run needs its epochs, seed, device, test_top1 and test_n")

    def epochs_text(self) -> str:
        """The training budget in words: "1 epoch", "10 epochs", "1 epoch of 100 steps"."""
        text = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return text + (f" of {self.steps_per_epoch} steps" if self.steps_per_epoch else "")

    @property
    def trained(self) -> bool:
        return self.status == TRAINED

    @property
    def collapsed(self) -> bool:
        """Trained, and its test accuracy is below twice chance level: it learned (almost) nothing."""
        return self.trained and bool(self.num_classes) and self.test_top1 < 2 * 100 / self.num_classes

    def to_json(self) -> dict[str, Any]:
        """The metrics.json mapping: every field that is set, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, d: Any, source: str = "metrics.json") -> RunMetrics:
        if not isinstance(d, dict):
            raise BadFileError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadFileError(f"{source}: unknown key(s) {unknown} - written by another version? rerun its stage")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise BadFileError(f"{source}: {e} - rerun its stage") from None

    @classmethod
    def read(cls, path: Path) -> RunMetrics:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise BadFileError(f"{path}: not JSON ({e}) - rerun its stage") from None
        return cls.from_json(d, str(path))
