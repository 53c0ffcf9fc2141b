"""How far bf16 mixed precision moves a model from fp32, the authors' precision (docs/reproduction.md).

    python scripts/precision_check.py experiment=smoke                        # CPU, tiny random VFMs, ~1 minute
    python scripts/precision_check.py --device cuda --steps 20 experiment=gta2citys paths.data_dir=/data

1. Forward: one training batch through the same weights in fp32 and under bf16 autocast: the max and mean absolute
   difference of the last stage's class and mask logits and of the semantic probabilities, the share of pixels
   whose predicted class changes, and the loss (same matching points in both).
2. Training: `python -m src.train <overrides>` for `--max-steps` steps (the schedule is scaled to them) in
   trainer.precision=32-true, again in 32-true (the run-to-run noise floor) and in bf16-mixed, from the same seed;
   the first `--steps` train/loss values and their differences.
Arguments after the options are Hydra overrides of conf/train.yaml, as for src.train.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _compose(overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a.float() - b.float()).abs()
    return f"max {d.max().item():.3e}  mean {d.mean().item():.3e}  (|fp32| mean {a.float().abs().mean().item():.3e})"


def forward_check(overrides: list[str], device: str, work: Path) -> None:
    import hydra
    import lightning as L

    from src.utils.instantiate import build_module

    cfg = _compose(overrides, work / "forward")
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    seg = build_module(cfg).segmenter.to(device)
    images, labels = batch["image"].to(device), batch["label"].to(device)

    def run(bf16: bool):
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = seg(images)
            probs = seg.mask_head.semantic_map(out, images.shape[-2:])
            torch.manual_seed(0)  # the same point sampling in the matcher and the losses
            loss = seg.mask_head.loss(out, labels)["loss"]
        return out.class_logits[-1], out.mask_logits[-1], probs, loss

    c32, m32, p32, l32 = run(False)
    c16, m16, p16, l16 = run(True)
    print(f"forward of one batch {tuple(images.shape)} on {device}, bf16 autocast vs fp32:")
    print(f"  class logits   {_diff(c32, c16)}")
    print(f"  mask logits    {_diff(m32, m16)}")
    print(f"  probabilities  {_diff(p32, p16)}")
    changed = (p32.argmax(1) != p16.argmax(1)).float().mean().item()
    print(f"  predicted class changed on {100 * changed:.3f} % of pixels")
    print(f"  loss           fp32 {l32.item():.6f}  bf16 {l16.item():.6f}  |diff| {abs(l32.item() - l16.item()):.3e}")


def _losses(overrides: list[str], precision: str, steps: int, max_steps: int, run_dir: Path) -> list[float]:
    command = [
        sys.executable,
        "-m",
        "src.train",
        *overrides,
        f"trainer.precision={precision}",
        f"trainer.max_steps={max_steps}",
        f"trainer.val_check_interval={max_steps}",
        f"callbacks.model_checkpoint.every_n_train_steps={max_steps}",
        "trainer.log_every_n_steps=1",
        "test=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = csv.DictReader(next(run_dir.rglob("metrics.csv")).open())
    by_step = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    return [by_step[s] for s in sorted(by_step)][:steps]


def training_check(overrides: list[str], steps: int, max_steps: int, work: Path) -> None:
    a = _losses(overrides, "32-true", steps, max_steps, work / "fp32_a")
    b = _losses(overrides, "32-true", steps, max_steps, work / "fp32_b")
    h = _losses(overrides, "bf16-mixed", steps, max_steps, work / "bf16")
    command = " ".join(["python -m src.train", *overrides, f"trainer.max_steps={max_steps}"])
    print(f"\ntrain/loss of the first {steps} steps ({command}):")
    print(f"  {'step':>4}  {'fp32':>10}  {'bf16-mixed':>10}  {'|bf16-fp32|':>11}  {'|fp32-fp32|':>11}")
    for i, (x, y, z) in enumerate(zip(a, h, b)):
        print(f"  {i:>4}  {x:>10.5f}  {y:>10.5f}  {abs(y - x):>11.2e}  {abs(z - x):>11.2e}")
    diffs = [abs(y - x) for x, y in zip(a, h)]
    rel = [abs(y - x) / abs(x) for x, y in zip(a, h)]
    print(
        f"  bf16 vs fp32: max |diff| {max(diffs):.3e}, mean {sum(diffs) / len(diffs):.3e}, max relative {max(rel):.2%}"
    )
    print(f"  fp32 vs fp32 (run to run): max |diff| {max(abs(z - x) for x, z in zip(a, b)):.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the forward check)")
    parser.add_argument("--steps", type=int, default=10, help="training losses compared (0: forward check only)")
    parser.add_argument("--max-steps", type=int, default=20, help="steps each run trains (at least --steps)")
    parser.add_argument("--work-dir", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=smoke")
    args = parser.parse_args()
    overrides = args.overrides or ["experiment=smoke"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        forward_check(overrides, args.device, work)
        if args.steps > 0:
            training_check(overrides, args.steps, max(args.steps, args.max_steps), work)


if __name__ == "__main__":
    main()
