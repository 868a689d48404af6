"""DVC stage fetch@<name>: bring in one published pretrained checkpoint, verified (bnnrepro/official.py).

    python stages/fetch_official.py rwth_lenet5_binary --out data/official/rwth_lenet5_binary \
        --status reports/official/fetch/rwth_lenet5_binary.json

The entry `official.<name>` of params.yaml names the files, their URLs and checksums. Sources, in order:
data/<mirror folder>/ (files downloaded by hand), $BNNREPRO_MIRROR/<mirror folder>/, the official URL.
Exit 0 when fetched, and also when no source has the file (offline): the status record then says
"not fetched", why, and where to put the file, and downstream stages report "not run". Exit 2 with one
`error:` line when a source served bytes that fail verification (a checksum mismatch, a truncated file):
nothing is kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bnnrepro.data.download import mirror_from_env
from bnnrepro.errors import run_cli
from bnnrepro.io import write_json
from bnnrepro.official import FETCHED, fetch_entry, load_entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="entry of the `official` section of the params file (the DVC stage key)")
    p.add_argument("--out", type=Path, required=True, help="folder that receives the verified files and status.json")
    p.add_argument("--status", type=Path, help="also write the status record here (the report reads it)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--pins", type=Path, default=Path("config/official_sha256.yml"),
                   help="SHA-256s recorded at first fetch, for files without a published checksum")
    p.add_argument("--drop", type=Path, default=Path("data"), help="local folder holding <mirror folder>/<file> "
                   "copies downloaded by hand (searched before BNNREPRO_MIRROR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    entry = load_entry(args.params, args.name)
    status = fetch_entry(entry, args.out, args.pins, args.drop, mirror_from_env())
    if args.status:
        write_json(args.status, status)
    if status["status"] == FETCHED:
        for name, info in status["files"].items():
            print(f"{args.name}: {name} sha256 {info['sha256']} ({info['verified']})")
    else:
        print(f"{args.name}: {status['status']}: {status['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
