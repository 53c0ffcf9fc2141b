#!/usr/bin/env bash
# The checks that need a GPU, in one run (estimated 5-7 minutes on one H100; each step has a timeout, 10 min in all):
#   1. the GPU-marked tests (pytest -m gpu): bf16 training step with every switch on, compile equal to eager,
#      fused AdamW equal to foreach AdamW, TF32 applied, Lightning's bf16-mixed trainer;
#   2. the benchmark table of the real ViT-L configurations (random weights, no download): DepthForge, REIN and
#      frozen at bf16, 512² crops, batch 4 and 8, activation checkpointing and torch.compile of the blocks on and
#      off for DepthForge, and the host synchronisations of a training step;
#   3. the tables are written into docs/benchmarks.md between <!-- gpu-table:start --> and <!-- gpu-table:end -->.
#
#   scripts/gpu_check.sh                  # everything
#   scripts/gpu_check.sh --tests-only     # step 1 only
#   PYTHON=/path/to/python scripts/gpu_check.sh
#
# Fails (non-zero) when there is no CUDA device, a test fails, a step runs past its timeout, or the table cannot be
# written; docs/benchmarks.md is only changed when every step passed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  PY="$(command -v python3 || true)"
fi
if [[ -z "$PY" ]]; then
  echo "gpu_check: no Python found (.venv/bin/python or python3); run 'make install' or set PYTHON=..." >&2
  exit 2
fi
TESTS_ONLY=0
if [[ "${1:-}" == "--tests-only" ]]; then
  TESTS_ONLY=1
elif [[ $# -gt 0 ]]; then
  echo "gpu_check: unknown argument '$1' (expected nothing or --tests-only)" >&2
  exit 2
fi

step() { echo; echo "=== gpu_check: $* ($(date +%H:%M:%S))"; }
fail() { echo "gpu_check: FAILED: $*" >&2; exit 1; }

step "CUDA device"
timeout 30 "$PY" - <<'PY' || fail "no usable CUDA device (torch.cuda.is_available() is False, or the query hung)"
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")
props = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.get_device_name(0)}: {props.total_memory / 2**30:.0f} GiB, compute capability "
      f"{props.major}.{props.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY

step "GPU tests (pytest -m gpu)"
timeout 180 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider || fail "GPU tests"
if [[ $TESTS_ONLY == 1 ]]; then
  echo "gpu_check: tests passed"
  exit 0
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
BENCH=("$PY" scripts/benchmark.py --device cuda --precisions bf16 --crop 512 --steps 5 --warmup 2 --split-steps 3
       --infer-runs 3)

step "benchmark: DepthForge, REIN, frozen; eager, batch 4 and 8"
timeout 150 "${BENCH[@]}" --ablations depthforge,rein,frozen --batch-sizes 4,8 --out "$OUT/1.md" \
  || fail "benchmark of the three methods"
step "benchmark: DepthForge with activation checkpointing"
timeout 60 "${BENCH[@]}" --ablations depthforge --checkpointing on --batch-sizes 4,8 --out "$OUT/2.md" \
  || fail "benchmark with activation checkpointing"
step "benchmark: DepthForge with torch.compile of the blocks"
timeout 180 "${BENCH[@]}" --ablations depthforge --compile blocks --checkpointing off,on --batch-sizes 8 \
  --out "$OUT/3.md" || fail "benchmark with torch.compile"
step "host synchronisations of one training step"
timeout 45 "$PY" scripts/benchmark.py --syncs --device cuda --ablations depthforge,rein --batch-sizes 4 \
  --out "$OUT/syncs.md" || fail "sync count"

step "write the tables into docs/benchmarks.md"
"$PY" - "$OUT" <<'PY' || fail "writing docs/benchmarks.md"
import datetime
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("benchmark", "scripts/benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules["benchmark"] = benchmark
spec.loader.exec_module(benchmark)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
parts = [
    f"Measured by `scripts/gpu_check.sh` on {torch.cuda.get_device_name(0)}, "
    f"{datetime.date.today().isoformat()}, commit {commit or 'unknown'}.",
    *[(out / name).read_text().strip() for name in ("1.md", "2.md", "3.md")],
]
parts += ["Host synchronisations of one training step (bf16, batch 4, after warm-up):", (out / "syncs.md").read_text()]
benchmark.write_between_markers(Path("docs/benchmarks.md"), "gpu-table", "\n\n".join(parts))
print("docs/benchmarks.md: GPU tables written")
PY
step "done"
