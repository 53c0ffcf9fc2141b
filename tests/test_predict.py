"""src.predict on the smoke experiment: the evaluator's prediction pixel for pixel, every output kind, batching of
mixed sizes, the test pipeline of a chosen domain, and videos streamed frame by frame (docs/evaluation.md).

The output-safety rules (never onto inputs, atomic writes, true counts) are tested in
tests/reliability/test_predict_outputs.py; the pictures themselves in tests/test_visualize.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import av
import cv2
import hydra
import numpy as np
import pytest
import torch
from torch import nn

import src.predict as predict
from src.data.labels import IGNORE_INDEX, NUM_CLASSES, PALETTE
from src.data.transforms import reseed
from src.models.inference import slide_inference
from src.predict import PredictionError, domain_pipeline, predict_folder
from src.utils.checkpoint import atomic_torch_save
from src.utils.instantiate import build_module
from src.utils.video import read_clip, write_clip
from src.utils.visualize import blend, legend
from tests.conftest import compose_config

FOG = Path("smoke") / "acdc" / "rgb_anon" / "fog" / "val"
ALL_KINDS = ["color", "overlay", "panel", "trainid", "labelid", "depth", "attention"]


class Recorder(nn.Module):
    """Stands in for a domain's metric in ``SegmentationModule._eval_step``: keeps the predictions it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.preds: list[torch.Tensor] = []

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        self.preds.append(preds.clone())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """(data root, checkpoint, module): the smoke model trained for 3 steps on its generated source data, its
    checkpoint as Lightning's hook writes it, and the module itself (built as src.train builds it: seeded)."""
    out = tmp_path_factory.mktemp("predict")
    cfg = compose_config(["experiment=smoke", f"paths.data_dir={out / 'data'}"], out / "run")
    hydra.utils.instantiate(cfg.data.prepare)()
    torch.manual_seed(cfg.seed)
    module = build_module(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    # the training pipeline draws from fresh entropy unless reseeded (src.train's loader reseeds every sample): seed
    # it, so the 3 steps, and whether they already move the model off a constant map, are the same in every run
    reseed(datamodule.source.transform, cfg.seed)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    loader = torch.utils.data.DataLoader(datamodule.source, batch_size=4)
    module.train()
    for _, batch in zip(range(3), loader):
        module.segmenter.loss(batch["image"], batch["label"])["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    atomic_torch_save(ckpt, out / "last.ckpt")
    return out / "data", out / "last.ckpt", module


def _cfg(data: Path, ckpt: Path, input_dir: Path, output_dir: Path, *extra: str):
    overrides = [
        "experiment=smoke",
        f"paths.data_dir={data}",
        f"ckpt_path={ckpt}",
        f"input_dir={input_dir}",
        f"output_dir={output_dir}",
    ]
    return compose_config([*overrides, *extra], output_dir.parent / "run", config_name="predict")


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _eval_predictions(module, data: Path, domain: str) -> dict[str, torch.Tensor]:
    """Name -> the prediction SegmentationModule._eval_step scores, for every image of ``domain``, through the
    evaluator's own data module and step."""
    cfg = compose_config(["experiment=smoke", f"paths.data_dir={data}"], data.parent / "eval")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("test")
    index = datamodule.target_names.index(domain)
    module.domains = list(datamodule.target_names)
    module.metrics = nn.ModuleDict({name: Recorder() for name in module.domains})
    preds = {}
    with torch.no_grad():
        for i, batch in enumerate(datamodule.test_dataloader()[index]):
            module._eval_step(batch, index, "test", i)
            for name, pred in zip(batch["name"], module.metrics[domain].preds.pop()):
                preds[name] = pred
    return preds


def test_predict_writes_the_prediction_eval_scores_pixel_for_pixel(trained, tmp_path: Path) -> None:
    """The train-ID PNG of every fog image equals the argmax _eval_step computes for it, in batches of 3."""
    data, ckpt, module = trained
    expected = _eval_predictions(module, data, "fog")
    out = tmp_path / "out"
    written = predict_folder(_cfg(data, ckpt, data / FOG, out, "outputs=[trainid]", "domain=fog", "batch_size=3"))
    assert len(written) == len(expected) == 16
    for name, pred in expected.items():
        ids = _read(out / f"{name}_rgb_anon.png")
        assert ids.shape == tuple(pred.shape) == (64, 128)
        np.testing.assert_array_equal(ids, pred.numpy(), err_msg=name)
    assert len({int(v) for p in expected.values() for v in p.unique()}) > 1  # a trained model, not a constant map


def test_every_output_kind_in_its_own_folder(trained, tmp_path: Path) -> None:
    data, ckpt, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    source = sorted((data / FOG).rglob("*.png"))[0]
    shutil.copy(source, photos / "a.png")
    out = tmp_path / "out"
    kinds = ",".join(ALL_KINDS)
    written = predict_folder(_cfg(data, ckpt, photos, out, f"outputs=[{kinds}]", "attention_layer=1"))
    assert sorted(str(p.relative_to(out)) for p in written) == sorted(f"{k}/a.png" for k in ALL_KINDS)
    image = _read(photos / "a.png")
    ids = _read(out / "trainid" / "a.png")
    assert ids.dtype == np.uint8 and ids.shape == image.shape[:2] and ids.max() < NUM_CLASSES
    np.testing.assert_array_equal(_read(out / "color" / "a.png"), PALETTE[ids])
    label_ids = _read(out / "labelid" / "a.png")
    assert {(int(t), int(label)) for t, label in zip(ids.ravel(), label_ids.ravel())} <= {
        (0, 7), (1, 8), (2, 11), (3, 12), (4, 13), (5, 17), (6, 19), (7, 20), (8, 21), (9, 22), (10, 23), (11, 24),
        (12, 25), (13, 26), (14, 27), (15, 28), (16, 31), (17, 32), (18, 33),
    }  # fmt: skip
    over = _read(out / "overlay" / "a.png")
    np.testing.assert_array_equal(over[:, : image.shape[1]], blend(image, ids, 0.5))
    np.testing.assert_array_equal(over[:, image.shape[1] :], legend(np.unique(ids), image.shape[0]))
    panel = _read(out / "panel" / "a.png")
    assert panel.shape == (64, 3 * 128, 3)  # image | colour | depth: the smoke model has a depth VFM
    np.testing.assert_array_equal(panel[:, :128], image)
    np.testing.assert_array_equal(panel[:, 128:256], PALETTE[ids])
    np.testing.assert_array_equal(panel[:, 256:], _read(out / "depth" / "a.png"))
    attention = _read(out / "attention" / "a.png")
    assert attention.shape == image.shape and len(np.unique(attention.reshape(-1, 3), axis=0)) >= 1


def test_mixed_sizes_are_batched_by_size_and_match_one_at_a_time(trained, tmp_path: Path) -> None:
    """Images of two sizes, interleaved: batch_size=4 gives the same train IDs as batch_size=1."""
    data, ckpt, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, path in enumerate(sorted((data / FOG).rglob("*.png"))[:6]):
        image = cv2.imread(str(path))
        cv2.imwrite(str(photos / f"{i}.png"), image if i % 2 else cv2.resize(image, (100, 50)))
    one = predict_folder(_cfg(data, ckpt, photos, tmp_path / "one", "outputs=[trainid]", "batch_size=1"))
    four = predict_folder(_cfg(data, ckpt, photos, tmp_path / "four", "outputs=[trainid]", "batch_size=4"))
    assert len(one) == len(four) == 6
    for a, b in zip(one, four):
        np.testing.assert_array_equal(_read(a), _read(b), err_msg=str(a))
    assert _read(tmp_path / "one" / "0.png").shape == (50, 100) and _read(tmp_path / "one" / "1.png").shape == (64, 128)


def median_confidence(module, images: list[np.ndarray]) -> float:
    """The median over all pixels of the top class probability, as the evaluator computes the probabilities: a
    min_confidence that leaves both void and decided pixels."""
    transform = domain_pipeline(compose_config(["experiment=smoke"], Path("/tmp/unused"), config_name="predict"))[1]
    with torch.no_grad():
        tops = [
            slide_inference(
                module.segmenter.predict, transform(image=im)["image"][None], NUM_CLASSES, **module.slide
            ).amax(1)
            for im in images
        ]
    return round(float(torch.cat([t.flatten() for t in tops]).median()), 4)


def test_min_confidence_makes_void_pixels_that_every_kind_shows(trained, tmp_path: Path) -> None:
    data, ckpt, module = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted((data / FOG).rglob("*.png"))[0], photos / "a.png")
    image = _read(photos / "a.png")
    base = predict_folder(_cfg(data, ckpt, photos, tmp_path / "all", "outputs=[trainid]"))[0]
    threshold = median_confidence(module, [image])
    out = tmp_path / "out"
    kinds = "outputs=[trainid,labelid,color,overlay]"
    predict_folder(_cfg(data, ckpt, photos, out, kinds, f"min_confidence={threshold}"))
    ids = _read(out / "trainid" / "a.png")
    void = ids == IGNORE_INDEX
    assert void.any() and (~void).any()
    np.testing.assert_array_equal(ids[~void], _read(base)[~void])  # the decided pixels keep the argmax
    assert (_read(out / "labelid" / "a.png")[void] == 0).all() and (_read(out / "color" / "a.png")[void] == 0).all()
    over = _read(out / "overlay" / "a.png")[:, : image.shape[1]]
    np.testing.assert_array_equal(over[void], image[void])


def test_domain_picks_the_targets_test_pipeline_and_scale_overrides_it(caplog: pytest.LogCaptureFixture) -> None:
    image = np.zeros((64, 128, 3), np.uint8)
    base = ["experiment=smoke", "ckpt_path=x", "input_dir=x", "data.targets.night.transform.scale=[64,32]"]
    cfg = compose_config(base, Path("/tmp/unused"), config_name="predict")
    domain, transform = domain_pipeline(cfg)
    assert domain == "snow" and transform(image=image)["image"].shape == (3, 64, 128)  # the first target's
    cfg = compose_config([*base, "domain=night"], Path("/tmp/unused"), config_name="predict")
    assert domain_pipeline(cfg)[1](image=image)["image"].shape == (3, 32, 64)
    cfg = compose_config([*base, "domain=night", "scale=[32,16]"], Path("/tmp/unused"), config_name="predict")
    with caplog.at_level(logging.WARNING, logger="src.predict"):
        assert domain_pipeline(cfg)[1](image=image)["image"].shape == (3, 16, 32)
    assert "scale=[32, 16] replaces the test resize of the night target ([64, 32])" in caplog.text
    cfg = compose_config([*base, "domain=citys"], Path("/tmp/unused"), config_name="predict")
    with pytest.raises(PredictionError, match=r"domain=citys is not a target .* snow, night, fog, rain\n  fix:"):
        domain_pipeline(cfg)


def test_kinds_the_model_cannot_give_are_refused_before_it_is_built(trained, tmp_path: Path) -> None:
    data, ckpt, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted((data / FOG).rglob("*.png"))[0], photos / "a.png")
    out = tmp_path / "out"
    with pytest.raises(PredictionError, match=r"outputs=\[attention\] .* FADAAdapter has no attention\(tokens"):
        predict_folder(_cfg(data, ckpt, photos, out, "outputs=[attention]", "ablation=fada"))
    with pytest.raises(PredictionError, match=r"outputs=\[depth\] needs a model with a depth VFM, and ReinAdapter"):
        predict_folder(_cfg(data, ckpt, photos, out, "outputs=[depth]", "ablation=rein"))
    with pytest.raises(PredictionError, match=r"unknown kind\(s\) colour\n  fix: outputs=\[...\] with any of color"):
        predict_folder(_cfg(data, ckpt, photos, out, "outputs=[colour]"))
    with pytest.raises(PredictionError, match=r"attention_layer=7 is not a layer .* \(4 layers\)"):
        predict_folder(_cfg(data, ckpt, photos, out, "outputs=[attention]", "attention_layer=7"))
    assert not out.exists()


# --------------------------------------------------------------------------- videos


def test_a_video_becomes_an_overlay_video_streamed_frame_by_frame(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 frames in batches of 3: the overlay video has 8 frames; each frame's image part equals the input where the
    prediction is void and differs from it everywhere else; the same frames as PNGs give the same predictions."""
    data, ckpt, module = trained
    frames = [_read(p) for p in sorted((data / FOG).rglob("*.png"))[:8]]
    clips, stills = tmp_path / "clips", tmp_path / "stills"
    clips.mkdir()
    stills.mkdir()
    write_clip(clips / "drive.mp4", frames, rate=5)
    decoded = read_clip(clips / "drive.mp4")
    assert len(decoded) == 8 and all(np.array_equal(a, b) for a, b in zip(decoded, frames))
    for i, frame in enumerate(decoded):
        cv2.imwrite(str(stills / f"{i:02d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    seen: list[int] = []
    call = predict.Predictor.__call__

    def spy(self, images, kinds, slots=None):
        seen.append(len(images))
        return call(self, images, kinds, slots)

    monkeypatch.setattr(predict.Predictor, "__call__", spy)
    threshold = median_confidence(module, decoded)
    lossless = ["video_codec=libx264rgb", "video_options={crf: 0}", f"min_confidence={threshold}", "batch_size=3"]
    out = tmp_path / "out"
    written = predict_folder(_cfg(data, ckpt, clips, out, "outputs=[overlay,color]", *lossless))
    assert sorted(str(p.relative_to(out)) for p in written) == ["color/drive.mp4", "overlay/drive.mp4"]
    assert max(seen) == 3 and sum(seen) == 8  # never more than batch_size frames at a time
    ids = [_read(p) for p in predict_folder(_cfg(data, ckpt, stills, tmp_path / "ids", "outputs=[trainid]", *lossless))]
    overlays, colours = read_clip(out / "overlay" / "drive.mp4"), read_clip(out / "color" / "drive.mp4")
    assert len(overlays) == len(colours) == 8
    assert overlays[0].shape == (64, 128 + legend([], 64, slots=NUM_CLASSES).shape[1], 3)
    void_seen = decided_seen = 0
    for frame, over, colour, pred in zip(decoded, overlays, colours, ids):
        void = pred == IGNORE_INDEX
        picture = over[:, :128]
        np.testing.assert_array_equal(picture[void], frame[void])
        assert (picture[~void] != frame[~void]).any(axis=-1).all()
        np.testing.assert_array_equal(picture, blend(frame, pred, 0.5))
        np.testing.assert_array_equal(colour, np.where(void[..., None], 0, PALETTE[np.minimum(pred, 18)]))
        void_seen, decided_seen = void_seen + void.sum(), decided_seen + (~void).sum()
    assert void_seen and decided_seen


def test_default_codec_writes_odd_sized_frames_and_keeps_the_frame_count(trained, tmp_path: Path) -> None:
    data, ckpt, _ = trained
    frames = [np.pad(_read(p), ((0, 1), (0, 1), (0, 0)), mode="edge") for p in sorted((data / FOG).rglob("*.png"))[:5]]
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "odd.mp4", frames)  # 129 x 65: H.264 in 4:2:0 needs even sizes, so the output is padded
    written = predict_folder(_cfg(data, ckpt, clips, tmp_path / "out", "outputs=[color]"))
    with av.open(str(written[0])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.height, stream.width) == (66, 130)
        assert sum(1 for _ in container.decode(stream)) == 5


def test_a_failed_video_leaves_no_file_and_the_count_is_true(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data, ckpt, _ = trained
    clips = tmp_path / "clips"
    clips.mkdir()
    frames = [_read(p) for p in sorted((data / FOG).rglob("*.png"))[:4]]
    write_clip(clips / "a.mp4", frames)
    shutil.copy(sorted((data / FOG).rglob("*.png"))[0], clips / "b.png")
    write = predict.VideoWriter.write

    def fail_on_third(self, rgb):
        if self.frames == 2:
            raise RuntimeError("simulated failure")
        write(self, rgb)

    monkeypatch.setattr(predict.VideoWriter, "write", fail_on_third)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="src.predict"), pytest.raises(RuntimeError, match="simulated"):
        predict_folder(_cfg(data, ckpt, clips, out, "outputs=[overlay,trainid]", "batch_size=1"))
    assert f"wrote 2 of 3 predictions to {out} before the error below" in caplog.text  # b.png's two, no video
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["overlay/b.png", "trainid/b.png"]
    assert "videos get overlay only" in caplog.text


def test_video_outputs_follow_the_safety_rules(trained, tmp_path: Path) -> None:
    data, ckpt, _ = trained
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "a.mp4", [_read(p) for p in sorted((data / FOG).rglob("*.png"))[:2]])
    (clips / "broken.mov").write_bytes(b"not a video")
    with pytest.raises(PredictionError, match=r"have a video suffix but cannot be read as a video: .*broken.mov"):
        predict_folder(_cfg(data, ckpt, clips, tmp_path / "out", "outputs=[overlay]"))
    (clips / "broken.mov").unlink()
    with pytest.raises(PredictionError, match=r"outputs=\['trainid'\] cannot be written for the videos"):
        predict_folder(_cfg(data, ckpt, clips, tmp_path / "out", "outputs=[trainid]"))
    with pytest.raises(PredictionError, match="would put predictions inside input_dir"):
        predict_folder(_cfg(data, ckpt, clips, clips / "out", "outputs=[overlay]"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"an earlier video")
    with pytest.raises(PredictionError, match=r"already holds 1 of the 1 files .*a.mp4\n  fix: overwrite=true"):
        predict_folder(_cfg(data, ckpt, clips, out, "outputs=[overlay]"))
    assert (out / "a.mp4").read_bytes() == b"an earlier video"
    # one video file as input_dir: the output goes beside nothing of the input's
    written = predict_folder(_cfg(data, ckpt, clips / "a.mp4", out, "outputs=[overlay]", "overwrite=true"))
    assert written == [out / "a.mp4"] and len(read_clip(out / "a.mp4")) == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4"]  # no temporary file left
