"""Make MiniDG's two frozen VFMs from a seed, without the network.

    python scripts/make_minidg_vfms.py --seed 0

1. writes (or reuses) the pretraining set of `random`-styled renders under --data;
2. pretrains the visual ViT (SimMIM) and the Depth Anything model (depth regression) in two processes with one
   thread each;
3. saves --out/visual_vit/model.safetensors (timm) and --out/depth_anything/ (save_pretrained), each with a
   pretrain_log.json, after checking that the segmenter's backbones, built from conf/model/backbone/minidg_vit.yaml
   and conf/model/depth/minidg_depth.yaml (timm's local-file loading, `from_pretrained(local_files_only=True)`),
   reproduce the trained models' tokens exactly.

Both models are built and trained through the project's backbones (src/minidg/vfms.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.minidg.dataset import load_pretrain_set, write_pretrain_set  # noqa: E402
from src.minidg.pretrain import pretrain_depth, pretrain_visual  # noqa: E402


def _pretrain(kind: str, args: argparse.Namespace) -> dict:
    data = load_pretrain_set(args.data)
    if kind == "visual":
        return pretrain_visual(
            data, args.out / "visual_vit", steps=args.visual_steps, batch_size=args.visual_batch_size, seed=args.seed
        )
    return pretrain_depth(
        data, args.out / "depth_anything", steps=args.depth_steps, batch_size=args.depth_batch_size, seed=args.seed
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("assets/minidg"))
    parser.add_argument("--data", type=Path, default=Path("data/minidg/pretrain"))
    parser.add_argument("--num-scenes", type=int, default=4000, help="scenes in the pretraining set (2 stylings)")
    parser.add_argument("--visual-steps", type=int, default=600)
    parser.add_argument("--depth-steps", type=int, default=600)
    parser.add_argument("--visual-batch-size", type=int, default=32)
    parser.add_argument("--depth-batch-size", type=int, default=16)
    parser.add_argument("--only", choices=("visual", "depth"), help="make one of the two")
    parser.add_argument("--jobs", type=int, default=2, help="processes (1 thread each)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    write_pretrain_set(args.data, num_scenes=args.num_scenes, seed=args.seed, workers=args.jobs)
    kinds = [args.only] if args.only else ["visual", "depth"]
    if args.jobs > 1 and len(kinds) > 1:
        with multiprocessing.get_context("spawn").Pool(len(kinds)) as pool:
            logs = pool.starmap(_pretrain, [(kind, args) for kind in kinds])
    else:
        logs = [_pretrain(kind, args) for kind in kinds]
    for kind, log in zip(kinds, logs):
        print(
            f"{kind}: {log['steps']} steps x {log['batch_size']}, loss {log['loss_first20']} -> "
            f"{log['loss_last50']}, {log['seconds']:.0f} s, {log['params'] / 1e6:.2f} M params"
        )


if __name__ == "__main__":
    main()
