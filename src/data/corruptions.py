"""ImageNet-C corruptions of a dataset's images (Cityscapes-C, and the same for any target), and their report.

The 15 corruptions of Hendrycks & Dietterich (ICLR 2019) at 5 severities come from the `imagecorruptions-imaug`
package (the maintained fork of bethgelab's `imagecorruptions`, which works with NumPy 2 and scikit-image >= 0.19);
nothing is reimplemented here. This module adds what a benchmark needs around them:

- **Determinism.** Each output is seeded by (seed, corruption, severity, image name), so a file does not depend on
  the order, the number of processes or what else was generated.
- **The dataset's own layout.** Corruption `c` at severity `s` of `<source>/<image_dir>/<rel><suffix>` is written to
  `<out>/<c>/<s>/<image_dir>/<rel><suffix>`, e.g. `cityscapes_c/fog/3/leftImg8bit/val/frankfurt/..._leftImg8bit.png`.
  Labels are not copied: `src.data.datasets.corrupted.CorruptedDataset` reads the source's own label files, so they
  are identical by construction (`link_labels=True` also hard-links them in, for tools that want a full tree).
- **Resumable and atomic.** Outputs that exist are skipped; each file is written to a hidden temporary name and
  moved into place with `os.replace`, so a killed run never leaves a truncated image. The source is never written.
- **The report.** `corruption_report` turns src.eval's per-domain mIoU (domains `<corruption>_<severity>`) into
  per-corruption, per-severity and overall means, and the severity-5 mean (the level REIN's single Cityscapes-C
  number is quoted at; docs/evaluation.md).

    python scripts/make_corruptions.py data/cityscapes data/cityscapes_c --workers 8      # docs/evaluation.md
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from src.data.datasets import Layout, LayoutDataset

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 ImageNet-C benchmark corruptions, in ImageNet-C's order: the default everywhere."""
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""ImageNet-C's four held-out ("validation") corruptions, also in the library; only used when asked for by name
(SegFormer's 16-type Cityscapes-C table has them in place of zoom blur, elastic transform and pixelate)."""
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": (*CORRUPTIONS[0:3], "speckle_noise"),
    "blur": (*CORRUPTIONS[3:7], "gaussian_blur"),
    "weather": (*CORRUPTIONS[7:11], "spatter"),
    "digital": (*CORRUPTIONS[11:15], "saturate"),
}
"""ImageNet-C's four groups of the corruptions (the held-out ones placed as in the ImageNet-C paper)."""
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

LIBRARY = "imagecorruptions-imaug"
LIBRARY_VERSION = "1.1.5"
INSTALL = f'pip install scikit-image numba && pip install --no-deps "{LIBRARY}=={LIBRARY_VERSION}"'
"""How to install the library (`make install` does it): `--no-deps` because its metadata asks for `opencv-python`,
the GUI build of OpenCV, which would overwrite the `opencv-python-headless` this project (and albumentations) use."""
MANIFEST = "corruptions.json"
"""The record of an output root: source dataset, its splits (layouts), seed and library; a rerun must agree."""
JPEG_QUALITY = 95
"""Quality of corrupted images written for a dataset whose images are JPEG (BDD100K, Mapillary); PNG is lossless."""
_SEEDED = ("glass_blur", "impulse_noise")  # the functions that draw from their own seed, not NumPy's global RNG
_TEMP_SUFFIX = ".partial"


# --------------------------------------------------------------------------- one image


def _library() -> Any:
    """The `imagecorruptions` module of the fork, or an ImportError that says how to install it."""
    try:
        import imagecorruptions
    except ImportError as error:
        raise ImportError(f"the corruptions come from the {LIBRARY} package, not installed: {INSTALL}") from error
    if "seed" not in inspect.signature(imagecorruptions.corruptions.glass_blur).parameters:
        raise ImportError(
            "the installed imagecorruptions package is bethgelab's 1.1.x, which neither works with NumPy 2 nor takes "
            f"a seed; replace it with its maintained fork: pip uninstall -y imagecorruptions && {INSTALL}"
        )
    return imagecorruptions


def library_version() -> str:
    """`imagecorruptions-imaug <version>`, recorded in each output root's manifest."""
    _library()
    return f"{LIBRARY} {metadata.version(LIBRARY)}"


def check_selection(corruptions: Iterable[str], severities: Iterable[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The corruptions and severities asked for, without repeats; a ValueError naming the valid ones otherwise."""
    corruptions, severities = tuple(corruptions), tuple(int(s) for s in severities)
    unknown = [c for c in corruptions if c not in ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(
            f"unknown corruption(s) {unknown}; the corruptions are {', '.join(CORRUPTIONS)} (and, by name, "
            f"{', '.join(EXTRA_CORRUPTIONS)})"
        )
    wrong = [s for s in severities if s not in SEVERITIES]
    if wrong:
        raise ValueError(f"severities must be in {SEVERITIES}, got {wrong}")
    if not corruptions or not severities:
        raise ValueError("give at least one corruption and one severity")
    return tuple(dict.fromkeys(corruptions)), tuple(dict.fromkeys(severities))


def output_seed(seed: int, corruption: str, severity: int, name: str) -> int:
    """The seed of one output: a 32-bit value stable across runs, platforms and processes."""
    if seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed}")
    entropy = [int(seed), zlib.crc32(corruption.encode()), int(severity), zlib.crc32(name.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """`corruption` at `severity` (1..5) of an RGB uint8 image (H, W, 3), H and W >= 32; the same seed, the same
    result. The library draws from NumPy's global RNG: it is seeded here and restored afterwards (not thread-safe;
    use processes)."""
    check_selection([corruption], [severity])
    library = _library()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    kwargs = {"seed": seed} if corruption in _SEEDED else {}
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = library.corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
    except AttributeError as error:  # the library's way of rejecting an input (too small, ...)
        raise ValueError(f"{corruption}: {error}") from error
    finally:
        np.random.set_state(state)
    if out.shape != image.shape:
        raise ValueError(f"{corruption} severity {severity} changed the image size from {image.shape} to {out.shape}")
    return np.ascontiguousarray(out, dtype=np.uint8)


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG, or JPEG at `JPEG_QUALITY` by the suffix) so that `path` either does not exist
    or holds the whole file: encoded in memory, written to a hidden temporary file beside it, then `os.replace`d."""
    suffix = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"cannot encode an image as {suffix} for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}{_TEMP_SUFFIX}")
    try:
        temp.write_bytes(encoded.tobytes())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _link_atomic(source: Path, path: Path) -> None:
    """Hard-link `source` to `path` (a copy where the file system cannot link), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}{_TEMP_SUFFIX}")
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:  # another file system, or links not allowed
            temp.write_bytes(source.read_bytes())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the layout of an output root


def source_layout(dataset: str, layout: Mapping[str, Any] | None = None) -> Layout:
    """The `Layout` of the split of `dataset` (a key of `src.data.datasets.DATASETS`) that `layout` selects: the
    arguments of its `layout()`, e.g. `{"split": "val"}`, `{"split": "val", "condition": "fog"}` for ACDC."""
    from src.data.datasets import DATASETS  # here: the worker processes need none of the dataset classes (torch)

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; one of {tuple(DATASETS)}")
    cls = DATASETS[dataset]
    try:
        return cls.layout(**dict(layout or {}))
    except TypeError as error:  # a split argument the dataset does not take, or one missing
        raise ValueError(f"{error}; the splits of {dataset} are chosen by {inspect.signature(cls.layout)}") from error


def default_layout(dataset: str, layout: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`layout` as a dict, by default `{"split": "val"}` (`{}` for a dataset read whole, GTA5)."""
    from src.data.datasets import DATASETS

    if layout is not None:
        return dict(layout)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; one of {tuple(DATASETS)}")
    return {"split": "val"} if DATASETS[dataset].has_splits else {}


def corrupted_root(out_root: str | Path, corruption: str, severity: int) -> Path:
    """`<out>/<corruption>/<severity>`: one corrupted copy of the source's split, in the source's layout."""
    return Path(out_root) / corruption / str(int(severity))


def domain_name(corruption: str, severity: int) -> str:
    """The target-domain name of one corruption and severity: `<corruption>_<severity>`, e.g. `fog_3`."""
    return f"{corruption}_{int(severity)}"


def parse_domain(name: str) -> tuple[str, int] | None:
    """(corruption, severity) of a domain named by `domain_name`, else None (`clean`, `mean(...)`, ...)."""
    corruption, _, severity = name.rpartition("_")
    if corruption in ALL_CORRUPTIONS and severity.isdigit() and int(severity) in SEVERITIES:
        return corruption, int(severity)
    return None


def manifest(out_root: str | Path) -> dict[str, Any] | None:
    """The manifest of an output root, or None where there is none."""
    path = Path(out_root) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _check_paths(source_root: Path, out_root: Path) -> None:
    """Refuse an output root that is, holds or lies inside the source: nothing may be written onto the source."""
    source, out = source_root.resolve(), out_root.resolve()
    if out == source or source in out.parents or out in source.parents:
        raise ValueError(
            f"the output root {out_root} must lie outside the source dataset {source_root} (and not hold it): "
            f"the source is never written; use e.g. {source_root.parent / (source_root.name + '_c')}"
        )


def _write_manifest(out_root: Path, record: dict[str, Any], layout: dict[str, Any]) -> None:
    """Write the record, or check that an existing one agrees and add this split to it: an output root holds one
    seed of one dataset (its splits side by side, e.g. ACDC's conditions, each under its own image folder)."""
    existing = manifest(out_root)
    if existing is not None:
        for key in ("dataset", "seed"):
            if existing.get(key) != record[key]:
                raise ValueError(
                    f"{out_root / MANIFEST} records {key}={existing.get(key)!r} but this run has {record[key]!r}: "
                    f"an output root holds one seed of one dataset; use another output root"
                )
        if existing.get("library") != record["library"]:
            warnings.warn(
                f"{out_root} was generated with {existing.get('library')}, this run uses {record['library']}: "
                "the files already there are kept as they are",
                stacklevel=3,
            )
        if layout in existing.get("layouts", []):
            return
        record = {**existing, "layouts": [*existing.get("layouts", []), layout]}
    else:
        record = {**record, "layouts": [layout]}
    out_root.mkdir(parents=True, exist_ok=True)
    temp = out_root / f".{MANIFEST}.{os.getpid()}{_TEMP_SUFFIX}"
    temp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temp, out_root / MANIFEST)


# --------------------------------------------------------------------------- generating a dataset's corruptions


@dataclass(frozen=True)
class Progress:
    """Where a generation stands: source images done of all, corrupted files written and skipped (already there)."""

    images_done: int
    images: int
    written: int
    skipped: int


@dataclass(frozen=True)
class GenerationResult:
    images: int
    """source images"""
    written: int
    """corrupted images written by this run"""
    skipped: int
    """corrupted images already there (a resumed run)"""
    labels_linked: int = 0
    out_root: Path = field(default_factory=Path)

    @property
    def total(self) -> int:
        return self.written + self.skipped


_Job = tuple[str, str, list[tuple[str, int, str, int]]]  # (image path, name, [(corruption, severity, dest, seed)])


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _corrupt_one(job: _Job) -> int:
    """Read one source image and write its missing corrupted versions; returns how many were written."""
    image_path, _, outputs = job
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)  # as src.data.datasets.read_image, without importing torch
    if image is None:
        raise OSError(f"cannot read image {image_path} (missing, truncated or not an image)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    written = 0
    for corruption, severity, dest, seed in outputs:
        dest_path = Path(dest)
        if dest_path.exists():  # written meanwhile (a concurrent run)
            continue
        try:
            corrupted = corrupt_image(image, corruption, severity, seed)
        except ValueError as error:
            raise ValueError(f"cannot corrupt image {image_path}: {error}") from error
        write_image_atomic(dest_path, corrupted)
        written += 1
    return written


def _remove_temporaries(directories: Iterable[Path]) -> None:
    """Remove the temporary files a killed run left (hidden `*.partial`, never read as images)."""
    for directory in directories:
        if directory.is_dir():
            for temp in directory.rglob(f".*{_TEMP_SUFFIX}"):
                temp.unlink(missing_ok=True)


def generate_corruptions(
    source_root: str | Path,
    out_root: str | Path,
    dataset: str = "cityscapes",
    layout: Mapping[str, Any] | None = None,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    workers: int = 1,
    link_labels: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> GenerationResult:
    """Write every corruption × severity of every image of one split of a dataset under `out_root`.

    `source_root` is the dataset's root (`data/cityscapes`), `dataset` its key and `layout` the split (the
    arguments of the class's `layout()`; default `{"split": "val"}` for datasets with splits). Only images that
    have a label are corrupted (the dataset class's own scan). Outputs that exist are skipped, so an interrupted run
    is resumed by running it again; one run at a time per output root. An output root holds one seed of one dataset;
    several of its splits (ACDC's conditions) can share it. An unreadable source image raises OSError
    naming it (files already written stay valid). With `link_labels`, each `<out>/<c>/<s>` also gets the source's
    label files hard-linked (copied across file systems), which makes it a complete tree in the source's layout.
    """
    from src.data.datasets import DATASETS

    corruptions, severities = check_selection(corruptions, severities)
    source_root, out_root = Path(source_root), Path(out_root)
    cls = DATASETS.get(dataset)
    if cls is None:
        raise ValueError(f"unknown dataset {dataset!r}; one of {tuple(DATASETS)}")
    layout = default_layout(dataset, layout)
    split_layout = source_layout(dataset, layout)
    _check_paths(source_root, out_root)
    source: LayoutDataset = cls(source_root, **layout)
    record = {
        "format": 1,
        "dataset": dataset,
        "seed": int(seed),
        "library": library_version(),
        "source": str(source_root.resolve()),
        "labels": "not copied: read from the source's own files",
    }
    _write_manifest(out_root, record, layout)
    roots = {(c, s): corrupted_root(out_root, c, s) for c in corruptions for s in severities}
    _remove_temporaries(root / split_layout.image_dir for root in roots.values())

    jobs: list[_Job] = []
    skipped = 0
    for sample in source.samples:
        outputs = []
        for (c, s), root in roots.items():
            dest = root / split_layout.image_dir / f"{sample.name}{split_layout.image_suffix}"
            if dest.exists():
                skipped += 1
            else:
                outputs.append((c, s, str(dest), output_seed(seed, c, s, sample.name)))
        if outputs:
            jobs.append((str(sample.image), sample.name, outputs))

    images, written = len(source.samples), 0
    done = images - len(jobs)  # images whose outputs are all there
    if progress is not None:
        progress(Progress(done, images, written, skipped))

    def advance(count: int) -> None:
        nonlocal written, done
        written, done = written + count, done + 1
        if progress is not None:
            progress(Progress(done, images, written, skipped))

    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            advance(_corrupt_one(job))
    else:  # spawned processes (safe beside torch's threads); a worker that dies raises BrokenProcessPool, no hang
        context = get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker) as pool:
            futures = [pool.submit(_corrupt_one, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    advance(future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # let running images finish their atomic writes
                raise

    linked = _link_labels(source, roots.values(), split_layout) if link_labels else 0
    return GenerationResult(images, written, skipped, linked, out_root)


def _link_labels(source: LayoutDataset, roots: Iterable[Path], split_layout: Layout) -> int:
    """Hard-link every label file of the source split (each encoding present) into each corrupted root."""
    label_root = source.root / split_layout.label_dir
    files = [
        label_root / f"{sample.name}{suffix}"
        for sample in source.samples
        for suffix, _ in split_layout.labels
        if (label_root / f"{sample.name}{suffix}").is_file()
    ]
    linked = 0
    for root in roots:
        for path in files:
            dest = root / split_layout.label_dir / path.relative_to(label_root)
            if not dest.exists():
                _link_atomic(path, dest)
                linked += 1
    return linked


# --------------------------------------------------------------------------- a picture of them all


def corruption_grid(
    image: np.ndarray,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    name: str = "grid",
    tile_width: int | None = None,
) -> np.ndarray:
    """One RGB uint8 image showing `image` (clean, first column) under each corruption (rows) at each severity
    (columns), with the names in the margins. The tiles are what `generate_corruptions` writes for an image called
    `name` with this seed, corrupted at the image's own size and only then shrunk to `tile_width` (for display)."""
    corruptions, severities = check_selection(corruptions, severities)
    height, width = image.shape[:2]
    if tile_width is not None and tile_width < width:
        tile_size = (tile_width, max(1, round(height * tile_width / width)))
    else:
        tile_size = (width, height)

    def tile(value: np.ndarray) -> np.ndarray:
        return value if tile_size == (width, height) else cv2.resize(value, tile_size, interpolation=cv2.INTER_AREA)

    (tw, th), (left, top, gap) = tile_size, (118, 18, 2)
    canvas = np.full((top + len(corruptions) * (th + gap), left + (len(severities) + 1) * (tw + gap), 3), 255, np.uint8)

    def text(value: str, x: int, y: int) -> None:
        cv2.putText(canvas, value, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)

    for j, title in enumerate(["clean", *(f"severity {s}" for s in severities)]):
        text(title, left + j * (tw + gap) + 4, top - 5)
    for i, corruption in enumerate(corruptions):
        y = top + i * (th + gap)
        text(corruption, 4, y + th // 2 + 4)
        canvas[y : y + th, left : left + tw] = tile(image)
        for j, severity in enumerate(severities, start=1):
            x = left + j * (tw + gap)
            seed_ = output_seed(seed, corruption, severity, name)
            canvas[y : y + th, x : x + tw] = tile(corrupt_image(image, corruption, severity, seed_))
    return canvas


# --------------------------------------------------------------------------- the report


def read_results(path: str | Path) -> dict[str, float]:
    """Domain -> mIoU (%) of src.eval's `results.csv` (a file, or the run folder holding it); `mean(...)` rows are
    left out, they are recomputed."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; src.eval writes results.csv into its output folder")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"domain", "mIoU"} <= set(rows[0]):
        raise ValueError(f"{path} has no domain and mIoU columns; expected src.eval's results.csv")
    return {r["domain"]: float(r["mIoU"]) for r in rows if not r["domain"].startswith("mean(")}


@dataclass(frozen=True)
class CorruptionReport:
    """mIoU (%) per corruption and severity, and their means (each over the cells that are there)."""

    table: dict[str, dict[int, float]]
    """corruption -> severity -> mIoU, in ALL_CORRUPTIONS and SEVERITIES order"""
    per_corruption: dict[str, float]
    """mean over the severities of each corruption"""
    per_severity: dict[int, float]
    """mean over the corruptions at each severity (severity 5: the level REIN's Cityscapes-C number is quoted at)"""
    per_family: dict[str, float]
    """mean over all cells of each ImageNet-C family (noise, blur, weather, digital) that has any"""
    mean: float
    """mean over every (corruption, severity) cell"""
    others: dict[str, float]
    """the other domains of the evaluation (`clean`: the uncorrupted split), as they are"""
    missing: list[str]
    """`<corruption>_<severity>` domains missing from a rectangle of the corruptions and severities present"""

    def rows(self) -> list[dict[str, str]]:
        """The table as rows: one per corruption (its family, one column per severity, its mean), then the mean row."""
        severities = list(self.per_severity)
        rows = []
        for corruption, cells in self.table.items():
            family = next(f for f, members in FAMILIES.items() if corruption in members)
            row = {"corruption": corruption, "family": family}
            row |= {str(s): _fmt(cells.get(s)) for s in severities}
            rows.append(row | {"mean": _fmt(self.per_corruption[corruption])})
        mean_row = {"corruption": "mean", "family": ""} | {str(s): _fmt(v) for s, v in self.per_severity.items()}
        rows.append(mean_row | {"mean": _fmt(self.mean)})
        return rows

    def markdown(self) -> str:
        rows = self.rows()
        header = list(rows[0])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r[k] for k in header) + " |" for r in rows]
        notes = [f"mean over all corruptions and severities: **{_fmt(self.mean)}**"]
        if 5 in self.per_severity:
            severity5 = _fmt(self.per_severity[5])
            notes.append(f"mean at severity 5 (the level of REIN's Cityscapes-C number): **{severity5}**")
        notes.append("per family: " + ", ".join(f"{f} {_fmt(v)}" for f, v in self.per_family.items()))
        notes += [f"{domain}: {_fmt(value)}" for domain, value in self.others.items()]
        if self.missing:
            notes.append(f"missing (means are over the cells present): {', '.join(self.missing)}")
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def corruption_report(results: Mapping[str, float]) -> CorruptionReport:
    """Aggregate per-domain mIoU: domains `<corruption>_<severity>` form the table, the rest are kept as `others`."""
    cells: dict[str, dict[int, float]] = {}
    others = {}
    for domain, value in results.items():
        parsed = parse_domain(domain)
        if parsed is None:
            others[domain] = float(value)
        else:
            cells.setdefault(parsed[0], {})[parsed[1]] = float(value)
    if not cells:
        raise ValueError(f"no domain is named <corruption>_<severity> (e.g. fog_3); the domains are {list(results)}")
    corruptions = [c for c in ALL_CORRUPTIONS if c in cells]
    severities = sorted({s for row in cells.values() for s in row})
    table = {c: {s: cells[c][s] for s in severities if s in cells[c]} for c in corruptions}
    per_corruption = {c: fmean(table[c].values()) for c in corruptions}
    per_severity = {s: fmean(table[c][s] for c in corruptions if s in table[c]) for s in severities}
    per_family = {
        family: fmean(v for c in members if c in table for v in table[c].values())
        for family, members in FAMILIES.items()
        if any(c in table for c in members)
    }
    missing = [domain_name(c, s) for c in corruptions for s in severities if s not in table[c]]
    mean = fmean(v for row in table.values() for v in row.values())
    return CorruptionReport(table, per_corruption, per_severity, per_family, mean, others, missing)
