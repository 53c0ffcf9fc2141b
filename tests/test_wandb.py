"""W&B per job (src/utils/wandb.py): a 2-job multirun logs two separate offline runs, each with its own config, name,
group, history, per-class IoU tables and segmentation-mask images, read back from the offline ``.wandb`` files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("snow", "night", "fog", "rain")
_BLOCK, _HEADER = 32768, 7  # the LevelDB log format of a .wandb file: 32 KiB blocks, 7-byte record headers


def _records(path: Path) -> list[bytes]:
    """The protobuf records of an offline ``run-<id>.wandb`` file (":W&B", magic 0xBEE1, version 0, then a LevelDB
    log: checksum u32, length u16, type u8 = full 1 / first 2 / middle 3 / last 4; no record crosses a block)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, records, partial = _HEADER, [], b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            records.append(partial + chunk)
    return records


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_offline_run(path: Path) -> dict:
    """{run: {id, name, group, tags}, config, history: [rows], summary} of an offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict = {"run": {}, "config": {}, "history": [], "summary": {}, "exit_code": None}
    for data in _records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "tags": list(r.tags)}
            out["config"].update(_items(r.config.update))
        elif kind == "config":
            out["config"].update(_items(rec.config.update))
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def _env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # no API key and no WANDB_MODE: the logger must go offline by itself; HOME without a ~/.netrc
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_DIR": str(out / "wandb"), "HOME": str(out / "home")})
    return env


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wandb")
    env = _env(out)
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        "experiment=smoke",
        "logger=wandb",
        "ablation=rein,depthforge",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=false",
        "tags=[wbtest]",
        f"paths.data_dir={out / 'data'}",
        f"hydra.sweep.dir={out / 'sweep'}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "sweep"


def test_each_multirun_job_has_its_own_finished_wandb_run(multirun):
    runs = {}
    for job, ablation in (("0", "rein"), ("1", "depthforge")):
        files = list((multirun / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) == 1, files  # offline, one run per job, inside the job's own directory
        run = read_offline_run(files[0])
        runs[ablation] = run
        info = run["run"]
        assert run["exit_code"] == 0  # finished by the job itself
        assert info["id"] == (multirun / job / "wandb_run_id").read_text().strip()
        assert info["name"] == f"smoke-{ablation}-tiny_vit-s0"
        assert info["group"] == f"smoke/{multirun.name}"
        assert {"wbtest", "experiment:smoke", f"ablation:{ablation}"} <= set(info["tags"])
        adapter = run["config"]["model"]["segmenter"]["token_adapter"]["_target_"]
        assert adapter.lower().endswith(f".{ablation}adapter")
        steps = sorted({int(r["trainer/global_step"]) for r in run["history"] if "train/loss" in r})
        assert steps == [0, 1]  # its own steps only, not continued from the other job's
        keys = set().union(*run["history"])
        assert {"train/loss", "train/loss_mask", "train/loss_dice", "train/loss_cross_entropy"} <= keys
        assert any(k.startswith("lr-") for k in keys) and "val/mean_mIoU" in keys
        for domain in DOMAINS:
            assert f"val/{domain}/mIoU" in keys
            table = next(r for r in run["history"] if f"val/{domain}/IoU_table/_type" in r)
            prefix = f"val/{domain}/IoU_table/"
            assert table[prefix + "_type"] == "table-file"
            assert (table[prefix + "nrows"], table[prefix + "ncols"]) == (19, 2)
            saved = json.loads((files[0].parent / "files" / table[prefix + "path"]).read_text())
            assert saved["columns"] == ["class", "IoU"] and saved["data"][0][0] == "road"
            image = next(r for r in run["history"] if f"val/{domain}/example_0/_type" in r)
            prefix = f"val/{domain}/example_0/"
            assert image[prefix + "_type"] == "image-file"
            assert image[prefix + "masks/prediction/_type"] == image[prefix + "masks/ground_truth/_type"] == "mask"
        params = run["config"]["params"]
        assert params["visual_backbone"]["trainable"] == 0 and params["token_adapter"]["trainable"] > 0
        assert run["summary"]["params/mask_head/trainable"] == params["mask_head"]["trainable"]
    assert runs["rein"]["run"]["id"] != runs["depthforge"]["run"]["id"]
    assert runs["rein"]["config"]["params"]["depth_backbone"]["frozen"] == 0
    assert runs["depthforge"]["config"]["params"]["depth_backbone"]["frozen"] > 0
    # the depth VFM's picture, where the adapter has a depth VFM
    assert "val/fog/depth_0/_type" in set().union(*runs["depthforge"]["history"])
    # the dominant token per patch of every layer (src.attention.layer_strip), for adapters with attention
    for ablation in ("rein", "depthforge"):
        row = next(r for r in runs[ablation]["history"] if "val/fog/attention_0/_type" in r)
        assert row["val/fog/attention_0/_type"] == "image-file"
        assert row["val/fog/attention_0/width"] >= 4 * 128  # a 128-pixel-wide panel for each of the 4 layers


def test_a_resume_in_the_same_run_dir_keeps_the_wandb_run_id(tmp_path):
    from src.utils.wandb import run_id

    first = run_id(tmp_path, None)
    assert run_id(tmp_path, "last.ckpt") == first  # ckpt_path set: the same W&B run continues
    assert run_id(tmp_path, None) != first  # a fresh run in the same directory is a new W&B run


def test_a_failing_job_finishes_its_wandb_run_as_failed(multirun, tmp_path):
    data = multirun.parent / "data"  # the multirun's generated smoke data
    cmd = [sys.executable, "-m", "src.train", "experiment=smoke", "logger=wandb", "trainer.max_steps=4", "test=false"]
    cmd += ["+callbacks.crash._target_=tests.helpers.CrashAt", "+callbacks.crash.step=1"]
    cmd += [f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr
    (path,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    assert read_offline_run(path)["exit_code"] == 1
