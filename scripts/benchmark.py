"""Model benchmark: variants of the training step and of slide inference compared in one run, as one Markdown table.

Builds the real configurations with random weights (no download, no dataset) and feeds generated batches. Every
comma-separated option is a grid axis; each combination is one row:

    python scripts/benchmark.py --ablations depthforge,rein,frozen --precisions bf16 --compile off,blocks \\
        --checkpointing off,on --batch-sizes 4,8 --out bench.md       # DINOv2-L + DA-V2-L, 512² crops
    python scripts/benchmark.py --count-only --ablations depthforge,rein,frozen  # parameter counts, checkpoint size
    python scripts/benchmark.py --tiny --device cpu --steps 1 --warmup 1        # the smoke-sized model, on a CPU
    python scripts/benchmark.py --explain --tiny --device cpu                   # torch.compile graph breaks
    python scripts/benchmark.py --syncs --ablations depthforge,rein              # host syncs of a step (CUDA)

What a row measures (docs/benchmarks.md explains each choice):

- **step**: the median over ``--steps`` (after ``--warmup``) of one training step as the module runs it: forward
  and loss under autocast, backward, optimiser step (the module's own optimiser: AdamW, fused on CUDA), zeroing
  the gradients; CUDA is synchronised around each step. ``img/s`` = batch / step.
- **split**: the same step run in stages cut at the parts' boundaries (each part's output is detached into a leaf
  and its gradient handed back with ``torch.autograd.backward``), synchronising after each stage. A part's time is
  its forward plus its backward: depth VFM (forward only), visual VFM with the adapter, DRD, head + loss (the
  queries' branch into the adapter included), optimiser. ``Σ/step`` compares their sum with the uncut step.
  A segmenter compiled as a whole cannot be cut, so its split is not measured (``—``).
- **memory**: CUDA: ``torch.cuda.max_memory_allocated`` during one step (``peak``) and that minus what was allocated
  when it began (``step``: activations, gradients, temporaries). CPU: ``step`` is the peak of the bytes allocated
  during the step as torch's profiler records them (``profile_memory=True``), ``peak`` adds the parameters, buffers
  and optimiser state that were already allocated. ``visual``: the same ``step`` measure for the visual VFM with
  the adapter alone (forward, then backward from a gradient of ones on its maps), the part activation
  checkpointing acts on.
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one eager training step (forward, loss, backward;
  without the recomputation activation checkpointing adds, i.e. model FLOPs) and over one slide inference.
  ``TFLOP/s`` = training FLOPs / step time; ``MFU`` = that / the device's dense bf16 peak (``--peak-tflops`` or
  :data:`BF16_PEAK_TFLOPS`; ``n/a`` on a CPU or an unknown device).
- **slide**: the median time of slide inference (the module's windows, all of an image in one batch) of one
  ``--infer-size`` image (1024x512: 3 windows of 512²) under the same autocast.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import itertools
import math
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.models.inference import slide_inference  # noqa: E402
from src.models.module import SegmentationModule  # noqa: E402
from src.models.segmenter import Segmenter  # noqa: E402
from src.utils.instantiate import build_module  # noqa: E402

#: the smoke-sized model (tests/conftest.py's TINY) with windows that fit its 64² crop
TINY = [
    "model/backbone=tiny_vit",
    "model/depth=tiny_random",
    "model/head=mask2former_tiny",
    "model.slide.crop=64",
    "model.slide.stride=43",
]
#: the real widths with random weights: DINOv2-L (no hub download) and Depth Anything V2-L
REAL = ["model.segmenter.visual_backbone.pretrained=false", "model/depth=da_v2_l_random"]

#: dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device name, first match wins (vendor data sheets)
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"GH200|H200(?!.*NVL)", 989.0),
    (r"H100.*NVL", 835.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"B200", 2250.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)

#: the parts of the split, in the order of the table's columns
PARTS = ("depth", "visual", "drd", "head", "optim")
COLUMNS = (
    "ablation",
    "precision",
    "compile",
    "ckpt",
    "batch",
    "img/s",
    "step ms",
    "depth ms",
    "visual ms",
    "DRD ms",
    "head+loss ms",
    "optim ms",
    "Σ/step",
    "peak GiB",
    "step GiB",
    "visual GiB",
    "train GFLOP/img",
    "TFLOP/s",
    "MFU",
    "slide ms",
    "slide GFLOP",
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the grid."""

    ablation: str
    precision: str
    compile: str
    checkpointing: bool
    batch_size: int


@dataclasses.dataclass
class Row:
    """What was measured for one :class:`Variant`; None where it was not measured."""

    variant: Variant
    step_s: float
    split_s: dict[str, float] | None
    peak_bytes: float | None
    step_bytes: float | None
    visual_bytes: float | None
    train_flops: float | None
    slide_s: float | None
    slide_flops: float | None
    peak_tflops: float | None

    @property
    def images_per_s(self) -> float:
        return self.variant.batch_size / self.step_s

    @property
    def achieved_tflops(self) -> float | None:
        return None if self.train_flops is None else self.train_flops / self.step_s / 1e12

    @property
    def mfu(self) -> float | None:
        achieved = self.achieved_tflops
        return None if achieved is None or not self.peak_tflops else achieved / self.peak_tflops


# --------------------------------------------------------------------------- command line


def _list(kind: Callable[[str], Any], allowed: Sequence[str] | None = None) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list with at least one item")
        if allowed is not None:
            wrong = [item for item in items if item not in allowed]
            if wrong:
                raise argparse.ArgumentTypeError(f"{wrong} not among {list(allowed)}")
        return [kind(item) for item in items]

    return parse


def _size(text: str) -> tuple[int, int]:
    """``1024x512`` (width x height) -> (height, width)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x512, got {text!r}")
    return int(match.group(2)), int(match.group(1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="gta2citys")
    p.add_argument("--ablations", "--ablation", type=_list(str), default=["depthforge"], help="conf/ablation names")
    p.add_argument("--backbone", default=None, help="a conf/model/backbone name, e.g. eva02_l, sam_h")
    p.add_argument("--batch-sizes", "--batch-size", type=_list(int), default=[5])
    p.add_argument("--precisions", "--precision", type=_list(str, ("bf16", "fp32")), default=["bf16"])
    p.add_argument(
        "--compile",
        type=_list(str, ("off", "blocks", "segmenter")),
        nargs="?",
        const=["segmenter"],
        default=["off"],
        help="off, blocks (each block of both frozen VFMs), segmenter (its forward); a bare --compile = segmenter",
    )
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument(
        "--checkpointing",
        type=_list(str, ("off", "on")),
        default=["off"],
        help="activation checkpointing of the visual blocks and adapter steps: off, on or off,on",
    )
    p.add_argument("--depth-inference-mode", action="store_true", help="the depth VFM under torch.inference_mode")
    p.add_argument("--crop", type=int, default=None, help="training crop side (default 512, --tiny 64)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--split-steps", type=int, default=None, help="staged steps timed for the split (default steps)")
    p.add_argument("--infer-size", type=_size, default=None, help="WIDTHxHEIGHT (default 1024x512, --tiny 128x64)")
    p.add_argument("--infer-runs", type=int, default=3)
    p.add_argument("--infer-warmup", type=int, default=1)
    p.add_argument("--no-split", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count-only", action="store_true", help="parameter counts and checkpoint size only")
    p.add_argument("--explain", action="store_true", help="list torch.compile's graph breaks of forward and loss")
    p.add_argument("--syncs", action="store_true", help="count the host synchronisations of a step (CUDA)")
    p.add_argument("--tiny", action="store_true", help="smoke-sized model (for trying the script on a CPU)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    p.add_argument(
        "--into",
        type=Path,
        default=None,
        help="replace the text between <!-- MARKER:start --> and <!-- MARKER:end --> in this file",
    )
    p.add_argument("--marker", default="gpu-table")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args(argv)
    args.crop = args.crop or (64 if args.tiny else 512)
    args.infer_size = args.infer_size or ((64, 128) if args.tiny else (512, 1024))
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return args


# --------------------------------------------------------------------------- building


def build(args: argparse.Namespace, ablation: str, compile_target: str = "off") -> tuple[Any, SegmentationModule]:
    """The run config and module of ``ablation`` (real widths with random weights, or ``--tiny``), seeded."""
    overrides = [f"experiment={args.experiment}", f"ablation={ablation}"]
    overrides += TINY if args.tiny else REAL
    if args.backbone:
        overrides.append(f"model/backbone={args.backbone}")
        if not args.tiny:
            overrides.append("model.segmenter.visual_backbone.pretrained=false")
    overrides += [
        f"model.performance.compile={'null' if compile_target == 'off' else compile_target}",
        f"model.performance.compile_backend={args.compile_backend}",
        f"model.performance.depth_inference_mode={str(args.depth_inference_mode).lower()}",
        *args.overrides,
    ]
    torch.manual_seed(args.seed)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/depthforge-benchmark"])
    return cfg, build_module(cfg)


def count(module: SegmentationModule) -> dict[str, float]:
    """Parameter counts per part, the trainable-only checkpoint's size and the full fp32 model's."""
    seg = module.segmenter
    n = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    buffer = io.BytesIO()
    torch.save(seg.trainable_state_dict(), buffer)
    full = sum(t.numel() * t.element_size() for t in seg.state_dict().values())
    return {
        "visual VFM (frozen)": n(seg.visual_backbone),
        "depth VFM (frozen)": n(seg.depth_backbone),
        "token adapter": n(seg.token_adapter),
        "refinement decoder": n(seg.refinement_decoder),
        "mask head": n(seg.mask_head),
        "trainable": sum(p.numel() for p in seg.parameters() if p.requires_grad),
        "total": n(seg),
        "checkpoint weights (MB)": buffer.tell() / 2**20,
        "full fp32 model (MB)": full / 2**20,
        "checkpoint / full model (%)": 100 * buffer.tell() / full,
    }


def count_table(counts: dict[str, dict[str, float]]) -> str:
    """One column per ablation."""
    names = list(counts)
    lines = ["| part | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in next(iter(counts.values())):
        cells = []
        for name in names:
            value = counts[name][key]
            cells.append(f"{value:,.2f}" if "(%)" in key else f"{value:,.1f}" if "(MB)" in key else f"{value:,.0f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- measuring


def make_batch(
    batch_size: int, crop: int, num_classes: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking images (B, 3, crop, crop) and labels with every class present, from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, crop, crop, generator=gen)
    labels = torch.randint(0, num_classes, (batch_size, crop, crop), generator=gen)
    return images.to(device), labels.to(device)


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast Lightning's ``bf16-mixed`` applies (cache off), or none for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> list[float]:
    """Wall times of ``steps`` calls after ``warmup`` calls, the device synchronised around each."""
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def train_step(
    seg: Segmenter,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """One training step as the module runs it: forward and loss under autocast, backward, step, zero_grad."""
    with autocast():
        loss = seg.loss(images, labels)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _leaves(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies-by-reference that start a new graph where the original carried a gradient."""
    return [t.detach().requires_grad_(t.requires_grad) for t in tensors]


def _backward(outputs: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor]) -> None:
    """Hand each leaf's gradient back into the graph of the output it was cut from."""
    pairs = [(o, leaf.grad) for o, leaf in zip(outputs, leaves) if o.requires_grad and leaf.grad is not None]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])


def staged_step(
    seg: Segmenter,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> dict[str, float]:
    """The training step cut at the parts' boundaries; seconds per part (forward + backward), see the module doc.

    The gradients are those of :func:`train_step` (the chain rule through detached leaves), so the work is the same;
    what the cut removes is the overlap of the parts on the device and what it adds is one synchronisation each.
    """
    times = dict.fromkeys(PARTS, 0.0)
    synchronize(device)
    mark = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal mark
        synchronize(device)
        now = time.perf_counter()
        times[part] += now - mark
        mark = now

    with autocast():
        depth = seg.depth_tokens(images)
    lap("depth")
    if seg.depth_backbone is None:
        del times["depth"]
    if seg.refinement_decoder is None:
        del times["drd"]
    with autocast():
        maps = seg.visual_backbone(images, seg.token_adapter, depth)
    lap("visual")
    maps_in = _leaves(maps)
    refined, refined_in = maps_in, maps_in
    if seg.refinement_decoder is not None:
        with autocast():
            refined = seg.refinement_decoder(maps_in)
        refined_in = _leaves(refined)
        lap("drd")
    with autocast():
        loss = seg.mask_head.loss(seg.mask_head(refined_in, seg.token_adapter.queries()), labels)["loss"]
    loss.backward()
    lap("head")
    if seg.refinement_decoder is not None:
        _backward(refined, refined_in)
        lap("drd")
    _backward(maps, maps_in)
    lap("visual")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lap("optim")
    return times


def static_bytes(seg: Segmenter, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, buffers and optimiser state: what is allocated before a step begins."""
    tensors = [*seg.parameters(), *seg.buffers()]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def cpu_step_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated when it began, from torch's profiler.

    Every CPU allocation and free during ``fn`` is an event with the running total of bytes allocated since the
    profiler started; the peak of that total is the step's own memory (memory allocated before is not counted).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    events.sort(key=lambda e: e[0])
    return max(itertools.accumulate(size for _, size in events), default=0)


def peak_above_start(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(peak bytes allocated while ``fn`` runs, that peak minus what was allocated when it began); on a CPU the first
    is not known (NaN) and the second comes from torch's profiler (:func:`cpu_step_peak_bytes`)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return float(peak), float(peak - start)
    return math.nan, float(cpu_step_peak_bytes(fn))


def step_memory(
    seg: Segmenter, optimizer: torch.optim.Optimizer, step: Callable[[], Any], device: torch.device
) -> tuple[float, float]:
    """(peak bytes of a step, bytes of the step above what it began with), see the module doc."""
    peak, extra = peak_above_start(step, device)
    if device.type != "cuda":
        peak = static_bytes(seg, optimizer) + extra
    return float(peak), float(extra)


def visual_memory(
    seg: Segmenter,
    images: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> float:
    """Bytes above start of the visual VFM with the adapter alone: forward (the depth tokens made beforehand) and
    backward from a gradient of ones on its maps. The part activation checkpointing acts on."""
    with autocast():
        depth = seg.depth_tokens(images)

    def forward_backward() -> None:
        with autocast():
            maps = [m for m in seg.visual_backbone(images, seg.token_adapter, depth) if m.requires_grad]
        if maps:
            torch.autograd.backward(maps, [torch.ones_like(m) for m in maps])

    extra = peak_above_start(forward_backward, device)[1]
    seg.zero_grad(set_to_none=True)
    return extra


@contextlib.contextmanager
def eager_without_checkpointing(seg: Segmenter) -> Iterator[None]:
    """Run compiled code eagerly and the visual blocks without recomputation (to count model FLOPs)."""
    checkpointing = seg.visual_backbone.model.grad_checkpointing
    seg.visual_backbone.set_grad_checkpointing(False)
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        seg.visual_backbone.set_grad_checkpointing(checkpointing)


@contextlib.contextmanager
def no_trainable_parameters(seg: Segmenter) -> Iterator[None]:
    """Inference without parameters that require grad. FlopCounterMode's module tracker hooks every module input
    that requires grad, and a view of a parameter made under no_grad (the frozen baseline's learned queries,
    expanded over the batch) requires grad without a grad_fn, which it cannot hook."""
    trainable = [p for p in seg.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the counted ops (matmuls, convolutions, attention) that ``fn`` runs, backward included."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def train_flops(seg: Segmenter, images: torch.Tensor, labels: torch.Tensor, precision: str) -> int:
    """Model FLOPs of one training step's forward, loss and backward (gradients are left set to None)."""
    autocast = autocast_for(precision, images.device)

    def forward_backward() -> None:
        with autocast():
            loss = seg.loss(images, labels)["loss"]
        loss.backward()

    with eager_without_checkpointing(seg):
        flops = count_flops(forward_backward)
    seg.zero_grad(set_to_none=True)
    return flops


def peak_tflops_of(device: torch.device, override: float | None) -> float | None:
    """The dense bf16 peak of the device (``override`` first), None when unknown or not a GPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


def variants(args: argparse.Namespace) -> list[Variant]:
    """The grid, ablation and compile outermost (each needs its own build)."""
    return [
        Variant(ablation, precision, compile_target, ckpt == "on", batch)
        for ablation in args.ablations
        for compile_target in args.compile
        for ckpt in args.checkpointing
        for precision in args.precisions
        for batch in args.batch_sizes
    ]


def measure(
    args: argparse.Namespace,
    variant: Variant,
    module: SegmentationModule,
    flop_cache: dict[tuple, int],
    log: Callable[[str], None] = print,
) -> Row:
    """Every measurement of one row on an already built (and moved) module."""
    device = torch.device(args.device)
    seg = module.segmenter.train()
    seg.visual_backbone.set_grad_checkpointing(variant.checkpointing)
    optimizer = module.build_optimizer()
    autocast = autocast_for(variant.precision, device)
    images, labels = make_batch(variant.batch_size, args.crop, seg.num_classes, device, args.seed)
    step = lambda: train_step(seg, optimizer, images, labels, autocast)  # noqa: E731

    step_s = statistics.median(timed(step, device, args.steps, args.warmup))
    log(f"  step {step_s * 1000:.0f} ms")
    split = None
    if not args.no_split and variant.compile != "segmenter":
        runs = [
            staged_step(seg, optimizer, images, labels, autocast, device)
            for _ in range(1 + (args.split_steps or args.steps))
        ][1:]
        split = {part: statistics.median(run[part] for run in runs) for part in runs[0]}
    peak = step_bytes = visual_bytes = None
    if not args.no_memory:
        peak, step_bytes = step_memory(seg, optimizer, step, device)
        visual_bytes = visual_memory(seg, images, autocast, device)
    flops = slide_s = slide_flops = None
    if not args.no_flops:
        key = ("train", variant.ablation, variant.batch_size)
        if key not in flop_cache:
            flop_cache[key] = train_flops(seg, images, labels, variant.precision)
        flops = flop_cache[key]
    if not args.no_infer:
        seg.eval()
        h, w = args.infer_size
        image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed)).to(device)

        def infer() -> torch.Tensor:
            with autocast():
                return slide_inference(seg.predict, image, seg.num_classes, **module.slide)

        slide_s = statistics.median(timed(infer, device, args.infer_runs, args.infer_warmup))
        if not args.no_flops:
            key = ("slide", variant.ablation, h, w)
            if key not in flop_cache:
                with eager_without_checkpointing(seg), no_trainable_parameters(seg):
                    flop_cache[key] = count_flops(infer)
            slide_flops = flop_cache[key]
        seg.train()
    return Row(
        variant=variant,
        step_s=step_s,
        split_s=split,
        peak_bytes=peak,
        step_bytes=step_bytes,
        visual_bytes=visual_bytes,
        train_flops=None if flops is None else flops / variant.batch_size,
        slide_s=slide_s,
        slide_flops=slide_flops,
        peak_tflops=peak_tflops_of(device, args.peak_tflops),
    )


def run_grid(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[Row]:
    """Measure every variant; one module build per (ablation, compile), reused for the rest of the grid."""
    device = torch.device(args.device)
    rows: list[Row] = []
    flop_cache: dict[tuple, int] = {}
    for (ablation, compile_target), group in itertools.groupby(variants(args), lambda v: (v.ablation, v.compile)):
        cfg, module = build(args, ablation, compile_target)
        if device.type == "cuda" and cfg.get("matmul_precision"):  # as src.train sets it for a CUDA run
            torch.set_float32_matmul_precision(cfg.matmul_precision)
        module.segmenter.to(device)
        for variant in group:
            log(f"{variant}")
            rows.append(measure(args, variant, module, flop_cache, log))
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- the table


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def row_cells(row: Row) -> list[str]:
    v = row.variant
    split = row.split_s or {}
    parts_sum = sum(split.values()) if split else None
    return [
        v.ablation,
        v.precision,
        v.compile,
        "on" if v.checkpointing else "off",
        str(v.batch_size),
        f"{row.images_per_s:.2f}" if row.images_per_s < 100 else f"{row.images_per_s:.0f}",
        _ms(row.step_s),
        *(_ms(split.get(part)) for part in PARTS),
        _num(None if parts_sum is None else parts_sum / row.step_s, ".2f"),
        _num(None if row.peak_bytes is None else row.peak_bytes / 2**30, ".3f"),
        _num(None if row.step_bytes is None else row.step_bytes / 2**30, ".3f"),
        _num(None if row.visual_bytes is None else row.visual_bytes / 2**30, ".3f"),
        _num(None if row.train_flops is None else row.train_flops / 1e9, ".2f"),
        _num(row.achieved_tflops, ".3f"),
        "n/a" if row.mfu is None else f"{100 * row.mfu:.1f}%",
        _ms(row.slide_s),
        _num(None if row.slide_flops is None else row.slide_flops / 1e9, ".1f"),
    ]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def ratio_table(rows: Sequence[Row], reference: str = "rein") -> str:
    """Step time and FLOP ratios to ``reference`` for rows that differ from one of its rows only in the ablation."""
    refs = {dataclasses.replace(r.variant, ablation=""): r for r in rows if r.variant.ablation == reference}
    lines = []
    for row in rows:
        ref = refs.get(dataclasses.replace(row.variant, ablation=""))
        if ref is None or row.variant.ablation == reference:
            continue
        time_ratio = row.step_s / ref.step_s
        flop_ratio = row.train_flops / ref.train_flops if row.train_flops and ref.train_flops else None
        gap = None if flop_ratio is None else abs(time_ratio / flop_ratio - 1)
        slide_t = row.slide_s / ref.slide_s if row.slide_s and ref.slide_s else None
        slide_f = row.slide_flops / ref.slide_flops if row.slide_flops and ref.slide_flops else None
        slide_gap = None if slide_t is None or slide_f is None else abs(slide_t / slide_f - 1)
        v = row.variant
        lines.append(
            f"| {v.ablation} / {reference} | {v.precision}, {v.compile}, ckpt {'on' if v.checkpointing else 'off'}, "
            f"batch {v.batch_size} | {time_ratio:.3f} | {_num(flop_ratio, '.3f')} | "
            f"{'—' if gap is None else f'{100 * gap:.1f}%'} | {_num(slide_t, '.3f')} | {_num(slide_f, '.3f')} | "
            f"{'—' if slide_gap is None else f'{100 * slide_gap:.1f}%'} |"
        )
    if not lines:
        return ""
    head = (
        "| ratio | variant | step time | train FLOPs | time vs FLOP gap | slide time | slide FLOPs | gap |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(lines)


def device_line(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    peak = peak_tflops_of(device, args.peak_tflops)
    peak_text = f"{peak:g} TFLOP/s dense bf16 peak" if peak else "no bf16 peak known (MFU n/a)"
    return f"Device: {name}; {peak_text}. torch {torch.__version__}."


def report(args: argparse.Namespace, rows: Sequence[Row], command: str) -> str:
    """The Markdown that is printed and written: the command, the device, the table and the ratios to REIN."""
    h, w = args.infer_size
    memory = (
        "CUDA max_memory_allocated"
        if args.device.startswith("cuda")
        else "CPU: torch profiler allocations (peak = weights, buffers and optimiser state + step)"
    )
    parts = [
        f"`{command}`",
        "",
        f"{device_line(args)} Crop {args.crop}², slide inference of one {w}x{h} image; times are medians of "
        f"{args.steps} steps after {args.warmup} warm-up steps; memory: {memory}.",
        "",
        markdown_table(rows),
    ]
    ratios = ratio_table(rows)
    if ratios:
        parts += ["", ratios]
    return "\n".join(parts) + "\n"


def write_between_markers(path: Path, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``path`` by ``text``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = path.read_text()
    if content.count(start) != 1 or content.count(end) != 1 or content.index(start) > content.index(end):
        raise ValueError(f"{path} must hold exactly one {start} followed by one {end}; add them where the table goes")
    before, rest = content.split(start)
    _, after = rest.split(end)
    path.write_text(f"{before}{start}\n{text.strip()}\n{end}{after}")


# --------------------------------------------------------------------------- graph breaks


def _short(filename: str) -> str:
    """A source file relative to site-packages or to this repository."""
    return filename.split("site-packages/")[-1].removeprefix(str(ROOT) + "/")


def explain(args: argparse.Namespace, ablation: str) -> str:
    """torch._dynamo.explain of the segmenter's forward and of forward + loss, as a Markdown table of breaks."""
    _, module = build(args, ablation)
    device = torch.device(args.device)
    seg = module.segmenter.to(device).train()
    images, labels = make_batch(args.batch_sizes[0], args.crop, seg.num_classes, device, args.seed)
    lines = [f"### {ablation}", "", "| traced | graphs | breaks | reasons reported (times) |", "|---|---|---|---|"]
    for name, fn in (("forward", lambda: seg(images)), ("forward + loss", lambda: seg.loss(images, labels)["loss"])):
        torch._dynamo.reset()
        result = torch._dynamo.explain(fn)()
        reasons: dict[str, int] = {}
        for brk in result.break_reasons:
            frame = brk.user_stack[-1] if brk.user_stack else None
            where = f"{_short(frame.filename)}:{frame.lineno}" if frame else "?"
            text = f"{brk.reason.splitlines()[0][:90]} at `{where}`"
            reasons[text] = reasons.get(text, 0) + 1
        listed = "; ".join(f"{text} ({n})" for text, n in reasons.items()) or "none"
        lines.append(f"| {name} | {result.graph_count} | {result.graph_break_count} | {listed} |")
    torch._dynamo.reset()
    return "\n".join(lines)


# --------------------------------------------------------------------------- host synchronisations


def host_syncs(
    seg: Segmenter,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, int]:
    """CUDA only: the calls of one training step that wait for the device, counted by the Python line that made
    them (``torch.cuda.set_sync_debug_mode("warn")`` warns at each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(seg, optimizer, images, labels, autocast)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = [f"{_short(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return dict(collections.Counter(where).most_common())


def syncs_table(args: argparse.Namespace) -> str:
    """The host synchronisations of one training step of each ablation, after warm-up (first batch size)."""
    device = torch.device(args.device)
    if device.type != "cuda":
        raise SystemExit("--syncs counts CUDA synchronisations: it needs --device cuda")
    lines = ["| ablation | syncs per step | where (count) |", "|---|---|---|"]
    for ablation in args.ablations:
        _, module = build(args, ablation)
        seg = module.segmenter.to(device).train()
        optimizer = module.build_optimizer()
        autocast = autocast_for(args.precisions[0], device)
        images, labels = make_batch(args.batch_sizes[0], args.crop, seg.num_classes, device, args.seed)
        for _ in range(max(args.warmup, 1)):
            train_step(seg, optimizer, images, labels, autocast)
        synchronize(device)
        found = host_syncs(seg, optimizer, images, labels, autocast)
        listed = "; ".join(f"`{where}` ({n})" for where, n in found.items()) or "none"
        lines.append(f"| {ablation} | {sum(found.values())} | {listed} |")
        del module, seg, optimizer
        torch.cuda.empty_cache()
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.count_only:
        counts = {ablation: count(build(args, ablation)[1]) for ablation in args.ablations}
        text = count_table(counts) + "\n"
    elif args.explain:
        text = "\n\n".join(explain(args, ablation) for ablation in args.ablations) + "\n"
    elif args.syncs:
        text = syncs_table(args) + "\n"
    else:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device; run with --device cpu (and --tiny)")
        text = report(args, run_grid(args, log=lambda line: print(line, file=sys.stderr)), command)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.into is not None:
        write_between_markers(args.into, args.marker, text)
    return text


if __name__ == "__main__":
    main()
