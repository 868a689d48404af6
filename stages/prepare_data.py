"""DVC stage data@<name>: download (verified) and prepare one dataset.

    python stages/prepare_data.py mnist --out data/prepared/mnist --raw data/raw/mnist \
        --profile quick --in-quick true

The mirror (a folder or base URL) comes from BNNREPRO_MIRROR. A dataset that the quick profile
leaves out (params.yaml `datasets.<name>.quick: false`) is not downloaded: the stage records why
in `skipped.json` instead.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--in-quick", default="true", choices=["true", "false", "True", "False"],
                   help="whether the quick profile prepares this dataset")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    for stale in (args.out / DATA_FILE, args.out / SKIP_FILE):
        stale.unlink(missing_ok=True)
    if args.profile == "quick" and args.in_quick.lower() == "false":
        write_json(args.out / SKIP_FILE, {"reason": "not prepared in the quick profile (run the paper profile)"})
        print(f"{args.name}: skipped in profile {args.profile}")
        return 0
    from bnnrepro.data.prepared import prepare_dataset  # torch: only a dataset that is prepared pays for it

    path = prepare_dataset(args.name, args.out, args.raw)
    print(f"{args.name}: prepared {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
