"""Check a data root (data/ with gta, cityscapes, bdd100k, mapillary, acdc) against the expected layouts.

Exit status 1 when a required split is missing or bad (unreadable files, size mismatches, label values outside
the mapping); count differences from the official numbers are only reported.

    python scripts/check_data_layout.py data --datasets cityscapes acdc [--full]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.checks import DATASETS, check_data_root  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--samples", type=int, default=20, help="pairs decoded per split (default 20)")
    parser.add_argument("--full", action="store_true", help="decode every pair")
    args = parser.parse_args()
    results = check_data_root(args.data_root, tuple(args.datasets), args.samples, args.full)
    for result in results:
        print(result.format())
    failed = [f"{r.entry.dataset}/{r.entry.split}" for r in results if not r.ok]
    summary = f"{len(results) - len(failed)} of {len(results)} splits OK"
    print(f"\n{summary}; failed: {', '.join(failed)}" if failed else f"\n{summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
