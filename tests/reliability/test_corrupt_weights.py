"""Damaged weight files (case: truncated downloads and copies) fail with the file, its size and the fix.

Tiny real weight files are written into tmp dirs, then cut or overwritten; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from src.models.backbones.depth import DepthBackbone
from src.models.backbones.visual import VisualBackbone
from src.models.weights import CorruptWeightsError, MissingWeightsError, weight_file_problem
from tests.models.test_backbones import TINY, TINY_DEPTH

NAME = "vit_large_patch14_dinov2"
HUB_NAME = "vit_large_patch14_dinov2.lvd142m"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False, num_classes=0, img_size=64, patch_size=16, **TINY).state_dict()


def _write(path: Path, suffix: str) -> bytes:
    state = _tiny_state()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    return path.read_bytes()


def _damage(path: Path, data: bytes, how: str) -> None:
    path.write_bytes({"half": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(300)}[how])


def _assert_names_file_and_fix(message: str, path: Path, fetch: str) -> None:
    assert f"{path} ({path.stat().st_size:,} bytes) is corrupt or truncated" in message, message
    assert f"scripts/download_weights.py {fetch}" in message and "fix:" in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("how", ["half", "empty", "garbage"])
def test_damaged_local_checkpoint_names_file_size_and_fix(tmp_path: Path, suffix: str, how: str) -> None:
    path = tmp_path / f"dinov2{suffix}"
    _damage(path, _write(path, suffix), how)
    with pytest.raises(CorruptWeightsError) as info:
        VisualBackbone(NAME, checkpoint_path=str(path), img_size=64, model_kwargs=TINY)
    message = str(info.value)
    _assert_names_file_and_fix(message, path, f"--timm {NAME}")
    assert "checkpoint_path" in message and info.value.__cause__ is not None
    if how == "empty":
        assert "the file is empty" in message
    if how == "half" and suffix == ".safetensors":
        assert f"it has {path.stat().st_size:,} of the" in message and "bytes its header describes" in message


def test_intact_weight_files_have_no_problem(tmp_path: Path) -> None:
    for suffix in (".safetensors", ".pth"):
        path = tmp_path / f"w{suffix}"
        _write(path, suffix)
        assert weight_file_problem(path) is None


def test_directory_as_checkpoint_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="a directory, not a weight file"):
        VisualBackbone(NAME, checkpoint_path=str(tmp_path), img_size=64, model_kwargs=TINY)


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("da")
    torch.manual_seed(0)
    DepthBackbone(config=TINY_DEPTH).model.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors"}
    return folder


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("how", ["half", "empty"])
def test_damaged_save_pretrained_directory(depth_dir: Path, tmp_path: Path, file: str, how: str) -> None:
    folder = tmp_path / "da"
    folder.mkdir()
    for p in depth_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    _damage(folder / file, (folder / file).read_bytes(), how)
    with pytest.raises(CorruptWeightsError) as info:
        DepthBackbone(pretrained=str(folder))
    message = str(info.value)
    _assert_names_file_and_fix(message, folder / file, "--hf <hub id>")
    assert "copy the complete directory again" in message
    other = "config.json" if file == "model.safetensors" else "model.safetensors"
    assert (folder / other).read_bytes() == (depth_dir / other).read_bytes()  # only reads, never writes


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A hub cache entry as huggingface_hub lays it out: refs/main -> snapshots/<sha>/<files>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    sha = "0" * 40
    snapshot = root / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(sha)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_truncated_file_in_the_timm_hub_cache(offline: None, tmp_path: Path) -> None:
    data = _write(tmp_path / "w.safetensors", ".safetensors")
    snapshot = _fake_hub_cache(tmp_path / "hub", f"timm/{HUB_NAME}", {"model.safetensors": data[: len(data) // 2]})
    with pytest.raises(CorruptWeightsError) as info:
        VisualBackbone(HUB_NAME, pretrained=True, img_size=64, model_kwargs=TINY, cache_dir=str(tmp_path / "hub"))
    message = str(info.value)
    _assert_names_file_and_fix(message, snapshot / "model.safetensors", f"--timm {HUB_NAME}")
    assert f"delete the damaged cache entry {snapshot.parents[1]}" in message


def test_truncated_file_in_the_hf_hub_cache(offline: None, depth_dir: Path, tmp_path: Path) -> None:
    files = {p.name: p.read_bytes() for p in depth_dir.iterdir()}
    files["model.safetensors"] = files["model.safetensors"][:1000]
    snapshot = _fake_hub_cache(tmp_path / "hub", "org/tiny-depth", files)
    with pytest.raises(CorruptWeightsError) as info:
        DepthBackbone(pretrained="org/tiny-depth", cache_dir=str(tmp_path / "hub"))
    _assert_names_file_and_fix(str(info.value), snapshot / "model.safetensors", "--hf org/tiny-depth")
