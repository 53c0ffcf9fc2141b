"""Wrong-typed config values fail before anything is built, naming the key, the value, the type and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from omegaconf import OmegaConf

from src.eval import evaluate
from src.models.backbones.visual import VisualBackbone
from src.train import train
from src.utils.instantiate import ConfigTypeError, check_config, config_type_problems, instantiate_checked
from tests.conftest import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[2]
HERE = __name__

CASES = {
    "trainer.max_steps=abc": (
        "trainer.max_steps='abc': lightning.pytorch.Trainer expects max_steps to be int\n"
        "    fix: give it a whole number, e.g. trainer.max_steps=40000"
    ),
    "model.optimizer.lr=1e-4x": (
        "model.optimizer.lr='1e-4x': torch.optim.AdamW expects lr to be float or Tensor\n"
        "    fix: give it a number, e.g. model.optimizer.lr=1e-4"
    ),
    "data.batch_size=2.5": (
        "data.batch_size=2.5: src.data.datamodule.DGDataModule expects batch_size to be int\n"
        "    fix: give it a whole number, e.g. data.batch_size=2"
    ),
}


@pytest.fixture(autouse=True)
def nothing_heavy_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check must come first: building a backbone here means it came too late."""

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was built before the config check")

    monkeypatch.setattr(VisualBackbone, "_build", staticmethod(refuse))


@pytest.mark.parametrize("override", CASES)
def test_wrong_type_on_the_command_line(override: str, tmp_path: Path) -> None:
    cfg = compose_config(["experiment=smoke", override], tmp_path)
    with pytest.raises(ConfigTypeError) as info:
        check_config(cfg)
    assert str(info.value) == (
        "a config value does not fit the type its target expects (checked before anything is built):\n  "
        + CASES[override]
    )
    with pytest.raises(ConfigTypeError, match="fix: give it"):
        train(cfg)  # the entry function fails the same way, before any model is built


def test_eval_checks_before_building(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=smoke", "ckpt_path=x.ckpt", "trainer.max_steps=abc"], tmp_path, "eval")
    with pytest.raises(ConfigTypeError, match=r"trainer.max_steps='abc'"):
        evaluate(cfg)


def test_all_problems_are_reported_at_once_and_interpolations_name_their_source(tmp_path: Path) -> None:
    overrides = ["seed=abc", "trainer.precision=33", "model.optimizer.betas=[0.9,x]", "+trainer.max_step=4"]
    problems = config_type_problems(compose_config(["experiment=smoke", *overrides], tmp_path))
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "data.seed='abc' (from ${seed}): src.data.datamodule.DGDataModule expects seed to be int" in text
    assert "fix: give it a whole number, e.g. seed=0" in text
    assert "trainer.precision=33" in text and "e.g. trainer.precision=32" in text
    assert "model.optimizer.betas[1]='x'" in text and "e.g. model.optimizer.betas=[0.9,0.999]" in text
    assert "trainer.max_step: lightning.pytorch.Trainer takes no parameter 'max_step'" in text
    assert "fix: rename it to trainer.max_steps" in text


def test_every_shipped_config_passes(tmp_path: Path) -> None:
    """No false alarm: each experiment alone and with each ablation, and each model/trainer/logger choice."""
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    ablations = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))
    runs = [[f"experiment={e}"] for e in experiments]
    runs += [["experiment=smoke", f"ablation={a}"] for a in ablations] + [["experiment=minidg", "ablation=rein"]]
    for group in ("model/backbone", "model/depth", "model/adapter", "model/decoder", "model/head", "trainer", "logger"):
        runs += [[f"{group}={p.stem}"] for p in sorted((CONF_DIR / group).glob("*.yaml"))]
    for overrides in runs:
        assert config_type_problems(compose_config(overrides, tmp_path)) == [], overrides
    for e in experiments:
        assert config_type_problems(compose_config([f"experiment={e}", "ckpt_path=x"], tmp_path, "eval")) == []


# --- the check on its own, with a target of this module ----------------------------------------------------------


def target(
    a: int,
    b: float = 1.0,
    c: int | None = None,
    d: Literal["x", "y"] = "x",
    e: list[int] | None = None,
    f: dict[str, float] | None = None,
    g: str = "s",
    h: bool = False,
    i=3,
    j: tuple[float, float] = (0.5, 0.5),
) -> dict:
    return dict(a=a, b=b, c=c, d=d, e=e, f=f, g=g, h=h, i=i, j=j)


def _problems(**values) -> list[str]:
    return config_type_problems(OmegaConf.create({"_target_": f"{HERE}.target", **values}), "node")


@pytest.mark.parametrize(
    "values",
    [
        {"a": 3},
        {"a": 3.0},  # a whole float may well be meant as an int
        {"a": "12"},  # a numeric string (e.g. from ${oc.env:...}) is left to the target
        {"b": 1, "c": None, "d": "y", "e": [1, 2], "f": {"k": 1}, "g": 5, "h": True, "i": "7", "j": [1, 2.5]},
        {"a": "${missing.key}"},  # unresolvable here: not judged
        {"a": "???"},
        {"_partial_": True},  # a partial may leave required parameters out
    ],
)
def test_values_that_may_be_right_pass(values: dict) -> None:
    assert _problems(**values) == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": "abc"}, "node.a='abc': tests.reliability.test_config_types.target expects a to be int"),
        ({"a": 2.5}, "fix: give it a whole number, e.g. node.a=2"),
        ({"b": "1e-4x"}, "fix: give it a number, e.g. node.b=1e-4"),
        ({"c": "none"}, "node.c='none'"),
        ({"d": "z"}, "expects d to be one of 'x', 'y'"),
        ({"e": ["a"]}, "node.e[0]='a'"),
        ({"e": 3}, "expects e to be list[int] or null"),
        ({"f": {"k": "v"}}, "node.f.k='v'"),
        ({"h": "yes"}, "fix: give it true or false, e.g. node.h=true"),
        ({"i": "seven"}, "fix: give it a number, e.g. node.i=3"),
        ({"j": [0.5]}, "expects j to be tuple[float, float]"),
        ({"zz": 1}, "node.zz: tests.reliability.test_config_types.target takes no parameter 'zz'"),
    ],
)
def test_values_that_cannot_be_right_are_named(values: dict, expected: str) -> None:
    problems = _problems(**{"a": 1, **values})
    assert len(problems) == 1 and expected in problems[0], problems


def test_partial_nested_and_listed_targets_and_interpolations() -> None:
    cfg = OmegaConf.create(
        {
            "source": "abc",
            "outer": {
                "_target_": f"{HERE}.target",
                "_partial_": True,  # a partial may leave required parameters out
                "f": {"k": 1.0},
                "e": None,
            },
            "group": {"one": {"_target_": f"{HERE}.target", "a": "${source}"}},
            "items": [{"_target_": f"{HERE}.target", "a": 1, "b": "x"}],
            "elsewhere": {"_target_": "not_imported_package.fn", "a": "whatever"},  # never imported, not judged
        }
    )
    problems = config_type_problems(cfg)
    assert len(problems) == 2, problems
    assert problems[0].startswith("group.one.a='abc' (from ${source})") and "e.g. source=40000" in problems[0]
    assert problems[1].startswith("items[0].b='x'")
    assert "not_imported_package" not in sys.modules


def test_instantiate_checked_builds_a_valid_node() -> None:
    node = OmegaConf.create({"_target_": f"{HERE}.target", "a": 2, "e": [1]})
    assert instantiate_checked(node, "node")["e"] == [1]
    with pytest.raises(ConfigTypeError, match="node.a='two'"):
        instantiate_checked(OmegaConf.create({"_target_": f"{HERE}.target", "a": "two"}), "node")


def test_wrong_type_through_the_real_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "src.train", "experiment=smoke", "data.batch_size=2.5"]
    cmd += [f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert CASES["data.batch_size=2.5"] in proc.stderr
    assert "Traceback" not in proc.stderr and "TypeError" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "data").exists()
