"""MiniDG's two frozen "foundation models", pretrained on `random`-styled renders and saved as users' weights are.

Both are built through the project's backbones from their Hydra configs (`src.minidg.vfms`), and trained through
the backbones' own `.model`, with gradients turned back on.

- Visual VFM: a DINOv2-style timm ViT (`conf/model/backbone/minidg_vit.yaml`: `vit_small_patch14_dinov2` shrunk to
  patch 8, width 128, 6 blocks, 4 heads, cls token, LayerScale), pretrained without labels by SimMIM-style masked
  patch reconstruction of the *styled* input: like MAE/CLIP-type VFMs it must keep the input's appearance (night and
  fog included), so its features shift with the domain, which is the premise DepthForge addresses. Saved as a timm
  `model.safetensors`.
- Depth VFM: a `transformers` Depth Anything (`vfms.DEPTH_ARCHITECTURE`: DINOv2 backbone of the same size with
  patch 14, DPT neck and head), trained to regress relative inverse depth (`_DepthLosses`). Its patch is 14 like
  Depth Anything V2, so MiniDG exercises the project's `resize_input` grid alignment (the 64x128 image is resized to
  112x224 for an 8x16 token grid, the visual ViT's grid). Saved with `save_pretrained`.

Both read ImageNet-normalised RGB, the pipeline's preprocessing. Training is deterministic given the seed
(1 thread, seeded sampling and masks, deterministic algorithms).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from src.minidg.dataset import PretrainSet
from src.minidg.render import MAX_DEPTH
from src.minidg.vfms import (
    VISUAL_CONFIG,
    BlockTokens,
    depth_block_tokens,
    depth_output,
    depth_vfm,
    normalize,
    visual_block_tokens,
    visual_grid,
    visual_vfm,
)
from src.models.backbones.depth import DepthBackbone
from src.models.backbones.visual import VisualBackbone

MIN_DEPTH = 1.0  # metres; nearer is clamped in the depth target


def depth_target(depth: torch.Tensor) -> torch.Tensor:
    """ln(D_max/d) / ln(D_max/D_min): relative inverse depth in log space, 1 at 1 m, 0 for the sky.

    Like Depth Anything's disparity output it is non-negative (the head ends in ReLU) and grows with nearness;
    the log spreads the 2-150 m range evenly instead of crushing everything beyond 10 m as 1/d would.
    """
    d = depth.clamp(MIN_DEPTH, MAX_DEPTH)
    return torch.log(MAX_DEPTH / d) / math.log(MAX_DEPTH / MIN_DEPTH)


def _patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch·patch·C), row-major patches like the ViT's tokens."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class _SimMIM(nn.Module):
    """Masked patches are replaced by a learned token; a linear decoder predicts their normalised pixels.

    The ViT runs through `VisualBackbone.forward`, the segmenter's path; the one SimMIM-specific step, replacing
    the masked patch embeddings by the mask token, is a forward hook on the patch embedding.
    """

    def __init__(self, backbone: VisualBackbone, mask_ratio: float) -> None:
        super().__init__()
        self.backbone, self.mask_ratio = backbone, mask_ratio
        self.patch = backbone.patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(backbone.embed_dim, self.patch**2 * 3)

    def forward(self, x: torch.Tensor, depth: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        masks: list[torch.Tensor] = []

        def insert_mask_token(module: nn.Module, args: tuple, tokens: torch.Tensor) -> torch.Tensor:
            # (B, g_h, g_w, C): the backbone builds the ViT with a dynamic image size; one draw per token, row-major
            mask = torch.rand(tokens.shape[0], tokens[0, ..., 0].numel(), generator=generator) < self.mask_ratio
            masks.append(mask)
            return torch.where(mask.view(tokens.shape[:-1])[..., None], self.mask_token.to(tokens.dtype), tokens)

        vit, recorder = self.backbone.model, BlockTokens()
        handle = vit.patch_embed.register_forward_hook(insert_mask_token)
        try:
            self.backbone(x, recorder)
        finally:
            handle.remove()
        (mask,) = masks
        error = (self.decoder(vit.norm(recorder.tokens[-1])) - _patchify(x, self.patch)).abs().mean(-1)
        return {"simmim": (error * mask).sum() / mask.sum().clamp(min=1)}


class _DepthLosses(nn.Module):
    """L1 on `depth_target` for Depth Anything's own output and for a linear token probe (deep supervision).

    The probe reads the last block's layer-normed patch tokens and predicts the target of the pixels under each
    visual patch. Without it, the DPT decoder lets the raw tokens keep the input's appearance (day vs shifted
    cosine ≈ 0 in a 400-step trial, docs/minidg.md); with it they carry geometry, the property Depth Anything's
    tokens have at scale. The probe is discarded after training.
    """

    def __init__(self, backbone: DepthBackbone, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.grid = visual_grid(image_size)
        self.patch = image_size[0] // self.grid[0]  # the visual patch
        self.probe = nn.Linear(backbone.embed_dim, self.patch**2)

    def forward(self, x: torch.Tensor, depth: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = depth_output(self.backbone, x, self.grid, output_hidden_states=True)
        pred = F.interpolate(out.predicted_depth[:, None], size=depth.shape[-2:], mode="bilinear", align_corners=False)
        target = depth_target(depth)[:, None]
        tokens = self.backbone.model.backbone.layernorm(out.hidden_states[-1])[:, 1:]
        return {
            "dpt": (pred - target).abs().mean(),
            "token_probe": (self.probe(tokens) - _patchify(target, self.patch)).abs().mean(),
        }


def _train(
    losses_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], dict[str, torch.Tensor]],
    params: list[nn.Parameter],
    data: PretrainSet,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    name: str,
) -> dict:
    """AdamW (wd 0.05), 50 warm-up steps then cosine to 5%; random batches with horizontal flips; the loss is the
    sum of `losses_fn`'s terms. Returns a log with each term's first/last means."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    history: dict[str, list[float]] = {}
    start, cpu_start = time.time(), time.process_time()
    for step in range(steps):
        scale = min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        idx = rng.integers(0, len(data.images), batch_size)
        images, depth = normalize(data.images[idx]), torch.from_numpy(data.depth[data.scene[idx]])
        if rng.random() < 0.5:
            images, depth = images.flip(-1), depth.flip(-1)
        terms = losses_fn(images, depth, generator)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in {"total": loss, **terms}.items():
            history.setdefault(key, []).append(value.item())
        if (step + 1) % 50 == 0:
            last = " ".join(f"{k} {np.mean(v[-50:]):.4f}" for k, v in history.items())
            print(f"{name} step {step + 1}/{steps} {last} {time.time() - start:.0f}s", flush=True)
    return {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "images_seen": steps * batch_size,
        "loss_first20": {k: round(float(np.mean(v[:20])), 4) for k, v in history.items()},
        "loss_last50": {k: round(float(np.mean(v[-50:])), 4) for k, v in history.items()},
        "total_loss_per50": [round(float(np.mean(history["total"][i : i + 50])), 4) for i in range(0, steps, 50)],
        "seconds": round(time.time() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "threads": torch.get_num_threads(),
    }


def _deterministic(seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pretrain_visual(
    data: PretrainSet,
    out_dir: Path,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    mask_ratio: float = 0.5,
) -> dict:
    """SimMIM-pretrain the visual VFM and write `out_dir/model.safetensors` (timm state dict, no head)."""
    _deterministic(seed)
    # LayerScale starts at 1 (as HF DINOv2), not DINOv2-L's 1e-5: a training choice, not the architecture
    backbone = visual_vfm(None, model_kwargs={"init_values": 1.0})
    vit = backbone.model.requires_grad_(True)  # no dropout or drop-path: its eval mode trains as train mode would
    simmim = _SimMIM(backbone, mask_ratio)
    log = _train(simmim, list(simmim.parameters()), data, steps, batch_size, lr, seed, "visual")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.safetensors"
    vit.requires_grad_(False).eval()
    safetensors.torch.save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    _check_reload(backbone, visual_vfm(path), data)
    config = OmegaConf.load(VISUAL_CONFIG)
    log.update(
        objective=f"SimMIM: L1 on the ImageNet-normalised pixels of masked patches (ratio {mask_ratio})",
        arch=config.model_name,
        kwargs={
            "img_size": list(config.img_size),
            "patch_size": config.patch_size,
            **config.model_kwargs,
            "num_classes": vit.num_classes,
        },
        params=sum(p.numel() for p in vit.parameters()),
    )
    (out_dir / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    return log


def pretrain_depth(
    data: PretrainSet, out_dir: Path, steps: int = 600, batch_size: int = 16, lr: float = 1e-3, seed: int = 0
) -> dict:
    """Train the depth VFM on `_DepthLosses` and `save_pretrained(out_dir)` (config.json + model.safetensors)."""
    _deterministic(seed)
    backbone = depth_vfm(None)
    model = backbone.model.requires_grad_(True)  # no dropout or drop-path: its eval mode trains as train mode would
    losses = _DepthLosses(backbone, data.images.shape[1:3])
    log = _train(losses, list(losses.parameters()), data, steps, batch_size, lr, seed, "depth")
    model.requires_grad_(False).eval()
    model.save_pretrained(str(out_dir))
    _check_reload(backbone, depth_vfm(out_dir), data)
    log.update(
        objective="L1 on ln(150/d)/ln(150) (relative inverse log-depth, sky = 0) of the DPT output at 64x128 "
        "+ L1 of a linear probe on the last block's normed tokens (8x8 target values per token)",
        params=sum(p.numel() for p in model.parameters()),
    )
    (out_dir / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    return log


@torch.no_grad()
def _check_reload(
    trained: VisualBackbone | DepthBackbone, loaded: VisualBackbone | DepthBackbone, data: PretrainSet
) -> None:
    """The saved file, loaded through the segmenter's backbone, must reproduce the trained model exactly: every
    block's tokens as the segmenter reads them, and for the depth VFM also its depth output."""
    x = normalize(data.images[:4])
    if isinstance(trained, DepthBackbone):
        grid = visual_grid(x.shape[-2:])
        pairs = [
            (depth_block_tokens(trained, x, grid), depth_block_tokens(loaded, x, grid)),
            (depth_output(trained, x, grid).predicted_depth, depth_output(loaded, x, grid).predicted_depth),
        ]
    else:
        pairs = [(visual_block_tokens(trained, x), visual_block_tokens(loaded, x))]
    for a, b in pairs:
        if not torch.equal(a, b):
            raise RuntimeError(f"reloaded model differs from the trained one (max |diff| {(a - b).abs().max():.3g})")


@torch.no_grad()
def scale_residual_stream(model: nn.Module, alpha: float) -> None:
    """Multiply a Depth Anything encoder's residual stream by ``alpha`` in place, leaving the depth output unchanged.

    Every pre-norm block adds γ·F(LN(h)) to h, and LN(αh) = LN(h). Scaling the embeddings (patch projection,
    cls/mask tokens, position embeddings) and every LayerScale γ by α therefore scales every hidden state by α,
    while every LayerNorm output, and with it the DPT neck's input and the predicted depth, stays the same (up to
    the LayerNorm epsilon).
    """
    emb = model.backbone.embeddings
    for p in (
        emb.patch_embeddings.projection.weight,
        emb.patch_embeddings.projection.bias,
        emb.cls_token,
        emb.mask_token,
        emb.position_embeddings,
    ):
        p.mul_(alpha)
    for layer in model.backbone.encoder.layer:
        layer.layer_scale1.lambda1.mul_(alpha)
        layer.layer_scale2.lambda1.mul_(alpha)


@torch.no_grad()
def match_depth_scale(depth_dir: Path, visual_checkpoint: Path, images: np.ndarray) -> float:
    """Rescale the saved depth VFM so that its raw block tokens have the visual VFM's RMS; returns α.

    Depth Anything V2's encoder is DINOv2 fine-tuned at a small learning rate, so its raw block tokens live at the
    scale of the visual DINOv2's. The two MiniDG VFMs are trained from scratch, and the depth model's residual
    stream grew about 3.5× larger than the visual one's. DepthForge adds f·Tᵀ/√C and d·Tᵀ/√C unnormalised, so
    that ratio, which we do not expect of a real pair, sets the balance of its two logit maps. The rescale is exact
    for the depth model's function (its depth maps are unchanged): the result is the trained model, re-expressed at
    the visual model's scale. Running it again is a no-op (α = 1). The shipped MiniDG asset is not rescaled; the
    rescaled one is an ablation (docs/minidg.md).
    """
    x = normalize(images)
    depth, visual = depth_vfm(depth_dir), visual_vfm(visual_checkpoint)
    grid = visual.grid_size(*x.shape[-2:])
    reference = depth_output(depth, x, grid).predicted_depth
    rms_visual = visual_block_tokens(visual, x).square().mean().sqrt()
    alpha = (rms_visual / depth_block_tokens(depth, x, grid).square().mean().sqrt()).item()
    scale_residual_stream(depth.model, alpha)
    after = depth_output(depth, x, grid).predicted_depth
    if not torch.allclose(after, reference, atol=1e-2 * reference.abs().max().item()):
        raise RuntimeError(f"rescaling changed the depth output (max |diff| {(after - reference).abs().max():.3g})")
    depth.model.save_pretrained(str(depth_dir))
    log_path = depth_dir / "pretrain_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    log["residual_scale"] = round(log.get("residual_scale", 1.0) * alpha, 6)
    log_path.write_text(json.dumps(log, indent=1))
    return alpha
