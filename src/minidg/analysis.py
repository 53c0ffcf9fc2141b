"""How stable the frozen VFMs' features are across MiniDG's domains (the premise of DepthForge).

For the same test scenes rendered in day and in night/fog/snow, compare each block's patch tokens: the cosine
similarity of day vs shifted token of the same patch, after centring both with the day mean of that block (without
centring, a large shared mean direction makes every pair look similar). 1 = the domain shift leaves the feature
unchanged. The visual tokens are the raw block outputs the adapters see; the depth tokens are the raw
(pre-layernorm) Depth Anything backbone block outputs on the resized input, as the depth backbone yields them.

    python -m src.minidg.analysis --assets assets/minidg --num-scenes 150
    python -m src.minidg.analysis --runs logs/minidg_sweep/rein_seed0   # + a trained run's token attention
    python -m src.minidg.analysis --export-run logs/minidg_sweep/rein_seed0 assets/minidg/runs/rein  # ship a run
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from src.attention import record_attention, require_attention
from src.minidg.dataset import test_scene
from src.minidg.styles import TARGET_STYLES
from src.minidg.vfms import depth_block_tokens, depth_vfm, normalize, visual_block_tokens, visual_vfm
from src.models.module import SegmentationModule
from src.predict import load_weights
from src.utils.checkpoint import atomic_torch_save, atomic_write
from src.utils.instantiate import build_module


def domain_images(num_scenes: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The first ``num_scenes`` test scenes of dataset ``seed`` rendered in day and in every target domain."""
    images: dict[str, list[np.ndarray]] = {d: [] for d in ("day", *TARGET_STYLES)}
    for i in range(num_scenes):
        for domain, image in test_scene(seed, i)[1].items():
            images[domain].append(image)
    return images


def block_tokens(assets: Path) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Per VFM of ``assets``: normalised images (B, 3, H, W) -> every block's patch tokens (B, L, N, C), read
    through the segmenter's backbones: the visual tokens as its adapter receives them, the depth tokens as its depth
    backbone yields them on the visual token grid."""
    visual = visual_vfm(assets / "visual_vit" / "model.safetensors")
    depth = depth_vfm(assets / "depth_anything")
    return {
        "visual": lambda x: visual_block_tokens(visual, x),
        "depth": lambda x: depth_block_tokens(depth, x, visual.grid_size(*x.shape[-2:])),
    }


@torch.no_grad()
def feature_stability(assets: Path, num_scenes: int = 150, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per VFM: per-block mean cosine(day, domain) for each target domain, and the day tokens' RMS ("rms")."""
    images = domain_images(num_scenes, seed)
    result: dict[str, dict[str, list[float]]] = {}
    for name, tokens in block_tokens(assets).items():
        feats = {
            d: torch.cat([tokens(normalize(np.stack(v[j : j + 50]))) for j in range(0, len(v), 50)])
            for d, v in images.items()
        }
        mean = feats["day"].mean((0, 2), keepdim=True)
        day = feats["day"] - mean
        result[name] = {"rms": feats["day"].pow(2).mean((0, 2, 3)).sqrt().tolist()}
        for domain in TARGET_STYLES:
            cos = torch.nn.functional.cosine_similarity(day, feats[domain] - mean, dim=-1).mean((0, 2))
            result[name][domain] = cos.tolist()
    return result


def _markdown(first: str, column: str, rows: list[tuple[str, str, list[str]]]) -> str:
    """Markdown table with columns (first, statistic, column 1..n) from rows (name, statistic, cells)."""
    n = len(rows[0][2])
    lines = [f"| {first} | statistic | " + " | ".join(f"{column} {i + 1}" for i in range(n)) + " |"]
    lines += ["|---|---|" + "---|" * n]
    lines += [f"| {name} | {label} | " + " | ".join(cells) + " |" for name, label, cells in rows]
    return "\n".join(lines)


def format_table(result: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table: one row per VFM and domain, one column per block."""
    return _markdown(
        "VFM",
        "block",
        [
            (name, "day token RMS" if domain == "rms" else f"cos(day, {domain})", [f"{v:.2f}" for v in rows[domain]])
            for name, rows in result.items()
            for domain in (*TARGET_STYLES, "rms")
        ],
    )


@torch.no_grad()
def token_attention(segmenter: nn.Module, num_scenes: int = 40, seed: int = 0) -> dict[str, list[float]]:
    """Is a trained REIN/DepthForge token module's attention S in use, and is it stable across the domains?

    Runs ``segmenter`` (eval mode) on ``num_scenes`` test scenes in every domain and records, per layer:
    ``peak``, the mean over day patches of max_m S (1/M for uniform attention: every patch then reads the same
    token mix and the tokens carry no spatial information); ``in_use``, the number of tokens that are the most
    attended one of at least 1% of the day patches (1 = collapsed: one token for every patch); and
    ``agree_<domain>``, the share of patches whose most-attended token is the same in day and in that domain
    (1 = the shift does not change which tokens a patch reads).
    """
    require_attention(segmenter.token_adapter)  # an AttentionError (a ValueError) names the adapter
    images = domain_images(num_scenes, seed)
    segmenter.eval()
    attention = {}
    for domain, batch in images.items():  # one (B, N, M) per layer, on the tokens the backbone hands the adapter
        attention[domain] = list(record_attention(segmenter, normalize(np.stack(batch))).weights.values())
    day = attention["day"]
    result = {
        "peak": [s.amax(-1).mean().item() for s in day],
        "in_use": [
            float((torch.bincount(s.argmax(-1).flatten(), minlength=s.shape[-1]) >= 0.01 * s[..., 0].numel()).sum())
            for s in day
        ],
    }
    for domain in TARGET_STYLES:
        result[f"agree_{domain}"] = [
            (a.argmax(-1) == b.argmax(-1)).float().mean().item() for a, b in zip(day, attention[domain])
        ]
    return result


def format_attention_table(per_method: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: one row per method and statistic, one column per layer."""
    labels = {"peak": "attention peak (day)", "in_use": "tokens in use (day)"}
    return _markdown(
        "method",
        "layer",
        [
            (
                method,
                labels.get(key, f"same top token, day vs {key.removeprefix('agree_')}"),
                [f"{v:.0f}" if key == "in_use" else f"{v:.2f}" for v in values],
            )
            for method, stats in per_method.items()
            for key, values in stats.items()
        ],
    )


RUN_CONFIG = "config.yaml"
RUN_WEIGHTS = "model.ckpt"
"""A shipped run (``assets/minidg/runs/<method>``, made by :func:`export_run`): its composed config and its weights."""


def run_files(path: Path, checkpoint: str = "last.ckpt") -> tuple[Path, Path, Path]:
    """(run directory, config, weights) of ``path``: a shipped run (`config.yaml`, `model.ckpt`), a checkpoint file
    (in a training run's `checkpoints/`), or a training run directory (`.hydra/config.yaml`,
    `checkpoints/<checkpoint>`). The files are named, not checked: callers say what is missing their own way."""
    path = Path(path)
    if path.is_dir() and (path / RUN_CONFIG).is_file():
        return path, path / RUN_CONFIG, path / RUN_WEIGHTS
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, run_dir / ".hydra" / "config.yaml", path
    return path, path / ".hydra" / "config.yaml", path / "checkpoints" / checkpoint


def load_run(run_dir: Path, checkpoint: str = "last.ckpt") -> SegmentationModule:
    """A trained run's module, loaded as `src.eval`/`src.predict` load one: built from the run's own composed config
    and given its weights by `src.predict.load_weights`, which refuses a checkpoint made for another model
    configuration. ``run_dir`` is a training run directory (`.hydra/config.yaml`, `checkpoints/<checkpoint>`) or a
    shipped run (`config.yaml`, `model.ckpt`: :func:`export_run`)."""
    run_dir, config, weights = run_files(run_dir, checkpoint)
    if not config.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run: expected {run_dir / '.hydra/config.yaml'} and {run_dir / 'checkpoints'}/"
            f"{checkpoint} (a training run) or {run_dir / RUN_CONFIG} and {run_dir / RUN_WEIGHTS} (a shipped run)\n"
            "  fix: pass the run's output directory (logs/.../<run>) or assets/minidg/runs/<method>"
        )
    module = build_module(OmegaConf.load(config))
    load_weights(module, weights)
    return module


def export_run(run_dir: Path, dest: Path, checkpoint: str = "last.ckpt") -> None:
    """Write a finished MiniDG training run as a shipped run: `dest/config.yaml`, the run's composed config with its
    machine-specific paths reset to the project defaults, and `dest/model.ckpt`, the checkpoint's trainable weights
    and model config only (no optimiser state, no random state: what evaluation and prediction need). Both are
    written atomically; the weights are checked to load back into the model the config builds."""
    run_dir, dest = Path(run_dir), Path(dest)
    if dest.resolve() == run_dir.resolve():
        raise ValueError(f"export_run would overwrite its input {run_dir}\n  fix: give another destination")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    defaults = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "paths" / "default.yaml")
    cfg.paths = defaults
    content = torch.load(run_dir / "checkpoints" / checkpoint, map_location="cpu", weights_only=True)
    slim = {"state_dict": content["state_dict"], "model_config": content["model_config"]}
    with atomic_write(dest / RUN_CONFIG) as f:
        f.write(OmegaConf.to_yaml(cfg).encode())
    atomic_torch_save(slim, dest / RUN_WEIGHTS)
    load_run(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, default=Path("assets/minidg"))
    parser.add_argument("--num-scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0, help="MiniDG dataset seed whose test scenes are used")
    parser.add_argument(
        "--runs", type=Path, nargs="*", default=[], help="run directories (trained or shipped): their token attention"
    )
    parser.add_argument(
        "--export-run",
        type=Path,
        nargs=2,
        metavar=("RUN_DIR", "DEST"),
        help="only write training run RUN_DIR as a shipped run in DEST (config.yaml + model.ckpt) and stop",
    )
    args = parser.parse_args()
    if args.export_run:
        export_run(*args.export_run)
        print(f"wrote {args.export_run[1] / RUN_CONFIG} and {args.export_run[1] / RUN_WEIGHTS}")
        return
    print(format_table(feature_stability(args.assets, args.num_scenes, args.seed)))
    if args.runs:
        stats = {str(run): token_attention(load_run(run).segmenter, seed=args.seed) for run in args.runs}
        print("\n" + format_attention_table(stats))


if __name__ == "__main__":
    main()
