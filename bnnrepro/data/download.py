"""Verified downloads: a mirror first, then the official URLs, checksum checked before anything is kept.

A mirror is a local folder or a base URL (environment variable BNNREPRO_MIRROR) laid out as
`<mirror>/<dataset>/<filename>`. `../shared/mirror` holds byte-exact MNIST and Fashion-MNIST copies.
"""

from __future__ import annotations

import logging
import os
import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bnnrepro.errors import InputError
from bnnrepro.io import CHUNK, atomic_write, file_digest

log = logging.getLogger(__name__)

MIRROR_ENV = "BNNREPRO_MIRROR"


@dataclass(frozen=True)
class Resource:
    """One raw file of a dataset, as its publisher serves it."""

    filename: str
    md5: str
    urls: tuple[str, ...]  # official locations, tried in order after the mirror


class DownloadError(InputError, RuntimeError):
    pass


def mirror_from_env() -> str | None:
    return os.environ.get(MIRROR_ENV) or None


def candidate_sources(resource: Resource, dataset: str, mirror: str | None) -> list[str]:
    sources = []
    if mirror:
        sources.append(f"{mirror.rstrip('/')}/{dataset}/{resource.filename}")
    return sources + list(resource.urls)


def fetch(resource: Resource, dataset: str, dest_dir: str | os.PathLike, mirror: str | None = None) -> Path:
    """Return the path of `resource` in `dest_dir`, downloading and verifying it if needed.

    A file already in `dest_dir` is trusted only if its MD5 matches. Each candidate is copied to a
    temporary file and renamed into place only after its MD5 matched, so a failed or interrupted
    download never leaves a file behind.
    """
    dest = Path(dest_dir) / resource.filename
    if dest.exists():
        if file_digest(dest) == resource.md5:
            return dest
        log.warning("%s exists but its MD5 does not match; fetching it again", dest)
        dest.unlink()
    failures = []
    for source in candidate_sources(resource, dataset, mirror):
        try:
            _copy_verified(source, dest, resource.md5)
            log.info("fetched %s from %s", resource.filename, source)
            return dest
        except (OSError, ValueError, urllib.error.URLError) as e:
            failures.append(f"  {source}: {e}")
    raise DownloadError(
        f"{dest}: could not get a verified copy ({dataset}, expected MD5 {resource.md5}).\n"
        "Tried:\n" + "\n".join(failures) + "\n"
        f"- point {MIRROR_ENV} at a folder or base URL holding '{dataset}/{resource.filename}' "
        f"(e.g. {MIRROR_ENV}=../shared/mirror), or place the file in '{Path(dest_dir)}'."
    )


def _copy_verified(source: str, dest: Path, md5: str) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    with atomic_write(dest) as out, _open_source(source) as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
        actual = digest.hexdigest()
        if actual != md5:
            raise ValueError(f"checksum mismatch: MD5 {actual}, expected {md5} (file corrupt or truncated)")


def _open_source(source: str):
    if "://" in source:
        return urllib.request.urlopen(source, timeout=30)
    if not Path(source).is_file():
        raise FileNotFoundError("no such file")
    return open(source, "rb")
