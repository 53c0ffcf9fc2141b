"""Write MiniDG to disk in the real dataset layouts, so the ordinary Cityscapes/ACDC dataset classes read it.

    <root>/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<idx>_000019_leftImg8bit.png      day
    <root>/cityscapes/gtFine/{train,val}/<city>/<city>_<idx>_000019_gtFine_labelTrainIds.png  (+ _labelIds)
    <root>/cityscapes/depth/{train,val}/<city>/<city>_<idx>_000019_depth.png
    <root>/acdc/rgb_anon/<cond>/val/<seq>/<seq>_frame_<idx>_rgb_anon.png                    night, fog, snow
    <root>/acdc/gt/<cond>/val/<seq>/<seq>_frame_<idx>_gt_labelTrainIds.png                   (+ _gt_labelIds)
    <root>/acdc/depth/<cond>/val/<seq>/<seq>_frame_<idx>_depth.png
    <root>/minidg.json

    python -m src.minidg.dataset data/minidg --num-train 2000 --num-test 300 --seed 0

Cityscapes train holds the labelled day source; Cityscapes val holds the test scenes in day (the in-domain
target) and ACDC val the *same* test scenes under night/fog/snow, so domains differ only in appearance. Test
scenes come from a different seed stream than training scenes. Depth PNGs are uint16 metres×256 (the KITTI
convention; sky = MAX_DEPTH). The VFM pretraining set (`write_pretrain_set`) is a separate flat folder of
`random`-styled renders with depth, from a third seed stream.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from src.data.labels import CLASS_NAMES, IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID
from src.minidg.render import IMAGE_SIZE, MAX_DEPTH, RENDERED_CLASSES, Render, render_seed
from src.minidg.styles import TARGET_STYLES, stylize, to_uint8

TRAIN, TEST, PRETRAIN = 0, 1, 2
"""Seed streams: scene i of stream s under dataset seed k is rendered from SeedSequence((k, s, i)), so the
training, test and pretraining scenes never share a seed."""

SCENES_PER_FOLDER = 250  # scenes per Cityscapes city / ACDC sequence folder
DEPTH_SCALE = 256.0  # depth PNG value = metres × 256

_TRAIN_ID_TO_LABEL_ID = np.zeros(256, np.uint8)  # unlabeled (0) for 255
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _TRAIN_ID_TO_LABEL_ID[_train_id] = _label_id


def write_depth(path: Path, depth: np.ndarray) -> None:
    _imwrite(path, np.round(np.clip(depth, 0, MAX_DEPTH) * DEPTH_SCALE).astype(np.uint16))


def read_depth(path: Path) -> np.ndarray:
    """Depth in metres (float32) from a MiniDG depth PNG."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(path)
    return raw.astype(np.float32) / DEPTH_SCALE


def _imread_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return np.ascontiguousarray(image[..., ::-1])


def _imwrite(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = image[..., ::-1]  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(image)):
        raise OSError(f"could not write {path}")


def _write_labels(stem: Path, label: np.ndarray) -> None:
    """`stem` + `_labelTrainIds.png` / `_labelIds.png` (train IDs -> Cityscapes label IDs, 255 -> unlabeled)."""
    _imwrite(stem.with_name(stem.name + "_labelTrainIds.png"), label)
    _imwrite(stem.with_name(stem.name + "_labelIds.png"), _TRAIN_ID_TO_LABEL_ID[label])


def cityscapes_name(split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of scene `index` in a Cityscapes split."""
    city = f"minidg{'' if split == 'train' else split}{index // SCENES_PER_FOLDER:02d}"
    return city, f"{city}_{index:06d}_000019"


def acdc_name(index: int) -> tuple[str, str]:
    """(sequence, file stem) of test scene `index` in an ACDC condition."""
    seq = f"MDG{index // SCENES_PER_FOLDER:04d}"
    return seq, f"{seq}_frame_{index:06d}"


def test_scene(seed: int, index: int, size: tuple[int, int] = IMAGE_SIZE) -> tuple[Render, dict[str, np.ndarray]]:
    """Test scene `index`: its render and uint8 RGB per domain (day + TARGET_STYLES), as written to disk."""
    key = (seed, TEST, index)
    render = render_seed(key, size)
    return render, {style: to_uint8(stylize(render, style, key)) for style in ("day", *TARGET_STYLES)}


def _write_train_scene(root: Path, seed: int, index: int, size: tuple[int, int]) -> None:
    key = (seed, TRAIN, index)
    render = render_seed(key, size)
    city, stem = cityscapes_name("train", index)
    cs = root / "cityscapes"
    _imwrite(cs / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", to_uint8(stylize(render, "day", key)))
    _write_labels(cs / "gtFine" / "train" / city / f"{stem}_gtFine", render.label)
    write_depth(cs / "depth" / "train" / city / f"{stem}_depth.png", render.depth)


def _write_test_scene(root: Path, seed: int, index: int, size: tuple[int, int]) -> None:
    render, images = test_scene(seed, index, size)
    city, stem = cityscapes_name("val", index)
    cs = root / "cityscapes"
    _imwrite(cs / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", images["day"])
    _write_labels(cs / "gtFine" / "val" / city / f"{stem}_gtFine", render.label)
    write_depth(cs / "depth" / "val" / city / f"{stem}_depth.png", render.depth)
    seq, stem = acdc_name(index)
    for cond in TARGET_STYLES:
        acdc = root / "acdc"
        _imwrite(acdc / "rgb_anon" / cond / "val" / seq / f"{stem}_rgb_anon.png", images[cond])
        _write_labels(acdc / "gt" / cond / "val" / seq / f"{stem}_gt", render.label)
        write_depth(acdc / "depth" / cond / "val" / seq / f"{stem}_depth.png", render.depth)


def _write_pretrain_scene(root: Path, seed: int, index: int, size: tuple[int, int], stylings: int) -> None:
    key = (seed, PRETRAIN, index)
    render = render_seed(key, size)
    for k in range(stylings):
        _imwrite(root / "images" / f"{index:06d}_{k}.png", to_uint8(stylize(render, "random", (*key, k))))
    write_depth(root / "depth" / f"{index:06d}_depth.png", render.depth)


def _run(job: tuple[Callable[..., None], tuple]) -> None:
    fn, args = job
    fn(*args)


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _run_all(jobs: Iterable[tuple[Callable[..., None], tuple]], workers: int) -> None:
    """Run the scene jobs on `workers` spawned processes (spawn: safe even when the caller has torch threads)."""
    jobs = list(jobs)
    if workers <= 1:
        for job in jobs:
            _run(job)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        for _ in pool.imap_unordered(_run, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
            pass


def _write_tree(meta_path: Path, meta: dict, jobs: list, workers: int, overwrite: bool) -> None:
    """Run `jobs` unless `meta_path` already records `meta`. The record is written last, so it marks a complete
    tree and callers can ask for the data on every run."""
    meta = json.loads(json.dumps(meta))  # canonical JSON types, comparable with the file's
    if not overwrite and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return
    meta_path.unlink(missing_ok=True)
    _run_all(jobs, workers)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1))


def write_minidg(
    root: Path,
    num_train: int = 2000,
    num_test: int = 300,
    seed: int = 0,
    size: tuple[int, int] = IMAGE_SIZE,
    workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write the DG benchmark under `root` (layout in the module docstring) and return `root`.

    `minidg.json` records the arguments; a tree whose record matches is left as it is unless `overwrite`.
    """
    root = Path(root)
    targets = {"day": "cityscapes/val", **{c: f"acdc/rgb_anon/{c}/val" for c in TARGET_STYLES}}
    meta = {
        "format": 1,
        "seed": seed,
        "size": list(size),
        "num_train": num_train,
        "num_test": num_test,
        "source": "cityscapes/train (day)",
        "targets": targets,
        "ignore_index": IGNORE_INDEX,
        "classes": {i: CLASS_NAMES[i] for i in RENDERED_CLASSES},
        "depth_png": f"uint16, metres x {DEPTH_SCALE:g}; sky = {MAX_DEPTH:g}",
    }
    jobs = [(_write_train_scene, (root, seed, i, tuple(size))) for i in range(num_train)]
    jobs += [(_write_test_scene, (root, seed, i, tuple(size))) for i in range(num_test)]
    _write_tree(root / "minidg.json", meta, jobs, workers, overwrite)
    return root


def write_pretrain_set(
    root: Path,
    num_scenes: int = 4000,
    stylings: int = 2,
    seed: int = 0,
    size: tuple[int, int] = IMAGE_SIZE,
    workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write `stylings` `random`-styled renders of each of `num_scenes` scenes, plus their depth, to `root`.

    Layout: `images/<scene>_<k>.png`, `depth/<scene>_depth.png`, `meta.json` (skip rule as `write_minidg`).
    """
    root = Path(root)
    meta = {"format": 1, "seed": seed, "size": list(size), "num_scenes": num_scenes, "stylings": stylings}
    jobs = [(_write_pretrain_scene, (root, seed, i, tuple(size), stylings)) for i in range(num_scenes)]
    _write_tree(root / "meta.json", meta, jobs, workers, overwrite)
    return root


@dataclass(frozen=True)
class PretrainSet:
    """In-memory pretraining set: image i shows scene `scene[i]`, whose depth is `depth[scene[i]]`."""

    images: np.ndarray  # uint8 (N, H, W, 3) RGB
    depth: np.ndarray  # float32 (S, H, W) metres
    scene: np.ndarray  # int64 (N,)


def load_pretrain_set(root: Path) -> PretrainSet:
    root = Path(root)
    meta = json.loads((root / "meta.json").read_text())
    num_scenes, stylings = meta["num_scenes"], meta["stylings"]
    scene = np.repeat(np.arange(num_scenes), stylings)
    images = np.stack(
        [_imread_rgb(root / "images" / f"{s:06d}_{k}.png") for s in range(num_scenes) for k in range(stylings)]
    )
    depth = np.stack([read_depth(root / "depth" / f"{s:06d}_depth.png") for s in range(num_scenes)])
    return PretrainSet(images=images, depth=depth, scene=scene)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("data/minidg"))
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    start = time.time()
    write_minidg(args.root, args.num_train, args.num_test, args.seed, workers=args.workers, overwrite=args.overwrite)
    print(f"MiniDG under {args.root} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
