"""`bnnrepro`: one command in front of the pipeline's entry points.

    bnnrepro prepare mnist --out data/prepared/mnist --raw data/raw/mnist
    bnnrepro train my_run --config config/rwth/binary_mnist.yml --data data/prepared/mnist
    bnnrepro infer --model-path pretrained/lenet5_binary_mnist --json
    bnnrepro report
    bnnrepro repro --jobs 8 --gpus 0,1,2,3,4,5,6,7
    bnnrepro train --help

A subcommand hands the rest of its command line to the entry point's main(argv) untouched, so its
arguments, help and errors are exactly those of `python stages/X.py` (what dvc.yaml runs). The stages are
scripts of the repository, not modules of the package: they are found beside the package folder, which
an editable install (`pip install -e .`, as the Makefile does) leaves in the checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from bnnrepro.errors import MissingFileError, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    entry: str  # a script of the repository ("stages/train.py") or a module of the package ("bnnrepro.infer")
    summary: str


COMMANDS = {
    "prepare": Command("stages/prepare_data.py", "download (checksums verified) and prepare one dataset"),
    "train": Command("stages/train.py", "train one experiment config; a killed run resumes"),
    "infer": Command("bnnrepro.infer", "evaluate a saved model on its dataset's test split"),
    "report": Command("stages/report.py", "write reports/ from the pipeline's results"),
    "repro": Command("bnnrepro.parallel", "run the pipeline's stages in parallel (GPUs, SLURM), then dvc repro"),
}


def entry_point(entry: str) -> Callable[[Sequence[str] | None], int]:
    """main() of the repository script `stages/<name>.py`, or of the package module `entry`."""
    if not entry.startswith("stages/"):
        return importlib.import_module(entry).main
    path = REPO_ROOT / entry
    if not path.is_file():
        raise MissingFileError(f"{path}: not found - `bnnrepro` runs the stage scripts of a checkout; "
                               f"install it from one with `pip install -e .`")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@contextlib.contextmanager
def program_name(name: str) -> Iterator[None]:
    """argparse names a program after sys.argv[0]: the stage's usage line and errors then say `bnnrepro train`."""
    saved = sys.argv[:1]
    sys.argv[:1] = [name]
    try:
        yield
    finally:
        sys.argv[:1] = saved


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {c.summary} ({c.entry})" for name, c in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="bnnrepro",
        description=f"Run one step of the pipeline by hand.\n\ncommands:\n{listing}",
        epilog="`bnnrepro COMMAND --help` shows the command's own arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=COMMANDS, help="the step to run (commands above)")
    # REMAINDER after a positional takes everything that follows, options and --help included
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_of_entry = entry_point(COMMANDS[args.command].entry)
    with program_name(f"bnnrepro {args.command}"):
        return main_of_entry(args.args)


def console() -> int:
    """The `bnnrepro` console script: bad input becomes one `error:` line and exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(console())
