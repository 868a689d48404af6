"""DVC stage memory: reports/memory.{md,csv} from the experiment configs and the shipped models."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from bnnrepro.analysis.training_state import PEAK_COMPONENTS
from bnnrepro.config import ExperimentConfig, load_experiment
from bnnrepro.errors import UsageError, run_cli
from bnnrepro.io import write_text
from bnnrepro.report.memory import checkpoint_sizes, model_table, peak_table, to_markdown, training_state_table
from bnnrepro.report.plots import plot_peak_components, plot_training_state


def step_config(spec: str) -> tuple[str, ExperimentConfig]:
    """PATH or PATH=BATCH: the experiment, with BATCH images per step (one device's share of a global batch)."""
    path, _, batch = spec.partition("=")
    cfg = load_experiment(Path(path))
    if batch:
        if not batch.isdigit() or int(batch) < 1:
            raise UsageError(f"--step-configs {spec}: the batch after '=' is not a positive integer - "
                             f"write PATH or PATH=N, e.g. {path}=32")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=int(batch)))
    return Path(path).stem, cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", type=Path, nargs="+", required=True,
                   help="experiment configs whose models to profile, per layer and per training method")
    p.add_argument("--step-configs", nargs="*", default=[], metavar="PATH[=BATCH]",
                   help="more configs measured per training method only, optionally at a batch of BATCH images")
    p.add_argument("--pretrained", type=Path, default=Path("pretrained"))
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)

    configs = {path.stem: load_experiment(path) for path in args.configs}
    stepped = {**configs, **dict(step_config(spec) for spec in args.step_configs)}
    models = pd.concat([model_table(name, cfg) for name, cfg in configs.items()], ignore_index=True)
    states = pd.concat([training_state_table(name, cfg) for name, cfg in stepped.items()
                        if cfg.model.weights == "binary"], ignore_index=True)
    sizes = checkpoint_sizes(args.pretrained)
    write_text(args.out / "memory.csv", models.to_csv(index=False, float_format="%.4f"))
    write_text(args.out / "memory_training_state.csv", states.to_csv(index=False, float_format="%.4f"))
    write_text(args.out / "memory.md", to_markdown(models, sizes, states))
    plot_training_state(states, args.out / "memory_training_state.png")
    plot_peak_components(peak_table(states), PEAK_COMPONENTS, args.out / "memory_peak.png")
    print(sizes.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
