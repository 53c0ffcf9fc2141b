"""A checkpoint that cannot be loaded safely is named, sized and explained, and safe loading is never waived."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from src.utils.checkpoint import AtomicCheckpointIO, CheckpointError, atomic_torch_save, safe_torch_load

UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "will likely succeed", "add_safe_globals")


class Custom:
    """A class a checkpoint file of unknown origin might pickle."""

    def __init__(self) -> None:
        self.x = 1


def _message(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert str(path) in message and f"({path.stat().st_size:,} bytes)" in message, message
    assert "fix: point ckpt_path at a checkpoint written by depthforge" in message and "re-create" in message
    for advice in UNSAFE_ADVICE:
        assert advice not in message, message
    return message


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "it is truncated or corrupted (RuntimeError: PytorchStreamReader" in _message(path)


def test_pickled_custom_class_is_refused_without_advising_unsafe_loading(tmp_path: Path) -> None:
    path = tmp_path / "custom.ckpt"
    torch.save({"state_dict": {}, "extra": Custom()}, path)
    with pytest.raises(Exception, match="weights_only"):  # torch's own message does give that advice
        torch.load(path, weights_only=True)
    message = _message(path)
    assert f"a pickled `{Custom.__module__}.Custom` object" in message
    assert "not written by depthforge" in message and "Do not load it with safe loading turned off" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<!DOCTYPE html><html>rate limited</html>", "not a PyTorch checkpoint (its first bytes are b'<!DOCTYPE h"),
        (b"\x89PNG\r\n\x1a\n" + os.urandom(100), "not a PyTorch checkpoint (its first bytes are b'\\x89PNG"),
        (b"", "the file is empty"),
    ],
)
def test_file_that_is_not_a_checkpoint(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    assert expected in _message(path)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is a directory, not a file"):
        safe_torch_load(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.ckpt\n  fix: point ckpt_path"):
        safe_torch_load(tmp_path / "nope.ckpt")


def test_lightning_checkpoint_io_gives_the_same_message(tmp_path: Path) -> None:
    path = tmp_path / "custom.ckpt"
    torch.save({"extra": Custom()}, path)
    with pytest.raises(CheckpointError) as info:
        AtomicCheckpointIO().load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
