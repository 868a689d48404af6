"""Expected failures and how every command line reports them.

An expected failure is caused by what the user gave: a config, a file, an argument, a download that
cannot be verified. It is raised as an `InputError` whose message names the file, says what is wrong
and what to do; `run_cli` prints it as one line, `error: <message>`, and exits 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_BAD_INPUT = 2  # as argparse's usage errors


class InputError(Exception):
    """Base of every expected failure (ConfigError, DownloadError, BadFileError, ...)."""


class BadFileError(InputError, RuntimeError):
    """A file that is not what it should be: truncated, corrupted, of another format or architecture."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the command needs is not there."""


class UsageError(InputError, ValueError):
    """A command-line argument that cannot work here (an unknown device, a GPU that is not there)."""


def one_line(message: str) -> str:
    """Multi-line messages (a list of sources tried) joined, so the error stays one line."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's main(argv): an InputError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except InputError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
