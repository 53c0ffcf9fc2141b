"""Convert GTA5's raw label-ID PNGs to `labels/*_labelTrainIds.png` (optional; the dataset also maps on the fly).

python scripts/prepare_gta5.py data/gta [--workers 8] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.prepare import convert_gta5_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the GTA5 root holding images/ and labels/")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    print(f"wrote {convert_gta5_labels(args.root, args.workers, args.overwrite)} train-ID labels")


if __name__ == "__main__":
    main()
