"""How stable the frozen VFMs' features are across MiniDG's domains (the premise of DepthForge).

For the same test scenes rendered in day and in night/fog/snow, compare each block's patch tokens: the cosine
similarity of day vs shifted token of the same patch, after centring both with the day mean of that block (without
centring, a large shared mean direction makes every pair look similar). 1 = the domain shift leaves the feature
unchanged. The visual tokens are the raw block outputs the adapters see; the depth tokens are the raw
(pre-layernorm) Depth Anything backbone block outputs on the resized input, as the depth backbone yields them.

    python -m src.minidg.analysis --assets assets/minidg --num-scenes 150
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.minidg.dataset import test_scene
from src.minidg.pretrain import create_visual_vfm, depth_input, load_depth_vfm, normalize
from src.minidg.styles import TARGET_STYLES


@torch.no_grad()
def visual_block_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, L, N, C) patch tokens after each block of a timm ViT, prefix tokens dropped."""
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    out = []
    for block in vit.blocks:
        tokens = block(tokens)
        out.append(tokens[:, vit.num_prefix_tokens :])
    return torch.stack(out, 1)


@torch.no_grad()
def depth_block_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, L, N, C) raw patch tokens after each block of the Depth Anything backbone (cls dropped)."""
    hidden = model.backbone(pixel_values=depth_input(x), output_hidden_states=True).hidden_states[1:]
    return torch.stack([h[:, 1:] for h in hidden], 1)


def feature_stability(assets: Path, num_scenes: int = 150, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per VFM: per-block mean cosine(day, domain) for each target domain, and the day tokens' RMS ("rms")."""
    images: dict[str, list[np.ndarray]] = {d: [] for d in ("day", *TARGET_STYLES)}
    for i in range(num_scenes):
        for domain, image in test_scene(seed, i)[1].items():
            images[domain].append(image)
    models = {
        "visual": (create_visual_vfm(assets / "visual_vit" / "model.safetensors").eval(), visual_block_tokens),
        "depth": (load_depth_vfm(assets / "depth_anything"), depth_block_tokens),
    }
    result: dict[str, dict[str, list[float]]] = {}
    for name, (model, extract) in models.items():
        feats = {
            d: torch.cat([extract(model, normalize(np.stack(v[j : j + 50]))) for j in range(0, len(v), 50)])
            for d, v in images.items()
        }
        mean = feats["day"].mean((0, 2), keepdim=True)
        day = feats["day"] - mean
        result[name] = {"rms": feats["day"].pow(2).mean((0, 2, 3)).sqrt().tolist()}
        for domain in TARGET_STYLES:
            cos = torch.nn.functional.cosine_similarity(day, feats[domain] - mean, dim=-1).mean((0, 2))
            result[name][domain] = cos.tolist()
    return result


def format_table(result: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table: one row per VFM and domain, one column per block."""
    blocks = len(next(iter(result.values()))["rms"])
    lines = [
        "| VFM | domain | " + " | ".join(f"block {i + 1}" for i in range(blocks)) + " |",
        "|---|---|" + "---|" * blocks,
    ]
    for name, rows in result.items():
        for domain in (*TARGET_STYLES, "rms"):
            label = "day token RMS" if domain == "rms" else f"cos(day, {domain})"
            lines.append(f"| {name} | {label} | " + " | ".join(f"{v:.2f}" for v in rows[domain]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, default=Path("assets/minidg"))
    parser.add_argument("--num-scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0, help="MiniDG dataset seed whose test scenes are used")
    args = parser.parse_args()
    print(format_table(feature_stability(args.assets, args.num_scenes, args.seed)))


if __name__ == "__main__":
    main()
