import os

import pytest
import torch

from src.utils.checkpoint import CheckpointError, atomic_torch_save, config_differences, safe_torch_load


def test_atomic_save_roundtrip(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_torch_save({"w": torch.arange(3)}, path)
    assert torch.equal(safe_torch_load(path)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(safe_torch_load(path)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_truncated_and_garbage_files_give_clear_errors(tmp_path):
    path = tmp_path / "c.ckpt"
    atomic_torch_save({"w": torch.randn(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.ckpt"):
        safe_torch_load(path)
    path.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="not found"):
        safe_torch_load(tmp_path / "missing.ckpt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="unsafe"):
        safe_torch_load(path)


def test_config_differences_name_the_keys():
    a = {"token_adapter": {"_target_": "DepthForge", "num_tokens": 100}, "visual_backbone": {"pretrained": "/a/x"}}
    b = {"token_adapter": {"_target_": "Rein", "num_tokens": 100}, "visual_backbone": {"pretrained": "/b/x"}}
    diffs = config_differences(a, b)
    assert len(diffs) == 1 and diffs[0].startswith("token_adapter._target_")
    assert config_differences(a, {**a, "extra": 1}) == ["extra: checkpoint='<absent>' current=1"]
