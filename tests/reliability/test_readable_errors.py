"""Our errors reach the user as readable text through Hydra: no repr with literal \\n, no traceback, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import CompactHydraException, InstantiationException
from omegaconf import OmegaConf

from src.models.weights import CorruptWeightsError, MissingWeightsError, missing_weights
from src.predict import PredictionError
from src.utils.checkpoint import CheckpointError, UserError
from src.utils.instantiate import ConfigTypeError, instantiate_checked

ROOT = Path(__file__).resolve().parents[2]
TWO_LINES = "first line\n  second line: the fix"


def fail_with(kind: str) -> None:
    """A config target that raises a two-line error (``kind``: ours or a third-party ValueError)."""
    raise (MissingWeightsError(TWO_LINES) if kind == "ours" else ValueError(TWO_LINES))


@pytest.mark.parametrize(
    "error_type", [MissingWeightsError, CorruptWeightsError, CheckpointError, ConfigTypeError, PredictionError]
)
def test_every_user_error_is_compact_and_reprs_as_text(error_type: type[UserError]) -> None:
    err = error_type(TWO_LINES)
    assert isinstance(err, UserError) and isinstance(err, CompactHydraException)
    assert repr(err) == f"{error_type.__name__}: {TWO_LINES}" and "\\n" not in repr(err)
    assert str(err) == TWO_LINES


@pytest.mark.parametrize("kind", ["ours", "third-party"])
def test_error_inside_instantiate_reads_as_text(kind: str) -> None:
    node = OmegaConf.create({"_target_": f"{__name__}.fail_with", "kind": kind})
    with pytest.raises(InstantiationException) as info:
        instantiate_checked(node, "model.part")
    message = str(info.value)
    assert TWO_LINES in message and "\\n" not in message, message
    assert isinstance(info.value.__cause__, MissingWeightsError if kind == "ours" else ValueError)


def test_missing_weights_message_keeps_its_lines() -> None:
    err = missing_weights("timm model 'x'", "the hub (timm/x)", "--timm x", "offline", None)
    assert "\\n" not in repr(err) and repr(err).count("\n") == 3


def test_missing_weights_through_the_real_entry_point(tmp_path: Path) -> None:
    """`python -m src.train experiment=smoke model/backbone=dinov2_l` offline with an empty hub cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "experiment=smoke",
        "model/backbone=dinov2_l",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr
    assert "MissingWeightsError: cannot load the weights of timm model 'vit_large_patch14_dinov2.lvd142m'" in err
    assert f"\n  looked in: {tmp_path / 'hub'} (hub offline mode: on)\n" in err
    assert "\n  fix: on a machine with internet run `python scripts/download_weights.py --timm" in err
    assert "full_key: model.segmenter.visual_backbone" in err
    assert "\\n" not in err and "Traceback" not in err and 'MissingWeightsError("' not in err
    assert not (tmp_path / "hub").exists() and not (tmp_path / "run" / "checkpoints").exists()
