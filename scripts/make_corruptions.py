"""Corrupt a dataset split with the 15 ImageNet-C corruptions at 5 severities (Cityscapes-C), in its own layout.

    python scripts/make_corruptions.py data/cityscapes data/cityscapes_c [--corruptions fog snow ...]
        [--severities 1 2 3 4 5] [--workers 8] [--seed 0] [--dataset cityscapes --layout split=val] [--link-labels]
    python scripts/make_corruptions.py data/cityscapes --grid docs/images/corruptions_grid.png [--index 0]
    python scripts/make_corruptions.py --report logs/eval/runs/<run>      # its results.csv -> the Cityscapes-C table

Generating writes `<out>/<corruption>/<severity>/<image dir>/<name><suffix>` (`data/cityscapes_c/fog/3/leftImg8bit/
val/...`) for every labelled image of the split; `python -m src.eval ... data/targets=citys_c` evaluates them with the
source's own labels. A rerun skips what exists (an interrupted run resumes), files are written atomically, the source
is never written, and the same seed gives the same files. An unreadable source image stops the run with its path and
exit status 1. Another dataset: `--dataset acdc --layout split=val condition=fog` (the arguments of its `layout()`).

`--grid` renders one image of the split (or `--image FILE`) under every corruption and severity as one PNG.
`--report` turns the per-domain mIoU of src.eval (domains `<corruption>_<severity>`) into per-corruption,
per-severity and overall means, as Markdown on stdout (`-o table.md` or `-o table.csv` to write it).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from src.data.corruptions import (  # noqa: E402
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    Progress,
    corruption_grid,
    corruption_report,
    generate_corruptions,
    read_results,
)
from src.data.datasets import DATASETS, read_image  # noqa: E402


def _layout(pairs: list[str], dataset: str) -> dict[str, str]:
    layout = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --layout takes KEY=VALUE pairs (e.g. split=val condition=fog), got {pair!r}")
        layout[key] = value
    if DATASETS[dataset].has_splits:
        layout.setdefault("split", "val")
    return layout


class _Printer:
    """Progress lines: at the start, every 5 % of the images and at the end."""

    def __init__(self) -> None:
        self.start = time.time()
        self.last = -1

    def __call__(self, p: Progress) -> None:
        step = max(1, p.images // 20)
        if p.images_done // step != self.last or p.images_done == p.images:
            self.last = p.images_done // step
            print(
                f"[{p.images_done}/{p.images} images] {p.written} corrupted images written, {p.skipped} already "
                f"there ({time.time() - self.start:.0f} s)",
                flush=True,
            )


def _generate(args: argparse.Namespace) -> int:
    layout = _layout(args.layout, args.dataset)
    print(
        f"{len(args.corruptions)} corruptions x severities {args.severities} of {args.dataset} {layout} under "
        f"{args.source_root} -> {args.out_root} (seed {args.seed}, {args.workers} workers)",
        flush=True,
    )
    result = generate_corruptions(
        args.source_root,
        args.out_root,
        dataset=args.dataset,
        layout=layout,
        corruptions=args.corruptions,
        severities=args.severities,
        seed=args.seed,
        workers=args.workers,
        link_labels=args.link_labels,
        progress=_Printer(),
    )
    linked = f", {result.labels_linked} label files linked" if args.link_labels else ""
    print(
        f"done: {result.written} written, {result.skipped} skipped (already there) of {result.total} corrupted images "
        f"of {result.images} source images{linked}, under {result.out_root}"
    )
    return 0


def _grid(args: argparse.Namespace) -> int:
    if args.image is not None:
        image_path, name = args.image, args.image.stem
    else:
        if args.source_root is None:
            raise SystemExit("error: --grid needs a dataset root (its --index-th image) or --image FILE")
        layout = _layout(args.layout, args.dataset)
        samples = DATASETS[args.dataset](args.source_root, **layout).samples
        if not 0 <= args.index < len(samples):
            raise SystemExit(f"error: --index {args.index} is outside the split's {len(samples)} images")
        image_path, name = samples[args.index].image, samples[args.index].name
    image = read_image(image_path)
    grid = corruption_grid(image, args.corruptions, args.severities, args.seed, name, tile_width=args.tile_width)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 80] if args.grid.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(args.grid), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write {args.grid}")
    print(f"{image_path} under {len(args.corruptions)} corruptions x {len(args.severities)} severities -> {args.grid}")
    return 0


def _report(args: argparse.Namespace) -> int:
    report = corruption_report(read_results(args.report))
    if args.output is None:
        print(report.markdown(), end="")
    elif args.output.suffix == ".csv":
        rows = report.rows()
        with args.output.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"written to {args.output}")
    else:
        args.output.write_text(report.markdown())
        print(f"written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_root", type=Path, nargs="?", help="the dataset's root, e.g. data/cityscapes")
    parser.add_argument("out_root", type=Path, nargs="?", help="where the corruptions go, e.g. data/cityscapes_c")
    parser.add_argument("--dataset", default="cityscapes", choices=sorted(DATASETS), help="(default: cityscapes)")
    parser.add_argument("--layout", nargs="*", default=[], metavar="KEY=VALUE", help="the split (default split=val)")
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=list(CORRUPTIONS),
        choices=ALL_CORRUPTIONS,
        metavar="NAME",
        help=f"(default: the 15 of ImageNet-C: {' '.join(CORRUPTIONS)}; also {' '.join(EXTRA_CORRUPTIONS)})",
    )
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), choices=SEVERITIES)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--link-labels", action="store_true", help="also hard-link the labels into each corruption")
    parser.add_argument("--grid", type=Path, metavar="OUT.png", help="render one image under them all instead")
    parser.add_argument("--index", type=int, default=0, help="--grid: which image of the split (default: the first)")
    parser.add_argument("--image", type=Path, help="--grid: this image file instead of one of the split")
    parser.add_argument("--tile-width", type=int, help="--grid: shrink each tile to this width (default: as is)")
    parser.add_argument("--report", type=Path, metavar="RESULTS", help="src.eval's results.csv or its run folder")
    parser.add_argument("-o", "--output", type=Path, help="--report: write the table here (.md or .csv)")
    args = parser.parse_args(argv)
    try:
        if args.report is not None:
            return _report(args)
        if args.grid is not None:
            return _grid(args)
        if args.source_root is None or args.out_root is None:
            parser.error("give the dataset root and the output root (or --grid / --report)")
        return _generate(args)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
