"""Decode and decode+augment throughput of one data-loading worker, with the real training pipeline (method §6.3).

Writes generated PNG datasets at full size (GTA5 1914x1052, Cityscapes 2048x1024 by default) to a temporary
folder, then times `dataset.load` (image + label decode, label lookup) and the train transform on decoded pairs,
in this process with OpenCV and torch limited to `--threads` threads, as in one DataLoader worker.

    python scripts/bench_data.py [--cases gta5:1914x1052 cityscapes:2048x1024] [--images 8] [--iterations 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.datasets import CityscapesDataset, GTA5Dataset, LayoutDataset  # noqa: E402
from src.data.synthetic import write_dataset  # noqa: E402
from src.data.transforms import build_train_transform  # noqa: E402

DATASETS: dict[str, Callable[[Path, A.BaseCompose], LayoutDataset]] = {
    "gta5": lambda root, transform: GTA5Dataset(root, transform),
    "cityscapes": lambda root, transform: CityscapesDataset(root, "train", transform),
}


def _seconds_per_image(function: Callable[[int], object], count: int, iterations: int, repeats: int = 3) -> float:
    """Best of `repeats` timed passes: the least disturbed estimate on a shared machine."""
    function(0)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(iterations):
            function(i % count)
        best = min(best, (time.perf_counter() - start) / iterations)
    return best


def bench(kind: str, size: tuple[int, int], images: int, iterations: int, root: Path) -> str:
    """One markdown table row: kind, size, mean PNG size, decode ms, augment ms, decode+augment img/s.

    Augmentation is timed on already decoded pairs, so both parts are measured directly rather than as a
    difference of two noisy totals.
    """
    write_dataset(kind, root / kind, num_images=images, size=size)
    transform = build_train_transform(seed=0)
    dataset = DATASETS[kind](root / kind, transform)
    megabytes = sum(s.image.stat().st_size for s in dataset.samples) / len(dataset) / 2**20
    decoded = [dataset.load(i) for i in range(len(dataset))]
    decode = _seconds_per_image(dataset.load, len(dataset), iterations)
    augment = _seconds_per_image(lambda i: transform(image=decoded[i][0], mask=decoded[i][1]), images, iterations)
    cells = [kind, f"{size[0]}x{size[1]}", f"{megabytes:.1f} MB", f"{1e3 * decode:.0f} ms", f"{1e3 * augment:.0f} ms"]
    return "| " + " | ".join([*cells, f"{1 / (decode + augment):.1f} img/s"]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["gta5:1914x1052", "cityscapes:2048x1024"])
    parser.add_argument("--images", type=int, default=8, help="distinct images written per case")
    parser.add_argument("--iterations", type=int, default=32, help="timed samples per pass (best of 3 passes)")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV/torch threads (1 = one worker)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    print("| dataset | image | PNG (mean) | decode | augment | decode + augment |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            kind, _, size = case.partition(":")
            width, height = (int(v) for v in size.split("x"))
            print(bench(kind, (width, height), args.images, args.iterations, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
