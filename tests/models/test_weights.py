"""Weight loading without a network: local checkpoints, save_pretrained directories, offline hub misses, CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from transformers import AutoModelForDepthEstimation

from src.models.backbones.depth import DepthBackbone
from src.models.backbones.visual import VisualBackbone
from src.models.weights import MissingWeightsError, hub_offline, timm_weight_source
from tests.models.test_backbones import TINY, TINY_DEPTH

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_weights.py"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode as a compute node sets it; huggingface_hub read the variable at import, so patch it too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", ["vit_large_patch14_dinov2", "eva02_large_patch14_448"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_is_resampled_to_patch16(name: str, suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model(name, num_classes=0, img_size=56, patch_size=14, **TINY)  # grid 4, like 518/14
    state = source.state_dict()
    path = tmp_path / f"tiny{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    bb = VisualBackbone(name, checkpoint_path=str(path), img_size=128, patch_size=16, model_kwargs=TINY)
    loaded = bb.model.state_dict()
    torch.testing.assert_close(
        loaded["patch_embed.proj.weight"], resample_patch_embed(state["patch_embed.proj.weight"], [16, 16])
    )
    assert loaded["pos_embed"].shape == (1, 1 + 8 * 8, 64)
    torch.testing.assert_close(loaded["pos_embed"], resample_abs_pos_embed(state["pos_embed"], [8, 8]))
    blocks = [k for k in state if k.startswith("blocks.")]
    assert blocks and all(torch.equal(loaded[k], state[k]) for k in blocks)
    assert all(not p.requires_grad for p in bb.parameters())


def test_sam_checkpoint_loads_at_native_size_and_runs_at_any_size(tmp_path: Path, monkeypatch) -> None:
    sam = {"window_size": 2, "global_attn_indexes": (1,)}
    source = timm.create_model("samvit_huge_patch16", num_classes=0, img_size=64, **TINY, **sam)
    path = tmp_path / "sam.safetensors"
    save_file(source.state_dict(), path)
    built_with = []
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: built_with.append(kw) or create(name, **kw))

    native = {"img_size": 64}  # stands in for SAM-H's native 1024, which a real checkpoint would get by default
    bb = VisualBackbone(
        "samvit_huge_patch16", checkpoint_path=str(path), img_size=512, model_kwargs=TINY | sam | native
    )
    assert built_with[0]["img_size"] == 64 and "dynamic_img_size" not in built_with[0]
    assert all(torch.equal(bb.model.state_dict()[k], v) for k, v in source.state_dict().items())
    maps = bb(torch.randn(1, 3, 32, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(8, 24), (4, 12), (2, 6), (1, 3)]

    with pytest.raises(RuntimeError, match="size mismatch"):  # timm's SAM filter does not resample (docs/method.md L2)
        VisualBackbone("samvit_huge_patch16", checkpoint_path=str(path), img_size=64, model_kwargs=TINY | sam)
    assert "img_size" not in built_with[1]  # img_size=64 was not forced onto the native-1024 build


def test_missing_local_checkpoint_names_model_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "dinov2_vitl14.safetensors"
    with pytest.raises(MissingWeightsError) as info:
        VisualBackbone("vit_large_patch14_dinov2", checkpoint_path=str(missing), img_size=64, model_kwargs=TINY)
    message = str(info.value)
    assert "vit_large_patch14_dinov2" in message and str(missing) in message and "no such file" in message
    assert "scripts/download_weights.py --timm vit_large_patch14_dinov2" in message


def test_offline_timm_hub_miss_says_how_to_fetch(offline: None, tmp_path: Path) -> None:
    name = "vit_large_patch14_dinov2.lvd142m"
    with pytest.raises(MissingWeightsError) as info:
        VisualBackbone(name, pretrained=True, img_size=64, model_kwargs=TINY, cache_dir=str(tmp_path))
    message = str(info.value)
    assert f"timm/{name}" in message and str(tmp_path) in message and "offline mode: on" in message
    assert f"download_weights.py --timm {name}" in message and "HF_HUB_OFFLINE=1" in message
    assert isinstance(info.value.__cause__, OSError)


def test_depth_save_pretrained_round_trip_offline(offline: None, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = DepthBackbone(config=TINY_DEPTH)
    source.model.save_pretrained(tmp_path)
    loaded = DepthBackbone(pretrained=str(tmp_path))
    assert hub_offline() and type(loaded.model) is type(source.model)
    images = torch.randn(1, 3, 64, 64)
    for a, b in zip(source(images, (4, 4)), loaded(images, (4, 4)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_missing_depth_directory(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="no such directory.*save_pretrained"):
        DepthBackbone(pretrained=str(tmp_path / "da-v2-large"))


def test_offline_depth_hub_miss_says_how_to_fetch(offline: None, tmp_path: Path) -> None:
    hub_id = "someone/made-up-depth-model"
    with pytest.raises(MissingWeightsError) as info:
        DepthBackbone(pretrained=hub_id, cache_dir=str(tmp_path))
    message = str(info.value)
    assert hub_id in message and f"download_weights.py --hf {hub_id}" in message and "HF_HUB_OFFLINE=1" in message


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_hub_offline_reads_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is expected


def test_timm_weight_source() -> None:
    assert timm_weight_source("vit_large_patch14_dinov2.lvd142m") == "timm/vit_large_patch14_dinov2.lvd142m"
    assert timm_weight_source("samvit_huge_patch16").startswith("timm/samvit_huge_patch16")
    with pytest.raises(ValueError, match="unknown timm model"):
        timm_weight_source("not_a_model")


# --- scripts/download_weights.py --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("download_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_plan_and_env(script, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "hf"
    argv = ["--preset", "depthforge", "--timm", "vit_large_patch14_dinov2.lvd142m", "--dry-run", "--cache-dir"]
    assert script.main([*argv, str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.count("timm  vit_large_patch14_dinov2.lvd142m  <- timm/vit_large_patch14_dinov2.lvd142m") == 1
    assert "hf    depth-anything/Depth-Anything-V2-Large-hf" in out
    assert f"export HF_HUB_CACHE={cache}" in out and "export HF_HUB_OFFLINE=1" in out
    assert not cache.exists()


@pytest.mark.parametrize("argv", [[], ["--timm", "not_a_model"], ["--preset", "nope"]])
def test_bad_arguments_exit_with_usage(script, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        script.main(argv)
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_download_loads_each_model_into_the_cache(
    script, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: calls.append(("timm", name, kw["cache_dir"])))
    record_hf = lambda hub_id, **kw: calls.append(("hf", hub_id, kw["cache_dir"]))  # noqa: E731
    monkeypatch.setattr(AutoModelForDepthEstimation, "from_pretrained", record_hf)
    argv = ["--timm", "samvit_huge_patch16.sa1b", "--hf", "a/b", "c/d", "--cache-dir", str(tmp_path)]
    assert script.main(argv) == 0
    assert calls == [
        ("timm", "samvit_huge_patch16.sa1b", str(tmp_path)),
        ("hf", "a/b", str(tmp_path)),
        ("hf", "c/d", str(tmp_path)),
    ]
    assert f"stored in {tmp_path}" in capsys.readouterr().out
