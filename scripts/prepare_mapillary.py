"""Map Mapillary v1.2 labels (66 classes) to train IDs and halve images and labels into `half/<split>_img|label`.

python scripts/prepare_mapillary.py data/mapillary [--split val] [--workers 8] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.prepare import prepare_mapillary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the Mapillary root holding validation/images, validation/v1.2")
    parser.add_argument("--split", default="val", choices=["val", "train"])
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    print(f"wrote {prepare_mapillary(args.root, args.split, args.workers, args.overwrite)} halved pairs")


if __name__ == "__main__":
    main()
