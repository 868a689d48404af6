"""Published pretrained weights, fetched and verified (stage fetch@<name>; docs/pretrained-weights.md).

An entry of the `official:` section of params.yaml describes one published checkpoint folder:

    rwth_lenet5_binary:
      mirror: pretrained/LeNet5/binary   # looked for at <drop>/<mirror>/<file>, then $BNNREPRO_MIRROR/<mirror>/<file>
      files:
        results.pt: {url: https://..., git_blob: b9371ada...}            # a published checksum
        AdamBNN.mobilenet.pth.tar: {url: https://..., checkpoint_key: state_dict}   # none published

`<drop>` is a local folder (data/ in the pipeline, so data/pretrained/...) where files downloaded by hand go.
A file is kept only once verified. With a published checksum (git blob id, SHA-256 or MD5) that is the check.
Without one, the first fetch can only check the content (a torch file, read without running pickled code,
that holds `checkpoint_key`); its SHA-256 is then recorded in the pins file (config/official_sha256.yml,
committed), and every later fetch must match it: trust on first use, stated as such in the docs.

`<out>/status.json` says what happened: "fetched" (each file's SHA-256 and what verified it) or "not fetched"
(why, and where to put the files). A source that serves bytes failing verification is an error, not a status.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import yaml

from bnnrepro.plain_yaml import ConfigError, read_yaml_mapping
from bnnrepro.data.download import CHECKSUM_NAMES, DownloadError, Resource, fetch
from bnnrepro.io import file_digest, write_json, write_text

STATUS_FILE = "status.json"
FETCHED = "fetched"
PINS_HEADER = """\
# SHA-256 of the published checkpoints whose publisher gives no checksum (AdamBNN, BCDNet): stage
# fetch@<name> records a file's SHA-256 here the first time it fetches it (trust on first use), and from
# then on refuses any other bytes under that name. Commit this file. To accept a new file on purpose,
# delete its line and rerun `dvc repro -f fetch@<name>`. See docs/pretrained-weights.md.
"""
FILE_KEYS = ("url", "checkpoint_key", *CHECKSUM_NAMES)
ENTRY_KEYS = ("mirror", "files")


@dataclass(frozen=True)
class OfficialFile:
    filename: str
    url: str | None = None
    md5: str | None = None
    sha256: str | None = None
    git_blob: str | None = None
    checkpoint_key: str | None = None  # the entry a torch checkpoint must hold (content check)

    def published(self) -> bool:
        return bool(self.md5 or self.sha256 or self.git_blob)


@dataclass(frozen=True)
class OfficialEntry:
    name: str
    mirror: str  # the folder under a mirror (and under the local drop folder)
    files: tuple[OfficialFile, ...]

    def pin_key(self, filename: str) -> str:
        return f"{self.name}/{filename}"


def parse_entry(name: str, raw: dict[str, Any], where: str = "params.yaml official") -> OfficialEntry:
    """Validate one entry of the params section (unknown keys and unverifiable files are errors)."""
    def unknown(d: dict, allowed: Sequence[str], at: str) -> None:
        extra = sorted(set(d) - set(allowed))
        if extra:
            raise ConfigError(f"{at}: unknown key(s) {extra} - valid: {list(allowed)}")

    at = f"{where}.{name}"
    if not isinstance(raw, dict) or "mirror" not in raw or not raw.get("files"):
        raise ConfigError(f"{at}: needs 'mirror' (a folder name) and 'files' (filename -> url and checksum) - add them")
    unknown(raw, ENTRY_KEYS, at)
    files = []
    for filename, spec in raw["files"].items():
        unknown(spec or {}, FILE_KEYS, f"{at}.files.{filename}")
        f = OfficialFile(filename, **(spec or {}))
        if not f.published() and not f.checkpoint_key:
            raise ConfigError(f"{at}.files.{filename}: no published checksum ({', '.join(CHECKSUM_NAMES)}) and no "
                              "checkpoint_key: nothing could tell the file from a web page or a truncated copy - add one")
        files.append(f)
    return OfficialEntry(name, str(raw["mirror"]).strip("/"), tuple(files))


def load_entry(params_path: str | os.PathLike, name: str, section: str = "official") -> OfficialEntry:
    entries = read_yaml_mapping(Path(params_path)).get(section) or {}
    if not isinstance(entries, dict) or name not in entries:
        raise ConfigError(f"{params_path}: no entry '{name}' in section '{section}' - use one of "
                          f"{sorted(entries) if isinstance(entries, dict) else []}")
    return parse_entry(name, entries[name], f"{params_path} {section}")


# ------------------------------------------------------------------------------- recorded SHA-256s

def read_pins(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    return dict(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def record_pins(path: str | os.PathLike, new: dict[str, str]) -> None:
    pins = read_pins(path) | new
    write_text(path, PINS_HEADER + yaml.safe_dump(dict(sorted(pins.items())), sort_keys=True))


# ----------------------------------------------------------------------------------------- fetching

def holds_entry(key: str) -> Callable[[IO[bytes]], None]:
    """A content check: the bytes are a torch checkpoint (loaded weights_only) holding `key`."""
    def check(f: IO[bytes]) -> None:
        import torch  # here, not at the top: the fetch stages find nothing to check offline and start in 0.1 s

        try:
            saved = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file (a web page), or pickled code: all refused
            raise ValueError(f"not a checkpoint that loads without running code ({type(e).__name__})") from e
        if not isinstance(saved, dict) or key not in saved:
            raise ValueError(f"a torch file without the '{key}' entry: not the expected checkpoint")
    return check


def where_to_put(entry: OfficialEntry, drop: Path) -> str:
    names = ", ".join(f.filename for f in entry.files)
    return (f"put {names} in {drop / entry.mirror}/ or in <mirror>/{entry.mirror}/ (BNNREPRO_MIRROR), "
            f"then run `dvc repro -f fetch@{entry.name}`")


def fetch_entry(entry: OfficialEntry, out_dir: str | os.PathLike, pins_path: str | os.PathLike,
                drop: str | os.PathLike, mirror: str | None) -> dict[str, Any]:
    """Fetch and verify every file of `entry` into `out_dir`; write and return its status record.

    All or nothing: when a file is unavailable the others are removed again and the status says
    "not fetched". A file that fails verification raises DownloadError (corrupt=True), leaving nothing.
    """
    out_dir, drop = Path(out_dir), Path(drop)
    pins = read_pins(pins_path)
    kept, unavailable, verified_by, new_pins = {}, {}, {}, {}
    try:
        for f in entry.files:
            pin = pins.get(entry.pin_key(f.filename))
            resource = Resource(f.filename, f.md5, (f.url,) if f.url else (),
                                sha256=f.sha256 or pin, git_blob=f.git_blob)
            check = holds_entry(f.checkpoint_key) if f.checkpoint_key else None
            try:
                path = fetch(resource, entry.mirror, out_dir, [str(drop), mirror or ""], check=check)
            except DownloadError as e:
                if e.corrupt:
                    raise
                # the mirror named by its variable: the record reads the same on every machine
                unavailable[f.filename] = [t.replace(mirror, "$BNNREPRO_MIRROR") if mirror else t for t in e.failures]
                continue
            kept[f.filename] = file_digest(path, "sha256")
            if f.published():
                verified_by[f.filename] = f"published {resource.describe_checksums()}"
            elif pin:
                verified_by[f.filename] = f"SHA-256 recorded at its first fetch ({Path(pins_path).name})"
            else:
                verified_by[f.filename] = (f"first fetch: content checked ('{f.checkpoint_key}' entry), "
                                           f"SHA-256 recorded in {Path(pins_path).name}")
                new_pins[entry.pin_key(f.filename)] = kept[f.filename]
    except BaseException:
        _remove(out_dir, kept)
        raise
    if unavailable:
        _remove(out_dir, kept)
        status = {"name": entry.name, "status": "not fetched",
                  "reason": f"no source has {', '.join(unavailable)} (offline, or no direct download); "
                            + where_to_put(entry, drop),
                  "tried": unavailable}
    else:
        if new_pins:
            record_pins(pins_path, new_pins)
        status = {"name": entry.name, "status": FETCHED,
                  "files": {name: {"sha256": sha, "verified": verified_by[name]} for name, sha in kept.items()}}
    write_json(out_dir / STATUS_FILE, status)
    return status


def _remove(folder: Path, names) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def fetch_status(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The status record of a fetched folder, or None for a folder that no fetch stage wrote."""
    path = Path(folder) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def not_fetched_reason(folder: str | os.PathLike) -> str | None:
    status = fetch_status(folder)
    if status is None or status.get("status") == FETCHED:
        return None
    return f"not fetched: {status.get('reason', 'no reason recorded')}"
