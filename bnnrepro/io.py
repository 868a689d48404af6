"""Atomic file writes and checksums.

Every file the project writes goes through `atomic_write`: the content lands in a temporary file in
the destination folder and is renamed into place, so a killed process never leaves a half-written
file where a later run would trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from bnnrepro.errors import BadFileError, MissingFileError

CHUNK = 1024 * 1024


TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: .<name>.<random>.tmp (.dvcignore lists them)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success rename it to `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed atomic_write left in `folder` (a file being written is renamed
    or deleted by its writer, so call this only where no other process writes)."""
    stale = sorted(Path(folder).glob(f".*{TEMP_SUFFIX}")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# torch is imported inside the two functions that need it: stages that only write JSON (a skipped
# experiment, a skipped dataset) then start without it, which saves seconds per stage

def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Load a torch file without executing pickled code (tensors, dicts, lists, numbers, strings only)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such file - check the path")
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise BadFileError(
            f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            "the file is truncated, corrupted, or holds Python objects other than tensors "
            "(which are refused: loading never executes pickled code) - replace or delete it"
        ) from e


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Stream a file through hashlib (md5 is used for integrity only, not security)."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
