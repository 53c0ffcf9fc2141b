"""Test-server submissions: predict a benchmark's unlabelled test split into the zip its evaluation server expects.

python -m src.submit experiment=citys2acdc ckpt_path=<run>/checkpoints/last.ckpt benchmark=acdc
python -m src.submit experiment=gta2citys ckpt_path=<run>/checkpoints/last.ckpt benchmark=cityscapes

writes ``<output_dir>/<benchmark>_submission.zip`` (``output_dir`` defaults to the run directory). The formats
(:data:`BENCHMARKS`; docs/evaluation.md, "Test-server submissions", gives the sources):

- **ACDC** (https://acdc.vision.ee.ethz.ch/submit): one 8-bit PNG per test image of the four conditions (2,000),
  at the image's full size (1920x1080), holding **train IDs** (road = 0, …, bicycle = 18), named as the image file
  (``GOPR0475_frame_000041_rgb_anon.png``) at the root of the zip. ACDC's names are unique over the conditions.
- **Cityscapes** (https://www.cityscapes-dataset.com/submit/, cityscapesscripts' evalPixelLevelSemanticLabeling):
  one 8-bit PNG per test image (1,525) at 2048x1024 holding **label IDs** (road = 7, …, bicycle = 33), whose file
  name starts with the image's ``<city>_<seq>_<frame>``: ``<city>/<city>_<seq>_<frame>_leftImg8bit.png`` (the
  server searches the zip recursively for ``<city>_<seq>_<frame>*.png`` and wants exactly one match).

Preprocessing is src.eval's, per domain: each benchmark domain is read through the experiment's target of that
dataset class and condition (its root and test transform, with ``split=test, labelled=False``), run through
:func:`~src.models.inference.slide_inference` with the model config's ``slide`` windows, and the class probabilities
are resized bilinearly to the image's full size before the argmax, as ``SegmentationModule._eval_step`` does with
the label's size. A condition the experiment does not target is read like one it does (same root and transform);
with no target of the dataset at all, the source's folder when the source is that dataset (else
``<data_dir>/<dataset folder>``) and the benchmark's test resize are used (logged). ``split=val`` writes a labelled
split in the same format, to score the export locally before spending a server submission.

Safety, as src.predict: nothing is written inside the data root or a dataset's folder; an existing zip is not
replaced unless ``overwrite=true``; the zip is written to a temporary file that replaces the target only once
complete (an interrupted run leaves no partial zip); its members carry a fixed date, so two exports of one
checkpoint are byte-identical. Everything is checked (layout, names, counts, output) before the model is built.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from src.data.datasets import DATASETS, LayoutDataset
from src.data.labels import train_to_label_ids
from src.eval import seed_for_build
from src.models.authors import open_checkpoint
from src.models.inference import eval_autocast
from src.models.module import SegmentationModule
from src.utils.checkpoint import CheckpointError, UserError, atomic_write
from src.utils.instantiate import build_module, check_config, instantiate_checked

log = logging.getLogger(__name__)

#: train ID -> Cityscapes label ID (src/data/labels.py); void (255, never predicted) -> 0 ("unlabeled")
#: the date every zip member carries, so that one checkpoint always gives the same bytes
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
Encoding = Literal["trainid", "labelid"]


class SubmissionError(ValueError, UserError):
    """A submission that cannot be made as asked: unknown benchmark, missing images, clashing names, a file at risk."""


@dataclass(frozen=True)
class Benchmark:
    """What one evaluation server expects (module docstring; docs/evaluation.md gives the sources).

    ``dataset``: the registry key of its dataset class, whose ``unlabelled_splits`` are the domains it scores and
    their official counts; ``encoding``: the PNG values; ``flat``: members named by the image's file name at the zip
    root (else by its path relative to the split folder, ``<city>/<file>``); ``scale``: the test resize used when the
    experiment has no target of the dataset (its evaluation resize, docs/method.md §6.4).
    """

    key: str
    dataset: str
    encoding: Encoding
    flat: bool
    scale: tuple[int, int]
    server: str

    @property
    def cls(self) -> type[LayoutDataset]:
        return DATASETS[self.dataset]


BENCHMARKS: dict[str, Benchmark] = {
    "acdc": Benchmark("acdc", "acdc", "trainid", True, (960, 540), "https://acdc.vision.ee.ethz.ch/submit"),
    "cityscapes": Benchmark(
        "cityscapes", "cityscapes", "labelid", False, (1024, 512), "https://www.cityscapes-dataset.com/submit/"
    ),
}


def encode(train_ids: np.ndarray, encoding: Encoding) -> np.ndarray:
    """(H, W) train IDs -> the server's values: unchanged (``trainid``) or Cityscapes label IDs (``labelid``)."""
    train_ids = np.asarray(train_ids, dtype=np.uint8)
    return train_ids if encoding == "trainid" else train_to_label_ids(train_ids)


def png_bytes(ids: np.ndarray) -> bytes:
    """An (H, W) uint8 ID map as an 8-bit single-channel PNG."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(ids, dtype=np.uint8))
    if not ok:
        raise OSError("OpenCV could not encode a prediction as PNG")
    return data.tobytes()


# --------------------------------------------------------------------------- the plan: what goes where


@dataclass(frozen=True)
class Domain:
    """One scored part of the benchmark (an ACDC condition, the Cityscapes test split) and the zip member of each
    of its images, by sample name."""

    name: str
    dataset: LayoutDataset
    members: dict[str, str]


@dataclass(frozen=True)
class Plan:
    benchmark: Benchmark
    split: str
    encoding: Encoding
    domains: list[Domain]
    zip_path: Path

    @property
    def total(self) -> int:
        return sum(len(d.members) for d in self.domains)


def _target_class(spec: dict[str, Any]) -> type | None:
    target = spec.get("_target_")
    try:
        return hydra.utils.get_class(target) if isinstance(target, str) else None
    except Exception:  # another kind of target (a function): not a dataset class
        return None


def domain_specs(cfg: DictConfig, benchmark: Benchmark, split: str) -> list[tuple[str, dict[str, Any]]]:
    """(domain name, dataset config) for every domain the benchmark scores, read as src.eval reads the experiment's
    target of that dataset class and condition (see the module docstring), with ``split`` and ``labelled=False``."""
    cls = benchmark.cls
    targets = cfg.data.get("targets") or {}
    specs = {name: OmegaConf.to_container(node, resolve=True) for name, node in targets.items() if node is not None}
    own = {name: spec for name, spec in specs.items() if _target_class(spec) is cls}  # exact: not a subclass
    out = []
    for entry in cls.unlabelled_splits:
        select = {k: v for k, v in entry.kwargs.items() if k != "split"}  # e.g. the condition
        name = next((n for n, spec in own.items() if all(spec.get(k) == v for k, v in select.items())), None)
        if name is not None:
            spec = dict(own[name])
        elif own:  # a condition the experiment does not target: read like the ones it does
            first = next(iter(own))
            spec, name = {**own[first], **select}, str(select.get("condition", cls.key))
            log.info("%s: not a target of this experiment; read like its %s target (%s)", name, first, spec["root"])
        else:  # the source's folder when it is this dataset, else the dataset's usual folder
            source = cfg.data.get("source")
            source = OmegaConf.to_container(source, resolve=True) if source is not None else {}
            root = source["root"] if _target_class(source) is cls else Path(cfg.paths.data_dir) / cls.default_dir
            spec = {
                "_target_": f"{cls.__module__}.{cls.__qualname__}",
                "root": str(root),
                "transform": {"_target_": "src.data.transforms.build_test_transform", "scale": list(benchmark.scale)},
                **select,
            }
            name = str(select.get("condition", cls.key))
            log.warning(
                "the experiment has no %s target: %s is read from %s with the benchmark's test resize %s (set "
                "data.targets.<name> to use another root or transform)",
                cls.__name__,
                name,
                spec["root"],
                list(benchmark.scale),
            )
        spec.update(split=split, labelled=False, _partial_=False)
        out.append((name, spec))
    return out


def _member(benchmark: Benchmark, dataset: LayoutDataset, name: str) -> str:
    """The zip member of the image named ``name`` (its path in the split folder, without the image suffix)."""
    member = Path(f"{name}{dataset.layout.image_suffix}")
    member = member.with_suffix(".png")
    return member.name if benchmark.flat else member.as_posix()


def _listing(items: list[Any], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def plan_submission(cfg: DictConfig) -> Plan:
    """Check everything that can be checked before the model is built and say what will be written where."""
    key = str(cfg.get("benchmark") or "")
    if key not in BENCHMARKS:
        raise SubmissionError(
            f"benchmark={key or '(not set)'} is not a benchmark with a test server here\n"
            f"  fix: benchmark=<one of {', '.join(BENCHMARKS)}>"
        )
    benchmark = BENCHMARKS[key]
    split = str(cfg.get("split") or "test")
    if not benchmark.cls.is_unlabelled_split(split):
        log.warning(
            "split=%s: a dry run in %s's submission format (its server scores the test split); score it locally",
            split,
            key,
        )
    encoding = cfg.get("encoding") or benchmark.encoding
    if encoding not in ("trainid", "labelid"):
        raise SubmissionError(f"encoding={encoding} is not trainid or labelid\n  fix: encoding=null (the server's)")
    if encoding != benchmark.encoding:
        log.warning("encoding=%s: the %s server expects %s", encoding, key, benchmark.encoding)
    domains = []
    for name, spec in domain_specs(cfg, benchmark, split):
        dataset = instantiate_checked(OmegaConf.create(spec), f"data.targets.{name}")
        members = {s.name: _member(benchmark, dataset, s.name) for s in dataset.samples}
        official = benchmark.cls.unlabelled_splits
        expected = next((s.size for s in official if all(spec.get(k) == v for k, v in s.kwargs.items())), None)
        if expected is not None and len(members) != expected:
            log.warning(
                "%s/%s has %d images under %s; the %s server expects %d (a submission without all of them is refused)",
                name,
                split,
                len(members),
                dataset.root,
                key,
                expected,
            )
        domains.append(Domain(name, dataset, members))
    every = [m for d in domains for m in d.members.values()]
    clashes = sorted(m for m, n in Counter(every).items() if n > 1)
    if clashes:
        raise SubmissionError(
            f"{len(clashes)} zip member name(s) would be used by more than one image: {_listing(clashes)}; the "
            f"{key} server matches predictions to images by file name, so every image needs its own\n"
            "  fix: check that the data root holds the benchmark's own images (their names are unique)"
        )
    out_dir = Path(cfg.output_dir).expanduser()
    zip_path = out_dir / (cfg.get("zip_name") or f"{key}_submission.zip")
    roots = [Path(cfg.paths.data_dir)] + [d.dataset.root for d in domains]
    for root in roots:
        if zip_path.resolve().is_relative_to(root.expanduser().resolve()):
            raise SubmissionError(
                f"output_dir={out_dir} lies inside the data ({root}): a submission is never written among the data\n"
                "  fix: output_dir=<a folder outside the data root>, e.g. the run directory (the default)"
            )
    if (zip_path.exists() or zip_path.is_symlink()) and not cfg.get("overwrite", False):
        raise SubmissionError(f"{zip_path} already exists\n  fix: overwrite=true to replace it, or another output_dir")
    return Plan(benchmark, split, encoding, domains, zip_path)


# --------------------------------------------------------------------------- prediction


def load_model(cfg: DictConfig) -> SegmentationModule:
    """The module with the checkpoint's weights, built as src.eval builds it (seeded; the authors' files too)."""
    checkpoint, authors_weights = open_checkpoint(cfg.ckpt_path, cfg.get("backbone_ckpt"))
    if authors_weights is not None:
        model = build_module(authors_weights.architecture(cfg))
        authors_weights.load_into(model.segmenter)
        return model
    seed_for_build(cfg)
    model = build_module(cfg)
    try:
        model.on_load_checkpoint(checkpoint)
    except CheckpointError as err:  # name the file: the model's check does not know it
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path}: {err}") from err
    return model


def autocast(cfg: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The evaluator's precision: the trainer's mixed precision (bf16-mixed in the paper's GPU runs)."""
    return eval_autocast((cfg.get("trainer") or {}).get("precision"), device)


def _same_size(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive items whose network input and full size agree (one slide-inference batch each)."""
    group: list[dict[str, Any]] = []
    for item in items:
        key = (tuple(item["image"].shape), tuple(item["label"].shape))
        if group and key != (tuple(group[0]["image"].shape), tuple(group[0]["label"].shape)):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


@torch.no_grad()
def predict_domain(
    model: SegmentationModule,
    dataset: LayoutDataset,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    precision: contextlib.AbstractContextManager | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """(sample name, (H, W) uint8 train IDs at the image's full size) for every image of ``dataset``, in order:
    the dataset's test transform, slide inference with ``model.slide``, probabilities resized bilinearly to the full
    size, argmax — ``SegmentationModule._eval_step``'s prediction."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    for items in loader:
        for group in _same_size(items):
            images = torch.stack([item["image"] for item in group]).to(device)
            size = tuple(group[0]["label"].shape[-2:])
            with precision or contextlib.nullcontext():
                probs = model(images, out_size=size)
            preds = probs.argmax(1).to(torch.uint8).cpu().numpy()
            for item, pred in zip(group, preds):
                yield item["name"], pred


def _add(archive: zipfile.ZipFile, member: str, data: bytes) -> None:
    info = zipfile.ZipInfo(member, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def write_submission(cfg: DictConfig) -> Path:
    """Predict the benchmark's test split into ``<output_dir>/<benchmark>_submission.zip``; returns its path."""
    for key, example in (("ckpt_path", "<run dir>/checkpoints/last.ckpt"), ("benchmark", "acdc")):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise SubmissionError(f"{key} is not set\n  fix: add {key}={example} to the command line")
    check_config(cfg)
    plan = plan_submission(cfg)
    batch_size = int(cfg.get("batch_size") or 1)
    if batch_size < 1:
        raise SubmissionError(f"batch_size={batch_size} must be at least 1\n  fix: batch_size=1")
    model = load_model(cfg)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    log.info(
        "%s %s split: %d images of %s -> %s (%s, full-size 8-bit PNGs; slide windows %s)",
        plan.benchmark.key,
        plan.split,
        plan.total,
        ", ".join(f"{d.name} {len(d.members)}" for d in plan.domains),
        plan.zip_path,
        "train IDs" if plan.encoding == "trainid" else "Cityscapes label IDs",
        dict(model.slide),
    )
    written = 0
    with (
        atomic_write(plan.zip_path) as f,
        zipfile.ZipFile(f, "w") as archive,
        tqdm(total=plan.total, desc=plan.benchmark.key, unit="image", disable=None) as bar,
    ):
        for domain in plan.domains:
            predictions = predict_domain(
                model,
                domain.dataset,
                device,
                batch_size,
                int(cfg.get("num_workers") or 0),
                autocast(cfg, device),
            )
            for name, train_ids in predictions:
                _add(archive, domain.members[name], png_bytes(encode(train_ids, plan.encoding)))
                written += 1
                bar.update(1)
    if written != plan.total:  # cannot happen unless a dataset changed under us; the zip would be refused
        raise SubmissionError(f"wrote {written} of {plan.total} predictions into {plan.zip_path}")
    size = plan.zip_path.stat().st_size
    print(f"{plan.zip_path} ({written} predictions, {size / 1e6:.1f} MB): upload it at {plan.benchmark.server}")
    return plan.zip_path


@hydra.main(version_base="1.3", config_path="../conf", config_name="submit")
def main(cfg: DictConfig) -> None:
    write_submission(cfg)


if __name__ == "__main__":
    main()
