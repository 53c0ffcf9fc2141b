"""The paper's Tables 1-7 from training runs or src.eval outputs: ours (mean ± std over seeds), the paper's, and Δ.

    python scripts/results_table.py logs/citys2acdc/multiruns/2026-01-01_00-00-00            # Markdown on stdout
    python scripts/results_table.py logs/gta2citys/multiruns/* --tables 3 6-7 --format latex -o tables.tex
    python scripts/results_table.py logs/eval/runs/*          # src.eval outputs (results.csv) of trained checkpoints

Every folder given is searched for runs: a folder holding `.hydra/config.yaml` (a Hydra run or multirun job). A run's
identity comes from its Hydra record: the experiment (`hydra.runtime.choices`, else `task_name`), the ablation (none
= DepthForge), the visual VFM (`model/backbone`), the recipe, the seed, and any other command-line override (runs
that differ in one are separate rows). Its numbers are the mIoU per target domain: `results.csv` of src.eval (the
training run named by its `ckpt_path` gives the identity when it is there), else the last `val/<domain>/mIoU` of
`csv/version_*/metrics.csv` (`--metric test` reads `test/`). Runs that differ only in the seed are aggregated: mean
± sample standard deviation (n - 1) per column; "Avg" is each run's mean over the setting's averaged domains, then
aggregated. The paper's row and "Δ" (ours − paper) follow each row where docs/method.md records the paper's numbers;
Table 5's "Avg. Gain" is the mean over the four conditions of (row − the REIN row), from the means.

Which runs fill which table: experiment citys2acdc -> Tables 1, 4, 5; citys2bdd_map_gta -> Table 2; gta2citys ->
Tables 3 and 6-7; one table per visual VFM; methods outside a table's rows and other experiments get a plain table.
`--experiment` / `--backbone` read every run as that experiment / VFM (e.g. the CPU smoke runs in Table 1's layout).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from statistics import mean, stdev

from omegaconf import OmegaConf

#: override keys that do not make a run a different configuration (besides those in the run's identity)
IGNORED_OVERRIDES = {
    "seed",
    "experiment",
    "ablation",
    "model/backbone",
    "recipe",
    "ckpt_path",
    "backbone_ckpt",
    "test",
    "train",
    "trainer.devices",
    "trainer.num_nodes",
    "data.num_workers",
}
IGNORED_PREFIXES = ("paths.", "logger", "hydra", "hydra/")

BACKBONES = {"dinov2_l": "DINOv2-L", "eva02_l": "EVA02-L", "clip_l": "CLIP-L", "sam_h": "SAM-H"}
DOMAINS = {
    "citys": "Citys",
    "bdd": "BDD",
    "map": "Map",
    "gta": "GTA",
    "snow": "Snow",
    "night": "Night",
    "fog": "Fog",
    "rain": "Rain",
}
METHODS = {
    "full": "Full",
    "frozen": "Freeze",
    "lora": "+LoRA",
    "adaptformer": "+AdaptFormer",
    "vpt": "+VPT",
    "rein": "REIN",
    "fada": "FADA (our reconstruction)",
    "depthforge": "DepthForge",
}
#: the recipe each ablation selects in the paper experiments (conf/ablation/*.yaml); another one is named in its row
AUTHORS_RECIPE = {"frozen", "full", "lora", "vpt", "adaptformer", "fada"}
BASELINES = ("full", "frozen", "lora", "adaptformer", "vpt", "rein", "fada", "depthforge")
ACDC = ("snow", "night", "fog", "rain")


@dataclass(frozen=True)
class TableSpec:
    key: str
    title: str
    experiment: str
    columns: tuple[str, ...]
    averaged: tuple[str, ...]  # the "Avg" column's domains; () for none
    methods: tuple[str, ...]  # rows, in the paper's order
    labels: dict[str, str] = field(default_factory=dict)  # row names of this table (default: METHODS)
    gain_vs: str | None = None  # Table 5: "Avg. Gain" against this method's row
    params: dict[tuple[str, str], str] = field(default_factory=dict)  # (backbone, method) -> the paper's count


def _params() -> dict[tuple[str, str], str]:
    """Tables 6-7's "Trainable Params*" (backbone side only), as the paper prints them."""
    out = {(b, m): c for b in BACKBONES for m, c in {"frozen": "0.00M", "rein": "2.99M", "depthforge": "2.99M"}.items()}
    out |= {(b, "fada"): "11.65M" for b in BACKBONES}
    out |= {("sam_h", "rein"): "4.51M", ("sam_h", "depthforge"): "4.51M", ("sam_h", "fada"): "16.59M"}
    out |= {("dinov2_l", "full"): "304.20M", ("eva02_l", "full"): "304.24M", ("clip_l", "full"): "304.15M"}
    out |= {("sam_h", "full"): "632.18M", ("dinov2_l", "lora"): "0.79M", ("eva02_l", "lora"): "1.18M"}
    out |= {(b, "adaptformer"): "3.17M" for b in ("dinov2_l", "eva02_l")} | {
        (b, "vpt"): "3.69M" for b in ("dinov2_l", "eva02_l")
    }
    return out


BDD_MAP_GTA = ("bdd", "map", "gta")
CITYS_BDD_MAP = ("citys", "bdd", "map")

TABLES = (
    TableSpec("1", "Cityscapes → ACDC (val)", "citys2acdc", ACDC, ACDC, BASELINES),
    TableSpec("2", "Cityscapes → BDD100K, Mapillary, GTA5", "citys2bdd_map_gta", BDD_MAP_GTA, BDD_MAP_GTA, BASELINES),
    TableSpec("3", "GTA5 → Cityscapes, BDD100K, Mapillary", "gta2citys", CITYS_BDD_MAP, CITYS_BDD_MAP, BASELINES),
    TableSpec(
        "4",
        "ablation of the components, Cityscapes → ACDC",
        "citys2acdc",
        (*ACDC, "bdd", "map"),
        (),
        ("rein", "depth_bias", "prompt_da", "da_only", "drd", "da_ao", "depthforge"),
        {
            "rein": "REIN",
            "depth_bias": "concat",
            "prompt_da": "Prompt Depth Anything",
            "da_only": "Depth Anything V2",
            "drd": "DRD",
            "da_ao": "DA + AO",
            "depthforge": "DepthForge",
        },
    ),
    TableSpec(
        "5",
        "how depth enters the tokens, Cityscapes → ACDC",
        "citys2acdc",
        ACDC,
        (),
        ("rein", "concat", "depth_token", "depth_bias", "config2", "depthforge", "no_scale"),
        {
            "rein": "No Depth",
            "concat": "Concatenation",
            "depth_token": "Depth Token",
            "depth_bias": "Config1",
            "config2": "Config2",
            "depthforge": "Config3 (Ours)",
            "no_scale": "w/o Scale Factor",
        },
        gain_vs="rein",
    ),
    TableSpec(
        "6-7",
        "fine-tuning methods per VFM, GTA5 → Cityscapes, BDD100K, Mapillary",
        "gta2citys",
        ("citys", "bdd", "map"),
        ("citys", "bdd", "map"),
        BASELINES,
        params=_params(),
    ),
)


def _row(values: str, columns: Sequence[str]) -> dict[str, str]:
    return dict(zip(columns, values.split(), strict=True))


#: The paper's numbers for the rows this project implements (Tables 1-7; the other methods of Tables 1-3 are not
#: reimplemented here). A cell without a number prints "—".
#: (table, backbone, method) -> {domain: value as printed}
PAPER: dict[tuple[str, str, str], dict[str, str]] = {
    ("1", "dinov2_l", "rein"): _row("70.6 55.9 79.5 72.5", ACDC),
    ("1", "dinov2_l", "fada"): _row("73.5 57.4 80.2 75.0", ACDC),
    ("1", "dinov2_l", "depthforge"): _row("75.4 60.4 81.2 75.4", ACDC),
    ("2", "dinov2_l", "rein"): _row("63.54 74.03 62.41", ("bdd", "map", "gta")),
    ("2", "dinov2_l", "fada"): _row("65.12 75.86 63.78", ("bdd", "map", "gta")),
    ("2", "dinov2_l", "depthforge"): _row("66.19 75.93 67.24", ("bdd", "map", "gta")),
    ("3", "dinov2_l", "rein"): _row("66.40 60.40 66.10", ("citys", "bdd", "map")),
    ("3", "dinov2_l", "fada"): _row("68.23 61.94 68.09", ("citys", "bdd", "map")),
    ("3", "dinov2_l", "depthforge"): _row("69.04 62.82 69.22", ("citys", "bdd", "map")),
    **{
        ("4", backbone, method): _row(values, (*ACDC, "bdd", "map"))
        for backbone, rows in {
            "dinov2_l": {
                "rein": "70.6 55.9 79.5 72.5 63.5 74.0",
                "depth_bias": "70.8 56.1 79.4 72.8 63.6 74.2",
                "prompt_da": "70.4 55.5 79.7 72.0 63.8 73.9",
                "da_only": "71.5 56.7 80.5 73.3 64.4 74.5",
                "drd": "72.0 57.2 80.7 74.0 64.9 74.8",
                "da_ao": "72.2 57.4 80.9 74.2 65.1 75.0",
                "depthforge": "75.4 60.4 81.2 75.4 66.2 76.0",
            },
            "eva02_l": {
                "rein": "66.0 52.1 76.0 69.5 60.0 70.0",
                "depth_bias": "66.3 52.2 76.2 69.8 60.2 70.2",
                "prompt_da": "65.8 52.4 75.5 69.3 60.4 69.9",
                "da_only": "67.2 53.0 77.0 70.2 60.9 70.8",
                "drd": "67.7 53.5 77.6 70.7 61.2 71.0",
                "da_ao": "67.9 53.7 77.8 70.9 61.5 71.2",
                "depthforge": "69.5 54.5 78.5 72.0 62.0 73.0",
            },
        }.items()
        for method, values in rows.items()
    },
    # Tables 6-7 (GTA5 -> Cityscapes, BDD100K, Mapillary); Table 7's style-augmentation rows (AdvStyle, PASTA,
    # GTR-LTR) have no implementation here
    **{
        ("6-7", backbone, method): _row(values, ("citys", "bdd", "map"))
        for backbone, rows in {
            "clip_l": {
                "full": "51.3 47.6 54.3",
                "frozen": "53.7 48.7 55.0",
                "rein": "57.1 54.7 60.5",
                "fada": "58.7 55.8 62.1",
                "depthforge": "59.7 57.0 63.5",
            },
            "sam_h": {
                "full": "57.6 51.7 61.5",
                "frozen": "57.0 47.1 58.4",
                "rein": "59.6 52.0 62.1",
                "fada": "61.0 53.2 63.4",
                "depthforge": "63.3 55.5 65.1",
            },
            "eva02_l": {
                "full": "62.1 56.2 64.6",
                "frozen": "56.5 53.6 58.6",
                "lora": "55.5 52.7 58.3",
                "adaptformer": "63.7 59.9 64.2",
                "vpt": "62.2 57.7 62.5",
                "rein": "65.3 60.5 64.9",
                "fada": "66.7 61.9 66.1",
                "depthforge": "68.0 61.7 67.5",
            },
            "dinov2_l": {
                "full": "63.7 57.4 64.2",
                "frozen": "63.3 56.1 63.9",
                "lora": "65.2 58.3 64.6",
                "adaptformer": "64.9 59.0 64.2",
                "vpt": "65.2 59.4 65.5",
                "rein": "66.4 60.4 66.1",
                "fada": "68.2 62.0 68.1",
                "depthforge": "69.0 62.8 69.2",
            },
        }.items()
        for method, values in rows.items()
    },
    **{
        ("5", "dinov2_l", method): _row(values, ACDC)
        for method, values in {
            "rein": "70.6 55.9 79.5 72.5",
            "concat": "69.8 55.0 78.3 71.2",
            "depth_token": "72.3 57.8 80.7 74.0",
            "depth_bias": "70.8 56.1 79.4 72.8",
            "config2": "71.5 56.8 80.1 73.0",
            "depthforge": "75.4 60.4 81.2 75.4",
            "no_scale": "74.8 59.3 80.9 74.8",
        }.items()
    },
}


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    path: Path
    experiment: str
    backbone: str
    method: str
    recipe: str | None
    seed: int | None
    extras: tuple[str, ...]
    miou: dict[str, float]
    mean_domains: tuple[str, ...] = ()

    @property
    def group(self) -> tuple:
        return (self.experiment, self.backbone, self.method, self.recipe, self.extras)


def _load(path: Path):
    return OmegaConf.load(path) if path.is_file() else None


def _select(cfg, key: str):
    """A value of a saved (unresolved) run config, or None where it is missing or cannot be resolved offline."""
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an interpolation needing Hydra's resolvers
        return None


def _identity(run_dir: Path) -> dict:
    """Experiment, backbone, method, recipe, seed and other overrides from a run's `.hydra` record."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_cfg = _load(run_dir / ".hydra" / "hydra.yaml")
    choices = dict(hydra_cfg.hydra.runtime.choices) if hydra_cfg is not None else {}
    overrides = _load(run_dir / ".hydra" / "overrides.yaml")
    overrides = list(overrides) if overrides is not None else []
    method = choices.get("ablation")
    if method is None:
        adapter, decoder = choices.get("model/adapter", "depthforge"), choices.get("model/decoder", "drd")
        method = "depthforge" if (adapter, decoder) == ("depthforge", "drd") else f"adapter={adapter},decoder={decoder}"
    backbone = choices.get("model/backbone") or _select(cfg, "model.segmenter.visual_backbone.model_name") or "?"
    extras = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key not in IGNORED_OVERRIDES and not key.startswith(IGNORED_PREFIXES):
            extras.append(item.lstrip("+"))
    seed = _select(cfg, "seed")
    mean_domains = _select(cfg, "data.mean_domains")
    return {
        "experiment": choices.get("experiment") or _select(cfg, "task_name") or "?",
        "backbone": str(backbone),
        "method": str(method),
        "recipe": _select(cfg, "recipe"),
        "seed": None if seed is None else int(seed),
        "extras": tuple(sorted(extras)),
        "mean_domains": tuple(mean_domains) if mean_domains is not None else (),
    }


def _from_metrics_csv(run_dir: Path, stage: str) -> dict[str, float]:
    """The last logged `<stage>/<domain>/mIoU` of every domain over all `csv/version_*` logs (resumed runs)."""
    pattern = re.compile(rf"^{stage}/([^/]+)/mIoU$")
    latest: dict[str, tuple[int, int, float]] = {}
    for order, path in enumerate(sorted(run_dir.glob("csv/version_*/metrics.csv"), key=_version)):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row.get("step") or 0))
                for key, value in row.items():
                    match = pattern.match(key or "")
                    if match and value not in (None, "") and (step, order) >= latest.get(match[1], (-1, -1))[:2]:
                        latest[match[1]] = (step, order, float(value))
    return {domain: value for domain, (_, _, value) in latest.items()}


def _version(path: Path) -> int:
    return int(path.parent.name.split("_")[-1]) if path.parent.name.split("_")[-1].isdigit() else -1


def _from_results_csv(path: Path) -> dict[str, float]:
    """src.eval's per-domain rows (the last row, the mean, is recomputed here)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["domain"]: float(r["mIoU"]) for r in rows if not r["domain"].startswith("mean(") and r.get("mIoU")}


def read_runs(folders: Iterable[Path], stage: str = "val") -> list[Run]:
    """Every run under ``folders``; an src.eval output replaces the training run its checkpoint came from."""
    found: dict[Path, Run] = {}
    for folder in folders:
        for config in sorted(Path(folder).rglob("config.yaml")):
            if config.parent.name != ".hydra":
                continue
            run_dir = config.parent.parent
            results = run_dir / "results.csv"
            if results.is_file():  # src.eval: numbers here, identity from the training run when it is there
                miou = _from_results_csv(results)
                ckpt = OmegaConf.load(config).get("ckpt_path")
                trained = Path(str(ckpt)).parent.parent if ckpt else None
                source = trained if trained and (trained / ".hydra" / "config.yaml").is_file() else run_dir
                found[source.resolve()] = Run(run_dir, **_identity(source), miou=miou)
            else:
                miou = _from_metrics_csv(run_dir, stage)
                if not miou:
                    continue
                key = run_dir.resolve()
                if key in found and (found[key].path / "results.csv").is_file():
                    continue  # an evaluation of this run was read already
                found[key] = Run(run_dir, **_identity(run_dir), miou=miou)
    return list(found.values())


# --------------------------------------------------------------------------- aggregation


@dataclass
class Cell:
    values: list[float]

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float | None:
        return stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Row:
    label: str
    method: str
    n: int
    cells: dict[str, Cell]  # column -> values over runs
    paper: dict[str, Decimal]
    param: str | None = None
    config: tuple = ()  # (recipe, other overrides): rows of one configuration compare with each other
    plain: bool = True  # no recipe or override named in the label


def _paper_avg(paper: dict[str, Decimal], averaged: Sequence[str]) -> Decimal | None:
    if averaged and all(d in paper for d in averaged):
        total = sum((paper[d] for d in averaged), Decimal(0)) / len(averaged)
        return total.quantize(Decimal("0.01"), ROUND_HALF_UP)
    return None


def build_rows(spec: TableSpec, backbone: str, runs: list[Run], all_runs: list[Run]) -> list[Row]:
    """One row per configuration (runs that differ only in the seed), in the table's method order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    common = set.intersection(*(set(r.extras) for r in all_runs)) if all_runs else set()
    order = {m: i for i, m in enumerate(spec.methods)}
    rows = []
    for group, members in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][2], len(order)), len(kv[0][4]), str(kv[0]))
    ):
        _, _, method, recipe, extras = group
        label = spec.labels.get(method) or METHODS.get(method, method)
        default_recipe = "authors" if method in AUTHORS_RECIPE else "paper"
        notes = ([f"recipe={recipe}"] if recipe is not None and recipe != default_recipe else []) + [
            e for e in extras if e not in common
        ]
        if notes:
            label = f"{label} [{', '.join(notes)}]"
        cells = {}
        for column in spec.columns:
            values = [r.miou[column] for r in members if column in r.miou]
            if values:
                cells[column] = Cell(values)
        if spec.averaged:
            avgs = [mean(r.miou[d] for d in spec.averaged) for r in members if all(d in r.miou for d in spec.averaged)]
            if avgs:
                cells["avg"] = Cell(avgs)
        paper = {d: Decimal(v) for d, v in PAPER.get((spec.key, backbone, method), {}).items()}
        paper_avg = _paper_avg(paper, spec.averaged)
        if paper_avg is not None:
            paper["avg"] = paper_avg
        param = spec.params.get((backbone, method))
        rows.append(Row(label, method, len(members), cells, paper, param, (recipe, extras), not notes))
    return rows


# --------------------------------------------------------------------------- formatting


def _fmt(value: Decimal | float) -> str:
    """Ours with 2 decimals; the paper's as printed, or to 2 decimals (half up) where computed from its numbers."""
    if isinstance(value, Decimal):
        return str(value) if -value.as_tuple().exponent <= 2 else str(value.quantize(Decimal("0.01"), ROUND_HALF_UP))
    return f"{value:.2f}"


def _signed(value: Decimal | float) -> str:
    if isinstance(value, Decimal):
        return f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP):+}"
    return f"{value:+.2f}"


@dataclass
class Rendered:
    title: str
    header: list[str]
    body: list[list[str]]  # cells; "±" separates mean and std, "—" is empty


def render(spec: TableSpec, backbone: str, rows: list[Row]) -> Rendered:
    columns = list(spec.columns) + (["avg"] if spec.averaged else [])
    header = ["Method"] + (["Params (paper)"] if spec.params else []) + ["Runs"]
    header += [DOMAINS.get(c, c) if c != "avg" else "Avg" for c in columns]
    if spec.gain_vs:
        header.append("Avg. Gain")
    bases = [r for r in rows if r.method == spec.gain_vs]
    base_paper = PAPER.get((spec.key, backbone, spec.gain_vs), {}) if spec.gain_vs else {}
    body = []
    for row in rows:
        ours = [row.label] + ([row.param or "—"] if spec.params else []) + [str(row.n)]
        paper = [f"{row.label} (paper)"] + ([""] if spec.params else []) + [""]
        delta = [f"{row.label} (Δ)"] + ([""] if spec.params else []) + [""]
        for column in columns:
            cell = row.cells.get(column)
            if cell is None:
                ours.append("—")
            else:
                text = _fmt(cell.mean) + (f" ± {_fmt(cell.std)}" if cell.std is not None else "")
                ours.append(text + (f" (n={len(cell.values)})" if len(cell.values) != row.n else ""))
            p = row.paper.get(column)
            paper.append(_fmt(p) if p is not None else "—")
            delta.append(_signed(cell.mean - float(p)) if cell is not None and p is not None else "—")
        if spec.gain_vs:
            # against the REIN row of the same configuration, else the plain one
            base = next((b for b in bases if b.config == row.config), next((b for b in bases if b.plain), None))
            gain = _gain(row, base, spec.columns)
            paper_gain = _paper_gain(row.paper, base_paper, spec.columns)
            ours.append(_signed(gain) if gain is not None else "—")
            paper.append(_signed(paper_gain) if paper_gain is not None else "—")
            delta.append(_signed(gain - float(paper_gain)) if gain is not None and paper_gain is not None else "—")
        body.append(ours)
        if any(k != "avg" for k in row.paper):
            body += [paper, delta]
    vfm = BACKBONES.get(backbone, backbone)
    return Rendered(f"Table {spec.key}: {spec.title}, {vfm} — mIoU (%)", header, body)


def _gain(row: Row, base: Row | None, columns: Sequence[str]) -> float | None:
    if base is None or not all(c in row.cells and c in base.cells for c in columns):
        return None
    return mean(row.cells[c].mean - base.cells[c].mean for c in columns)


def _paper_gain(paper: dict[str, Decimal], base: dict[str, str], columns: Sequence[str]) -> Decimal | None:
    if not all(c in paper and c in base for c in columns):
        return None
    return sum((paper[c] - Decimal(base[c]) for c in columns), Decimal(0)) / len(columns)


def plain_table(experiment: str, backbone: str, runs: list[Run], all_runs: list[Run]) -> Rendered:
    """Runs outside the paper's tables: every domain they logged, and Avg over the experiment's averaged domains."""
    known = list(DOMAINS)
    domains = sorted({d for r in runs for d in r.miou}, key=lambda d: (known.index(d) if d in known else len(known), d))
    averaged = {r.mean_domains for r in runs}
    spec = TableSpec("", "", experiment, tuple(domains), averaged.pop() if len(averaged) == 1 else (), ())
    rendered = render(spec, backbone, build_rows(spec, backbone, runs, all_runs))
    rendered.title = f"experiment={experiment}, {BACKBONES.get(backbone, backbone)} — mIoU (%)"
    return rendered


def to_markdown(tables: list[Rendered]) -> str:
    out = []
    for t in tables:
        out += [f"### {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        out += ["| " + " | ".join(row) + " |" for row in t.body]
        out.append("")
    return "\n".join(out)


def _latex_cell(text: str) -> str:
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    text = re.sub(r"(?<![\w.])([-+])(?=\d)", r"$\1$", text)
    return text.replace(" ± ", r" $\pm$ ").replace("Δ", r"$\Delta$").replace("—", "--").replace("→", r"$\to$")


def to_latex(tables: list[Rendered]) -> str:
    out = ["% \\usepackage{booktabs}; generated by scripts/results_table.py"]
    for t in tables:
        spec = "l" + "r" * (len(t.header) - 1)
        out += [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_latex_cell(t.title)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_latex_cell(h) for h in t.header) + " \\\\",
            "\\midrule",
        ]
        out += [" & ".join(_latex_cell(c) for c in row) + " \\\\" for row in t.body]
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def _backbone_order(backbone: str) -> tuple[int, str]:
    known = list(BACKBONES)
    return (known.index(backbone) if backbone in known else len(known), backbone)


def build_tables(runs: list[Run], keys: Sequence[str] | None = None) -> list[Rendered]:
    """The paper's tables that have runs (all of them, or ``keys``), then plain tables for the other runs."""
    tables, placed = [], set()
    for spec in TABLES:
        if keys and spec.key not in keys:
            continue
        mine = [r for r in runs if r.experiment == spec.experiment and r.method in spec.methods]
        for backbone in sorted({r.backbone for r in mine}, key=_backbone_order):
            selected = [r for r in mine if r.backbone == backbone]
            tables.append(render(spec, backbone, build_rows(spec, backbone, selected, runs)))
            placed.update(id(r) for r in selected)
    if not keys:
        rest = [r for r in runs if id(r) not in placed]
        for experiment, backbone in sorted({(r.experiment, r.backbone) for r in rest}):
            selected = [r for r in rest if (r.experiment, r.backbone) == (experiment, backbone)]
            tables.append(plain_table(experiment, backbone, selected, runs))
    return tables


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="multirun / run / src.eval output folders")
    parser.add_argument("--tables", nargs="+", choices=[t.key for t in TABLES], help="only these (default: all)")
    parser.add_argument("--format", choices=["markdown", "latex"], default="markdown")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--metric", choices=["val", "test"], default="val", help="which logged mIoU of a training run")
    parser.add_argument("--experiment", help="read every run as this experiment (e.g. citys2acdc)")
    parser.add_argument("--backbone", help="read every run as this visual VFM (e.g. dinov2_l)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.exists()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    runs = read_runs(args.folders, args.metric)
    if not runs:
        where = ", ".join(map(str, args.folders))
        parser.error(
            f"no run with mIoU under {where} (expected .hydra/config.yaml with csv/version_*/metrics.csv or "
            "results.csv)"
        )
    for run in runs:
        run.experiment = args.experiment or run.experiment
        run.backbone = args.backbone or run.backbone
    tables = build_tables(runs, args.tables)
    text = to_latex(tables) if args.format == "latex" else to_markdown(tables)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"wrote {len(tables)} tables from {len(runs)} runs to {args.output}")
    else:
        print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
