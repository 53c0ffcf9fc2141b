"""Model benchmark: parameter counts, checkpoint size, training-step and slide-inference throughput, peak memory.

Builds the real configurations with random weights (no download, no dataset) and feeds generated batches:

    python scripts/benchmark.py                                   # DepthForge, DINOv2-L + DA-V2-L, batch 5, 512²
    python scripts/benchmark.py --ablation rein --compile         # REIN, torch.compile'd segmenter
    python scripts/benchmark.py --count-only                      # counts and checkpoint size only (CPU is fine)
    python scripts/benchmark.py --tiny --device cpu               # the smoke-sized model, to try the script

Times are medians over --steps after --warmup steps, with CUDA synchronised around each step.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.models.inference import slide_inference  # noqa: E402
from src.utils.instantiate import build_module  # noqa: E402

TINY = ["model/backbone=tiny_vit", "model/depth=tiny_random", "model/head=mask2former_tiny"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="gta2citys")
    p.add_argument("--ablation", default="depthforge", help="a conf/ablation name, e.g. rein, frozen, lora")
    p.add_argument("--backbone", default=None, help="a conf/model/backbone name, e.g. eva02_l, sam_h")
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile the segmenter's forward")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--count-only", action="store_true")
    p.add_argument("--tiny", action="store_true", help="smoke-sized model (for trying the script on a CPU)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    overrides = [f"experiment={args.experiment}", f"ablation={args.ablation}", *args.overrides]
    if args.tiny:
        overrides += TINY
    else:
        overrides += ["model.segmenter.visual_backbone.pretrained=false", "model/depth=da_v2_l_random"]
    if args.backbone:
        overrides.append(f"model/backbone={args.backbone}")
        if not args.tiny:
            overrides.append("model.segmenter.visual_backbone.pretrained=false")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/depthforge-benchmark"])
    return cfg, build_module(cfg)


def count(module) -> dict[str, float]:
    seg = module.segmenter
    n = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    buffer = io.BytesIO()
    torch.save(seg.trainable_state_dict(), buffer)
    total = n(seg)
    trainable = sum(p.numel() for p in seg.parameters() if p.requires_grad)
    return {
        "visual VFM (frozen)": n(seg.visual_backbone),
        "depth VFM (frozen)": n(seg.depth_backbone),
        "token adapter": n(seg.token_adapter),
        "refinement decoder": n(seg.refinement_decoder),
        "mask head": n(seg.mask_head),
        "trainable": trainable,
        "total": total,
        "checkpoint weights (MB)": buffer.tell() / 2**20,
        "full fp32 model (MB)": sum(t.numel() * t.element_size() for t in seg.state_dict().values()) / 2**20,
    }


def timed(fn, device: torch.device, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    cfg, module = build(args)
    counts = count(module)
    print(f"## {args.ablation} on {cfg.model.segmenter.visual_backbone.model_name}")
    for key, value in counts.items():
        print(f"| {key} | {value:,.0f} |" if "MB" not in key else f"| {key} | {value:,.1f} |")
    ratio = counts["checkpoint weights (MB)"] / counts["full fp32 model (MB)"]
    print(f"| checkpoint / full model | {100 * ratio:.2f}% |")
    if args.count_only:
        return
    device = torch.device(args.device)
    seg = module.segmenter.to(device).train()
    forward = torch.compile(seg) if args.compile else seg
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16")  # noqa: E731
    optimizer = torch.optim.AdamW(seg.param_groups(lr=1e-4, weight_decay=0.05), fused=device.type == "cuda")
    crop = args.crop if not args.tiny else 64
    images = torch.randn(args.batch_size, 3, crop, crop, device=device)
    labels = torch.randint(0, 19, (args.batch_size, crop, crop), device=device)

    def train_step() -> None:
        with autocast():
            loss = seg.mask_head.loss(forward(images), labels)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = statistics.median(timed(train_step, device, args.steps, args.warmup))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    seg.eval()
    h, w = (512, 1024) if not args.tiny else (64, 128)
    image = torch.randn(1, 3, h, w, device=device)

    def infer() -> None:  # the module's sliding windows (docs/method.md §6.6), all windows of the image in one batch
        with autocast():
            slide_inference(seg.predict, image, seg.num_classes, **module.slide)

    infer_time = statistics.median(timed(infer, device, max(args.steps // 2, 1), 1))
    print(f"| device | {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} |")
    print(f"| precision / compile | {args.precision} / {args.compile} |")
    print(
        f"| train step (batch {args.batch_size}, {crop}²) | {step * 1000:.0f} ms = {args.batch_size / step:.2f} img/s |"
    )
    print(f"| peak GPU memory (train) | {peak:.1f} GiB |")
    print(f"| slide inference {w}x{h} | {infer_time * 1000:.0f} ms/image |")


if __name__ == "__main__":
    main()
