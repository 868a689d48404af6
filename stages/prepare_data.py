"""DVC stage data@<name>: download (verified) and prepare one dataset.

    python stages/prepare_data.py mnist --out data/prepared/mnist --raw data/raw/mnist --profile quick

The mirror (a folder or base URL) comes from BNNREPRO_MIRROR. The entry `datasets.<name>` of the params
file says whether the quick profile prepares the dataset (`quick: false`: not downloaded, the stage
records why in `skipped.json` instead) and may declare `md5: {<file>: <md5>}`: checksums that replace the
official ones for those raw files. That is how stand-in files in the official formats are verified (the
paper profile's dry run, tests/test_paper_dry_run.py); the prepared file records every MD5 it checked and
where it was declared (`md5_source`), and the stage says so on its output. Without `md5` every raw file
must match its publisher's MD5 (bnnrepro/data/sources.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bnnrepro import PROFILES
from bnnrepro.data import DATA_FILE, SKIP_FILE
from bnnrepro.errors import run_cli
from bnnrepro.io import write_json
from bnnrepro.plain_yaml import ConfigError, read_yaml_mapping

ENTRY_KEYS = ("quick", "md5")


def dataset_entry(params: Path, name: str) -> dict:
    """`datasets.<name>` of the params file: {quick: bool, md5: {file: md5}} (md5 optional). Without a params
    file or an entry for `name` (the stage run by hand elsewhere): prepared in every profile, official MD5s."""
    entries = (read_yaml_mapping(params).get("datasets") if params.is_file() else None) or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{params}: datasets: expected a mapping of dataset name -> {{quick: true|false}}")
    if name not in entries:
        return {"quick": True}
    entry = entries[name]
    where = f"{params}: datasets.{name}"
    if not isinstance(entry, dict) or not isinstance(entry.get("quick"), bool):
        raise ConfigError(f"{where}: expected {{quick: true|false}} - add the dataset's entry")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} - valid keys: {list(ENTRY_KEYS)}")
    if not isinstance(entry.get("md5", {}), dict):
        raise ConfigError(f"{where}.md5: expected a mapping of raw file name -> MD5")
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file holding datasets.<name>")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    entry = dataset_entry(args.params, args.name)

    for stale in (args.out / DATA_FILE, args.out / SKIP_FILE):
        stale.unlink(missing_ok=True)
    if args.profile == "quick" and not entry["quick"]:
        write_json(args.out / SKIP_FILE, {"reason": "not prepared in the quick profile (run the paper profile)"})
        print(f"{args.name}: skipped in profile {args.profile}")
        return 0
    from bnnrepro.data.prepared import prepare_dataset  # torch: only a dataset that is prepared pays for it

    md5 = entry.get("md5") or {}
    source = f"{args.params}: datasets.{args.name}.md5"
    path = prepare_dataset(args.name, args.out, args.raw, md5=md5, md5_source=source)
    print(f"{args.name}: prepared {path}" + (f" (raw files verified against the MD5s of {source}, "
                                             "not the official ones)" if md5 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
