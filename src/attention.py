"""What the learnable tokens do: per-layer token attention of trained runs, side by side, and how steady it is.

The paper's central claim (its Fig. 1b) is that depth-aware tokens give steadier visual-spatial attention across
domains than REIN's. This module is the one home for recording that attention and for drawing it:

- :func:`record_attention` runs a segmenter's visual path on a batch and returns, per layer, the softmax attention
  S (B, N, M) of the N patch tokens over the layer's M learnable tokens, computed by the adapter's own
  ``attention(tokens, layer, depth)`` on exactly the tokens the backbone hands the adapter (a forward pre-hook,
  :func:`recording`), plus the token grid. ``src.predict`` (``outputs=[attention]``), ``src.minidg.analysis``
  (``token_attention``) and the W&B validation media read it from here.
- :func:`token_picture`, :func:`heatmap` and :func:`compose` draw it: the dominant (most attended) token per patch
  in :func:`~src.utils.visualize.token_palette` (token m has the same colour in every method and layer), or the
  attention map of one token; panels in a labelled grid.
- :func:`stability` compares the attention of paired images (the same scene by day and in a shifted domain): the
  share of patches whose dominant token is the same, and the mean Jensen-Shannon divergence (bits, 0 = identical
  distributions, 1 = disjoint) of the per-patch distributions.

The command (docs/evaluation.md, "Token attention")::

    python -m src.attention 'runs={rein: <run>, depthforge: <run>}' minidg.scenes=40 show=1 \\
        'minidg.figure_domains=[day,fog]' output_dir=out/

renders per layer (columns) for each method (rows) the dominant token per patch (or, with ``token=<m>``, the map of
token m), into ``<name>.png``, and for paired inputs the stability table (``<name>_stability.md`` and ``.json``) and
its figure (``<name>_stability.png``); ``name`` is ``attention`` by default. Inputs are one of: ``images`` (files or
folders; with ``shifted``, paired one to one), ``domain`` (the first ``show`` images of a target of the runs' data)
or ``minidg.scenes`` (MiniDG test scenes rendered in day and its shifted domains, the same scene in each). Runs
whose adapter has no ``attention`` are refused by name. Outputs are checked before any model is built: never inside
an input folder, never over a file unless ``overwrite=true``, each written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from src.utils.checkpoint import UserError, atomic_write
from src.utils.visualize import panel_grid, token_palette

log = logging.getLogger(__name__)

#: figure background and text colours
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
#: bar colours of the methods in the stability figure, in the order of ``runs`` (tab10's first colours)
METHOD_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_GAP = 3


class AttentionError(ValueError, UserError):
    """A token-attention request that cannot be served: an adapter without attention, bad inputs or outputs."""


# --------------------------------------------------------------------------- recording


def has_attention(adapter: object) -> bool:
    """Whether an adapter (instance or class) exposes ``attention(tokens, layer, depth) -> (B, N, M)``."""
    return callable(getattr(adapter, "attention", None))


def require_attention(adapter: object, method: str = "") -> None:
    """Refuse an adapter without ``attention`` (frozen, LoRA, AdaptFormer, VPT, FADA), naming the method."""
    if not has_attention(adapter):
        cls = adapter if isinstance(adapter, type) else type(adapter)
        name = f"{method} ({cls.__name__})" if method else cls.__name__
        raise AttentionError(
            f"{name} has no attention(tokens, layer, depth) method, so it has no token attention to show\n"
            "  fix: use a run of a method with learnable tokens (REIN, DepthForge or one of its ablations)"
        )


@dataclass
class LayerAttention:
    """Per recorded layer (0-based), the attention S (B, N, M) in float32, and the token grid (g_h, g_w) with
    g_h·g_w = N (row-major patch order, as the backbone hands the tokens over)."""

    weights: dict[int, Tensor]
    grid: tuple[int, int]

    def dominant(self, layer: int) -> Tensor:
        """(B, g_h, g_w): the most attended token of each patch at ``layer``."""
        return self.weights[layer].argmax(-1).reshape(-1, *self.grid)

    def token(self, layer: int, token: int) -> Tensor:
        """(B, g_h, g_w): the attention every patch gives token ``token`` at ``layer``."""
        return self.weights[layer][..., token].reshape(-1, *self.grid)


@contextlib.contextmanager
def recording(adapter: nn.Module, layers: Sequence[int] | None = None) -> Iterator[dict[int, list[tuple]]]:
    """Record, while the context is open, ``adapter.attention(tokens, layer, depth)`` on exactly the arguments the
    backbone calls the adapter with, for ``layers`` (0-based; None: every layer).

    Yields {layer: [(S (B, N, M) float32, grid), ...]}, one entry per call (a slide inference calls each layer once
    per window batch). The hook is a forward *pre*-hook, so it sees the tokens before the adapter edits them.
    """
    require_attention(adapter)
    wanted = None if layers is None else set(layers)
    captured: dict[int, list[tuple]] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        # the backbone's call: adapter(tokens, layer, depth, grid) (visual.py); keywords accepted as well
        values = dict(zip(("tokens", "layer", "depth", "grid"), args)) | kwargs
        layer = int(values["layer"])
        if wanted is None or layer in wanted:
            weights = module.attention(values["tokens"], layer, values.get("depth")).float()
            captured.setdefault(layer, []).append((weights, values.get("grid")))

    handle = adapter.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def pad_to_patch(images: Tensor, patch: int) -> Tensor:
    """Zero-pad (B, 3, H, W) at the bottom and right to multiples of ``patch``, as ``Segmenter.predict`` does."""
    pad_h, pad_w = -images.shape[-2] % patch, -images.shape[-1] % patch
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


@torch.no_grad()
def record_attention(segmenter: nn.Module, images: Tensor, layers: Sequence[int] | None = None) -> LayerAttention:
    """Run the segmenter's visual path on ``images`` (B, 3, H, W) and return the attention of ``layers`` (0-based,
    negative counts from the end; None: all).

    The visual path is the one ``Segmenter.forward`` runs, ``visual_backbone(images, token_adapter,
    depth_tokens(images))``, without the decoder and head, which the attention does not depend on. The images are
    used as they are: a side that is not a multiple of the patch size loses its last partial patch, as in the
    backbone (:func:`pad_to_patch` first to keep it).
    """
    adapter = segmenter.token_adapter
    num_layers = segmenter.visual_backbone.num_layers
    chosen = None
    if layers is not None:
        bad = [layer for layer in layers if not -num_layers <= int(layer) < num_layers]
        if bad:
            raise AttentionError(
                f"layers {bad} are not layers of this visual VFM ({num_layers} layers)\n"
                f"  fix: layers among 0..{num_layers - 1} (negative counts from the end)"
            )
        chosen = sorted({int(layer) % num_layers for layer in layers})
    with recording(adapter, chosen) as captured:
        segmenter.visual_backbone(images, adapter, segmenter.depth_tokens(images))
    missing = [layer for layer in (chosen or range(num_layers)) if layer not in captured]
    if missing:
        raise RuntimeError(f"the visual backbone did not call the adapter at layers {missing}")
    grid = tuple(captured[next(iter(captured))][0][1] or segmenter.visual_backbone.grid_size(*images.shape[-2:]))
    return LayerAttention({layer: captured[layer][0][0] for layer in sorted(captured)}, grid)


# --------------------------------------------------------------------------- statistics


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits of distributions along the last axis: 0 for identical ones (exactly),
    1 for disjoint ones. Zero probabilities contribute nothing (0·log 0 = 0)."""
    p, q = p.double(), q.double()
    m = (p + q) / 2

    def kl(a: Tensor) -> Tensor:
        return torch.where(a > 0, a * (torch.log2(a) - torch.log2(m)), torch.zeros_like(a)).sum(-1)

    return (kl(p) + kl(q)) / 2


@dataclass
class PairStatistics:
    """Running sums over paired patches: the count, the patches with the same dominant token, the JS divergence."""

    patches: int = 0
    same: int = 0
    js: float = 0.0

    def add(self, reference: Tensor, shifted: Tensor) -> None:
        """Add the attention (..., N, M) of reference images and of their shifted counterparts."""
        if reference.shape != shifted.shape:
            raise AttentionError(
                f"paired attention maps differ in shape: {tuple(reference.shape)} vs {tuple(shifted.shape)}"
            )
        self.patches += reference[..., 0].numel()
        self.same += int((reference.argmax(-1) == shifted.argmax(-1)).sum())
        self.js += float(js_divergence(reference, shifted).sum())

    @property
    def agreement(self) -> float:
        """The share of patches whose dominant token is the same in both images (1 = the shift changes none)."""
        return self.same / self.patches if self.patches else float("nan")

    @property
    def divergence(self) -> float:
        """The mean JS divergence of the per-patch attention distributions (bits; 0 = unchanged)."""
        return self.js / self.patches if self.patches else float("nan")


def stability(reference: LayerAttention, shifted: LayerAttention) -> dict[int, dict[str, float]]:
    """Per layer: ``agreement`` (share of patches with the same dominant token) and ``js`` (mean JS divergence)
    between the attention of reference images and that of their shifted counterparts."""
    out = {}
    for layer, weights in reference.weights.items():
        stats = PairStatistics()
        stats.add(weights, shifted.weights[layer])
        out[layer] = {"agreement": stats.agreement, "js": stats.divergence}
    return out


# --------------------------------------------------------------------------- pictures


def _cells(values: np.ndarray, patch: int, image_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A per-patch array (g_h, g_w, ...) as pixels: each patch a ``patch``-pixel square, cropped to the image's
    ``image_size`` = (h, w) (the grid of a padded input overhangs it), then resized to ``size`` nearest-neighbour."""
    pixels = np.repeat(np.repeat(values, patch, axis=0), patch, axis=1)[: image_size[0], : image_size[1]]
    if pixels.shape[:2] != tuple(size):
        pixels = cv2.resize(pixels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(pixels)


def token_picture(
    dominant: np.ndarray | Tensor, num_tokens: int, patch: int, image_size: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """(g_h, g_w) dominant-token indices -> (size, 3) RGB: each patch in its token's :func:`token_palette` colour."""
    ids = np.asarray(dominant.cpu() if isinstance(dominant, Tensor) else dominant).astype(np.int64)
    return _cells(token_palette(num_tokens)[ids], patch, image_size, size)


def heatmap(
    values: np.ndarray | Tensor, vmax: float, patch: int, image_size: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """(g_h, g_w) attention values -> (size, 3) RGB in viridis, 0 dark and ``vmax`` bright (a shared scale)."""
    v = np.asarray(values.float().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    level = np.clip(np.rint(255 * v / max(vmax, 1e-12)), 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(level, cv2.COLORMAP_VIRIDIS)[..., ::-1]
    return _cells(rgb, patch, image_size, size)


def _text_size(text: str) -> tuple[int, int]:
    (w, h), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
    return w, h + baseline


def _label(text: str, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Lines of ``text`` (split at newlines), black on white, in a strip at least ``width`` × ``height``."""
    lines = text.split("\n") if text else []
    sizes = [_text_size(line) for line in lines]
    line_h = _text_size("Ay0")[1] + 4  # one height for every line, whatever its letters
    w = max([width or 0, *(s[0] + 8 for s in sizes)])
    h = max(height or 0, line_h * len(lines))
    strip = np.full((h, w, 3), BACKGROUND, np.uint8)
    top = (h - line_h * len(lines)) // 2
    for i, line in enumerate(lines):
        y = top + (i + 1) * line_h - 6
        cv2.putText(strip, line, (4, y), _FONT, _FONT_SCALE, TEXT, 1, cv2.LINE_AA)
    return strip


def _fit(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    """``panel`` centred on a white (height, width) canvas."""
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    y, x = (height - panel.shape[0]) // 2, (width - panel.shape[1]) // 2
    canvas[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
    return canvas


def _stack(pieces: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """``pieces`` of one height (axis 1) or width (axis 0) joined with white gaps of :data:`_GAP` pixels."""
    out: list[np.ndarray] = []
    for piece in pieces:
        if out:
            shape = (piece.shape[0], _GAP, 3) if axis == 1 else (_GAP, piece.shape[1], 3)
            out.append(np.full(shape, BACKGROUND, np.uint8))
        out.append(piece)
    return np.concatenate(out, axis)


def compose(rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: Sequence[str]) -> np.ndarray:
    """A labelled grid of RGB panels (:func:`~src.utils.visualize.panel_grid`, pixels kept as they are): the
    ``columns`` titles above, one row per (label, panels) with the label at the left (no label column when every
    label is empty)."""
    labels = [label for label, _ in rows]
    return panel_grid(
        [list(panels) for _, panels in rows], column_titles=list(columns), row_titles=labels if any(labels) else None
    ).picture


def with_footer(picture: np.ndarray, footer: np.ndarray) -> np.ndarray:
    """``footer`` (a legend) below ``picture``, left-aligned, both padded white to one width."""
    width = max(picture.shape[1], footer.shape[1])
    padded = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=255) for x in (picture, footer)]
    return np.ascontiguousarray(_stack(padded, 0))


def token_legend(tokens: Sequence[int], num_tokens: int, width: int) -> np.ndarray:
    """A strip naming the colour of each of ``tokens`` (those that appear): a swatch and the token's index, wrapped
    to ``width`` pixels."""
    palette = token_palette(num_tokens)
    title = _label("dominant token:")
    entries = []
    for m in tokens:
        text = _label(str(m))
        swatch = np.full((text.shape[0], 14, 3), BACKGROUND, np.uint8)
        top = (text.shape[0] - 12) // 2
        swatch[top : top + 12, 2:14] = palette[m]
        entries.append(np.concatenate([swatch, text], 1))
    lines, line = [], [title]
    for entry in entries:
        if sum(p.shape[1] for p in line) + entry.shape[1] > width and len(line) > 1:
            lines.append(np.concatenate(line, 1))
            line = [np.full_like(title, 255)]
        line.append(entry)
    lines.append(np.concatenate(line, 1))
    full = max(width, *(x.shape[1] for x in lines))
    return np.concatenate([np.pad(x, ((0, 0), (0, full - x.shape[1]), (0, 0)), constant_values=255) for x in lines])


def colour_bar(vmax: float, token: int, width: int = 256) -> np.ndarray:
    """A viridis bar from 0 to ``vmax``, titled with the token whose attention the heatmaps show."""
    bar = cv2.applyColorMap(np.tile(np.linspace(0, 255, width).astype(np.uint8), (12, 1)), cv2.COLORMAP_VIRIDIS)
    left, right = _label(f"attention of token {token}: 0"), _label(f"{vmax:.3g}")
    bar = _fit(np.ascontiguousarray(bar[..., ::-1]), left.shape[0], width)
    return np.concatenate([left, bar, right], 1)


@dataclass
class Recorded:
    """The attention of one image: :class:`LayerAttention` with B = 1, the network input's size (h, w) before
    padding (the part of the grid that covers the image) and the visual patch size."""

    attention: LayerAttention
    input_size: tuple[int, int]
    patch: int

    @property
    def num_tokens(self) -> int:
        return next(iter(self.attention.weights.values())).shape[-1]


def layer_pictures(
    recorded: Recorded, size: tuple[int, int], token: int | None = None, vmax: float | None = None
) -> list[np.ndarray]:
    """One (size, 3) RGB picture per recorded layer: the dominant token per patch, or token ``token``'s attention
    as a :func:`heatmap` up to ``vmax`` (default: its maximum over these layers)."""
    att, pictures = recorded.attention, []
    if token is not None and vmax is None:
        vmax = max(float(att.token(layer, token).max()) for layer in att.weights)
    for layer in att.weights:
        if token is None:
            pictures.append(
                token_picture(att.dominant(layer)[0], recorded.num_tokens, recorded.patch, recorded.input_size, size)
            )
        else:
            pictures.append(heatmap(att.token(layer, token)[0], vmax, recorded.patch, recorded.input_size, size))
    return pictures


def layer_strip(segmenter: nn.Module, image: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """The dominant-token map of every layer for one network input (1, 3, H, W), side by side under "layer i"
    titles, each panel of ``size`` (default: the input's). The W&B validation media (``val/<domain>/attention_<i>``)."""
    patch = segmenter.visual_backbone.patch_size
    input_size = tuple(image.shape[-2:])
    recorded = Recorded(record_attention(segmenter, pad_to_patch(image[:1], patch)), input_size, patch)
    pictures = layer_pictures(recorded, tuple(size or input_size))
    return compose([("", pictures)], [f"layer {layer + 1}" for layer in recorded.attention.weights])


def attention_figure(
    shown: Sequence[tuple[str, np.ndarray]],
    recorded: dict[str, list[Recorded]],
    token: int | None = None,
    panel_height: int = 128,
) -> np.ndarray:
    """Fig. 1b: for each shown (name, RGB image) and each method (rows), the input and every recorded layer
    (columns): the dominant token per patch, one colour per token for all methods, with a legend of the tokens
    that appear; or with ``token`` the attention of token m on one scale for the whole figure, with its colour
    bar. ``recorded[method][i]`` is the attention of ``shown[i]``."""
    first = next(iter(recorded.values()))[0]
    layers = list(first.attention.weights)
    vmax = None
    if token is not None:
        vmax = max(
            float(r.attention.token(layer, token).max()) for rs in recorded.values() for r in rs for layer in layers
        )
    rows, used = [], set()
    for i, (name, image) in enumerate(shown):
        size = (panel_height, max(1, round(panel_height * image.shape[1] / image.shape[0])))
        picture = cv2.resize(
            image, size[::-1], interpolation=cv2.INTER_AREA if image.shape[0] > size[0] else cv2.INTER_NEAREST
        )
        for method, per_image in recorded.items():
            rows.append((f"{method}: {name}", [picture, *layer_pictures(per_image[i], size, token, vmax)]))
            if token is None:
                used |= {int(v) for layer in layers for v in per_image[i].attention.dominant(layer).unique()}
    grid = compose(rows, ["input", *(f"layer {layer + 1}" for layer in layers)])
    if token is not None:
        return with_footer(grid, colour_bar(vmax, token))
    num_tokens = max(r.num_tokens for rs in recorded.values() for r in rs)
    return with_footer(grid, token_legend(sorted(used), num_tokens, grid.shape[1]))


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``value`` (an axis' top); 1 for 0."""
    if not value > 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value * (1 - 1e-9))


def _bar_panel(
    values: Sequence[Sequence[float]], ymax: float, colours: Sequence[tuple], groups: Sequence[str]
) -> np.ndarray:
    """A small bar chart: one group of bars per entry of ``groups``, one bar per method (``colours``), y from 0 to
    ``ymax`` with ticks at 0, ymax/2 and ymax."""
    height, plot_h, left, bottom = 118, 90, 34, 22
    group_w = max(12 * len(colours) + 10, max(_text_size(g)[0] for g in groups) + 6)
    width = left + group_w * len(groups) + 6
    panel = np.full((height, width, 3), BACKGROUND, np.uint8)
    y0 = height - bottom
    for frac in (0.0, 0.5, 1.0):
        y = int(round(y0 - frac * plot_h))
        cv2.line(panel, (left - 3, y), (width - 4, y), (225, 225, 225) if frac else TEXT, 1)
        cv2.putText(panel, f"{frac * ymax:.2g}", (2, y + 4), _FONT, 0.33, TEXT, 1, cv2.LINE_AA)
    cv2.line(panel, (left, y0), (left, y0 - plot_h), TEXT, 1)
    for g, (group, bars) in enumerate(zip(groups, values)):
        x = left + g * group_w + 5
        bar_w = (group_w - 10) // len(colours)
        for value, colour in zip(bars, colours):
            if not math.isnan(value):
                top = int(round(y0 - min(value / ymax, 1.0) * plot_h))
                cv2.rectangle(panel, (x, top), (x + bar_w - 2, y0 - 1), colour, cv2.FILLED)
            x += bar_w
        tw = _text_size(group)[0]
        cv2.putText(
            panel,
            group,
            (left + g * group_w + (group_w - tw) // 2, height - 6),
            _FONT,
            _FONT_SCALE * 0.8,
            TEXT,
            1,
            cv2.LINE_AA,
        )
    return panel


#: per method: {"peak": [per layer], "domains": {shifted domain: {"agreement": [per layer], "js": [per layer]}}}
StabilityTable = dict[str, dict[str, Any]]


def stability_figure(table: StabilityTable, layers: Sequence[int], reference: str) -> np.ndarray:
    """Per layer (columns), two small bar charts (rows): the share of patches whose dominant token is the same in
    the reference and the shifted image, and the mean JS divergence, one group of bars per shifted domain and one
    bar per method (:data:`StabilityTable`)."""
    methods = list(table)
    domains = list(table[methods[0]]["domains"])
    colours = [METHOD_COLOURS[i % len(METHOD_COLOURS)] for i in range(len(methods))]
    values = [v for m in methods for d in domains for v in table[m]["domains"][d]["js"] if not math.isnan(v)]
    rows = []
    for key, label, ymax in (
        ("agreement", f"same dominant token, {reference} vs shifted", 1.0),
        ("js", f"JS divergence (bits), {reference} vs shifted", nice_ceiling(max(values, default=0.0))),
    ):
        panels = [
            _bar_panel([[table[m]["domains"][d][key][j] for m in methods] for d in domains], ymax, colours, domains)
            for j in range(len(layers))
        ]
        rows.append((label, panels))
    legend = []
    for method, colour in zip(methods, colours):
        text = _label(method)
        swatch = np.full((text.shape[0], 16, 3), BACKGROUND, np.uint8)
        swatch[(text.shape[0] - 12) // 2 : (text.shape[0] - 12) // 2 + 12, 2:14] = colour
        legend += [swatch, text]
    return with_footer(compose(rows, [f"layer {layer + 1}" for layer in layers]), np.concatenate(legend, 1))


def stability_markdown(table: StabilityTable, layers: Sequence[int], reference: str) -> str:
    """Markdown: per method, the attention peak on the reference images, then per shifted domain the share of
    patches with the same dominant token and the mean JS divergence; one column per layer."""
    lines = ["| method | statistic | " + " | ".join(f"layer {layer + 1}" for layer in layers) + " |"]
    lines.append("|---|---|" + "---|" * len(layers))
    for method, stats in table.items():
        peak = " | ".join(f"{v:.3f}" for v in stats["peak"])
        lines.append(f"| {method} | attention peak, {reference} (1/M: uniform) | {peak} |")
        for domain, pair in stats["domains"].items():
            lines.append(
                f"| {method} | same dominant token, {reference} vs {domain} | "
                + " | ".join(f"{v:.2f}" for v in pair["agreement"])
                + " |"
            )
            lines.append(
                f"| {method} | JS divergence (bits), {reference} vs {domain} | "
                + " | ".join(f"{v:.2g}" for v in pair["js"])
                + " |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


@dataclass
class Run:
    """A labelled training run: its directory, the checkpoint to load and its composed config."""

    label: str
    run_dir: Path
    ckpt: Path
    cfg: DictConfig


@dataclass
class Inputs:
    """What the command looks at: ``shown`` (name, RGB) drawn in the figure; ``references`` and ``shifted``
    ({domain: RGB list, each as long as ``references``}) the pairs of the stability statistics (none: empty);
    ``folders`` the input locations no output may land in."""

    shown: list[tuple[str, np.ndarray]]
    references: list[np.ndarray]
    shifted: dict[str, list[np.ndarray]]
    reference_name: str
    folders: list[Path]
    files: list[Path]
    description: str


def resolve_run(label: str, value: str | Path, checkpoint: str = "last.ckpt", data_dir: str | None = None) -> Run:
    """``value`` is a training run directory (``<run>/.hydra/config.yaml``, ``<run>/checkpoints/<checkpoint>``), a
    checkpoint inside one, or a shipped run (``config.yaml`` and ``model.ckpt``: ``assets/minidg/runs/<method>``,
    :func:`src.minidg.analysis.export_run`). Its config is read, with ``paths.data_dir`` replaced by ``data_dir``
    when set, and a run whose adapter has no ``attention`` is refused before anything is built."""
    from src.minidg.analysis import RUN_CONFIG, RUN_WEIGHTS, run_files  # that module reads attention through this one

    run_dir, config, ckpt = run_files(Path(str(value)).expanduser(), checkpoint)
    if not config.is_file():
        raise AttentionError(
            f"runs.{label}={value}: no run config at {config}\n  fix: runs.{label}=<a run directory of src.train "
            f"(.hydra/config.yaml, checkpoints/) or a shipped run ({RUN_CONFIG}, {RUN_WEIGHTS})>"
        )
    cfg = OmegaConf.load(config)
    if data_dir:
        cfg.paths.data_dir = str(data_dir)
    adapter = cfg.model.segmenter.get("token_adapter")
    if adapter is None:
        raise AttentionError(
            f"runs.{label}={value} is a run without an adapter (the frozen VFM), so it has no token attention to show"
            "\n  fix: use a run of a method with learnable tokens (REIN, DepthForge or one of its ablations)"
        )
    require_attention(hydra.utils.get_class(adapter._target_), f"runs.{label}={value}")
    if not ckpt.is_file():
        found = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
        raise AttentionError(
            f"runs.{label}={value}: no checkpoint {ckpt}"
            + (f" (the run has {', '.join(found)})" if found else " (the run has no checkpoints/*.ckpt)")
            + f"\n  fix: checkpoint=<one of them>, or runs.{label}=<a finished run>"
        )
    return Run(label, run_dir, ckpt, cfg)


def _runs(cfg: DictConfig) -> list[tuple[str, str]]:
    """``runs`` as (label, path): a mapping {label: run}, or a list of runs labelled by their directory names."""
    runs = cfg.get("runs")
    if OmegaConf.is_missing(cfg, "runs") or not runs:
        raise AttentionError(
            "runs is not set\n  fix: 'runs={rein: <run dir>, depthforge: <run dir>}' (a label for each training run)"
        )
    if isinstance(runs, str):
        runs = [runs]
    if OmegaConf.is_dict(runs) or isinstance(runs, dict):
        return [(str(k), str(v)) for k, v in runs.items()]
    pairs = [(Path(str(v)).name if Path(str(v)).is_dir() else Path(str(v)).parent.parent.name, str(v)) for v in runs]
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise AttentionError(
            f"runs={labels}: two runs have the same directory name\n  fix: 'runs={{a: <run>, b: <run>}}'"
        )
    return pairs


def _image_files(entries: Any, key: str) -> tuple[list[Path], list[Path]]:
    """(image files, folders) of ``entries`` (files or folders, folders searched recursively, sorted)."""
    from src.predict import IMAGE_SUFFIXES

    if isinstance(entries, str):
        entries = [entries]
    files, folders = [], []
    for entry in entries or []:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise AttentionError(f"{key}: no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
            files += found
            folders.append(path)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            raise AttentionError(
                f"{key}: {path} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a folder\n"
                f"  fix: {key}=[<image files or folders>]"
            )
    return files, folders


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8; an unreadable file is refused with its name."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AttentionError(f"cannot decode image {path}\n  fix: remove or convert it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def gather_inputs(cfg: DictConfig, first: Run) -> Inputs:
    """The inputs of exactly one of ``images`` (+ ``shifted``), ``domain`` or ``minidg.scenes``; see the module
    docstring. Pairs must be equal in number and each pair of one size."""
    show = int(cfg.get("show", 2))
    minidg = cfg.get("minidg") or {}
    scenes = int(minidg.get("scenes") or 0)
    sources = [
        name
        for name, on in (
            ("images", cfg.get("images")),
            ("domain", cfg.get("domain") and not cfg.get("images")),
            ("minidg.scenes", scenes > 0),
        )
        if on
    ]
    if len(sources) != 1:
        raise AttentionError(
            ("no inputs" if not sources else f"{' and '.join(sources)} are both set")
            + "\n  fix: one of images=[<files or folders>] (optionally with shifted=[...] paired one to one), "
            "domain=<a target of the runs' data>, or minidg.scenes=<n> (MiniDG test scenes, day vs shifted)"
        )
    if cfg.get("shifted") and not cfg.get("images"):
        raise AttentionError(
            "shifted=[...] pairs with images=[...], which is not set\n  fix: images=[<the reference images>]"
        )
    if sources[0] == "minidg.scenes":
        from src.minidg.dataset import test_scene
        from src.minidg.styles import TARGET_STYLES

        domains = [str(d) for d in (minidg.get("domains") or TARGET_STYLES)]
        unknown = [d for d in domains if d not in TARGET_STYLES]
        shown_domains = [str(d) for d in (minidg.get("figure_domains") or ["day", *domains])]
        unknown += [d for d in shown_domains if d not in ("day", *TARGET_STYLES)]
        if unknown:
            raise AttentionError(
                f"minidg: unknown domain(s) {unknown}\n"
                f"  fix: minidg.domains among {list(TARGET_STYLES)} (day is the reference)"
            )
        seed = int(minidg.get("seed", 0))
        rendered = [test_scene(seed, i)[1] for i in range(scenes)]
        return Inputs(
            shown=[(f"scene {i}, {d}", rendered[i][d]) for i in range(min(show, scenes)) for d in shown_domains],
            references=[r["day"] for r in rendered],
            shifted={d: [r[d] for r in rendered] for d in domains},
            reference_name="day",
            folders=[],
            files=[],
            description=f"MiniDG test scenes 0-{scenes - 1} of dataset seed {seed}",
        )
    if sources[0] == "domain":
        domain = str(cfg.domain)
        targets = {k: v for k, v in (first.cfg.data.get("targets") or {}).items() if v is not None}
        if domain not in targets:
            raise AttentionError(
                f"domain={domain} is not a target of runs.{first.label}; its targets are {', '.join(targets)}\n"
                f"  fix: domain=<one of {', '.join(targets)}>"
            )
        from src.utils.instantiate import instantiate_checked

        dataset = instantiate_checked(targets[domain], f"data.targets.{domain}")()
        count = min(show, len(dataset))
        return Inputs(
            shown=[(f"{domain} {dataset.name(i)}", dataset.load(i)[0]) for i in range(count)],
            references=[],
            shifted={},
            reference_name="",
            folders=[Path(str(dataset.root))] if hasattr(dataset, "root") else [],
            files=[],
            description=f"the first {count} images of target {domain}",
        )
    files, folders = _image_files(cfg.images, "images")
    shifted_files, shifted_folders = _image_files(cfg.get("shifted"), "shifted")
    if shifted_files and len(shifted_files) != len(files):
        raise AttentionError(
            f"images has {len(files)} image(s) and shifted {len(shifted_files)}: they are paired one to one in "
            "order (folders sorted by path)\n  fix: give as many shifted images as reference images, in the same order"
        )
    images = [read_rgb(p) for p in files]
    shifted = [read_rgb(p) for p in shifted_files]
    for (a, image), (b, other) in zip(zip(files, images), zip(shifted_files, shifted)):
        if image.shape != other.shape:
            raise AttentionError(
                f"paired images differ in size: {a} is {image.shape[1]}x{image.shape[0]}, {b} is "
                f"{other.shape[1]}x{other.shape[0]}\n  fix: pair images of the same scene and size (resize one set)"
            )
    shown = []
    for i in range(min(show, len(files))):
        shown.append((("reference " if shifted else "") + files[i].stem, images[i]))
        if shifted:
            shown.append((f"shifted {shifted_files[i].stem}", shifted[i]))
    return Inputs(
        shown=shown,
        references=images if shifted else [],
        shifted={"shifted": shifted} if shifted else {},
        reference_name="reference",
        folders=folders + shifted_folders,
        files=files + shifted_files,
        description=f"{len(files)} image pair(s)" if shifted else f"{len(files)} image(s)",
    )


def plan_outputs(out_dir: Path, inputs: Inputs, overwrite: bool, name: str = "attention") -> dict[str, Path]:
    """The files this run writes, after refusing any that would land inside an input folder, replace an input,
    or replace an earlier output without ``overwrite``."""
    if not name or Path(name).name != name:
        raise AttentionError(f"name={name!r} must be a plain file name stem\n  fix: name=attention")
    names = {"figure": f"{name}.png"}
    if inputs.references:
        names |= {
            "markdown": f"{name}_stability.md",
            "json": f"{name}_stability.json",
            "stability_figure": f"{name}_stability.png",
        }
    targets = {key: out_dir / name for key, name in names.items()}
    for folder in inputs.folders:
        if out_dir.resolve().is_relative_to(folder.resolve()):
            outside = folder.resolve().parent / f"{folder.name}_attention"
            raise AttentionError(
                f"output_dir={out_dir} lies inside the input folder {folder}: outputs are never written among the "
                f"inputs\n  fix: an output_dir outside it, e.g. output_dir={outside}"
            )
    inputs_resolved = {p.resolve() for p in inputs.files}
    clash = [t for t in targets.values() if t.resolve() in inputs_resolved]
    if clash:
        raise AttentionError(f"{clash[0]} is an input image\n  fix: another output_dir")
    existing = [t for t in targets.values() if t.exists()]
    if existing and not overwrite:
        raise AttentionError(
            f"output_dir={out_dir} already holds {', '.join(t.name for t in existing)}\n"
            "  fix: overwrite=true to replace them, or another output_dir"
        )
    return targets


def _same_size_runs(images: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    """Indices of consecutive images of one size, ``batch_size`` at most per batch."""
    batch: list[int] = []
    for i, image in enumerate(images):
        if batch and (len(batch) == batch_size or images[batch[0]].shape != image.shape):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def attend(
    segmenter: nn.Module,
    transform: A.BaseCompose,
    images: Sequence[np.ndarray],
    layers: Sequence[int] | None,
    device: torch.device,
) -> Recorded:
    """The attention of RGB ``images`` of one size, preprocessed by ``transform`` (the evaluator's test
    pipeline) and zero-padded to the patch size as ``Segmenter.predict`` pads, on the CPU."""
    batch = torch.stack([transform(image=image)["image"] for image in images]).to(device)
    patch = segmenter.visual_backbone.patch_size
    recorded = record_attention(segmenter, pad_to_patch(batch, patch), layers)
    cpu = LayerAttention({k: v.cpu() for k, v in recorded.weights.items()}, recorded.grid)
    return Recorded(cpu, tuple(batch.shape[-2:]), patch)


@torch.no_grad()
def pair_stability(
    segmenter: nn.Module,
    transform: A.BaseCompose,
    inputs: Inputs,
    layers: Sequence[int],
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """One method's row of :data:`StabilityTable` over all pairs of ``inputs``: per layer the mean attention peak
    (max over the tokens) of the reference patches, and per shifted domain the :class:`PairStatistics`. Each
    reference batch is run once and compared with every shifted domain; batches hold pairs of one size."""
    stats = {d: {layer: PairStatistics() for layer in layers} for d in inputs.shifted}
    peak = dict.fromkeys(layers, 0.0)
    patches = 0
    for batch in _same_size_runs(inputs.references, batch_size):
        reference = attend(segmenter, transform, [inputs.references[i] for i in batch], layers, device).attention
        patches += reference.weights[layers[0]][..., 0].numel()
        for layer in layers:
            peak[layer] += float(reference.weights[layer].amax(-1).sum())
        for domain, images in inputs.shifted.items():
            shifted = attend(segmenter, transform, [images[i] for i in batch], layers, device).attention
            for layer in layers:
                stats[domain][layer].add(reference.weights[layer], shifted.weights[layer])
    return {
        "peak": [peak[layer] / patches for layer in layers],
        "domains": {
            d: {"agreement": [s[layer].agreement for layer in layers], "js": [s[layer].divergence for layer in layers]}
            for d, s in stats.items()
        },
    }


def _layers(cfg: DictConfig, num_layers: int) -> list[int]:
    """``layers`` (1-based, as the figures and tables number them) as 0-based indices; all when unset."""
    wanted = cfg.get("layers")
    if wanted is None:
        return list(range(num_layers))
    wanted = [wanted] if isinstance(wanted, int) else [int(v) for v in wanted]
    bad = [v for v in wanted if not 1 <= v <= num_layers]
    if bad or not wanted:
        raise AttentionError(
            f"layers={wanted}: this visual VFM has layers 1..{num_layers} (counted from 1, as the figures)\n"
            f"  fix: layers=[1,{num_layers}] or leave layers unset for all"
        )
    return sorted({v - 1 for v in wanted})


def run_attention(cfg: DictConfig) -> dict[str, Path]:
    """The command: see the module docstring. Returns the files written, by kind."""
    from src.eval import seed_for_build
    from src.predict import domain_pipeline, load_weights, write_png
    from src.utils.instantiate import build_module

    runs = [
        resolve_run(label, path, str(cfg.get("checkpoint") or "last.ckpt"), cfg.get("data_dir"))
        for label, path in _runs(cfg)
    ]
    token = cfg.get("token")
    if token is not None and (not isinstance(token, int) or isinstance(token, bool) or token < 0):
        raise AttentionError(
            f"token={token} is not a token index\n  fix: token=<0..M-1>, or leave it unset for the dominant token"
        )
    panel_height = int(cfg.get("panel_height") or 128)
    batch_size = max(1, int(cfg.get("batch_size") or 16))
    inputs = gather_inputs(cfg, runs[0])
    out_dir = Path(str(cfg.output_dir)).expanduser()
    targets = plan_outputs(out_dir, inputs, bool(cfg.get("overwrite", False)), str(cfg.get("name") or "attention"))
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    log.info("token attention of %s on %s -> %s", ", ".join(r.label for r in runs), inputs.description, out_dir)

    recorded: dict[str, list[Recorded]] = {}
    table: StabilityTable = {}
    layers: list[int] = []
    for run in runs:
        seed_for_build(run.cfg)  # as src.eval: frozen VFMs built from random init are the training run's
        module = build_module(run.cfg)
        load_weights(module, run.ckpt)
        segmenter = module.segmenter.to(device).eval()
        chosen = _layers(cfg, segmenter.visual_backbone.num_layers)
        if layers and chosen != layers:
            raise AttentionError(
                f"runs.{run.label} has {segmenter.visual_backbone.num_layers} visual layers, the runs before it "
                f"{max(layers) + 1}: the figure needs the same layers in every row\n  fix: layers=[...] that all "
                "runs have (counted from 1)"
            )
        layers = chosen
        num_tokens = getattr(segmenter.token_adapter, "num_tokens", None)
        if token is not None and num_tokens is not None and token >= num_tokens:
            raise AttentionError(
                f"token={token}: runs.{run.label} has {num_tokens} tokens\n  fix: token=<0..{num_tokens - 1}>"
            )
        # the evaluator's test pipeline of target `domain` (default: the run's first), as src.predict preprocesses
        view = OmegaConf.merge(run.cfg, {"domain": cfg.get("domain"), "scale": cfg.get("scale")})
        transform = domain_pipeline(view)[1]
        recorded[run.label] = [attend(segmenter, transform, [image], layers, device) for _, image in inputs.shown]
        if inputs.references:
            table[run.label] = pair_stability(segmenter, transform, inputs, layers, batch_size, device)
        del module, segmenter

    written: dict[str, Path] = {}
    write_png(targets["figure"], attention_figure(inputs.shown, recorded, token, panel_height))
    written["figure"] = targets["figure"]
    if table:
        markdown = stability_markdown(table, layers, inputs.reference_name)
        header = (
            f"Token attention, {inputs.reference_name} vs shifted, over {len(inputs.references)} pairs "
            f"({inputs.description}): the attention peak (the mean over the {inputs.reference_name} patches of the "
            "largest weight; 1/M for uniform attention), the share of patches whose dominant token is the same, and "
            "the mean Jensen-Shannon divergence (bits) of the per-patch attention distributions.\n\n"
        )
        with atomic_write(targets["markdown"]) as f:
            f.write((header + markdown + "\n").encode())
        record = {
            "pairs": len(inputs.references),
            "inputs": inputs.description,
            "reference": inputs.reference_name,
            "layers": [layer + 1 for layer in layers],
            "runs": {r.label: str(r.ckpt) for r in runs},
            "methods": table,
        }
        with atomic_write(targets["json"]) as f:
            f.write((json.dumps(record, indent=2) + "\n").encode())
        write_png(targets["stability_figure"], stability_figure(table, layers, inputs.reference_name))
        written |= {k: targets[k] for k in ("markdown", "json", "stability_figure")}
        print(header + markdown)
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return written


@hydra.main(version_base="1.3", config_path="../conf", config_name="attention")
def main(cfg: DictConfig) -> None:
    run_attention(cfg)


if __name__ == "__main__":
    main()
