"""Map Mapillary v1.2 labels (66 classes) to train IDs and halve images and labels into `half/<split>_img|label`.

python scripts/prepare_mapillary.py data/mapillary [--split val] [--workers 8] [--overwrite]

The halving is the authors' `tools/convert_datasets/mapillary_resize.py` (REIN's and DepthForge's), call for call, so
the evaluated pixels are theirs (docs/reproduction.md):

- image: Pillow, `Image.resize((W // 2, H // 2), Image.BICUBIC)`: an antialiased bicubic whose kernel widens with
  the factor, not OpenCV's 4-tap cubic; the size comes from the image, rounded down. Saved with Pillow's JPEG
  defaults (quality 75, 4:2:0 chroma subsampling, no EXIF or ICC profile);
- label: the 66 classes mapped to train IDs at full size (their `mapillary2cityscape.py --train_id`), then Pillow's
  `Image.NEAREST` to the same size, which reads source pixel floor((i + 0.5)·H/h): the second pixel of each pair for
  an even side (OpenCV's nearest reads the first). Saved as an 8-bit PNG.
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
