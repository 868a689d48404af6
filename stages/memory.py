"""DVC stage memory: reports/memory.{md,csv} from the experiment configs and the shipped models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bnnrepro.config import load_experiment
from bnnrepro.errors import run_cli
from bnnrepro.io import write_text
from bnnrepro.report.plots import plot_training_state
from bnnrepro.report.memory import checkpoint_sizes, model_table, to_markdown, training_state_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", type=Path, nargs="+", required=True, help="experiment configs whose models to profile")
    p.add_argument("--pretrained", type=Path, default=Path("pretrained"))
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)

    configs = {path.stem: load_experiment(path) for path in args.configs}
    models = pd.concat([model_table(name, cfg) for name, cfg in configs.items()], ignore_index=True)
    states = pd.concat([training_state_table(name, cfg) for name, cfg in configs.items()
                        if cfg.model.weights == "binary"], ignore_index=True)
    sizes = checkpoint_sizes(args.pretrained)
    write_text(args.out / "memory.csv", models.to_csv(index=False, float_format="%.4f"))
    write_text(args.out / "memory_training_state.csv", states.to_csv(index=False, float_format="%.4f"))
    write_text(args.out / "memory.md", to_markdown(models, sizes, states))
    plot_training_state(states, args.out / "memory_training_state.png")
    print(sizes.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
