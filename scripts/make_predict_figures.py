"""The pictures of docs/evaluation.md, "Prediction and videos", made with src.predict from a MiniDG checkpoint.

    python -m src.train experiment=minidg                       # ~6 min on 2 cores: logs/minidg/runs/<date>/...
    python scripts/make_predict_figures.py logs/minidg/runs/<date>/checkpoints/last.ckpt

Everything goes through ``src.predict.predict_folder`` with the MiniDG experiment's own config, exactly as
``python -m src.predict experiment=minidg ckpt_path=… input_dir=… outputs=[…]`` runs it (the command of each
picture is printed). The inputs are MiniDG test scenes, which are the evaluated images bit for bit
(``src.minidg.dataset.test_scene``), and a short drive down one test street rendered frame by frame into an MP4.
MiniDG images are 64 x 128 pixels: the pictures are shown enlarged ``--zoom`` times (nearest neighbour).

Writes docs/images/predict_overlay.png (one street in the four domains, each with its overlay and legend),
docs/images/predict_panels.png (image | colour | depth | token attention at layers 0 and 3) and
docs/images/predict_video.png (frames of the input clip over the same frames of the overlay video).

``--miou fog`` (any MiniDG target) also predicts that target's validation folder of data/minidg and prints the mIoU
of the written train-ID PNGs against the labels: on all its images (src.eval's val/<domain>/mIoU), and on the first
30 with the experiment's preprocessing and with the fixed 1024 x 512 resize src.predict used to apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.data.datasets.base import read_raw_label  # noqa: E402
from src.metrics import SegmentationIoU  # noqa: E402
from src.minidg.dataset import TEST, test_scene  # noqa: E402
from src.minidg.render import Camera, render, sample_scene  # noqa: E402
from src.minidg.styles import stylize, to_uint8  # noqa: E402
from src.predict import predict_folder  # noqa: E402
from src.utils.video import read_clip, write_clip  # noqa: E402

DOMAINS = ("day", "night", "fog", "snow")


def run_predict(ckpt: Path, input_dir: Path, output_dir: Path, *overrides: str) -> list[Path]:
    """``python -m src.predict experiment=minidg ckpt_path=ckpt input_dir=… output_dir=… <overrides>``."""
    args = ["experiment=minidg", f"ckpt_path={ckpt}", f"input_dir={input_dir}", f"output_dir={output_dir}", *overrides]
    print("python -m src.predict " + " ".join(args[:2] + [f"input_dir={input_dir.name}/", *overrides]))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=[*args, f"paths.output_dir={output_dir.parent / 'run'}"])
    return predict_folder(cfg)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, rgb: np.ndarray, zoom: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    big = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"  -> {path} ({big.shape[1]} x {big.shape[0]})")


def stack_rows(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of pictures one under the other, padded white to the widest, ``gap`` white pixels between."""
    width = max(r.shape[1] for r in rows)
    padded = []
    for row in rows:
        padded.append(np.pad(row, ((0, gap), (0, width - row.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(padded)[:-gap]


def side_by_side(pictures: list[np.ndarray], gap: int = 2) -> np.ndarray:
    parts = []
    for p in pictures:
        parts += [p, np.full((p.shape[0], gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def drive(seed: int, index: int, style: str, frames: int, step: float) -> list[np.ndarray]:
    """The camera of test scene ``index`` moving ``step`` metres forward per frame down its street, in ``style``."""
    key = (seed, TEST, index)
    scene = sample_scene(np.random.default_rng(key))
    clip = []
    for t in range(frames):
        camera = scene.camera
        moved = Camera(
            position=camera.position + np.array([0.0, 0.0, step * t]), rotation=camera.rotation, fov=camera.fov
        )
        frame = render(dataclasses.replace(scene, camera=moved))
        clip.append(to_uint8(stylize(frame, style, key)))
    return clip


def predicted_miou(
    ckpt: Path, data: Path, domain: str, tmp: Path, *overrides: str, limit: int | None = None
) -> tuple[float, int]:
    """(mIoU in %, images) of src.predict's train-ID PNGs of a MiniDG target's validation images (the first ``limit``)
    against their labels."""
    day = domain == "day"
    images = data / "cityscapes" / "leftImg8bit" / "val" if day else data / "acdc" / "rgb_anon" / domain
    labels = data / "cityscapes" / "gtFine" / "val" if day else data / "acdc" / "gt" / domain
    image_suffix, label_suffix = (
        ("_leftImg8bit", "_gtFine_labelTrainIds") if day else ("_rgb_anon", "_gt_labelTrainIds")
    )
    name = f"{domain}_{limit}_{len(overrides)}"
    if limit is not None:  # a folder of the first `limit` images, in the same tree
        subset = tmp / f"subset_{name}"
        for path in sorted(images.rglob("*.png"))[:limit]:
            (subset / path.relative_to(images)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, subset / path.relative_to(images))
        images = subset
    out = tmp / f"miou_{name}"
    run_predict(ckpt, images, out, "outputs=[trainid]", f"domain={domain}", *overrides)
    metric = SegmentationIoU()
    predictions = sorted(out.rglob("*.png"))
    for pred_path in predictions:
        rel = pred_path.relative_to(out)
        label = labels / rel.with_name(rel.name.replace(image_suffix, label_suffix))
        pred = cv2.imread(str(pred_path), cv2.IMREAD_UNCHANGED)
        metric.update(
            torch.from_numpy(pred[None]).long(), torch.from_numpy(np.array(read_raw_label(label))[None]).long()
        )
    return float(metric.compute()["mIoU"]), len(predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "ckpt", type=Path, help="a MiniDG DepthForge checkpoint (python -m src.train experiment=minidg)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--scene", type=int, default=7, help="MiniDG test scene of the stills")
    parser.add_argument("--drive-scene", type=int, default=11, help="MiniDG test scene the video drives down")
    parser.add_argument("--drive-style", default="fog", choices=DOMAINS)
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--zoom", type=int, default=3)
    parser.add_argument(
        "--attention-layers", type=int, nargs="+", default=[0, 3], help="layers of the token-attention panels"
    )
    parser.add_argument("--seed", type=int, default=0, help="MiniDG dataset seed (the benchmark's is 0)")
    parser.add_argument("--miou", choices=DOMAINS, help="also score src.predict on this target's validation images")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "minidg", help="the MiniDG tree (for --miou)")
    args = parser.parse_args()
    ckpt = args.ckpt.resolve()
    with tempfile.TemporaryDirectory(prefix="predict_figures_") as tmp:
        tmp = Path(tmp)
        if args.miou:  # the old fixed resize runs 72 windows per image: it is scored on the first 30 images
            full, n = predicted_miou(ckpt, args.data, args.miou, tmp)
            ours, k = predicted_miou(ckpt, args.data, args.miou, tmp, limit=30)
            old, _ = predicted_miou(ckpt, args.data, args.miou, tmp, "scale=[1024,512]", limit=30)
            print(
                f"{args.miou}: mIoU {full:.2f} on its {n} validation images (src.eval's val/{args.miou}/mIoU); on the"
            )
            print(f"first {k}: {ours:.2f} with the experiment's preprocessing, {old:.2f} with scale=[1024,512]")
        stills = tmp / "stills"
        stills.mkdir()
        _, images = test_scene(args.seed, args.scene)
        for domain in DOMAINS:
            cv2.imwrite(str(stills / f"{domain}.png"), cv2.cvtColor(images[domain], cv2.COLOR_RGB2BGR))

        out = tmp / "pred"
        first, *more = args.attention_layers
        run_predict(ckpt, stills, out, "outputs=[overlay,color,depth,attention]", f"attention_layer={first}")
        attention = [out / "attention"]
        for layer in more:
            run_predict(ckpt, stills, tmp / f"attention_{layer}", "outputs=[attention]", f"attention_layer={layer}")
            attention.append(tmp / f"attention_{layer}")
        rows = [side_by_side([images[d], read_rgb(out / "overlay" / f"{d}.png")]) for d in DOMAINS]
        write_rgb(args.out / "predict_overlay.png", stack_rows(rows), args.zoom)
        panels = [
            side_by_side(
                [images[d], read_rgb(out / "color" / f"{d}.png"), read_rgb(out / "depth" / f"{d}.png")]
                + [read_rgb(folder / f"{d}.png") for folder in attention]
            )
            for d in ("day", "night")
        ]
        write_rgb(args.out / "predict_panels.png", stack_rows(panels), args.zoom)

        clips = tmp / "clips"
        clips.mkdir()
        write_clip(clips / "drive.mp4", drive(args.seed, args.drive_scene, args.drive_style, args.frames, 0.4))
        (video,) = run_predict(ckpt, clips, tmp / "video", "outputs=[overlay]")
        frames, overlays = read_clip(clips / "drive.mp4"), read_clip(video)
        print(f"  {video.name}: {len(overlays)} frames from {len(frames)}")
        picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
        width = frames[0].shape[1]
        top = side_by_side([frames[i] for i in picks])
        bottom = side_by_side([overlays[i][:, :width] for i in picks[:-1]] + [overlays[picks[-1]]])
        write_rgb(args.out / "predict_video.png", stack_rows([top, bottom]), args.zoom)


if __name__ == "__main__":
    main()
