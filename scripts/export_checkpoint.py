"""Write a run's checkpoint in the authors' REIN/DepthForge layout, for their mmsegmentation tools.

The output is what their training saves (``backbone.reins.*`` or ``backbone.depthforge.*`` + ``decode_head.*``, in
an mmengine ``{"meta", "state_dict"}`` dict), so that ``tools/test.py <their config> OUT --backbone <their
converted backbone file>`` evaluates it. ``--full`` adds the frozen VFMs (their merged full-model layout), and
``--backbone-out`` writes them as their ``--backbone`` file; both build the run's model, VFM weights included, from
the configuration the checkpoint records. A ``.safetensors`` output holds the state dict alone.

    python scripts/export_checkpoint.py logs/gta2citys/runs/<run>/checkpoints/last.ckpt rein_and_head.pth
    python scripts/export_checkpoint.py <ckpt> depthforge_full.pth --full
    python scripts/export_checkpoint.py <ckpt> depthforge_and_head.pth --backbone-out dinov2_converted_depth.pth

Only what the authors' code has an equivalent of exports: REIN (``ablation=rein``), DepthForge
(``ablation=depthforge``) and the frozen VFM (``ablation=frozen``); anything else is refused with that list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from src.models.authors import (  # noqa: E402
    as_mmengine_checkpoint,
    export_backbone_file,
    export_depth,
    export_trainable,
    export_visual,
    is_depthforge_checkpoint,
    kind_of_config,
    read_weight_file,
)
from src.utils.checkpoint import CheckpointError, atomic_torch_save, atomic_write  # noqa: E402


def build_segmenter(model_config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The run's segmenter from the configuration its checkpoint records (the VFMs from their configured source)."""
    import hydra

    segmenter = hydra.utils.instantiate(model_config)
    segmenter.load_trainable_state_dict(state)
    return segmenter.eval()


def save(state: dict[str, torch.Tensor], path: Path, meta: dict[str, Any]) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
        with atomic_write(path) as f:
            f.write(data)
    else:
        atomic_torch_save(as_mmengine_checkpoint(state, meta), path)


def export(ckpt: Path, out: Path, full: bool = False, backbone_out: Path | None = None) -> dict[str, torch.Tensor]:
    """Write ``out`` (and ``backbone_out``) from the depthforge checkpoint ``ckpt``; returns what ``out`` holds."""
    content = read_weight_file(ckpt)
    if not is_depthforge_checkpoint(content) or "model_config" not in content:
        raise CheckpointError(f"{ckpt} is not a depthforge checkpoint (it records no model_config)")
    model_config = content["model_config"]
    state = {k.removeprefix("segmenter."): v for k, v in content["state_dict"].items()}
    adapter = (model_config.get("token_adapter") or {}).get("_target_", "no adapter")
    exported = export_trainable(state, kind_of_config(model_config), what=f"{ckpt} ({adapter})")
    meta = {"source": str(ckpt), "global_step": int(content.get("global_step", 0))}
    if full or backbone_out is not None:
        segmenter = build_segmenter(model_config, state)
        if full:
            if not segmenter.train_backbone:
                exported.update(export_visual(segmenter.visual_backbone.model))
            if segmenter.depth_backbone is not None:
                exported.update(export_depth(segmenter.depth_backbone.model))
        if backbone_out is not None:
            save(export_backbone_file(segmenter), backbone_out, meta)
            print(f"wrote the frozen VFMs in the authors' --backbone layout to {backbone_out}")
    save(exported, out, meta)
    print(f"wrote {len(exported)} tensors in the authors' layout to {out}")
    return exported


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a run's checkpoint (<run dir>/checkpoints/last.ckpt)")
    parser.add_argument("out", type=Path, help="the file to write (.pth, or .safetensors for the state dict alone)")
    parser.add_argument("--full", action="store_true", help="add the frozen VFMs (the authors' merged full file)")
    parser.add_argument("--backbone-out", type=Path, help="also write the frozen VFMs as the authors' backbone file")
    args = parser.parse_args()
    try:
        export(args.checkpoint, args.out, args.full, args.backbone_out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
