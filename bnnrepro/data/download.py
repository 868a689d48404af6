"""Verified downloads: a mirror first, then the official URLs, checksum checked before anything is kept.

A mirror is a local folder or a base URL (environment variable BNNREPRO_MIRROR) laid out as
`<mirror>/<folder>/<filename>`: `<folder>` is the dataset's name for dataset files and e.g.
`pretrained/LeNet5/binary` for published weights. `../shared/mirror` holds byte-exact MNIST and
Fashion-MNIST copies.

A file is verified against every checksum its `Resource` names: MD5 (what dataset publishers list),
SHA-256, or the git blob id (what a git repository lists for each file it holds: the SHA-1 of
`blob <size>\\0` followed by the bytes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

from bnnrepro.errors import InputError
from bnnrepro.io import CHUNK, atomic_write

log = logging.getLogger(__name__)

MIRROR_ENV = "BNNREPRO_MIRROR"
CHECKSUM_NAMES = {"md5": "MD5", "sha256": "SHA-256", "git_blob": "git blob id"}


@dataclass(frozen=True)
class Resource:
    """One raw file as its publisher serves it, and the checksums it must match (at least one, or a check)."""

    filename: str
    md5: str | None
    urls: tuple[str, ...]  # official locations, tried in order after the mirror
    sha256: str | None = None
    git_blob: str | None = None

    def checksums(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in CHECKSUM_NAMES if getattr(self, k)}

    def describe_checksums(self) -> str:
        return ", ".join(f"{CHECKSUM_NAMES[k]} {v}" for k, v in self.checksums().items()) or "no checksum"


class DownloadError(InputError, RuntimeError):
    """No source gave a verified copy. `corrupt`: some source served bytes that failed verification
    (a mismatch, a truncated file), as opposed to every source being unreachable or lacking the file."""

    def __init__(self, message: str, failures: Sequence[str] = (), corrupt: bool = False):
        super().__init__(message)
        self.failures = list(failures)  # "<source>: <what went wrong>", one per source tried
        self.corrupt = corrupt


class NotTheFile(OSError):
    """A source answered with something that is not a file download (a web page): the file is not there."""


def mirror_from_env() -> str | None:
    return os.environ.get(MIRROR_ENV) or None


def candidate_sources(resource: Resource, folder: str, mirror: str | Sequence[str] | None) -> list[str]:
    """The mirror copies (several mirrors are tried in order), then the official URLs."""
    mirrors = [mirror] if isinstance(mirror, str) else list(mirror or [])
    return [f"{m.rstrip('/')}/{folder}/{resource.filename}" for m in mirrors if m] + list(resource.urls)


def digests(f: IO[bytes], names) -> dict[str, str]:
    """The named checksums of the bytes of `f` from its current position (one read per pass)."""
    names = list(names)
    hashes = {n: hashlib.new(n, usedforsecurity=False) for n in names if n != "git_blob"}
    size = 0
    start = f.tell()
    for chunk in iter(lambda: f.read(CHUNK), b""):
        size += len(chunk)
        for h in hashes.values():
            h.update(chunk)
    out = {n: h.hexdigest() for n, h in hashes.items()}
    if "git_blob" in names:  # the header holds the size, so the bytes are read a second time
        f.seek(start)
        blob = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
        for chunk in iter(lambda: f.read(CHUNK), b""):
            blob.update(chunk)
        out["git_blob"] = blob.hexdigest()
    return out


def git_blob_id(path: str | os.PathLike) -> str:
    """What `git hash-object <path>` prints."""
    with open(path, "rb") as f:
        return digests(f, ["git_blob"])["git_blob"]


def matches(path: Path, resource: Resource) -> bool:
    expected = resource.checksums()
    if not expected or not path.is_file():
        return False
    with open(path, "rb") as f:
        return digests(f, expected) == expected


def fetch(resource: Resource, folder: str, dest_dir: str | os.PathLike, mirror: str | Sequence[str] | None = None,
          check: Callable[[IO[bytes]], None] | None = None) -> Path:
    """Return the path of `resource` in `dest_dir`, downloading and verifying it if needed.

    A file already in `dest_dir` is trusted only if its checksums match. Each candidate is copied to a
    temporary file and renamed into place only after its checksums matched and `check` (given the open
    copy; it raises ValueError when the content is wrong) passed, so a failed or interrupted download
    never leaves a file behind. `check` is what verifies a file that has no published checksum.
    """
    if not resource.checksums() and check is None:
        raise ValueError(f"'{resource.filename}': neither a checksum nor a content check: nothing could verify it")
    dest = Path(dest_dir) / resource.filename
    if dest.exists():
        if matches(dest, resource):
            return dest
        log.warning("%s exists but is not verified against %s; fetching it again", dest, resource.describe_checksums())
        dest.unlink()
    failures, corrupt = [], False
    for source in candidate_sources(resource, folder, mirror):
        try:
            _copy_verified(source, dest, resource, check)
            log.info("fetched %s from %s", resource.filename, source)
            return dest
        except ValueError as e:  # bytes came, and they are not the file
            failures.append(f"{source}: {e}")
            corrupt = True
        except (OSError, urllib.error.URLError) as e:
            failures.append(f"{source}: {e}")
    raise DownloadError(
        f"{dest}: could not get a verified copy ({folder}, expected {resource.describe_checksums()}).\n"
        "Tried:\n" + "\n".join(f"  {f}" for f in failures) + "\n"
        f"- point {MIRROR_ENV} at a folder or base URL holding '{folder}/{resource.filename}' "
        f"(e.g. {MIRROR_ENV}=../shared/mirror), or place the file in '{Path(dest_dir)}'.", failures, corrupt)


def _copy_verified(source: str, dest: Path, resource: Resource, check) -> None:
    expected = resource.checksums()
    with atomic_write(dest, "w+b") as out, _open_source(source) as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            out.write(chunk)
        out.flush()
        out.seek(0)
        actual = digests(out, expected)
        for name, value in expected.items():
            if actual[name] != value:
                raise ValueError(f"checksum mismatch: {CHECKSUM_NAMES[name]} {actual[name]}, expected {value} "
                                 "(file corrupt or truncated)")
        if check is not None:
            out.seek(0)
            check(out)


def _open_source(source: str):
    if "://" in source:
        response = urllib.request.urlopen(source, timeout=30)
        if response.headers.get_content_type() == "text/html":  # a share or login page, not the file itself
            response.close()
            raise NotTheFile("the address serves a web page, not the file (download it by hand)")
        return response
    if not Path(source).is_file():
        raise FileNotFoundError("no such file")
    return open(source, "rb")
