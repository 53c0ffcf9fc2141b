"""Segment a folder of images and videos, preprocessed exactly as ``src.eval`` preprocesses the experiment's targets.

python -m src.predict experiment=gta2citys ckpt_path=… input_dir=photos/ output_dir=out/ outputs=[color,overlay]

Preprocessing is the evaluator's (docs/evaluation.md, "Prediction and videos"): the test pipeline of one target
domain of the experiment (``domain=``, default its first target: the same keep-ratio resize or none), then
:func:`~src.models.inference.slide_inference` with the model config's ``slide`` windows, the class probabilities
resized bilinearly to the input's own size and their argmax, as ``SegmentationModule._eval_step`` does with the
label's size. So the train-ID PNG of a labelled image is the prediction ``src.eval`` scores.

``outputs`` lists what is written per input (:data:`KINDS`): ``color`` (Cityscapes palette), ``overlay`` (the
prediction over the image, with a legend of the classes present), ``panel`` (image | colour | depth map when the
model has a depth VFM), ``trainid`` and ``labelid`` (raw ID PNGs), ``depth`` (the depth VFM's relative depth) and
``attention`` (the most attended learnable token per pixel at ``attention_layer``). Videos (:data:`VIDEO_SUFFIXES`)
are read and written frame by frame, never whole, as H.264 MP4s of the picture kinds (never of the ID kinds).

What is written where (decided before the model is built, so a bad layout fails at once and writes nothing):

- ``input_dir/<sub>/<name>.<ext>`` gives ``output_dir/<sub>/<name>.png`` (``.mp4`` for a video) when ``outputs``
  has one kind, and ``output_dir/<kind>/<sub>/<name>.png`` per kind when it has several. Inputs that would give
  the same name (``a.jpg`` and ``a.png``) keep their suffix instead: ``a.jpg.png`` and ``a.png.png`` (logged).
- Inputs are never written to: a prediction that would land inside ``input_dir`` (``output_dir`` equal to it or
  inside it) is refused, since it could overwrite a photo of the same name and would be read as an input by the
  next run. Pick an ``output_dir`` outside ``input_dir`` (the error suggests one).
- Files already in ``output_dir`` are not replaced unless ``overwrite=true``; the run is refused before writing.
- Each file is written atomically (temporary file + ``os.replace``): an interrupted run leaves whole PNGs and whole
  videos only.
- The log says how many files were written, also when a run fails part-way.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import albumentations as A
import av
import cv2
import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from src.attention import has_attention, record_attention
from src.data.labels import IGNORE_INDEX, NUM_CLASSES, train_to_label_ids
from src.data.transforms import build_test_transform
from src.eval import seed_for_build
from src.models.authors import AuthorsWeights, open_checkpoint
from src.models.inference import eval_autocast, window_grid
from src.models.module import SegmentationModule
from src.models.segmenter import Segmenter
from src.utils.checkpoint import CheckpointError, UserError, atomic_write
from src.utils.instantiate import build_module, check_config, instantiate_checked
from src.utils.visualize import colorize, colorize_tokens, depth_to_rgb, overlay

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
#: what ``outputs`` may list, in the order they are made
KINDS = ("color", "overlay", "panel", "trainid", "labelid", "depth", "attention")
#: kinds whose pixel values are IDs: PNG only, since a video codec would change them
ID_KINDS = ("trainid", "labelid")


class PredictionError(ValueError, UserError):
    """The inputs or outputs of a prediction run are unusable: nothing found, unreadable, or a file at risk."""


def load_weights(
    model: SegmentationModule,
    ckpt_path: str | Path,
    checkpoint: dict | AuthorsWeights | None = None,
    backbone_ckpt: str | Path | list | None = None,
) -> None:
    """Load a checkpoint into ``model``, safely (``weights_only=True`` or safetensors).

    A depthforge checkpoint holds the trainable tensors and is checked to have been made for this model
    configuration. The authors' REIN/DepthForge files (src/models/authors.py) are recognised by their keys:
    ``ckpt_path`` their training checkpoint (with their backbone file as ``backbone_ckpt``) or a merged full file;
    ``model`` must then be built from ``AuthorsWeights.architecture(cfg)`` so that the VFMs they hold are not
    fetched. ``checkpoint``: the file's contents (or the authors' files) if already read with
    :func:`~src.models.authors.open_checkpoint`.
    """
    if checkpoint is None:
        checkpoint, weights = open_checkpoint(ckpt_path, backbone_ckpt)
        checkpoint = checkpoint if weights is None else weights
    if isinstance(checkpoint, AuthorsWeights):
        checkpoint.load_into(model.segmenter)
        return
    try:
        model.on_load_checkpoint(checkpoint)
    except CheckpointError as err:  # name the file: the model's check does not know it
        raise CheckpointError(f"ckpt_path={ckpt_path}: {err}") from err


# --------------------------------------------------------------------------- the plan: what goes where


@dataclass(frozen=True)
class Job:
    """One input (an image or a video) and the file each output kind is written to."""

    source: Path
    video: bool
    targets: dict[str, Path]


def _listing(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_outputs(outputs: Any) -> list[str]:
    """``outputs`` as a list of known kinds without repeats; anything else is refused with the kinds named."""
    if isinstance(outputs, str):
        outputs = [outputs]
    kinds = list(dict.fromkeys(str(k) for k in (outputs or [])))
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise PredictionError(
            f"outputs={list(outputs or [])}: {'unknown kind(s) ' + ', '.join(unknown) if unknown else 'nothing to do'}"
            f"\n  fix: outputs=[...] with any of {', '.join(KINDS)}, e.g. outputs=[color,overlay]"
        )
    return kinds


def video_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a video (None when it can): PyAV must open it and find a video stream."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
    except (av.FFmpegError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _inputs(in_dir: Path) -> tuple[list[Path], Path]:
    """The images and videos to predict, and the folder their output names are relative to."""
    suffixes = (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
    if in_dir.is_file():
        if in_dir.suffix.lower() not in suffixes:
            raise PredictionError(
                f"input_dir={in_dir} is a file but neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                f"({', '.join(VIDEO_SUFFIXES)})\n  fix: input_dir=<a folder of images and videos, or one of them>"
            )
        return [in_dir], in_dir.parent
    if not in_dir.is_dir():
        raise PredictionError(
            f"input_dir={in_dir} is not a folder\n  fix: input_dir=<a folder of {'/'.join(IMAGE_SUFFIXES)} images "
            f"and {'/'.join(VIDEO_SUFFIXES)} videos, or one such file>"
        )
    files = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise PredictionError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) or videos ({', '.join(VIDEO_SUFFIXES)}) found under "
            f"input_dir={in_dir}"
        )
    return files, in_dir


def plan_outputs(
    in_dir: Path, out_dir: Path, overwrite: bool = False, outputs: Sequence[str] = ("color",)
) -> list[Job]:
    """A :class:`Job` for every image and video under ``in_dir`` (or for ``in_dir`` itself if it is one file),
    after refusing any layout that could lose a file.

    See the module docstring for the rules. Raises :class:`PredictionError` naming the files and the fix.
    """
    kinds = check_outputs(outputs)
    files, base = _inputs(in_dir)
    is_video = {p: p.suffix.lower() in VIDEO_SUFFIXES for p in files}
    unreadable = [p for p in files if not is_video[p] and not cv2.haveImageReader(str(p))]
    if unreadable:
        raise PredictionError(
            f"{len(unreadable)} file(s) under input_dir={in_dir} have an image suffix but are not images OpenCV can "
            f"read: {_listing(unreadable)} ({unreadable[0].stat().st_size:,} bytes)\n"
            "  fix: remove or convert them (a download that stopped early leaves such a file), then run again"
        )
    videos = [p for p in files if is_video[p]]
    bad_videos = [(p, why) for p in videos if (why := video_problem(p)) is not None]
    if bad_videos:
        raise PredictionError(
            f"{len(bad_videos)} file(s) under input_dir={in_dir} have a video suffix but cannot be read as a video: "
            f"{_listing([p for p, _ in bad_videos])} ({bad_videos[0][1]})\n"
            "  fix: remove or convert them, then run again"
        )
    video_kinds = [k for k in kinds if k not in ID_KINDS]
    if videos and not video_kinds:
        raise PredictionError(
            f"outputs={kinds} cannot be written for the videos under input_dir={in_dir} ({_listing(videos, 2)}): a "
            "video codec would change the IDs\n  fix: add a picture kind for them, e.g. outputs=[overlay,"
            f"{','.join(kinds)}], or extract the frames as PNGs and predict those"
        )
    if videos and len(video_kinds) < len(kinds):
        log.info("videos get %s only: ID maps are written for images, never as a video", ", ".join(video_kinds))
    by_name: dict[Path, list[Path]] = defaultdict(list)
    for path in files:
        by_name[path.relative_to(base).with_suffix(".mp4" if is_video[path] else ".png")].append(path)
    names: dict[Path, Path] = {}
    renamed: list[tuple[list[Path], Path]] = []
    for name, sources in by_name.items():
        if len(sources) == 1:
            names[sources[0]] = name
        else:  # a.jpg and a.png: each keeps its suffix, a.jpg.png and a.png.png
            names.update({src: name.with_name(src.name + name.suffix) for src in sources})
            renamed.append((sources, out_dir / name))
    plan = []
    for path in files:
        targets = {
            kind: out_dir / (kind if len(kinds) > 1 else "") / names[path]
            for kind in (video_kinds if is_video[path] else kinds)
        }
        plan.append(Job(path, is_video[path], targets))
    every = [t for job in plan for t in job.targets.values()]
    clashes = [t for t, n in Counter(every).items() if n > 1]
    if clashes:
        raise PredictionError(
            f"several inputs under input_dir={in_dir} would be written to the same file: {_listing(clashes)}\n"
            "  fix: rename the inputs so that their names differ by more than the suffix"
        )
    root = in_dir.resolve()
    inside = [t for t in every if t.resolve().is_relative_to(root)]
    if inside:
        suggestion = root.parent / f"{root.name if root.is_dir() else root.stem}_predictions"
        raise PredictionError(
            f"output_dir={out_dir} would put predictions inside input_dir={in_dir} ({_listing(inside, 2)}): they "
            "could overwrite input images of the same name and would be read as inputs by the next run\n"
            f"  fix: an output_dir outside input_dir, e.g. output_dir={suggestion}"
        )
    existing = [t for t in every if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        raise PredictionError(
            f"output_dir={out_dir} already holds {len(existing)} of the {len(every)} files this run would write: "
            f"{_listing(existing)}\n  fix: overwrite=true to replace them, or another output_dir"
        )
    for sources, target in renamed:
        log.warning("%s would all be written to %s: each keeps its suffix instead", _listing(sources), target)
    return plan


# --------------------------------------------------------------------------- preprocessing: the evaluator's


def domain_pipeline(cfg: DictConfig) -> tuple[str, A.BaseCompose]:
    """(domain, transform): the test pipeline ``src.eval`` applies to target ``cfg.domain`` (default: the first
    target of ``data.targets``). ``cfg.scale`` (if set) replaces its resize by a keep-ratio resize into
    (w_max, h_max), with a warning when that differs from the evaluator's."""
    targets = {name: node for name, node in (cfg.data.get("targets") or {}).items() if node is not None}
    if not targets:
        raise PredictionError("the experiment has no target domain (data.targets) whose test pipeline to use")
    domain = cfg.get("domain") or next(iter(targets))
    if domain not in targets:
        raise PredictionError(
            f"domain={domain} is not a target of this experiment; its targets are {', '.join(targets)}\n"
            f"  fix: domain=<one of {', '.join(targets)}>, or leave it unset for the first ({next(iter(targets))})"
        )
    spec = targets[domain].get("transform")
    if cfg.get("scale") is not None:
        scale = tuple(int(v) for v in cfg.scale)
        if spec is None or spec.get("scale") is None or tuple(spec.scale) != scale:
            log.warning(
                "scale=%s replaces the test resize of the %s target (%s) that src.eval uses: these predictions are "
                "not the ones src.eval scores",
                list(scale),
                domain,
                "none" if spec is None or spec.get("scale") is None else list(spec.scale),
            )
        return domain, build_test_transform(scale)
    if spec is None:  # the datasets' default: normalise, no resize
        return domain, build_test_transform(scale=None)
    return domain, instantiate_checked(spec, f"data.targets.{domain}.transform")


def _autocast(cfg: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The evaluator's precision: the trainer's mixed precision (bf16-mixed in the paper's GPU runs)."""
    return eval_autocast((cfg.get("trainer") or {}).get("precision"), device)


# --------------------------------------------------------------------------- the model's outputs


@torch.no_grad()
def dominant_tokens(
    segmenter: Segmenter,
    images: torch.Tensor,
    layer: int,
    *,
    crop: int,
    stride: int,
    max_batch: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, int]:
    """The most attended learnable token per pixel at visual ``layer``, and the number of tokens M.

    The adapter's ``attention(tokens, layer, depth)`` (B, N, M) is taken on the patch tokens that enter it at
    ``layer`` (:func:`src.attention.record_attention`) in the slide windows the segmentation uses; each window's
    map is resized bilinearly to the window, the windows are averaged as :func:`slide_inference` averages
    probabilities, resized to ``out_size`` and the argmax over the M tokens is returned as (B, H, W).
    """
    results, num_tokens = [], 0
    for image in images:
        h, w = image.shape[-2:]
        windows = window_grid(h, w, crop, stride)
        crops = torch.stack([image[:, y1:y2, x1:x2] for (y1, y2, x1, x2) in windows])
        maps = []
        for chunk in crops.split(max_batch) if max_batch else (crops,):
            recorded = record_attention(segmenter, chunk, [layer])  # (B, N, M) of the tokens the adapter gets
            (weights,) = recorded.weights.values()
            maps.append(weights.transpose(1, 2).reshape(len(chunk), weights.shape[-1], *recorded.grid))
        maps = torch.cat(maps)
        num_tokens = maps.shape[1]
        canvas = maps.new_zeros((num_tokens, h, w))
        count = maps.new_zeros((1, h, w))
        for k, (y1, y2, x1, x2) in enumerate(windows):
            canvas[:, y1:y2, x1:x2] += F.interpolate(
                maps[k : k + 1], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
            )[0]
            count[:, y1:y2, x1:x2] += 1
        canvas /= count
        if out_size is not None and tuple(out_size) != (h, w):
            canvas = F.interpolate(canvas[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
        results.append(canvas.argmax(0))
    return torch.stack(results), num_tokens


class Predictor:
    """A loaded :class:`SegmentationModule` and the experiment's test pipeline: RGB images in, pictures out.

    :meth:`segment` is the evaluator's prediction (see the module docstring); :meth:`__call__` turns it into the
    picture of every kind asked for. ``min_confidence`` > 0 makes pixels whose top class probability is below it
    void (255): black in ``color``, untouched in ``overlay``, 255 in ``trainid``, 0 in ``labelid``.
    """

    def __init__(
        self,
        module: SegmentationModule,
        transform: A.BaseCompose,
        device: torch.device,
        *,
        autocast: contextlib.AbstractContextManager | None = None,
        alpha: float = 0.5,
        min_confidence: float = 0.0,
        attention_layer: int = -1,
    ) -> None:
        self.module, self.transform, self.device = module, transform, device
        self.autocast = autocast or contextlib.nullcontext()
        self.alpha, self.min_confidence = float(alpha), float(min_confidence)
        layers = module.segmenter.visual_backbone.num_layers
        if not -layers <= attention_layer < layers:
            raise PredictionError(
                f"attention_layer={attention_layer} is not a layer of this visual VFM ({layers} layers)\n"
                f"  fix: attention_layer=<0..{layers - 1}, or -1 for the last>"
            )
        self.attention_layer = attention_layer % layers
        self.has_depth = module.segmenter.depth_backbone is not None

    @torch.no_grad()
    def segment(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(train IDs (B, H, W) on the CPU, the network input (B, 3, h, w)) for RGB images of one size (H, W)."""
        batch = torch.stack([self.transform(image=image)["image"] for image in images]).to(self.device)
        size = tuple(images[0].shape[:2])
        with self.autocast:
            probs = self.module(batch, out_size=size)
        pred = probs.argmax(1)
        if self.min_confidence > 0:
            pred[probs.amax(1) < self.min_confidence] = IGNORE_INDEX
        return pred.cpu(), batch

    @torch.no_grad()
    def __call__(
        self, images: Sequence[np.ndarray], kinds: Sequence[str], slots: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """For each image (all of one size), in turn, ``{kind: picture}``: RGB uint8 (H, W, 3) or (H, W) uint8 IDs.

        The network runs once for the batch; the pictures of an image are drawn when the caller asks for them, so a
        caller that writes each image before taking the next has written every image before a failing one.
        ``slots``: the overlay legend's room (a video passes the number of classes: constant frame width).
        """
        pred, batch = self.segment(images)
        size = tuple(images[0].shape[:2])
        depth = tokens = None
        if self.has_depth and ("depth" in kinds or "panel" in kinds):
            with self.autocast:
                depth = self.module.segmenter.depth_map(batch).float().cpu()
        if "attention" in kinds:
            with self.autocast:
                tokens, num_tokens = dominant_tokens(
                    self.module.segmenter, batch, self.attention_layer, out_size=size, **self.module.slide
                )
        for i, image in enumerate(images):
            ids = pred[i].numpy().astype(np.uint8)
            out: dict[str, np.ndarray] = {}
            colour = None
            for kind in kinds:
                if kind in ("color", "panel") and colour is None:
                    colour = colorize(pred[i]).numpy()
                if kind == "color":
                    out[kind] = colour
                elif kind == "overlay":
                    out[kind] = overlay(image, ids, self.alpha, slots)
                elif kind == "panel":
                    panels = [image, colour] + ([depth_to_rgb(depth[i], size)] if depth is not None else [])
                    out[kind] = np.concatenate(panels, axis=1)
                elif kind == "trainid":
                    out[kind] = ids
                elif kind == "labelid":
                    out[kind] = train_to_label_ids(ids)
                elif kind == "depth":
                    out[kind] = depth_to_rgb(depth[i], size)
                elif kind == "attention":
                    out[kind] = colorize_tokens(tokens[i], num_tokens)
            yield out


def check_model_outputs(cfg: DictConfig, kinds: Sequence[str], with_depth: bool = False) -> None:
    """Refuse, before the model is built, kinds the configured model cannot give (read from its adapter class)."""
    adapter = cfg.model.segmenter.get("token_adapter")
    cls = hydra.utils.get_class(adapter._target_) if adapter is not None else None
    name = cls.__name__ if cls is not None else "no adapter (the frozen VFM)"
    if with_depth and not getattr(cls, "uses_depth", False):
        raise PredictionError(
            "with_depth=true needs a model with a depth backbone (this adapter reads no depth)\n  fix: with_depth=false"
        )
    if "depth" in kinds and not getattr(cls, "uses_depth", False):
        raise PredictionError(
            f"outputs=[depth] needs a model with a depth VFM, and {name} reads no depth\n"
            "  fix: drop depth from outputs, or use a checkpoint of a method that reads depth (ablation=depthforge)"
        )
    if "attention" in kinds and not has_attention(cls):
        raise PredictionError(
            f"outputs=[attention] shows the learnable tokens' attention, and {name} has no attention(tokens, layer, "
            "depth) method\n  fix: drop attention from outputs (REIN, DepthForge and its ablations have one)"
        )


# --------------------------------------------------------------------------- writing


def write_png(path: Path, picture: np.ndarray) -> None:
    """Encode an RGB image (or a single-channel ID map) as PNG and write it atomically; an encoding failure raises
    (cv2.imwrite would not)."""
    picture = np.ascontiguousarray(picture)
    ok, data = cv2.imencode(".png", picture if picture.ndim == 2 else cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode the prediction for {path} as PNG")
    with atomic_write(path) as f:
        f.write(data.tobytes())


class VideoWriter:
    """An MP4 written frame by frame with PyAV into a temporary file that replaces ``path`` only when complete.

    The stream is opened at the first frame (its size). A 4:2:0 pixel format needs even sizes: odd frames are
    padded by one black row or column. A frame of another size than the first is resized to it.
    """

    def __init__(self, path: Path, rate: Fraction, codec: str = "libx264", options: dict | None = None) -> None:
        self.path, self.rate, self.codec = path, rate, codec
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.frames = 0
        self._stream = None

    def __enter__(self) -> VideoWriter:
        self._file_cm = atomic_write(self.path)
        self._container = av.open(self._file_cm.__enter__(), mode="w", format="mp4")
        return self

    def write(self, rgb: np.ndarray) -> None:
        if self._stream is None:
            formats = [f.name for f in av.Codec(self.codec, "w").video_formats or ()]
            pix_fmt = next((f for f in ("yuv420p", "rgb24") if f in formats), formats[0] if formats else "yuv420p")
            even = "420" in pix_fmt or pix_fmt.startswith("nv")
            height, width = rgb.shape[:2]
            self._size = (height, width)
            self._padded = (height + height % 2, width + width % 2) if even else (height, width)
            self._stream = self._container.add_stream(self.codec, rate=self.rate, options=self.options)
            self._stream.height, self._stream.width = self._padded
            self._stream.pix_fmt = pix_fmt
        if rgb.shape[:2] != self._size:
            rgb = cv2.resize(rgb, self._size[::-1], interpolation=cv2.INTER_AREA)
        if self._padded != self._size:
            rgb = np.pad(rgb, ((0, self._padded[0] - self._size[0]), (0, self._padded[1] - self._size[1]), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if self._stream is None:
                    raise PredictionError(f"no frame was decoded for {self.path}: the video is empty")
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
        except BaseException as err:
            if exc_type is None:  # the finishing failed: the temporary file goes, the error is raised
                self._file_cm.__exit__(type(err), err, err.__traceback__)
                raise
        return bool(self._file_cm.__exit__(exc_type, exc, tb))


def _image_batches(jobs: Sequence[Job], batch_size: int) -> Iterator[list[tuple[Job, np.ndarray]]]:
    """Consecutive images of one size (and one network input size), ``batch_size`` at most: images of other sizes
    go one batch each, so a folder of mixed photos still works."""
    batch: list[tuple[Job, np.ndarray]] = []
    for job in jobs:
        bgr = cv2.imread(str(job.source), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PredictionError(
                f"cannot decode image {job.source} ({job.source.stat().st_size:,} bytes)\n  fix: remove or convert it"
            )
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if batch and (len(batch) == batch_size or batch[0][1].shape != rgb.shape):
            yield batch
            batch = []
        batch.append((job, rgb))
    if batch:
        yield batch


def predict_video(
    job: Job,
    predictor: Predictor,
    batch_size: int,
    codec: str,
    options: dict | None,
    written: list[Path],
) -> None:
    """Stream ``job.source`` frame by frame through ``predictor`` into one MP4 per kind (``batch_size`` frames in
    memory at a time), at the input's frame rate; the files are appended to ``written`` once complete."""
    kinds = list(job.targets)
    with av.open(str(job.source)) as source:
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        total = stream.frames or None
        with contextlib.ExitStack() as stack:
            writers = {
                kind: stack.enter_context(VideoWriter(job.targets[kind], Fraction(rate), codec, options))
                for kind in kinds
            }
            bar = stack.enter_context(tqdm(total=total, desc=job.source.name, unit="frame", disable=None))

            def flush(frames: list[np.ndarray]) -> None:
                for pictures in predictor(frames, kinds, slots=NUM_CLASSES):
                    for kind in kinds:
                        writers[kind].write(pictures[kind])
                bar.update(len(frames))

            frames: list[np.ndarray] = []
            for frame in source.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                if frames and (len(frames) == batch_size or frames[0].shape != rgb.shape):
                    flush(frames)
                    frames = []
                frames.append(rgb)
            if frames:
                flush(frames)
    written.extend(job.targets.values())
    log.info("%s: %d frames -> %s", job.source, writers[kinds[0]].frames, ", ".join(map(str, job.targets.values())))


# --------------------------------------------------------------------------- the entry point


def _require(cfg: DictConfig, key: str, example: str) -> None:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise PredictionError(f"{key} is not set\n  fix: add {key}={example} to the command line")


def _outputs(cfg: DictConfig) -> list[str]:
    """``outputs``, with the old ``with_depth=true`` read as ``panel`` (image | colour | depth) in place of color."""
    kinds = check_outputs(OmegaConf.to_container(cfg.outputs) if OmegaConf.is_config(cfg.outputs) else cfg.outputs)
    if cfg.get("with_depth"):
        log.warning("with_depth=true is the old spelling of outputs=[panel] (image | colour | depth side by side)")
        kinds = list(dict.fromkeys("panel" if k == "color" else k for k in kinds))
        if "panel" not in kinds:
            kinds.append("panel")
    return kinds


@torch.no_grad()
def predict_folder(cfg: DictConfig) -> list[Path]:
    """Predict every image and video under ``cfg.input_dir`` into ``cfg.output_dir``; returns the files written."""
    _require(cfg, "ckpt_path", "<run dir>/checkpoints/last.ckpt")
    _require(cfg, "input_dir", "<folder of images or videos>")
    _require(cfg, "output_dir", "<folder outside input_dir>")
    check_config(cfg)
    kinds = _outputs(cfg)
    batch_size = 1 if cfg.get("batch_size") is None else int(cfg.batch_size)
    if batch_size < 1:
        raise PredictionError(f"batch_size={batch_size} must be at least 1\n  fix: batch_size=1")
    in_dir, out_dir = Path(cfg.input_dir).expanduser(), Path(cfg.output_dir).expanduser()
    plan = plan_outputs(in_dir, out_dir, overwrite=bool(cfg.get("overwrite", False)), outputs=kinds)
    codec = str(cfg.get("video_codec") or "libx264")
    if any(job.video for job in plan) and codec not in av.codecs_available:
        raise PredictionError(
            f"video_codec={codec} is not an encoder of this PyAV/FFmpeg build\n  fix: video_codec=libx264 or "
            "video_codec=mpeg4"
        )
    domain, transform = domain_pipeline(cfg)
    # a missing or damaged file fails before the model is built
    checkpoint, authors_weights = open_checkpoint(cfg.ckpt_path, cfg.get("backbone_ckpt"))
    build_cfg = cfg if authors_weights is None else authors_weights.architecture(cfg)
    check_model_outputs(build_cfg, kinds, with_depth=bool(cfg.get("with_depth")))
    seed_for_build(cfg)  # as src.eval: frozen VFMs built from random init (smoke) are the training run's
    model = build_module(build_cfg)
    load_weights(model, cfg.ckpt_path, checkpoint if authors_weights is None else authors_weights)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    predictor = Predictor(
        model,
        transform,
        device,
        autocast=_autocast(cfg, device),
        alpha=float(cfg.get("alpha", 0.5)),
        min_confidence=float(cfg.get("min_confidence") or 0.0),
        attention_layer=int(cfg.get("attention_layer", -1)),
    )
    images, videos = [job for job in plan if not job.video], [job for job in plan if job.video]
    total = sum(len(job.targets) for job in plan)
    log.info(
        "%d image(s) and %d video(s) -> %s (%s); preprocessed as src.eval does for the %s target, slide windows %s",
        len(images),
        len(videos),
        out_dir,
        ", ".join(kinds),
        domain,
        dict(model.slide),
    )
    written: list[Path] = []
    try:
        with tqdm(total=len(images), desc="images", unit="image", disable=None if images else True) as bar:
            for batch in _image_batches(images, batch_size):
                results = predictor([rgb for _, rgb in batch], kinds)
                for (job, _), pictures in zip(batch, results):
                    for kind, target in job.targets.items():
                        write_png(target, pictures[kind])
                        written.append(target)
                bar.update(len(batch))
        for job in videos:
            predict_video(job, predictor, batch_size, codec, cfg.get("video_options"), written)
    except BaseException:
        log.error("wrote %d of %d predictions to %s before the error below", len(written), total, out_dir)
        raise
    log.info("wrote %d predictions to %s", len(written), out_dir)
    return written


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict_folder(cfg)


if __name__ == "__main__":
    main()
